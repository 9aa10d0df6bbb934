"""The SSH transport.

Fabric resolves the connection (``~/.ssh/config`` host aliases, HostName, Port, User,
IdentityFile, ProxyJump, the agent) and opens it. Commands and transfers then go
through the underlying paramiko channel and SFTP client directly: invoke's runner
feeds stdin one byte per poll tick and decodes it as text, which is wrong for binary
data and slow for anything large.
"""
from __future__ import annotations

import errno
import math
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from edgefleet.errors import TransportError
from edgefleet.transport.base import (
    CommandTimeout,
    Progress,
    ResumeRefused,
    RunResult,
    TransportBase,
    TransportUnavailable,
    check_argv,
    command_failed,
    command_limit,
    shown_command,
)
from edgefleet.transport.connections import SshConnection
from edgefleet.transport.hostkeys import (
    HostKeyError,
    RejectUnknown,
    TrustOnFirstUse,
    UnknownHostKey,
    changed_key_message,
    load_known_hosts,
    unknown_key_message,
)

if TYPE_CHECKING:
    import fabric

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
KEEPALIVE_S = 15
_POLL_S = 0.1
_CHUNK = 65536
_PUT_BLOCK = 1 << 18
# put_hashed's far side writes the file while hashing the very bytes it received, so the device verifies
# during the transfer instead of reading the whole file back afterwards; then it fsyncs. Python (one
# process, OpenSSL's SHA-256) when the device has it, else tee | sha256sum; exit 127 means neither (the
# caller falls back to SFTP and hashes after). Python 3.6-compatible, like the agent.
_RECEIVE_PY = """\
import hashlib, os, sys
digest = hashlib.sha256()
source = sys.stdin.buffer.raw
try:
    # sshd feeds us through a 64 KiB pipe; 1 MiB (Linux's default limit) took a third off a 50 MB upload.
    import fcntl
    fcntl.fcntl(0, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
except (ImportError, OSError):
    pass
offset = int(sys.argv[2])
try:
    out = open(sys.argv[1], "r+b" if offset else "wb")
except (IOError, OSError) as err:
    if not offset:
        raise
    sys.stderr.write("edgefleet: cannot resume: {}\\n".format(err))
    sys.exit(125)
with out:
    if offset:
        # Resuming: the bytes an interrupted attempt left are hashed first, and the rest follows them.
        out.seek(0, 2)
        if out.tell() < offset:
            sys.stderr.write("edgefleet: {} holds {} bytes, fewer than {}\\n".format(
                sys.argv[1], out.tell(), offset))
            sys.exit(125)
        out.truncate(offset)
        out.seek(0)
        left = offset
        while left:
            block = out.read(min(left, 1 << 20))
            if not block:
                sys.exit(125)  # it shrank under us
            digest.update(block)
            left -= len(block)
    while True:
        block = source.read(1 << 20)
        if not block:
            break
        digest.update(block)
        out.write(block)
    out.flush()
    os.fsync(out.fileno())
print(digest.hexdigest())
"""
# $1 remote path, $2 the receiver, $3 offset (bytes already there; only Python can resume: exit 125).
_HASHED_PUT_SCRIPT = (
    'if command -v python3 >/dev/null 2>&1; then exec python3 -c "$2" "$1" "$3"; fi\n'
    '[ "$3" = 0 ] || exit 125\n'
    'command -v tee >/dev/null 2>&1 && command -v sha256sum >/dev/null 2>&1 || exit 127\n'
    '{ tee -- "$1" || echo "edgefleet: tee could not write $1" >&2; } | sha256sum || exit 1\n'
    'sync -- "$1" 2>/dev/null || sync\n'
)
# Every command runs under the device's own `timeout` (coreutils), a second past the limit here: a command
# this side gave up on, or whose link dropped, would otherwise run on with nobody waiting for it. `timeout`
# ends the command's whole process group (a detached agent has a session of its own). The test is shell
# built-ins only (no process start per command); a symlinked `timeout` is busybox's or toybox's, whose
# arguments differ between versions, so such a device, like one without it, runs commands as they are.
DEVICE_TIMEOUT = "/usr/bin/timeout"


