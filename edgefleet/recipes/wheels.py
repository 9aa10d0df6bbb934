"""Wheels fetched from PyPI with pip only to read one file out of them: never installed, never imported.

A recipe's ``source.package`` names a release and a member inside its wheel (mediapipe ships trained
TFLite detectors that way). The wheel is downloaded once per (package, version, wheel tags) into the
package cache and its digest recorded beside it; a cached wheel whose bytes no longer match is fetched
again. Everything appears by rename, so a killed or failed fetch leaves nothing that looks finished.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.config.validate import did_you_mean
from edgefleet.config.yamlsrc import display_path
from edgefleet.digest import sha256_file
from edgefleet.errors import SourceError
from edgefleet.filelock import exclusive

Log = Callable[[str], None]
CACHE_ENV = "EDGEFLEET_PACKAGE_SOURCE_CACHE"  # one wheel cache for several workspaces (the test suite sets it)
CACHE_DIR = "packages"                        # under the workspace's downloads folder otherwise
RECORD = "wheel.json"                         # the cached wheel's name, digest and the pip command
LOCK_TIMEOUT_S = 900.0
_PIP_NETWORK_ARGS = ("--retries", "1", "--timeout", "30")
_OFFLINE_MARKERS = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name "
                    "resolution", "Network is unreachable", "ConnectTimeout", "ProxyError", "Connection refused",
                    "Max retries exceeded", "Name or service not known")
_MAX_LISTED = 20


@dataclass(frozen=True)
class WheelSpec:
    package: str
    version: str
    platform: str | None = None        # pip --platform; None: this host's tags
    python_version: str | None = None  # pip --python-version; None: this interpreter's

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def pip_args(self) -> list[str]:
        """The pip command after ``python -m``, without a destination: what a user can run to reproduce it."""
        args = ["pip", "download", "--no-deps", "--only-binary=:all:"]
        if self.python_version:
            args += ["--python-version", self.python_version]
        if self.platform:
            args += ["--platform", self.platform]
        return [*args, self.requirement]

    @property
    def shown_command(self) -> str:
        return "python -m " + " ".join(self.pip_args())

    @property
    def tags(self) -> str:
        # pip picks the wheel by tags, so wheels of different hosts/recipes must not share a cache entry.
        python = f"py{self.python_version}" if self.python_version else sys.implementation.cache_tag
        return re.sub(r"[^A-Za-z0-9.]+", "_", f"{python}-{self.platform or sysconfig.get_platform()}")


def cache_root(downloads_dir: Path) -> Path:
    """Where wheels are kept: one folder for several workspaces when asked (the test suite makes many
    throwaway workspaces and would otherwise fetch a wheel for each)."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else downloads_dir / CACHE_DIR


def cache_folder(root: Path, spec: WheelSpec) -> Path:
    project = re.sub(r"[-_.]+", "-", spec.package).lower()  # PEP 503: Foo_Bar and foo-bar are one project
    return root / f"{project}-{spec.version}" / spec.tags


def ensure_wheel(spec: WheelSpec, folder: Path, *, where: str, log: Log) -> Path:
    """The spec's wheel in ``folder``, digest-checked if cached, else fetched with pip (one fetch at a time)."""
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder / ".lock", LOCK_TIMEOUT_S, waiting=f"waiting for another fetch of {spec.requirement}",
                   gave_up=lambda: SourceError(f"{where}: gave up waiting for another fetch of {spec.requirement}"),
                   log=log):
        return cached_wheel(folder) or _download(spec, folder, where=where, log=log)


def cached_wheel(folder: Path) -> Path | None:
    """The wheel in ``folder`` if its bytes still have the digest recorded when pip fetched it."""
    try:
        record = json.loads((folder / RECORD).read_text())
        wheel = folder / Path(record["wheel"]).name
        if wheel.is_file() and sha256_file(wheel) == record["sha256"]:
            return wheel
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None  # none, or damaged since it was fetched: fetch again


