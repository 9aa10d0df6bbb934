"""Host key verification for SSH: refuse unknown keys unless trust-on-first-use is on,
and always refuse a changed key.

known_hosts files are loaded read-only into paramiko (as "system" keys) so paramiko
never rewrites the user's file; a key accepted on first use is appended as one line,
the way OpenSSH does it.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry

from edgefleet.errors import TransportError

SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")

_append_lock = threading.Lock()


class HostKeyError(TransportError):
    """The device's host key is unknown (and trust on first use is off) or differs from known_hosts."""


class UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        self.hostname = hostname
        self.key = key
        super().__init__(f"host {hostname} is not in known_hosts")


def host_key_name(host: str, port: int) -> str:
    """The name OpenSSH and paramiko file a host's key under in known_hosts."""
    return host if port == 22 else f"[{host}]:{port}"


def append_known_host(path: Path, hostname: str, key: paramiko.PKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = HostKeyEntry([hostname], key).to_line()
    with _append_lock:
        needs_newline = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as f:
            if needs_newline:
                f.write("\n")
            f.write(line)


class RejectUnknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise UnknownHostKey(hostname, key)


class TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Accept an unknown key and record it, so the next connection verifies against it."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        append_known_host(self.known_hosts, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)


def load_known_hosts(client: paramiko.SSHClient, user_file: Path) -> None:
    for path in (SYSTEM_KNOWN_HOSTS, user_file):
        if path.is_file():
            client.load_system_host_keys(str(path))


def unknown_key_message(describe: str, err: UnknownHostKey, known_hosts: Path, host: str, port: int) -> str:
    port_opt = f"-p {port} " if port != 22 else ""
    return (
        f"{describe}: the device's host key is not in {known_hosts} "
        f"({err.key.get_name()} {err.key.fingerprint}). Refusing to connect to an unverified host.\n"
        f"Verify it: on the device's console run `ssh-keygen -lf /etc/ssh/ssh_host_{_key_file_stem(err.key)}_key.pub` "
        f"and compare the fingerprint; then record it with "
        f"`ssh-keyscan {port_opt}{host} >> {known_hosts}` (or connect once with `ssh`), "
        f"or set `trust_on_first_use: true` in the profile's transport block."
    )


def changed_key_message(describe: str, err: paramiko.BadHostKeyException, known_hosts: Path,
                        host: str, port: int) -> str:
    name = host_key_name(host, port)
    return (
        f"{describe}: HOST KEY CHANGED. known_hosts has {err.expected_key.get_name()} "
        f"{err.expected_key.fingerprint} for {name}, but the device presented "
        f"{err.key.get_name()} {err.key.fingerprint}. This happens after a reinstall, "
        f"but can also mean someone is intercepting the connection; edgefleet never accepts a changed key.\n"
        f"Verify it: on the device's console run `ssh-keygen -lf /etc/ssh/ssh_host_{_key_file_stem(err.key)}_key.pub` "
        f"and compare with {err.key.fingerprint}. Only if they match, remove the old key with "
        f"`ssh-keygen -R '{name}' -f {known_hosts}` and connect again."
    )


def _key_file_stem(key: paramiko.PKey) -> str:
    name = key.get_name()
    if "ed25519" in name:
        return "ed25519"
    if "ecdsa" in name:
        return "ecdsa"
    return "rsa"
