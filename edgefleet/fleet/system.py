"""Host commands and process handling for the emulated fleet."""
from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

# FleetError lives with the other errors (it has its own exit code); fleet modules import it from here.
from edgefleet.errors import FleetError
from edgefleet.processes import pid_alive  # noqa: F401  (fleet modules import it from here)

_SBIN = "/usr/sbin:/sbin:/usr/local/sbin"


def find_tool(name: str) -> str | None:
    """A binary from PATH or the sbin directories (sshd and ip often live outside a user's PATH)."""
    return shutil.which(name) or shutil.which(name, path=_SBIN)


def require_tool(name: str, package: str) -> str:
    path = find_tool(name)
    if path is None:
        raise FleetError(f"the emulated fleet needs {name!r}: install the Debian package {package!r} "
                         f"(`apt-get install {package}`)")
    return path


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError as err:
        raise FleetError(f"cannot run {shlex.join(argv)}: {err.strerror}") from err
    except subprocess.TimeoutExpired as err:
        raise FleetError(f"timed out after {timeout:g}s: {shlex.join(argv)}") from err
    if check and proc.returncode != 0:
        raise FleetError(f"command failed (exit code {proc.returncode}): {shlex.join(argv)}\n"
                         f"{proc.stderr.strip()}")
    return proc


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; the rest follows the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def descendants(roots: Iterable[int]) -> set[int]:
    """``roots`` and every process below them (sshd forks a child per connection)."""
    parents = {pid: _parent(pid) for pid in all_pids()}
    found = {r for r in roots if r in parents}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


def pids_matching(fragment: str) -> set[int]:
    return {pid for pid in all_pids() if pid != os.getpid() and fragment in cmdline(pid)}


def kill_all(pids: Iterable[int], *, grace_s: float = 2.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after ``grace_s``."""
    pending = {p for p in pids if p > 1 and p != os.getpid()}
    for pid in pending:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pending and time.monotonic() < deadline:
        pending = {p for p in pending if pid_alive(p) and not _zombie(p)}
        if pending:
            time.sleep(0.05)
    for pid in pending:
        _signal(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
