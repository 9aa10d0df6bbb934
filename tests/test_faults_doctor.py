"""`invoke doctor` against the real emulated fleet: a good device, one whose sshd is stopped, one
whose runtime is missing, one whose host key does not match, and this machine's own checks."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.api.context import Env
from edgefleet.api.doctor import HOST, DoctorOptions, doctor, emulation_checks
from edgefleet.console import make_console
from edgefleet.deploy.devices import fleet_dir
from edgefleet.errors import ChecksFailedError
from edgefleet.fleet import DeviceSpec, EmulatedFleet, sshd
from edgefleet.fleet.keys import generate_keypair
from fleet_fixtures import require_fleet_tools

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ssh

PROFILE = """\
device: {{board: test board, arch: armv7l, os: test, python: "3.11"}}
runtime: {runtime}
formats: {formats}
transport: {transport}
workdir: {workdir}
"""
WHEELS = '{name: ai-edge-litert, packages: ["ai-edge-litert==2.3.0"], platform_tags: [manylinux_2_17_x86_64]}'
# A runtime the device must already have: OpenVINO, which the device's system python3 lacks.
ON_DEVICE = '{name: openvino, provided_by: device, note: "pip install openvino on the board"}'


@dataclass
class Doctored:
    root: Path
    fleet: EmulatedFleet


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Doctored]:
    require_fleet_tools()
    root = tmp_path_factory.mktemp("doctor")
    (root / "targets").mkdir()
    (root / "edgefleet.yaml").write_text("backend: local\n")
    shutil.copy(REPO / "tasks.py", root / "tasks.py")
    devices = [DeviceSpec(name=n, stands_in_for="test board", arch="armv7l") for n in ("dr-good", "dr-down")]
    with EmulatedFleet(fleet_dir(root / ".edgefleet"), devices) as fleet:
        good = fleet.device("dr-good")
        for name in ("dr-good", "dr-down"):
            (root / "targets" / f"{name}.yaml").write_text(PROFILE.format(
                runtime=WHEELS, formats="{tflite: {quantizations: [fp32]}}",
                transport='{kind: ssh, host: "unused.invalid"}', workdir=f"/opt/{name}"))
        conn = good.connection
        direct = {"kind": "ssh", "host": conn.host, "user": conn.user, "key_filename": conn.key_filename,
                  "known_hosts": conn.known_hosts}
        (root / "targets" / "dr-direct.yaml").write_text(PROFILE.format(
            runtime=ON_DEVICE, formats="{openvino: {precisions: [fp32]}}", transport=json.dumps(direct),
            workdir=json.dumps(good.workdir)))
        impostor = generate_keypair(root / "impostor_key", "impostor").split()
        (root / "other_known_hosts").write_text(f"{conn.host} {impostor[0]} {impostor[1]}\n")
        (root / "targets" / "dr-badkey.yaml").write_text(PROFILE.format(
            runtime=WHEELS, formats="{tflite: {quantizations: [fp32]}}",
            transport=json.dumps(direct | {"known_hosts": str(root / "other_known_hosts")}),
            workdir=json.dumps(good.workdir)))
        sshd.stop(sshd.SshdFiles.in_dir(Path(fleet.device("dr-down").workdir).parent))
        yield Doctored(root, fleet)


def test_doctor_reports_each_device_and_how_to_fix_it(ws: Doctored) -> None:
    started = time.monotonic()
    report = doctor(DoctorOptions(workspace=ws.root, connect_timeout_s=2), Env(console=make_console(quiet=True)))
    assert time.monotonic() - started < 30

    good = report.of("dr-good")
    assert {name: c.status for name, c in good.items()} == {
        "reachable": "ok", "host key": "ok", "arch": "ok", "python": "ok", "disk": "ok", "runtime": "warn"}
    assert "emulated" in good["arch"].detail and "armv7l" in good["arch"].detail
    assert "deploy provisions it" in good["runtime"].fix

    down = report.of("dr-down")
    assert list(down) == ["reachable"] and down["reachable"].status == "fail"
    assert "connection refused" in down["reachable"].detail
    assert "invoke fleet.up --devices dr-down" in down["reachable"].fix

    direct = report.of("dr-direct")
    assert direct["reachable"].status == "ok" and direct["runtime"].status == "fail"
    assert "openvino" in direct["runtime"].detail and direct["runtime"].fix == "pip install openvino on the board"

    badkey = report.of("dr-badkey")
    assert list(badkey) == ["host key"] and badkey["host key"].status == "fail"
    assert "HOST KEY CHANGED" in badkey["host key"].detail
    assert "ssh-keygen -R" in badkey["host key"].fix and "ssh-keygen -lf" in badkey["host key"].fix

    host = report.of(HOST)
    assert host["python"].status == "ok" and host["converters"].status == "ok"
    assert {"sshd", "ip", "debootstrap", "adb", "docker engine"} <= set(host)
    assert {"qemu-user-static", "binfmt_misc", "binfmt qemu-arm", "binfmt qemu-aarch64"} <= set(host)
    assert not report.ok
    assert {(c.scope, c.name) for c in report.failed} == {
        ("dr-down", "reachable"), ("dr-direct", "runtime"), ("dr-badkey", "host key")}


def test_doctor_checks_the_emulated_userlands(tmp_path: Path) -> None:
    (tmp_path / "targets").mkdir()
    (tmp_path / "edgefleet.yaml").write_text("backend: local\n")
    report = doctor(DoctorOptions(workspace=tmp_path, devices=False), Env(console=make_console(quiet=True)))
    host = report.of(HOST)
    emulation = {n: host[n] for n in ("qemu-user-static", "binfmt_misc", "binfmt qemu-arm", "binfmt qemu-aarch64")}
    assert {n: c.status for n, c in emulation.items()} == dict.fromkeys(emulation, "ok")
    assert re.fullmatch(r"qemu-arm \d+\.\d+\.\d+ \(\S+\), qemu-aarch64 \d+\.\d+\.\d+ \(\S+\)",
                        emulation["qemu-user-static"].detail)
    assert emulation["binfmt_misc"].detail == "mounted at /proc/sys/fs/binfmt_misc"
    assert emulation["binfmt qemu-arm"].detail.startswith("armhf: enabled, flags PF, ")
    assert emulation["binfmt qemu-aarch64"].detail.startswith("arm64: enabled, flags PF, ")

    # A machine without binfmt_misc mounted (a fake /proc tree): every row says what to run.
    unmounted = tmp_path / "binfmt_misc"
    unmounted.mkdir()
    rows = {c.name: c for c in emulation_checks(unmounted)}
    assert rows["qemu-user-static"].status == "ok"
    assert (rows["binfmt_misc"].status, rows["binfmt_misc"].fix) == (
        "warn", f"mount -t binfmt_misc binfmt_misc {unmounted}")
    assert (rows["binfmt qemu-arm"].status, rows["binfmt qemu-arm"].fix) == ("warn", "update-binfmts --enable qemu-arm")
    assert rows["binfmt qemu-aarch64"].fix == "update-binfmts --enable qemu-aarch64"
    assert "needed for armhf devices" in rows["binfmt qemu-arm"].detail


def _invoke(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("invoke")), "doctor", *args], cwd=root,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})


def test_invoke_doctor_exits_non_zero_only_when_something_required_is_wrong(ws: Doctored) -> None:
    failing = _invoke(ws.root, "--connect-timeout", "2")
    # Its own code from edgefleet/errors.py, not a bare 1 (which means an unexpected error).
    assert failing.returncode == ChecksFailedError.exit_code, failing.stdout + failing.stderr
    assert "Traceback" not in failing.stdout + failing.stderr
    assert "error: doctor: 3 required check(s) failed; see the table above" in failing.stderr
    for text in ("dr-good", "dr-down", "connection refused", "HOST KEY CHANGED", "how to fix"):
        assert text in failing.stdout, text

    fine = _invoke(ws.root, "--target", "dr-good")
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert "everything required is in place" in fine.stdout and "dr-down" not in fine.stdout
    assert "binfmt qemu-arm" in fine.stdout and "qemu-user-static" in fine.stdout


def test_host_checks_do_not_import_the_converters() -> None:
    probe = ("import sys\n"
             "from edgefleet.api.doctor import host_checks\n"
             "from edgefleet.workspace import Settings, Workspace\n"
             "from pathlib import Path\n"
             "checks = host_checks(Workspace(Path('.'), Settings()), [])\n"
             "heavy = ('tensorflow', 'onnx', 'onnx2tf', 'onnxruntime', 'openvino', 'tf2onnx', 'ai_edge_litert')\n"
             "print([m for m in heavy if m in sys.modules], len(checks))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    imported, count = out.stdout.strip().rsplit(" ", 1)
    assert imported == "[]" and int(count) >= 8
