"""Wheels resolved on the host, so images install Python packages with no network.

Two things live here: the wheelhouse of a builder's venv (``pip download`` for the
image's platform and Python, cached under ``.edgefleet/wheelhouse/<builder>-<key>/``)
and the edgefleet wheel built from the workspace (cached by a hash of its sources).
The ``pip download`` helpers are shared with the runtime wheelhouse step.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import parse_wheel_filename

from edgefleet.digest import sha256_file
from edgefleet.errors import BuildError

Log = Callable[[str], None]
MANIFEST = "wheelhouse.json"
# Files that decide what the edgefleet wheel contains.
_PROJECT_FILES = ("pyproject.toml", "README.md", "setup.cfg", "setup.py", "MANIFEST.in", "LICENSE")
_PACKAGE = "edgefleet"


def manylinux_platforms(arch: str, glibc: str) -> list[str]:
    """Every manylinux tag a system with this glibc can load, newest first.

    pip only expands the legacy aliases (manylinux2014 -> 2010 -> 1) itself, so the
    PEP 600 tags down to glibc 2.17 are listed explicitly.
    """
    major, minor = (int(p) for p in glibc.split("."))
    if major != 2:
        raise ValueError(f"unsupported glibc {glibc!r}")
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)]
    return [*tags, f"manylinux2014_{arch}"]


def pip_download_command(requirements: Sequence[str], dest: Path, *, python_version: str,
                         platforms: Sequence[str], implementation: str = "cp", deps: bool = True,
                         constraints: Path | None = None, python: str = sys.executable,
                         extra_args: Sequence[str] = ()) -> list[str]:
    """``pip download`` of binary wheels for another platform/Python than this interpreter's."""
    command = [python, "-m", "pip", "download", "--disable-pip-version-check", "--no-input",
               "--only-binary=:all:", "--implementation", implementation,
               "--python-version", python_version,
               "--abi", f"{implementation}{python_version.replace('.', '')}"]
    for platform in platforms:
        command += ["--platform", platform]
    if not deps:
        command.append("--no-deps")
    if constraints is not None:
        command += ["-c", str(constraints)]
    return [*command, *extra_args, "-d", str(dest), *requirements]


def run_logged(command: Sequence[str], log: Log, *, env: Mapping[str, str] | None = None,
               cwd: Path | None = None) -> tuple[int, list[str]]:
    """Run a command, send each output line to ``log``; return (exit code, all lines)."""
    lines: list[str] = []
    with subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", env=None if env is None else dict(env), cwd=cwd) as proc:
        for raw in proc.stdout or ():
            line = raw.rstrip("\n")
            lines.append(line)
            log(line)
    return proc.returncode, lines


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """The Requires-Dist entries of a wheel, read from its METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        name = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1), None)
        if name is None:
            raise BuildError(f"{wheel.name} has no METADATA; not a wheel?")
        metadata = Parser().parsestr(zf.read(name).decode("utf-8"))
    return [Requirement(line) for line in metadata.get_all("Requires-Dist") or ()]


def applicable(req: Requirement, *, extras: Iterable[str] = (), environment: Mapping[str, str] | None = None) -> bool:
    """Does ``req`` apply when installing with these extras (in this marker environment)?"""
    if req.marker is None:
        return True
    env = dict(environment or {})
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in ("", *extras))


def without_marker(req: Requirement) -> str:
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return f"{req.name}{extras}{req.specifier}"


def target_environment(python_version: str, machine: str) -> dict[str, str]:
    """A marker environment for a Linux CPython other than this one."""
    return {"python_version": python_version, "python_full_version": f"{python_version}.0",
            "platform_machine": machine, "sys_platform": "linux", "platform_system": "Linux",
            "os_name": "posix", "implementation_name": "cpython",
            "platform_python_implementation": "CPython"}


# ---------------------------------------------------------------- the edgefleet wheel

def project_source_digest(project_root: Path) -> str:
    """Hash of everything that goes into the edgefleet wheel (bytecode caches excluded)."""
    digest = hashlib.sha256()
    for path in _project_files(project_root):
        digest.update(path.relative_to(project_root).as_posix().encode() + b"\0")
        digest.update(sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def _project_files(project_root: Path) -> list[Path]:
    files = [project_root / name for name in _PROJECT_FILES if (project_root / name).is_file()]
    for path in sorted((project_root / _PACKAGE).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            files.append(path)
    return files


def build_edgefleet_wheel(project_root: Path, cache_root: Path, log: Log) -> Path:
    """The workspace's edgefleet wheel; built once per source state, then reused from the cache."""
    if not (project_root / "pyproject.toml").is_file():
        raise BuildError(f"{project_root} has no pyproject.toml; the image installs edgefleet from its source")
    key = project_source_digest(project_root)[:16]
    target = cache_root / "wheels" / f"edgefleet-{key}"
    found = sorted(target.glob("edgefleet-*.whl"))
    if found:
        return found[0]
    log(f"building the edgefleet wheel from {project_root.resolve().name}/ (source {key})")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgefleet-wheel-", dir=target.parent) as tmp:
        # A clean copy: an in-tree build would pick up stale files from an old build/ directory.
        src = Path(tmp) / "src"
        for path in _project_files(project_root):
            dest = src / path.relative_to(project_root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        out = Path(tmp) / "out"
        command = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps",
                   "-w", str(out), str(src)]
        # Fixed timestamps make the wheel's bytes depend on its sources only.
        env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
        code, lines = run_logged(command, log, env=env)
        wheels = sorted(out.glob("edgefleet-*.whl"))
        if code != 0 or not wheels:
            raise BuildError("building the edgefleet wheel failed", command=command, returncode=code, log=lines)
        staged = Path(tmp) / "staged"
        staged.mkdir()
        shutil.move(str(wheels[0]), staged / wheels[0].name)
        try:
            staged.rename(target)
        except OSError:
            if not target.is_dir():   # another process won the race: its wheel is identical
                raise
    return sorted(target.glob("edgefleet-*.whl"))[0]


