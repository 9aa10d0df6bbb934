"""Host side: pack the agent into one file, ``edgefleet-agent.pyz``, to copy to a device.

The archive holds the agent's package (``efagent/``, every module of it) and launcher.py as its
``__main__``; it needs only Python 3.6+ and numpy on the device. Its bytes depend only on those
sources (names in order, fixed dates and modes; and the host's zlib, whose change costs one upload),
so the deploy step can tell from the sha256 whether a device already has this agent.
"""
from __future__ import annotations

import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.launcher import PACKAGE
from edgefleet.digest import sha256_file
from edgefleet.errors import DeployError

BUNDLE_NAME = "edgefleet-agent.pyz"
AGENT_DIR = Path(__file__).resolve().parent
REQUIRED_MODULES = ("__init__.py", "cli.py")
DEFAULT_INTERPRETER = "/usr/bin/env python3"
# zip cannot store dates before 1980; a fixed date keeps the archive reproducible.
_FIXED_DATE = (1980, 1, 2, 0, 0, 0)

LAUNCHER = "launcher.py"  # becomes the archive's __main__.py


@dataclass(frozen=True)
class AgentBundle:
    path: Path
    sha256: str
    modules: tuple[str, ...]  # the archive's names of the package's modules, e.g. "efagent/cli.py"


def bundle_modules(source_dir: Path = AGENT_DIR) -> tuple[str, ...]:
    package = source_dir / PACKAGE
    missing = [str(path.relative_to(source_dir)) for path in (
        source_dir / LAUNCHER, *(package / name for name in REQUIRED_MODULES)) if not path.is_file()]
    if missing:
        raise DeployError(f"the agent sources are incomplete: {', '.join(missing)} missing in {source_dir}")
    return tuple(f"{PACKAGE}/{path.name}" for path in sorted(package.glob("*.py")))


def _write_archive(path: Path, files: list[tuple[str, Path]], interpreter: str | None) -> None:
    """A zipapp, as zipapp.create_archive writes one, minus what would vary: file order, dates, modes."""
    with path.open("wb") as out:
        if interpreter:
            out.write(b"#!" + interpreter.encode(sys.getfilesystemencoding()) + b"\n")
        with zipfile.ZipFile(out, "w") as archive:
            for name, source in files:
                info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
                info.external_attr = 0o644 << 16
                # A third of the size to upload; the device unpacks it once (see launcher.py).
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, source.read_bytes())
    path.chmod(0o744 if interpreter else 0o644)  # as zipapp leaves it: executable by its owner


def build_agent_bundle(target: Path, *, interpreter: str | None = DEFAULT_INTERPRETER,
                       source_dir: Path = AGENT_DIR) -> AgentBundle:
    """Write the zipapp to ``target``: a path ending in .pyz, or a directory to put BUNDLE_NAME in."""
    target = Path(target)
    if target.suffix != ".pyz":
        target = target / BUNDLE_NAME
    modules = bundle_modules(source_dir)
    files = [("__main__.py", source_dir / LAUNCHER), *((name, source_dir / name) for name in modules)]
    target.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own: parallel deploys (threads or processes) each write the bundle; the bytes
    # are identical, but a shared temp name let one rename another's half-written archive into place.
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    partial = Path(name)
    try:
        _write_archive(partial, files, interpreter)
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
