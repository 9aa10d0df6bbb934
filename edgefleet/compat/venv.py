"""The throwaway venv a runtime-compat check loads models in: one per runtime, version and Python.

``<state dir>/runtime-compat/<distribution>-<version>-py<X.Y>/`` holds a venv of
this host's Python with nothing but the runtime's x86_64 wheel and what it needs,
from PyPI. It is built in a temporary folder beside its final place and renamed
in only once the runtime imports, under a file lock: concurrent builds wait for
one creator and never see a half-made venv.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edgefleet.compat.runtimes import RuntimePin
from edgefleet.errors import BuildError, ToolUnavailableError
from edgefleet.filelock import exclusive
from edgefleet.images.wheelhouse import run_logged

Log = Callable[[str], None]
CACHE_DIR = "runtime-compat"
READY_FILE = "runtime-compat.json"    # written last: its presence means the venv is complete
LOCK_TIMEOUT_S = 900.0
# Fail fast without a network instead of pip's default of 5 retries at the configured timeout.
_PIP_NETWORK_ARGS = ("--retries", "2", "--timeout", "20")
# Run in the new venv: proves the runtime imports, and lists what pip installed for the record.
_PROBE = ("import importlib, importlib.metadata as md, json, sys; importlib.import_module(sys.argv[1]); "
          "print(json.dumps({d.metadata['Name']: d.version for d in md.distributions()}))")


@dataclass(frozen=True)
class RuntimeVenv:
    pin: RuntimePin
    path: Path
    created: bool                     # made by this call, not found in the cache
    installed: dict[str, str]         # distribution -> version, as recorded when it was made
    python_version: str               # e.g. "3.11.7"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def venv_path(cache_root: Path, pin: RuntimePin) -> Path:
    # The venv's python is a link to this host's interpreter, so the Python version is part of its identity.
    return cache_root / f"{pin.distribution}-{pin.version}-py{python_tag()}"


def ensure_runtime_venv(pin: RuntimePin, cache_root: Path, log: Log, *,
                        lock_timeout_s: float = LOCK_TIMEOUT_S) -> RuntimeVenv:
    """The cached venv of ``pin``, made now if missing. ToolUnavailableError when pip cannot get the wheels."""
    path = venv_path(cache_root, pin)
    if _ready(path):
        return _opened(pin, path, created=False)
    cache_root.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with exclusive(lock, lock_timeout_s, log=log,
                   waiting=f"waiting for another build that is creating the {pin.label} venv",
                   gave_up=lambda: BuildError(f"gave up after {lock_timeout_s:g} s waiting for another build to "
                                              f"create the {pin.label} venv (lock {lock} is still held)")):
        if _ready(path):  # another build made it while this one waited for the lock
            return _opened(pin, path, created=False)
        _discard_leftovers(path)
        _create(pin, path, log)
    return _opened(pin, path, created=True)


def _ready(path: Path) -> bool:
    # exists() follows the python link: a venv whose base interpreter is gone is not ready.
    return (path / READY_FILE).is_file() and (path / "bin" / "python").exists()


def _opened(pin: RuntimePin, path: Path, *, created: bool) -> RuntimeVenv:
    try:
        record = json.loads((path / READY_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"the {pin.label} venv in {path} has an unreadable {READY_FILE} ({exc}); "
                         "delete that folder and build again") from None
    return RuntimeVenv(pin, path, created, dict(record.get("installed", {})), str(record.get("python", "")))


def _discard_leftovers(path: Path) -> None:
    """Staging folders of killed creators and a broken venv. Only called under the lock, so none is in use."""
    for leftover in path.parent.glob(f".{path.name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if path.exists():
        shutil.rmtree(path)


def _create(pin: RuntimePin, path: Path, log: Log) -> None:
    started = time.monotonic()
    log(f"first {pin.label} load check with Python {python_tag()} here: creating its venv in {path} "
        f"(pip downloads {' and '.join(pin.requirements)} from PyPI; kept for later builds)")
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        installed = _populate(pin, staging, path, log)
        record = {"distribution": pin.distribution, "version": pin.version, "python": platform.python_version(),
                  "machine": platform.machine(), "installed": installed,
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (staging / READY_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
        # A venv runs from a new place when started as bin/python: it finds pyvenv.cfg beside its own path.
        # (Its console scripts keep the staging path in their #! line; nothing here runs them.)
        os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"{pin.label} venv ready in {time.monotonic() - started:.1f} s "
        f"({', '.join(f'{k} {v}' for k, v in sorted(installed.items()))})")


def _populate(pin: RuntimePin, staging: Path, final: Path, log: Log) -> dict[str, str]:
    """venv + pip install + import probe in ``staging``; returns what got installed."""
    needs = (f"the {pin.label} load check needs a venv with {', '.join(pin.requirements)} for Python "
             f"{python_tag()} ({platform.machine()}) from PyPI")
    _step([sys.executable, "-m", "venv", "--without-pip", str(staging)], log,
          f"{needs}, but {sys.executable} cannot create venvs")
    python = staging / "bin" / "python"
    # The host's pip installs into the new venv (--python), so the venv needs no pip of its own.
    _step([sys.executable, "-m", "pip", "--python", str(python), "install", "--disable-pip-version-check",
           "--no-input", "--only-binary=:all:", *_PIP_NETWORK_ARGS, *pin.requirements], log,
          f"{needs}, and pip could not install them (no network, or no such wheel for this Python). "
          f"Run a build once where PyPI is reachable: the venv is then kept in {final} for offline builds")
    lines = _step([str(python), "-I", "-c", _PROBE, pin.runtime.module], log,
                  f"{needs}; they installed, but {pin.runtime.module} does not import on this machine", echo=False)
    return _installed(lines)


def _step(command: Sequence[str], log: Log, unavailable: str, *, echo: bool = True) -> list[str]:
    if echo:  # "+ " lines stay on the build's console: the user sees what the first check downloads
        log("+ " + " ".join(command))
    code, lines = run_logged(command, log)
    if code != 0:
        raise ToolUnavailableError(unavailable, command=list(command), returncode=code, log=lines)
    return lines


def _installed(lines: list[str]) -> dict[str, str]:
    for line in reversed(lines):
        if line.startswith("{"):
            return {str(k): str(v) for k, v in json.loads(line).items()}
    return {}