def _download(spec: WheelSpec, folder: Path, *, where: str, log: Log) -> Path:
    log(f"fetching {spec.requirement}'s wheel from PyPI with pip (once; kept in {display_path(folder)})")
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=folder) as tmp:
        command = [sys.executable, "-m", *spec.pip_args(), "--disable-pip-version-check", "--no-input",
                   *_PIP_NETWORK_ARGS, "-d", tmp]
        proc = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise _pip_error(spec, proc.returncode, (proc.stdout + proc.stderr).splitlines(), where)
        for stale in folder.glob("*.whl"):
            stale.unlink()
        wheel = folder / wheels[0].name
        digest = sha256_file(wheels[0])
        os.replace(wheels[0], wheel)
    _write_record(folder, {"wheel": wheel.name, "sha256": digest, "command": spec.shown_command})
    return wheel


def _write_record(folder: Path, record: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{RECORD}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, folder / RECORD)


def _pip_error(spec: WheelSpec, returncode: int, lines: list[str], where: str) -> SourceError:
    command = spec.shown_command
    if any(marker in line for line in lines for marker in _OFFLINE_MARKERS):
        return SourceError(f"{where}: cannot fetch {spec.requirement}: PyPI is not reachable from this machine "
                           f"(`{command}` failed). Fetch once where it is: the wheel is then cached")
    offered = next((m.group(1) for line in lines if (m := re.search(r"\(from versions: ([^)]*)\)", line))), None)
    if offered is not None:
        return SourceError(f"{where}: source.version: PyPI has no wheel of {spec.package} {spec.version} "
                           f"for {spec.tags} (`{command}` found none){_offered(spec, offered)}")
    errors = [line.strip() for line in lines if line.startswith("ERROR")] or lines[-3:]
    return SourceError(f"{where}: `{command}` failed (exit code {returncode}) for {spec.package} {spec.version}: "
                       + " ".join(errors))


def _offered(spec: WheelSpec, offered: str) -> str:
    versions = [v.strip() for v in offered.split(",") if v.strip() and v.strip() != "none"]
    if not versions:
        return f"; no release of {spec.package!r} has one (is the package name right?)"
    shown = ", ".join(versions[-_MAX_LISTED:])
    more = f"... ({len(versions)} in all), " if len(versions) > _MAX_LISTED else ""
    return f"{did_you_mean(spec.version, versions)}; it offers {more}{shown}"


def extract_member(wheel: Path, member: str, dest: Path, *, where: str) -> None:
    """Copy one member of ``wheel`` to ``dest``; a name the wheel lacks is an error listing close ones."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            if member not in names:
                raise SourceError(f"{where}: source.member: {wheel.name} has no {member!r}"
                                  f"{_close_members(member, names)}")
            with zf.open(member) as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except (OSError, zipfile.BadZipFile) as exc:
        raise SourceError(f"cannot read {member} from {display_path(wheel)}: {exc}") from None


def _close_members(member: str, names: list[str]) -> str:
    # A member is usually misspelt in its file name, or given without its folders: compare file names
    # (whole paths share long prefixes, which makes unrelated members look close).
    by_name: dict[str, list[str]] = {}
    for name in names:
        by_name.setdefault(name.rsplit("/", 1)[-1], []).append(name)
    close = difflib.get_close_matches(member.rsplit("/", 1)[-1], list(by_name), n=3, cutoff=0.75)
    picks = [name for base in close for name in by_name[base]][:3]
    if picks:
        return f" (did you mean {' or '.join(repr(p) for p in picks)}?)"
    suffix = Path(member).suffix
    kin = sorted(n for n in names if suffix and n.endswith(suffix))
    if not kin:
        return f"; none of its {len(names)} files ends in {suffix or 'that name'}"
    more = f" ... ({len(kin)} in all)" if len(kin) > _MAX_LISTED else ""
    return f"; its {suffix} files: {', '.join(kin[:_MAX_LISTED])}{more}"
