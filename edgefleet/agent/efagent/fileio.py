"""The agent's files: writes that survive a kill or a power cut whole, and the reads that go with them.

The host reads status.json and results.jsonl while a run goes on, and a board may lose power at any
time: a JSON file is replaced whole (write, fsync, rename), a JSONL line is appended and fsynced
before the agent moves on, and a reader skips the partial last line a kill mid-append leaves.
"""
import hashlib
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple


def resolve_path(path, workdir):
    # type: (str, str) -> str
    """run.json's paths: absolute, or relative to the run's workdir."""
    return path if os.path.isabs(path) else os.path.join(workdir, path)


def read_text(path):
    # type: (str) -> Optional[str]
    """A small /proc or /sys file; None where it does not exist or cannot be read (boards differ)."""
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace").strip().strip("\x00")
    except (IOError, OSError):
        return None


def sha256_file(path):
    # type: (str) -> str
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path):
    # type: (str) -> None
    """Makes a rename in ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def write_json_atomic(path, data):
    # type: (str, Any) -> None
    """Replace ``path`` whole (its folder made if need be): a reader sees the old file or the new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = "{}.tmp.{}".format(path, os.getpid())
    with open(tmp, "w") as handle:
        json.dump(data, handle, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(folder)


def append_jsonl(path, record):
    # type: (str, Mapping[str, Any]) -> None
    """One line, on disk before this returns. NaN is refused: it is not JSON, and the host would reject the line."""
    data = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    with open(path, "ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path, repair=False):
    # type: (str, bool) -> Tuple[List[Dict[str, Any]], int]
    """The objects on the complete lines of ``path`` (none if it does not exist), and the bytes of a
    partial last line. ``repair`` truncates that line away, so the next append starts a line of its own.

    A line that is not a JSON object is skipped: the host quarantines it at ingest.
    """
    if not os.path.exists(path):
        return [], 0
    with open(path, "rb") as handle:
        data = handle.read()
    complete = data[:data.rfind(b"\n") + 1]
    dropped = len(data) - len(complete)
    if dropped and repair:
        with open(path, "r+b") as handle:
            handle.truncate(len(complete))
            os.fsync(handle.fileno())
    records = []
    for raw in complete.splitlines():
        try:
            record = json.loads(raw.decode("utf-8"))
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records, dropped
