"""The SSH transport against a real sshd in a network namespace."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
import time
from pathlib import Path

import paramiko
import pytest

from edgefleet.errors import TransportError
from edgefleet.fleet import EmulatedFleet
from edgefleet.fleet.keys import generate_keypair
from edgefleet.transport.base import CommandTimeout, RemoteCommandError, Transport, TransportUnavailable
from edgefleet.transport.registry import open_transport
from edgefleet.transport.ssh import SshTransport

pytest.register_assert_rewrite("fleet_fixtures")
from fleet_fixtures import quick  # noqa: E402

pytest_plugins = ["fleet_fixtures"]
pytestmark = pytest.mark.ssh


def _hostile(canary: Path) -> list[str]:
    return [
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"; touch {canary}",
        f"&& touch {canary}",
        f"| touch {canary}",
        f"\ntouch {canary}\n",
        f"'; touch {canary}; '",
        f'"; touch {canary}; "',
        f"> {canary}",
        "a b  c\ttab",
        "naïve ☃ 日本語",
        "*",
        "~",
        "$HOME",
        "-n",
        "",
    ]


def test_run_reads_the_device_identity(fleet: EmulatedFleet, rpi3: Transport) -> None:
    device = fleet.device("rpi3")
    identity = json.loads(rpi3.run(["cat", f"{device.workdir}/device.json"]).stdout)
    assert identity == {"name": "rpi3", "stands_in_for": "Raspberry Pi 3 Model B", "arch": "armv7l",
                        "emulated": True, "host_arch": platform.machine(), "emulation": device.emulation}
    assert rpi3.describe() == f"rpi3 (ssh root@{device.connection.host}:22)"


def test_binary_stdin_arrives_intact(rpi3: Transport) -> None:
    data = os.urandom(3 * 1024 * 1024)
    started = time.monotonic()
    result = rpi3.run(["sha256sum"], stdin=data)
    assert result.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    assert time.monotonic() - started < 10


def test_failing_command_reports_command_code_and_stderr(rpi3: Transport) -> None:
    argv = ["sh", "-c", "echo first >&2; echo 'the reason' >&2; exit 7"]
    assert rpi3.run(argv, check=False).returncode == 7
    with pytest.raises(RemoteCommandError) as caught:
        rpi3.run(argv)
    message = str(caught.value)
    assert caught.value.returncode == 7
    assert "exit code 7" in message and "the reason" in message and "sh -c" in message
    assert "rpi3" in message


def test_command_timeout_names_the_command(rpi3: Transport) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"command timeout \(0\.5s\) expired running: sleep 5"):
        rpi3.run(["sleep", "5"], timeout=0.5)
    assert time.monotonic() - started < 3
    assert rpi3.run(["echo", "still usable"]).stdout == "still usable\n"


def _processes_with(marker: str) -> list[str]:
    """Command lines of running processes that mention ``marker`` (the netns devices share this host's pids)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(cmdline)
    return found


def test_a_timed_out_command_does_not_live_on_on_the_device(rpi3: Transport) -> None:
    """The device bounds every command itself (`timeout`, a second past the limit): what this side gave up
    on, its children included, ends there too instead of running on with nobody waiting."""
    marker = f"{time.monotonic_ns() % 10**6 + 1000}.25"  # a sleep length no other process has
    with pytest.raises(CommandTimeout):
        rpi3.run(["sh", "-c", f"sleep {marker} & sleep {marker}; wait"], timeout=0.5)
    assert _processes_with(f"sleep {marker}"), "the command should still run right after the timeout here"
    deadline = time.monotonic() + 10
    while _processes_with(f"sleep {marker}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(f"sleep {marker}") == []
    # A command within its limit is unaffected: exit status, stdout, stderr and stdin as ever.
    result = rpi3.run(["sh", "-c", "cat; echo err >&2; exit 3"], stdin=b"in", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (3, "in", "err\n")


def test_hostile_arguments_are_data(rpi3: Transport, rpi3_scratch: Path) -> None:
    canary = rpi3_scratch / "pwned"
    hostile = _hostile(canary)
    echoed = rpi3.run(["python3", "-c", "import json,sys; print(json.dumps(sys.argv[1:]))", *hostile])
    assert json.loads(echoed.stdout) == hostile
    # Names with no '/' become files in the scratch dir, each exactly as given.
    names = [h for h in hostile if h and "/" not in h]
    rpi3.run(["touch", "--", *(f"{rpi3_scratch}/{n}" for n in names)])
    assert sorted(p.name for p in rpi3_scratch.iterdir()) == sorted(names)
    assert not canary.exists()


def test_run_shell_is_the_explicit_way_to_use_shell_syntax(rpi3: Transport) -> None:
    assert rpi3.run_shell("echo $((6 * 7))").stdout == "42\n"
    assert rpi3.run(["echo", "$((6 * 7))"]).stdout == "$((6 * 7))\n"


def test_put_get_round_trip_with_progress(rpi3: Transport, rpi3_scratch: Path, tmp_path: Path) -> None:
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(2 * 1024 * 1024 + 123))
    calls: list[tuple[int, int]] = []
    remote = f"{rpi3_scratch}/with space ☃.bin"
    rpi3.put(source, remote, progress=lambda done, total: calls.append((done, total)))
    assert Path(remote).read_bytes() == source.read_bytes()
    assert calls[-1] == (source.stat().st_size, source.stat().st_size)
    assert len(calls) > 1
    back = tmp_path / "back.bin"
    rpi3.get(remote, back)
    assert back.read_bytes() == source.read_bytes()


def test_get_of_missing_file_is_a_transport_error_not_a_drop(rpi3: Transport, rpi3_scratch: Path,
                                                             tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="No such file") as caught:
        rpi3.get(f"{rpi3_scratch}/nope", tmp_path / "nope")
    assert not isinstance(caught.value, TransportUnavailable)
    assert not (tmp_path / "nope").exists()


def _other_key_known_hosts(path: Path, host: str) -> None:
    other = generate_keypair(path.parent / "impostor_key", "impostor").split()
    path.write_text(f"{host} {other[0]} {other[1]}\n")


@pytest.mark.parametrize("tofu", [False, True])
def test_changed_host_key_is_refused_with_how_to(fleet: EmulatedFleet, tmp_path: Path, tofu: bool) -> None:
    device = fleet.device("rpi3")
    known_hosts = tmp_path / "known_hosts"
    _other_key_known_hosts(known_hosts, device.connection.host)
    before = known_hosts.read_text()
    conn = quick(device.connection, known_hosts=str(known_hosts), trust_on_first_use=tofu)
    with pytest.raises(TransportError) as caught, open_transport(conn, name="rpi3"):
        pass
    message = str(caught.value)
    assert "HOST KEY CHANGED" in message
    assert f"ssh-keygen -R '{device.connection.host}'" in message
    assert "ssh-keygen -lf" in message and "SHA256:" in message
    assert not isinstance(caught.value, TransportUnavailable)
    assert known_hosts.read_text() == before


def test_unknown_host_key_refused_without_tofu(fleet: EmulatedFleet, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    conn = quick(fleet.device("rpi3").connection, known_hosts=str(known_hosts))
    with pytest.raises(TransportError, match="not in .*known_hosts") as caught, open_transport(conn, name="rpi3"):
        pass
    assert "trust_on_first_use" in str(caught.value) and "ssh-keyscan" in str(caught.value)
    assert known_hosts.read_text() == ""


def test_unknown_host_key_accepted_and_recorded_with_tofu(fleet: EmulatedFleet, tmp_path: Path) -> None:
    device = fleet.device("rpi3")
    known_hosts = tmp_path / "sub" / "known_hosts"
    conn = quick(device.connection, known_hosts=str(known_hosts), trust_on_first_use=True)
    with open_transport(conn, name="rpi3") as transport:
        assert transport.run(["true"]).ok
    recorded = paramiko.HostKeys(str(known_hosts))
    expected = paramiko.HostKeys(device.connection.known_hosts)
    assert recorded.lookup(device.connection.host) == expected.lookup(device.connection.host)
    # The recorded key now verifies a connection that does not trust on first use.
    strict = quick(device.connection, known_hosts=str(known_hosts))
    with open_transport(strict, name="rpi3") as transport:
        assert transport.run(["true"]).ok


def test_unreachable_device_fails_within_connect_timeout(fleet: EmulatedFleet) -> None:
    conn = quick(fleet.device("coral").connection, connect_timeout_s=1.0)
    with fleet.link_down("coral"):
        started = time.monotonic()
        with pytest.raises(TransportUnavailable) as caught, open_transport(conn, name="coral"):
            pass
        elapsed = time.monotonic() - started
    assert "coral" in str(caught.value)
    assert "connect timeout (1s) expired" in str(caught.value)
    assert elapsed < 2.5


def test_refused_connection_says_so(fleet: EmulatedFleet) -> None:
    conn = quick(fleet.device("rpi3").connection, port=2222)
    with pytest.raises(TransportUnavailable, match="connection refused by .*:2222.*sshd"):
        with open_transport(conn, name="rpi3"):
            pass


def test_auth_failure_names_user_and_fix(fleet: EmulatedFleet, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger_key"
    generate_keypair(stranger, "stranger")
    conn = quick(fleet.device("rpi3").connection, key_filename=str(stranger))
    with pytest.raises(TransportError) as caught, open_transport(conn, name="rpi3"):
        pass
    message = str(caught.value)
    assert "authentication failed for user root" in message and "ssh-copy-id" in message
    assert not isinstance(caught.value, TransportUnavailable)


def test_missing_key_file_is_named(fleet: EmulatedFleet, tmp_path: Path) -> None:
    conn = quick(fleet.device("rpi3").connection, key_filename=str(tmp_path / "absent"))
    with pytest.raises(TransportError, match="key file .*absent does not exist"), open_transport(conn, name="rpi3"):
        pass


def test_ssh_config_alias_is_honoured(fleet: EmulatedFleet, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    device = fleet.device("rpi3")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host myboard\n  HostName {device.connection.host}\n  User root\n"
        f"  IdentityFile {device.connection.key_filename}\n  UserKnownHostsFile {device.connection.known_hosts}\n")
    monkeypatch.setenv("HOME", str(home))
    conn = quick(device.connection.model_copy(update={"host": "myboard", "user": None, "port": None,
                                                      "key_filename": None, "known_hosts": None}))
    transport = open_transport(conn, name="board")
    assert isinstance(transport, SshTransport)
    assert transport.describe() == f"board (ssh root@{device.connection.host}:22)"
    with transport:
        assert transport.run(["id", "-un"]).stdout.strip() == "root"


def test_link_cut_during_a_command_is_a_lost_connection(fleet: EmulatedFleet) -> None:
    conn = quick(fleet.device("coral").connection, io_timeout_s=1.0)
    with open_transport(conn, name="coral") as transport:
        cutter = threading.Timer(0.5, fleet.set_link, args=("coral", False))
        cutter.start()
        started = time.monotonic()
        try:
            with pytest.raises(TransportUnavailable, match="connection lost while running: sleep 30"):
                transport.run(["sleep", "30"], timeout=20)
            elapsed = time.monotonic() - started
        finally:
            cutter.join()
            fleet.set_link("coral", True)
        assert elapsed < 6  # keepalive + io timeout, not the 20 s command limit
        # The next command reconnects by itself.
        assert transport.run(["echo", "back"]).stdout == "back\n"
