"""The local transport, the adb transport's command construction and its no-device error,
and the transport registry."""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from edgefleet.errors import TransportError
from edgefleet.transport.adb import (
    ADB_WORKDIR,
    AdbDevice,
    AdbTransport,
    choose_device,
    parse_devices,
    pull_argv,
    push_argv,
    shell_argv,
)
from edgefleet.transport.base import CommandTimeout, RemoteCommandError, Transport
from edgefleet.transport.connections import AdbConnection, LocalConnection, SshConnection
from edgefleet.transport.local import LocalTransport
from edgefleet.transport.registry import open_transport
from edgefleet.transport.ssh import SshTransport

pytest_plugins = ["adb_fixtures"]

HOSTILE = ["$(touch {c})", "`touch {c}`", "; touch {c}", "\ntouch {c}", "a b", "☃", "'\"", ""]


# -- local --------------------------------------------------------------------

def test_local_run_passes_arguments_as_data(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    args = [h.format(c=canary) for h in HOSTILE]
    with LocalTransport(name="here") as local:
        out = local.run([sys.executable, "-c", "import json,sys; print(json.dumps(sys.argv[1:]))", *args])
    assert json.loads(out.stdout) == args
    assert not canary.exists()


def test_local_run_reports_failures(tmp_path: Path) -> None:
    local = LocalTransport(name="here")
    assert local.run(["false"], check=False).returncode == 1
    with pytest.raises(RemoteCommandError, match="here \\(local\\): command failed with exit code 3"):
        local.run([sys.executable, "-c", "import sys; sys.stderr.write('why\\n'); sys.exit(3)"])
    missing = local.run(["edgefleet-no-such-program"], check=False)
    assert missing.returncode == 127 and "edgefleet-no-such-program" in missing.stderr
    with pytest.raises(CommandTimeout, match=r"command timeout \(0\.3s\)"):
        local.run(["sleep", "5"], timeout=0.3)
    with pytest.raises(TypeError):
        local.run("echo hi")  # type: ignore[arg-type]


def test_local_stdin_and_files(tmp_path: Path) -> None:
    local = LocalTransport(name="here")
    assert local.run(["cat"], stdin=b"bytes in").stdout == "bytes in"
    source = tmp_path / "a.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    calls: list[tuple[int, int]] = []
    local.put(source, str(tmp_path / "b.bin"), progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (source.stat().st_size, source.stat().st_size)
    local.get(str(tmp_path / "b.bin"), tmp_path / "c.bin")
    assert (tmp_path / "c.bin").read_bytes() == source.read_bytes()
    with pytest.raises(TransportError, match="cannot copy"):
        local.get(str(tmp_path / "absent"), tmp_path / "d.bin")


# -- registry -----------------------------------------------------------------

def test_registry_picks_the_transport_from_the_connection_type() -> None:
    assert isinstance(open_transport(LocalConnection(), name="l"), LocalTransport)
    assert isinstance(open_transport(AdbConnection(serial="X"), name="a"), AdbTransport)
    ssh = open_transport(SshConnection(host="192.0.2.1", user="pi", port=2200), name="s")
    assert isinstance(ssh, SshTransport)
    assert ssh.describe() == "s (ssh pi@192.0.2.1:2200)"
    for transport in (ssh, open_transport(LocalConnection(), name="l")):
        assert isinstance(transport, Transport)
    with pytest.raises(TransportError, match="no transport for str"):
        open_transport("ssh://x", name="bad")  # type: ignore[arg-type]


# -- adb: argv construction (pure) ---------------------------------------------

def test_adb_shell_argv_is_one_quoted_command() -> None:
    remote = ["ls", "-l", f"{ADB_WORKDIR}/a b", "$(reboot)", "x;y"]
    argv = shell_argv("adb", "emulator-5554", remote)
    assert argv[:5] == ["adb", "-s", "emulator-5554", "shell", "-T"]
    assert len(argv) == 6
    # The device's sh splits the single command string back into exactly our argv.
    assert shlex.split(argv[5]) == remote


def test_adb_argv_without_serial_and_transfers() -> None:
    assert shell_argv("/opt/adb", None, ["true"]) == ["/opt/adb", "shell", "-T", "true"]
    assert push_argv("adb", "S1", Path("m.tflite"), f"{ADB_WORKDIR}/m.tflite") == [
        "adb", "-s", "S1", "push", "m.tflite", f"{ADB_WORKDIR}/m.tflite"]
    assert pull_argv("adb", None, f"{ADB_WORKDIR}/r.json", Path("r.json")) == [
        "adb", "pull", f"{ADB_WORKDIR}/r.json", "r.json"]
    with pytest.raises(TypeError):
        shell_argv("adb", None, "rm -rf /")  # type: ignore[arg-type]


def test_parse_devices_and_choose() -> None:
    # No phone exists here: this is `adb devices` output as a real server prints it.
    listing = ("* daemon started successfully\nList of devices attached\n"
               "R58M123\tdevice\nemulator-5554\tunauthorized\n192.168.1.9:5555\toffline\n\n")
    devices = parse_devices(listing)
    assert devices == [AdbDevice("R58M123", "device"), AdbDevice("emulator-5554", "unauthorized"),
                       AdbDevice("192.168.1.9:5555", "offline")]
    assert choose_device(devices, "R58M123", "p").serial == "R58M123"
    with pytest.raises(TransportError, match="several Android devices.*transport.serial"):
        choose_device(devices, None, "p")
    with pytest.raises(TransportError, match="Allow USB debugging"):
        choose_device(devices, "emulator-5554", "p")
    with pytest.raises(TransportError, match="offline"):
        choose_device(devices, "192.168.1.9:5555", "p")
    with pytest.raises(TransportError, match="ABC is not attached"):
        choose_device(devices, "ABC", "p")
    assert choose_device([AdbDevice("only", "device")], None, "p").serial == "only"


# -- adb: the real binary, no device --------------------------------------------

def test_real_adb_without_a_device_says_how_to_attach_one(private_adb_server: dict[str, str]) -> None:
    transport = open_transport(AdbConnection(connect_timeout_s=30), name="pixel")
    with pytest.raises(TransportError) as caught, transport:
        pass
    message = str(caught.value)
    assert message.startswith("pixel (adb default device): no Android device attached")
    assert "USB debugging" in message and "adb connect" in message


def test_missing_adb_binary_says_what_to_install() -> None:
    transport = AdbTransport(AdbConnection(adb_path="edgefleet-no-adb-here"), name="pixel")
    with pytest.raises(TransportError, match="not found.*apt-get install adb"):
        transport.connect()
