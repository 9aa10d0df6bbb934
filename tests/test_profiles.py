"""Profiles load from YAML once, and every mistake is reported at file:line:col."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edgefleet.errors import ConfigError
from edgefleet.profiles.load import load_all_profiles, load_profile, load_profile_file, profile_paths
from edgefleet.profiles.model import Profile

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """\
name: dev
device:
  board: test board
  arch: aarch64
  os: test os
  python: "3.11"
runtime:
  name: tflite-runtime
  provided_by: device
formats:
  tflite:
    quantizations: [fp32]
bench:
  threads: [1, 2]
workdir: /opt/edgefleet
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_profile_file(path)
    return str(info.value)


def test_every_shipped_profile_is_valid():
    loaded, errors = load_all_profiles(REPO / "targets")
    assert errors == []
    names = {p.profile.name for p in loaded}
    assert {"rpi3", "jetson-nano", "android-arm64", "coral", "local"} <= names


@pytest.mark.parametrize("name, arch, expected_formats", [
    ("rpi3", "armv7l", {"tflite"}),
    ("jetson-nano", "aarch64", {"tflite", "tftrt"}),
    ("android-arm64", "aarch64", {"tflite", "android_aar"}),
    ("coral", "aarch64", {"tflite", "edgetpu"}),
    ("local", "x86_64", {"tflite", "onnx", "openvino", "savedmodel"}),
])
def test_shipped_profiles_say_what_the_issue_asks(name, arch, expected_formats):
    profile = load_profile(REPO / "targets", name).profile
    assert profile.device.arch == arch
    present = {f for f in type(profile.formats).model_fields if getattr(profile.formats, f) is not None}
    assert present == expected_formats


def test_rpi3_inherits_base_bench_defaults_and_overrides_threads():
    loaded = load_profile(REPO / "targets", "rpi3")
    assert loaded.profile.bench.threads == (1, 2, 3, 4)
    assert loaded.profile.bench.min_runs == 100  # from _base.yaml
    assert [p.name for p in loaded.chain] == ["rpi3.yaml", "_base.yaml"]


def test_misspelled_key_names_file_line_col_and_suggestion(tmp_path):
    path = write(tmp_path, "dev", MINIMAL.replace("  threads: [1, 2]", "  thread: [1, 2]"))
    message = error_of(path)
    assert message.endswith("dev.yaml:14:3: unknown key 'thread' (did you mean 'threads'?)")


def test_unknown_quantization_suggests_the_closest(tmp_path):
    path = write(tmp_path, "dev", MINIMAL.replace("[fp32]", "[fp32, fp61]"))
    message = error_of(path)
    assert "dev.yaml:12:27:" in message
    assert "'fp61' is not one of" in message and "(did you mean 'fp16'?)" in message


def test_unknown_format_is_an_unknown_key(tmp_path):
    path = write(tmp_path, "dev", MINIMAL.replace("  tflite:\n", "  tflit:\n"))
    assert "dev.yaml:11:3: unknown key 'tflit' (did you mean 'tflite'?)" in error_of(path)


def test_wrong_type_names_the_key_and_value(tmp_path):
    path = write(tmp_path, "dev", MINIMAL.replace("  threads: [1, 2]", "  threads: [1, two]"))
    message = error_of(path)
    assert "dev.yaml:14:16: bench.threads.1:" in message and "'two'" in message


def test_missing_required_key(tmp_path):
    path = write(tmp_path, "dev", MINIMAL.replace("workdir: /opt/edgefleet\n", ""))
    assert "missing required key 'workdir'" in error_of(path)


def test_every_error_is_reported_not_only_the_first(tmp_path):
    text = MINIMAL.replace("  thread", "  thread").replace("arch: aarch64", "arch: arm64") \
        .replace("  threads: [1, 2]", "  threds: [1, 2]")
    message = error_of(write(tmp_path, "dev", text))
    assert "device.arch" in message and "unknown key 'threds'" in message


def test_yaml_syntax_error_has_position(tmp_path):
    path = write(tmp_path, "dev", MINIMAL.replace("  arch: aarch64", "  arch: [aarch64"))
    message = error_of(path)
    assert "dev.yaml:" in message and "invalid YAML" in message


def test_extends_merges_and_reports_positions_in_the_right_file(tmp_path):
    write(tmp_path, "_common", """\
        bench:
          threads: [1]
          min_rnus: 5
        """)
    child = write(tmp_path, "dev", "extends: _common\n" + MINIMAL.replace("bench:\n  threads: [1, 2]\n", ""))
    message = error_of(child)
    assert "_common.yaml:3:3: unknown key 'min_rnus' (did you mean 'min_runs'?)" in message


def test_extends_deep_merges_child_over_base(tmp_path):
    write(tmp_path, "_common", """\
        bench:
          min_runs: 7
          threads: [4]
        """)
    child = write(tmp_path, "dev", "extends: _common\n" + MINIMAL)
    bench = load_profile_file(child).profile.bench
    assert bench.min_runs == 7 and bench.threads == (1, 2)


def test_extends_cycle_and_missing_base(tmp_path):
    write(tmp_path, "_a", "extends: _b\n")
    write(tmp_path, "_b", "extends: _a\n")
    assert "cycle" in error_of(write(tmp_path, "dev", "extends: _a\n" + MINIMAL))
    assert "no such profile (did you mean '_a'?)" in error_of(write(tmp_path, "dev", "extends: _aa\n" + MINIMAL))


def test_unknown_target_suggests_a_name():
    with pytest.raises(ConfigError, match=r"unknown target 'rpi' \(did you mean 'rpi3'\?\)"):
        load_profile(REPO / "targets", "rpi")


