"""One host-side file lock for "only one of us builds this": an flock, which the kernel drops when its holder
dies, so a killed builder never blocks the next one."""
from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(lock_path: Path, timeout_s: float, *, waiting: str, gave_up: Callable[[], Exception],
              log: Callable[[str], None]) -> Iterator[None]:
    """Hold ``lock_path`` exclusively; say ``waiting`` once if another holder makes us wait, and raise
    ``gave_up()`` after ``timeout_s``."""
    with open(lock_path, "a") as handle:
        deadline = time.monotonic() + timeout_s
        announced = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    log(f"{waiting} ({lock_path})")
                    announced = True
                if time.monotonic() >= deadline:
                    raise gave_up() from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
