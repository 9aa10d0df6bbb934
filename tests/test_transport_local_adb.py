"""The local transport, the adb transport's command construction and its no-device error,
and the transport registry."""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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

@pytest.fixture
def private_adb_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """An adb server of our own (own port, own HOME for its key), killed afterwards."""
    if subprocess.run(["sh", "-c", "command -v adb"], capture_output=True).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("adb is not installed (apt-get install adb)")
        pytest.skip("adb is not installed (apt-get install adb)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
    monkeypatch.setenv("HOME", str(tmp_path))
    env = dict(os.environ)
    yield env
    subprocess.run(["adb", "kill-server"], env=env, capture_output=True, timeout=20)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _listening(port):
        time.sleep(0.1)
    assert not _listening(port), "adb server still running after kill-server"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


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
