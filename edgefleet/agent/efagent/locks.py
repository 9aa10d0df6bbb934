"""Who may use what: one agent per run folder, one timed run per physical host, no timing during deploys.

All three are flocks or folders the kernel or the host cleans up: a killed agent holds nothing.
"""
import errno
import fcntl
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .log import log

LOCK_FILE = "agent.lock"  # in RUN_DIR


class RunLock(object):
    """flock on RUN_DIR/agent.lock: held by the running agent, released by the kernel when it dies."""

    def __init__(self, run_dir):
        # type: (str) -> None
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.fd = None  # type: Optional[int]

    def acquire(self, timeout_s=0.5):
        # type: (float) -> bool
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.time() + timeout_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except (IOError, OSError) as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                # A concurrent `status` probe holds it for an instant; an agent holds it for good.
                if time.time() >= deadline:
                    os.close(self.fd)
                    self.fd = None
                    return False
                time.sleep(0.05)

    def adopt(self, fd):
        # type: (int) -> bool
        """Take over the lock `start` acquired and handed down as an open descriptor."""
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            if same:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: succeeds at once
        except (IOError, OSError):
            return False
        if not same:
            return False
        os.set_inheritable(fd, False)
        self.fd = fd
        return True

    def release(self):
        # type: () -> None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock_is_held(run_dir):
    # type: (str) -> bool
    path = os.path.join(run_dir, LOCK_FILE)
    if not os.path.exists(path):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except (IOError, OSError):
        return True
    finally:
        os.close(fd)


class ExclusiveBench(object):
    """A blocking flock shared by every device on one physical host.

    Emulated devices share this host's cores: a timed run while another device is timing would
    measure both. Deploy names the same lock file for all of them, so they take turns. `run` holds it
    for its whole run (imports, model loads and evaluation use the same cores), and each cell's
    timed section enters it again, which is then free. Re-entrant within one process: a second
    flock on a new descriptor of the same file would wait for the first.
    """

    _held = {}  # type: Dict[str, int]  # path -> descriptor, for this process

    def __init__(self, path):
        # type: (Optional[str]) -> None
        self.path = path
        self.fd = None  # type: Optional[int]
        self.waited_ms = 0.0

    def __enter__(self):
        # type: () -> ExclusiveBench
        if self.path and self.path not in ExclusiveBench._held:
            start = time.perf_counter()
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            ExclusiveBench._held[self.path] = self.fd
            self.waited_ms = (time.perf_counter() - start) * 1000.0
        return self

    def __exit__(self, *exc):
        # type: (Any) -> None
        if self.fd is not None:
            del ExclusiveBench._held[self.path]
            os.close(self.fd)  # closing releases the flock
            self.fd = None


class QuietHost(object):
    """Waits, before a timed section, until no deploy is in progress on any device of this host.

    Deploys to the other emulated devices (sshd, uploads, hashing, the probes) run on the cores a
    timed section is measuring. ``bench.host_deploy_locks`` lists those devices' deploy lock folders;
    one still there after ``bench.quiet_wait_s`` is taken for a crashed deploy's and not waited for
    again in this run (the cells say so)."""

    def __init__(self, paths, wait_s):
        # type: (Sequence[str], float) -> None
        self.paths = list(paths)
        self.wait_s = wait_s
        self.ignored = set()  # type: Set[str]

    def wait(self):
        # type: () -> Tuple[float, List[str]]
        """Milliseconds waited, and the lock folders still present (given up on)."""
        start = time.perf_counter()
        deadline = time.time() + self.wait_s
        while True:
            busy = [path for path in self.paths if path not in self.ignored and os.path.isdir(path)]
            if not busy or time.time() >= deadline:
                break
            time.sleep(0.05)
        if busy:
            log("deploy lock(s) {} still present after {:g} s: taken as stale, not waited for again".format(
                ", ".join(busy), self.wait_s))
            self.ignored.update(busy)
        return (time.perf_counter() - start) * 1000.0, sorted(self.ignored)