def test_name_must_match_file(tmp_path):
    assert "must match the file name" in error_of(write(tmp_path, "other", MINIMAL))


@pytest.mark.parametrize("workdir_yaml", ['relative/dir', '/opt/../etc', '/', '/home', '"/opt/a\\nb"'])
def test_unsafe_workdirs_are_rejected(tmp_path, workdir_yaml):
    path = write(tmp_path, "dev", MINIMAL.replace("workdir: /opt/edgefleet", f"workdir: {workdir_yaml}"))
    assert "workdir" in error_of(path)


def test_profiles_are_frozen(tmp_path):
    profile = load_profile_file(write(tmp_path, "dev", MINIMAL)).profile
    with pytest.raises(Exception):
        profile.workdir = "/elsewhere"  # type: ignore[misc]
    assert isinstance(profile, Profile)


def test_builtin_local_is_the_default_when_the_workspace_has_none(tmp_path):
    assert profile_paths(tmp_path / "targets")["local"].parent.name == "builtin"


# --- hostile names, hosts and paths ----------------------------------------------------------

def _ssh(host: str = "pi.local", user: str = "pi") -> str:
    # json.dumps gives a YAML double-quoted scalar with every character escaped as \uXXXX where needed.
    import json

    return MINIMAL + f"transport:\n  kind: ssh\n  host: {json.dumps(host)}\n  user: {json.dumps(user)}\n"


def _line_of(text: str, key: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.strip().startswith(f"{key}:"))


@pytest.mark.parametrize("host", [
    "evil; rm -rf /", "-oProxyCommand=x", "pi.local -oProxyCommand=x", "$(id)", "`id`", "pi\nlocal", "a b",
    "user@pi.local", "pi.local:22", "pi..local", "pi.-local", "", "x" * 254, "pi\u202elacol", "pi\u2066.local",
    "pi\u200b.local",
])
def test_transport_hosts_that_are_not_a_host_name_or_address_are_refused(tmp_path, host):
    text = _ssh(host=host)
    message = error_of(write(tmp_path, "dev", text))
    assert f"dev.yaml:{_line_of(text, 'host')}:" in message and "transport.host" in message


@pytest.mark.parametrize("host", ["pi.local", "raspberrypi", "my_pi", "192.0.2.10", "2001:db8::1", "fe80::1%eth0",
                                  "board-1.lab.example.com."])
def test_host_names_addresses_and_ssh_aliases_are_accepted(tmp_path, host):
    profile = load_profile_file(write(tmp_path, "dev", _ssh(host=host)))
    assert profile.profile.transport.host == host


@pytest.mark.parametrize("user", [
    "root$(id)", "-oProxyCommand=x", "pi;id", "Pi", "1pi", "pi user", "pi\u202e", "a" * 33, "pi@host", "",
])
def test_transport_users_that_are_not_posix_user_names_are_refused(tmp_path, user):
    text = _ssh(user=user)
    message = error_of(write(tmp_path, "dev", text))
    assert f"dev.yaml:{_line_of(text, 'user')}:" in message and "transport.user" in message


@pytest.mark.parametrize("user", ["pi", "_edge", "ci-runner_2", "machine$", "a" * 32])
def test_posix_user_names_are_accepted(tmp_path, user):
    assert load_profile_file(write(tmp_path, "dev", _ssh(user=user))).profile.transport.user == user


@pytest.mark.parametrize("key, yaml_value, where", [
    ("board", '"Raspberry Pi \\u202e3"', "device.board"),
    ("workdir", '"/opt/edge\\u2067fleet"', "workdir"),
    ("workdir", '"/opt/edge\\u001bfleet"', "workdir"),
    ("os", '"Raspberry Pi OS\\u2028bullseye"', "device.os"),
])
def test_bidi_and_control_characters_in_names_and_paths_are_refused(tmp_path, key, yaml_value, where):
    lines = MINIMAL.splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
    indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
    lines[index] = f"{indent}{key}: {yaml_value}"
    message = error_of(write(tmp_path, "dev", "\n".join(lines) + "\n"))
    assert f"dev.yaml:{index + 1}:" in message and where in message
    assert "control or bidi formatting character" in message
    # The message shows the character escaped, never raw: it cannot reorder the terminal line that shows it.
    assert not any(ch in message for ch in "\u202e\u2067\x1b\u2028")


@pytest.mark.parametrize("block, where", [
    ("transport:\n  kind: ssh\n  host: pi.local\n  key_filename: \"~/.ssh/id\\u202eden\"\n", "transport.key_filename"),
    ("transport:\n  kind: ssh\n  host: pi.local\n  known_hosts: \"/etc/ssh/known\\u0000hosts\"\n",
     "transport.known_hosts"),
    ("transport:\n  kind: adb\n  serial: \"-s other\"\n", "transport.serial"),
    ("transport:\n  kind: adb\n  adb_path: \"/usr/bin/adb\\u2069\"\n", "transport.adb_path"),
])
def test_transport_paths_and_serials_are_plain_text(tmp_path, block, where):
    text = MINIMAL + block
    message = error_of(write(tmp_path, "dev", text))
    assert where in message and "dev.yaml:" in message


def test_runtime_package_names_are_plain_text(tmp_path):
    text = MINIMAL.replace("  provided_by: device\n", "  provided_by: device\n  os_packages:\n"
                                                      "    numpy: \"python3-nump\\u202ey\"\n")
    message = error_of(write(tmp_path, "dev", text))
    assert "runtime.os_packages.numpy" in message and "U+202E (RIGHT-TO-LEFT OVERRIDE)" in message