def bounded(args: Sequence[str], limit_s: float) -> str:
    """The command line that runs ``args`` under the device's timeout, in the user's (POSIX) shell."""
    command = shlex.join(args)
    t = DEVICE_TIMEOUT
    return f"if [ -x {t} ] && [ ! -L {t} ]; then exec {t} {math.ceil(limit_s) + 1} {command}; fi; exec {command}"


# SFTP errors that mean "this path is wrong", not "the link is gone".
_PATH_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST}


class SshTransport(TransportBase):
    def __init__(self, connection: SshConnection, *, name: str) -> None:
        self.connection = connection
        self.name = name
        self._fabric: fabric.Connection | None = None
        self._sftp: paramiko.SFTPClient | None = None
        # Resolving ~/.ssh/config needs no network, and gives describe() the real address.
        self._resolved = self._new_fabric_connection()

    # -- connection -------------------------------------------------------

    @property
    def host(self) -> str:
        return str(self._resolved.host)

    @property
    def port(self) -> int:
        return int(self._resolved.port)

    @property
    def user(self) -> str:
        return str(self._resolved.user)

    @property
    def known_hosts(self) -> Path:
        if self.connection.known_hosts:
            return Path(self.connection.known_hosts).expanduser()
        configured = self._resolved.ssh_config.get("userknownhostsfile")
        if configured:
            first = configured.split()[0]
            if "%" not in first:  # ssh_config tokens (%d, %u...) are OpenSSH's; fall back to the default
                return Path(first).expanduser()
        return DEFAULT_KNOWN_HOSTS.expanduser()

    def describe(self) -> str:
        return f"{self.name} (ssh {self.user}@{self.host}:{self.port})"

    def _new_fabric_connection(self) -> fabric.Connection:
        from fabric import Config, Connection

        c = self.connection
        timeout = c.connect_timeout_s
        connect_kwargs: dict[str, object] = {
            "timeout": timeout, "banner_timeout": timeout, "auth_timeout": timeout,
            "channel_timeout": timeout,
        }
        if c.key_filename:
            connect_kwargs["key_filename"] = [str(Path(c.key_filename).expanduser())]
        conn = Connection(c.host, user=c.user, port=c.port, config=Config(), connect_kwargs=connect_kwargs)
        # The profile's connect timeout (a float) wins over ssh_config's ConnectTimeout; Fabric
        # would otherwise pass both and refuse.
        conn.connect_timeout = None
        return conn

    def connect(self) -> None:
        if self._fabric is not None:
            if self._fabric.is_connected:
                return
            self.close()  # the link dropped: start over, SFTP session included
        c = self.connection
        if c.key_filename and not Path(c.key_filename).expanduser().is_file():
            raise TransportError(f"{self.describe()}: key file {c.key_filename} does not exist "
                                 f"(transport.key_filename in the profile)")
        conn = self._new_fabric_connection()
        known_hosts = self.known_hosts
        load_known_hosts(conn.client, known_hosts)
        policy = TrustOnFirstUse(known_hosts) if c.trust_on_first_use else RejectUnknown()
        conn.client.set_missing_host_key_policy(policy)
        try:
            conn.open()
        except Exception as err:
            conn.close()
            mapped = self._connect_error(err, known_hosts)
            if mapped is err:
                raise
            raise mapped from err
        except BaseException:
            conn.close()
            raise
        assert conn.transport is not None  # set by a successful open()
        # Something must be in flight for the kernel to notice a dead link (see _limit_unacknowledged).
        conn.transport.set_keepalive(max(1, int(min(KEEPALIVE_S, c.io_timeout_s))))
        _limit_unacknowledged(conn.transport.sock, c.io_timeout_s)
        _no_delay(conn.transport.sock)
        self._fabric = conn

    def close(self) -> None:
        sftp, conn = self._sftp, self._fabric
        self._sftp, self._fabric = None, None
        for closer in (sftp, conn):
            if closer is None:
                continue
            try:
                closer.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # the link is already gone; nothing left to release

    def _connect_error(self, err: Exception, known_hosts: Path) -> Exception:
        d, host, port, t = self.describe(), self.host, self.port, self.connection.connect_timeout_s
        if isinstance(err, UnknownHostKey):
            return HostKeyError(unknown_key_message(d, err, known_hosts, host, port))
        if isinstance(err, paramiko.BadHostKeyException):
            return HostKeyError(changed_key_message(d, err, known_hosts, host, port))
        if isinstance(err, paramiko.PasswordRequiredException):
            return TransportError(f"{d}: the private key is encrypted and no passphrase is available; "
                                  f"load it into ssh-agent (`ssh-add`) first")
        if isinstance(err, paramiko.AuthenticationException):
            key = self.connection.key_filename or "ssh-agent and ~/.ssh/id_*"
            return TransportError(
                f"{d}: authentication failed for user {self.user}: the device accepted none of the offered keys "
                f"({key}). Install your public key on the device (`ssh-copy-id -p {port} {self.user}@{host}`) "
                f"or set transport.key_filename / transport.user in the profile.")
        if isinstance(err, socket.gaierror):
            return TransportError(f"{d}: cannot resolve host name {host!r}: check transport.host in the profile "
                                  f"or the Host entry in ~/.ssh/config")
        if isinstance(err, paramiko.ssh_exception.NoValidConnectionsError):
            codes = {e.errno for e in err.errors.values()}
            if codes == {errno.ECONNREFUSED}:
                return TransportUnavailable(
                    f"{d}: connection refused by {host}:{port}: the device is up but no SSH server listens there. "
                    f"Check that sshd runs on the device (`systemctl status ssh`) and that the port is right.")
            return TransportUnavailable(f"{d}: no route to {host}:{port}: check the device's network cable/Wi-Fi "
                                        f"and its address")
        if isinstance(err, (socket.timeout, TimeoutError)):
            return TransportUnavailable(
                f"{d}: connect timeout ({t:g}s) expired: no answer from {host}:{port}. Check that the device is "
                f"powered on and reachable (`ping {host}`), or raise transport.connect_timeout_s.")
        if isinstance(err, OSError) and err.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return TransportUnavailable(f"{d}: no route to {host}:{port} ({os.strerror(err.errno)}): check the "
                                        f"device's network and its address")
        if isinstance(err, paramiko.SSHException) and "banner" in str(err).lower():
            return TransportUnavailable(
                f"{d}: connect timeout ({t:g}s) expired waiting for the SSH greeting: {host}:{port} accepted the "
                f"connection but did not speak SSH in time (device overloaded, or not an SSH port?); raise "
                f"transport.connect_timeout_s for a slow device")
        if isinstance(err, paramiko.SSHException) and "no existing session" in str(err).lower():
            # paramiko stops waiting for the key exchange after the connect timeout and then reports this.
            return TransportUnavailable(
                f"{d}: connect timeout ({t:g}s) expired during the SSH handshake with {host}:{port}: the device "
                f"accepted the connection but did not finish the greeting and key exchange (sshd hung or "
                f"overloaded, or not an SSH port?); raise transport.connect_timeout_s for a slow device")
        if isinstance(err, (paramiko.SSHException, EOFError, OSError)):
            return TransportUnavailable(f"{d}: SSH connection failed: {err}")
        return err

    def _transport(self) -> paramiko.Transport:
        self.connect()
        assert self._fabric is not None and self._fabric.transport is not None
        transport: paramiko.Transport = self._fabric.transport
        if not transport.is_active():
            self.close()
            raise TransportUnavailable(f"{self.describe()}: the SSH connection was lost")
        return transport

    # -- commands ---------------------------------------------------------

    def _open_session(self) -> paramiko.Channel:
        try:
            return self._transport().open_session(timeout=self.connection.connect_timeout_s)
        except (paramiko.SSHException, EOFError, OSError) as err:
            self.close()
            raise TransportUnavailable(f"{self.describe()}: cannot open an SSH session: {err}") from err

    def run(self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True,
            stdin: bytes | None = None) -> RunResult:
        args = check_argv(argv)
        command = shlex.join(args)
        limit, label = command_limit(timeout, self.connection.command_timeout_s)
        chan = self._open_session()
        try:
            result = self._exchange(chan, bounded(args, limit), command, limit, label, stdin)
        except (paramiko.SSHException, EOFError, OSError) as err:
            self.close()
            raise TransportUnavailable(f"{self.describe()}: connection lost while running: "
                                       f"{shown_command(command)}: {err}") from err
        finally:
            chan.close()
        if check and result.returncode != 0:
            raise command_failed(self.describe(), args, result)
        return result

    def _exchange(self, chan: paramiko.Channel, remote: str, command: str, limit: float, label: str,
                  stdin: bytes | None) -> RunResult:
        """Run ``remote`` (``command`` as the device runs it); messages show ``command``."""
        deadline = time.monotonic() + limit
        chan.exec_command(remote)
        if stdin:
            def feed() -> None:
                try:
                    chan.sendall(stdin)
                    chan.shutdown_write()
                except (OSError, EOFError, paramiko.SSHException):
                    pass  # the command stopped reading or the link died; its exit status tells which
            threading.Thread(target=feed, name=f"ssh-stdin-{self.name}", daemon=True).start()
        else:
            chan.shutdown_write()
        out, err = bytearray(), bytearray()
        while True:
            while chan.recv_ready():
                out += chan.recv(_CHUNK)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(_CHUNK)
            if (chan.eof_received or chan.closed) and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandTimeout(f"{self.describe()}: command timeout ({label}) expired running: "
                                     f"{shown_command(command)}")
            # The channel's fileno wakes us on stdout data and EOF; stderr is picked up on the next tick.
            select.select([chan], [], [], min(remaining, _POLL_S))
        if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
            raise CommandTimeout(f"{self.describe()}: command timeout ({label}) expired waiting for the exit "
                                 f"status of: {shown_command(command)}")
        status = chan.recv_exit_status()
        if status == -1 and not chan.get_transport().is_active():
            raise TransportUnavailable(f"{self.describe()}: connection lost while running: {shown_command(command)}")
        return RunResult(status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    # -- files ------------------------------------------------------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        transport = self._transport()
        if self._sftp is None:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(transport)
            except (paramiko.SSHException, EOFError, OSError) as err:
                self.close()
                raise TransportUnavailable(f"{self.describe()}: cannot start SFTP (is the sftp subsystem "
                                           f"enabled in the device's sshd_config?): {err}") from err
            assert self._sftp is not None
            # A device whose SFTP server stops answering (while TCP still acknowledges) ends in a timeout.
            self._sftp.get_channel().settimeout(self.connection.io_timeout_s)
        return self._sftp

    def _transfer_error(self, err: BaseException, what: str) -> TransportError:
        if isinstance(err, OSError) and err.errno in _PATH_ERRNOS:
            return TransportError(f"{self.describe()}: {what}: {os.strerror(err.errno)}")
        self.close()
        if isinstance(err, (socket.timeout, TimeoutError)):
            return TransportUnavailable(f"{self.describe()}: io timeout ({self.connection.io_timeout_s:g}s, "
                                        f"transport.io_timeout_s) expired: {what} made no progress (link down?)")
        detail = str(err) or type(err).__name__
        return TransportUnavailable(f"{self.describe()}: connection lost during {what} ({detail})")

    def put(self, local: Path, remote: str, *, progress: Progress | None = None) -> None:
        if not Path(local).is_file():
            raise TransportError(f"{self.describe()}: cannot upload {local}: no such local file")
        sftp = self._sftp_client()
        try:
            sftp.put(str(local), remote, callback=progress, confirm=True)
        except (OSError, EOFError, paramiko.SSHException) as err:
            raise self._transfer_error(err, f"upload of {local} to {remote}") from err

    def put_hashed(self, local: Path, remote: str, *, progress: Progress | None = None,
                   offset: int = 0) -> str | None:
        """Write ``local`` to ``remote`` and return the sha256 the DEVICE computed of the bytes it wrote
        (then fsynced); None when the device lacks ``tee``/``sha256sum`` (use put, then hash there).

        One pass on the device instead of two, and no SFTP request/acknowledge per 32 KiB: on the
        emulated fleet this is faster than ``put`` alone, verification included.
        """
        local = Path(local)
        if not local.is_file():
            raise TransportError(f"{self.describe()}: cannot upload {local}: no such local file")
        what = f"upload of {local} to {remote}"
        total = local.stat().st_size
        chan = self._open_session()
        try:
            # No progress for io_timeout_s while sending means the link is gone (as for SFTP).
            chan.settimeout(self.connection.io_timeout_s)
            chan.exec_command(shlex.join(["sh", "-c", _HASHED_PUT_SCRIPT, "sh", remote, _RECEIVE_PY,
                                          str(offset)]))
            sent = offset
            with local.open("rb") as source:
                source.seek(offset)
                while not chan.exit_status_ready() and (block := source.read(_PUT_BLOCK)):
                    view = memoryview(block)
                    while view:
                        try:
                            n = chan.send(view)
                        except OSError:
                            if chan.exit_status_ready():
                                break  # the far side gave up early (no tools); its status says why
                            raise
                        # Counted as it goes: after a drop, the bytes sent so far are the wire's true count.
                        sent += n
                        view = view[n:]
                        if progress is not None:
                            progress(sent, total)
                    if view:
                        break
            chan.shutdown_write()
            # What remains is hashing the tail and the fsync: the command timeout bounds it.
            chan.settimeout(self.connection.command_timeout_s)
            out = bytearray()
            while chunk := chan.recv(_CHUNK):
                out += chunk
            err_text = bytearray()
            while chunk := chan.recv_stderr(_CHUNK):
                err_text += chunk
            if not chan.status_event.wait(self.connection.command_timeout_s):
                raise socket.timeout("no exit status")
            status = chan.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as err:
            raise self._transfer_error(err, what) from err
        finally:
            chan.close()
        stderr = err_text.decode("utf-8", "replace").strip()
        if status == 127:
            return None
        if status == 125:
            raise ResumeRefused(f"{self.describe()}: cannot resume the {what} at byte {offset}: "
                                f"{stderr.splitlines()[-1] if stderr else 'no Python on the device'}")
        digest = out.decode("ascii", "replace").split()[:1]
        if status != 0 or "edgefleet: tee could not write" in stderr or not digest:
            last = stderr.splitlines()[-1] if stderr else "no output"  # a traceback's last line says it all
            raise TransportError(f"{self.describe()}: {what} failed (exit {status}): {last[-500:]}")
        return digest[0].lstrip("\\").lower()

    def get(self, remote: str, local: Path) -> None:
        local = Path(local)
        partial = local.with_name(f".{local.name}.part")
        sftp = self._sftp_client()
        try:
            sftp.get(remote, str(partial))
        except (OSError, EOFError, paramiko.SSHException) as err:
            partial.unlink(missing_ok=True)
            raise self._transfer_error(err, f"download of {remote} to {local}") from err
        os.replace(partial, local)


def _no_delay(sock: object) -> None:
    """Send small packets at once (as OpenSSH does): every command is a few small messages each way,
    and Nagle's algorithm against the device's delayed ACK added ~40 ms to each round trip."""
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _limit_unacknowledged(sock: object, seconds: float) -> None:
    """Have the kernel drop the connection when sent data stays unacknowledged for ``seconds``.

    Without this a pulled cable stalls a transfer until TCP gives up, minutes later:
    paramiko retries a blocked socket write forever. The keepalive makes an idle
    connection send something, so a dead link is noticed there too.
    """
    option = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux only
    if option is None or not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(seconds * 1000)))
