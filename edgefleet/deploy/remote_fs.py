"""Small facts about a device's filesystem, each found with a portable argv command and a
python3 fallback (busybox/toybox boards lack some GNU options; some lack python)."""
from __future__ import annotations

from edgefleet.errors import DeployError
from edgefleet.transport.base import RunResult, Transport

_MISSING = (126, 127)  # shell: not executable / not found

_SHA256_PY = (
    "import hashlib,sys\n"
    "h=hashlib.sha256()\n"
    "with open(sys.argv[1],'rb') as f:\n"
    "    for b in iter(lambda: f.read(1<<20), b''): h.update(b)\n"
    "print(h.hexdigest())\n"
)
_FREE_PY = "import os,sys\ns=os.statvfs(sys.argv[1])\nprint(s.f_bavail*s.f_frsize)\n"
_FSYNC_PY = "import os,sys\nfd=os.open(sys.argv[1],os.O_RDONLY)\nos.fsync(fd)\nos.close(fd)\n"


def remote_exists(transport: Transport, path: str) -> bool:
    return transport.run(["test", "-f", path], check=False).returncode == 0


def remote_size(transport: Transport, path: str) -> int | None:
    """The file's size in bytes, or None when there is no such file."""
    result = transport.run(["wc", "-c", "--", path], check=False)
    try:
        return int(result.stdout.split()[0]) if result.returncode == 0 else None
    except (ValueError, IndexError):
        return None


def remote_sha256(transport: Transport, path: str) -> str | None:
    """The file's sha256 (hex), or None when there is no such file."""
    if not remote_exists(transport, path):
        return None
    result = transport.run(["sha256sum", "--", path], check=False)
    if result.returncode in _MISSING:
        result = transport.run(["python3", "-c", _SHA256_PY, path], check=False)
    if result.returncode != 0 or not result.stdout.strip():
        raise DeployError(f"{transport.describe()}: cannot compute the sha256 of {path} (no sha256sum or "
                          f"python3 on the device?): {_why(result)}")
    # GNU sha256sum prefixes the line with '\' when the file name needed escaping.
    return result.stdout.split()[0].lstrip("\\").lower()


def remote_free_bytes(transport: Transport, path: str) -> int:
    """Bytes available to an unprivileged writer on the filesystem holding ``path``."""
    attempts: list[tuple[list[str], int]] = [
        (["df", "-PB1", "--", path], 1),
        (["df", "-Pk", "--", path], 1024),  # busybox/toybox df without -B
    ]
    result: RunResult | None = None
    for argv, unit in attempts:
        result = transport.run(argv, check=False)
        if result.returncode == 0:
            lines = result.stdout.strip().splitlines()
            fields = lines[-1].split() if len(lines) >= 2 else []
            if len(fields) >= 4 and fields[3].isdigit():
                return int(fields[3]) * unit
    result = transport.run(["python3", "-c", _FREE_PY, path], check=False)
    if result.returncode == 0 and result.stdout.strip().isdigit():
        return int(result.stdout.strip())
    raise DeployError(f"{transport.describe()}: cannot tell the free space at {path}: {_why(result)}")


def remote_fsync(transport: Transport, path: str) -> None:
    """Flush the file to the device's storage before it is renamed into place."""
    # coreutils' `sync FILE` fsyncs that file; busybox/toybox sync ignores arguments and flushes all.
    if transport.run(["sync", "--", path], check=False).returncode == 0:
        return
    if transport.run(["python3", "-c", _FSYNC_PY, path], check=False).returncode == 0:
        return
    transport.run(["sync"], check=False)


def _why(result: RunResult | None) -> str:
    if result is None:
        return "no output"
    return (result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}")[-500:]
