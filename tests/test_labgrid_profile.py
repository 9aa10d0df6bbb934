"""A profile's `lab:` block (a board in a labgrid place) is checked at load, with the file:line of the mistake."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.deploy.devices import resolve_device
from edgefleet.errors import ConfigError
from edgefleet.lab.config import split_coordinator
from edgefleet.profiles.load import load_profile_file

BOARD = """\
name: rpi3-lab
device: {{board: Raspberry Pi 3 in the lab, arch: armv7l, os: Raspberry Pi OS, python: "3.11"}}
runtime: {{name: tflite-runtime, provided_by: device}}
formats:
  tflite: {{quantizations: [fp32]}}
workdir: /opt/edgefleet
{extra}"""


def load(tmp_path: Path, extra: str):
    path = tmp_path / "rpi3-lab.yaml"
    path.write_text(BOARD.format(extra=extra))
    return load_profile_file(path).profile


def test_a_lab_board_needs_no_address(tmp_path):
    profile = load(tmp_path, 'lab: {labgrid: {coordinator: "127.0.0.1:20408", place: rpi3-1}}\n')
    assert profile.lab.labgrid.coordinator == "127.0.0.1:20408" and profile.lab.labgrid.place == "rpi3-1"
    address = resolve_device(profile, tmp_path / "state")
    assert address.lab == profile.lab  # deploy and collect hold this place around their device session


def test_ssh_options_stay_with_the_profile(tmp_path):
    profile = load(tmp_path, "transport: {kind: ssh, host: placeholder, key_filename: ~/.ssh/lab}\n"
                             "lab: {labgrid: {coordinator: lab-coordinator.example.com, place: rpi3-1}}\n")
    assert split_coordinator(profile.lab.labgrid.coordinator) == ("lab-coordinator.example.com", 20408)
    assert profile.transport.key_filename == "~/.ssh/lab"


@pytest.mark.parametrize("lab, expected", [
    ('{labgrid: {coordinator: "-oProxyCommand=x:1", place: rpi3-1}}', r":7:\d+: .*must be a host name"),
    ('{labgrid: {coordinator: "127.0.0.1:99999", place: rpi3-1}}', r":7:\d+: .*port 99999 is not in 1-65535"),
    ('{labgrid: {coordinator: "127.0.0.1:x", place: rpi3-1}}', r":7:\d+: .*the port must be a number"),
    ('{labgrid: {coordinator: "127.0.0.1", place: "exp/group"}}', r":7:\d+: .*must be a labgrid place name"),
    ('{labgrid: {coordinator: "127.0.0.1"}}', r":7:\d+: missing required key 'lab.labgrid.place'"),
    ('{labgird: {coordinator: "127.0.0.1", place: a}}', r":7:\d+: .*labgird"),
])
def test_mistakes_name_file_and_line(tmp_path, lab, expected):
    with pytest.raises(ConfigError, match=expected):
        load(tmp_path, f"lab: {lab}\n")


def test_a_lab_board_is_reached_over_ssh(tmp_path):
    with pytest.raises(ConfigError, match=r":8:\d+: .*reached over SSH at the place's NetworkService.*not adb"):
        load(tmp_path, "transport: {kind: adb}\nlab: {labgrid: {coordinator: 127.0.0.1, place: a}}\n")
