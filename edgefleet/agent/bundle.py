"""Host side: pack the agent into one file, ``edgefleet-agent.pyz``, to copy to a device.

The archive holds agent.py, runtimes.py, postprocess.py and evaluate.py (when present) as
top-level modules plus a ``__main__``; it needs only Python 3.6+ and numpy on the
device. Its bytes depend only on those sources, so the deploy step can tell from
the sha256 whether a device already has this agent.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipapp
from dataclasses import dataclass
from pathlib import Path

from edgefleet.digest import sha256_file
from edgefleet.errors import DeployError

BUNDLE_NAME = "edgefleet-agent.pyz"
AGENT_DIR = Path(__file__).resolve().parent
REQUIRED_MODULES = ("agent.py", "runtimes.py")
OPTIONAL_MODULES = ("postprocess.py", "evaluate.py")
DEFAULT_INTERPRETER = "/usr/bin/env python3"
# zip cannot store dates before 1980; a fixed date keeps the archive reproducible.
_FIXED_MTIME = 315532800 + 86400

LAUNCHER = "launcher.py"  # becomes the archive's __main__.py


@dataclass(frozen=True)
class AgentBundle:
    path: Path
    sha256: str
    modules: tuple[str, ...]


def bundle_modules(source_dir: Path = AGENT_DIR) -> tuple[str, ...]:
    missing = [name for name in (*REQUIRED_MODULES, LAUNCHER) if not (source_dir / name).is_file()]
    if missing:
        raise DeployError(f"the agent sources are incomplete: {', '.join(missing)} missing in {source_dir}")
    optional = tuple(name for name in OPTIONAL_MODULES if (source_dir / name).is_file())
    return REQUIRED_MODULES + optional


def build_agent_bundle(target: Path, *, interpreter: str | None = DEFAULT_INTERPRETER,
                       source_dir: Path = AGENT_DIR) -> AgentBundle:
    """Write the zipapp to ``target``: a path ending in .pyz, or a directory to put BUNDLE_NAME in."""
    target = Path(target)
    if target.suffix != ".pyz":
        target = target / BUNDLE_NAME
    modules = bundle_modules(source_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgefleet-agent-") as tmp:
        staging = Path(tmp) / "src"
        staging.mkdir()
        for name in modules:
            shutil.copyfile(source_dir / name, staging / name)
        shutil.copyfile(source_dir / LAUNCHER, staging / "__main__.py")
        for child in staging.iterdir():
            os.utime(child, (_FIXED_MTIME, _FIXED_MTIME))
        # A name of its own: parallel deploys (threads or processes) each write the bundle; the bytes
        # are identical, but a shared temp name let one rename another's half-written archive into place.
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.fchmod(fd, 0o644)  # mkstemp's 0600; the archive is the user's ordinary file (plus x, from zipapp)
        os.close(fd)
        partial = Path(name)
        try:
            zipapp.create_archive(staging, partial, interpreter=interpreter)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return AgentBundle(path=target, sha256=sha256_file(target), modules=modules)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m edgefleet.agent.bundle OUT.pyz|OUT_DIR\n")
        return 2
    bundle = build_agent_bundle(Path(args[0]))
    print(f"{bundle.path} sha256={bundle.sha256} modules={','.join(bundle.modules)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