# ---------------------------------------------------------------- builder wheelhouses

@dataclass(frozen=True)
class WheelhouseRequest:
    """What one image venv needs, resolved for the image's platform."""

    builder: str
    python_version: str
    platforms: tuple[str, ...]
    requirements: tuple[str, ...]       # resolved with their dependencies
    no_deps: tuple[str, ...] = ()       # downloaded alone
    constraints: str | None = None      # text of the host's constraints file, when it applies

    @property
    def key(self) -> str:
        payload = json.dumps({"python": self.python_version, "platforms": self.platforms,
                              "requirements": sorted(self.requirements), "no_deps": sorted(self.no_deps),
                              "constraints": self.constraints}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Wheelhouse:
    path: Path
    lock: tuple[str, ...]               # name==version of every wheel resolved with dependencies
    no_deps_lock: tuple[str, ...]       # name==version of the --no-deps wheels
    files: Mapping[str, str]            # wheel file name -> sha256


def ensure_wheelhouse(request: WheelhouseRequest, cache_root: Path, log: Log) -> Wheelhouse:
    """Download the wheels once; later calls (any process) read the finished cache entry."""
    path = cache_root / "wheelhouse" / f"{request.builder}-{request.key[:16]}"
    if (path / MANIFEST).is_file():
        return _read_wheelhouse(path)
    log(f"resolving the {request.builder} wheelhouse for python {request.python_version} "
        f"({len(request.requirements)} requirements)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}-", dir=path.parent) as tmp:
        staging = Path(tmp) / "wheels"
        staging.mkdir()
        constraints_file = None
        if request.constraints is not None:
            constraints_file = Path(tmp) / "constraints.txt"
            constraints_file.write_text(request.constraints)
        common = {"python_version": request.python_version, "platforms": request.platforms}
        _download(pip_download_command(request.requirements, staging, constraints=constraints_file, **common),
                  request, log)
        with_deps = {p.name for p in staging.glob("*.whl")}
        if request.no_deps:
            _download(pip_download_command(request.no_deps, staging, deps=False, **common), request, log)
        files = {p.name: sha256_file(p) for p in sorted(staging.glob("*.whl"))}
        manifest = {
            "builder": request.builder, "python_version": request.python_version,
            "platforms": list(request.platforms), "requirements": list(request.requirements),
            "no_deps": list(request.no_deps),
            "lock": _lock(n for n in files if n in with_deps),
            "no_deps_lock": _lock(n for n in files if n not in with_deps),
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        try:
            staging.rename(path)
        except OSError:
            if not (path / MANIFEST).is_file():
                raise
    return _read_wheelhouse(path)


def _download(command: list[str], request: WheelhouseRequest, log: Log) -> None:
    code, lines = run_logged(command, log)
    if code != 0:
        raise BuildError(f"resolving the {request.builder} wheelhouse failed (python {request.python_version}, "
                         f"platforms {', '.join(request.platforms[:3])}...)", command=command,
                         returncode=code, log=lines)


def _lock(names: Iterable[str]) -> list[str]:
    pins = []
    for name in names:
        project, version, _, _ = parse_wheel_filename(name)
        pins.append(f"{project}=={version}")
    return sorted(pins, key=str.lower)


def _read_wheelhouse(path: Path) -> Wheelhouse:
    data = json.loads((path / MANIFEST).read_text())
    return Wheelhouse(path=path, lock=tuple(data["lock"]), no_deps_lock=tuple(data["no_deps_lock"]),
                      files=dict(data["files"]))


def marker_free(requirements: Iterable[Requirement], *, extras: Iterable[str] = (),
                environment: Mapping[str, str] | None = None) -> list[str]:
    """Requirements that apply for these extras, with their markers dropped."""
    extras = tuple(extras)
    return [without_marker(r) for r in requirements if applicable(r, extras=extras, environment=environment)]

