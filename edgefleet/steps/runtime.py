"""``runtime.wheelhouse``: the wheels a device needs, downloaded for the device's platform and Python.

Resolution keeps dependencies but stays platform-constrained (``--only-binary=:all:
--platform ... --python-version ...``), so nothing is ever built from source for the
wrong architecture. Each requested package may be optional: a missing optional package
is recorded in ``wheels.json`` (e.g. numpy<2 has no armv7l wheel on PyPI; the device
gets it from apt), a missing required one fails the step naming package and platform.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefleet.errors import BuildError
from edgefleet.images.wheelhouse import applicable, pip_download_command, run_logged, sha256_file, \
    target_environment, wheel_requirements
from edgefleet.steps.base import StepContext, StepResult

# Not manifest.json: that name is the artifact store's own, and the store's manifest would replace it.
MANIFEST = "wheels.json"
WHEELS = "wheels"
_NOT_FOUND = re.compile(r"No matching distribution found for (.+?)\s*$")
_PIP_NETWORK_ARGS = ("--retries", "2", "--timeout", "20")


class PackageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    requirement: str
    optional: bool = False

    @field_validator("requirement")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            Requirement(value)
        except InvalidRequirement as exc:
            raise ValueError(f"{value!r} is not a requirement: {exc}") from None
        return value

    @property
    def name(self) -> str:
        return canonicalize_name(Requirement(self.requirement).name)


class WheelhouseParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    platforms: tuple[str, ...] = Field(min_length=1)     # e.g. manylinux_2_34_armv7l, linux_armv7l
    python_version: str = Field(pattern=r"^3\.\d+$")
    implementation: str = "cp"
    packages: tuple[PackageRequest, ...] = Field(min_length=1)
    # Distributions the device's OS provides (numpy from python3-numpy on armv7l): never downloaded, and a
    # requirement on them is recorded as met by the OS.
    provided_by_os: tuple[str, ...] = ()
    index_url: str | None = None

    @field_validator("packages", mode="before")
    @classmethod
    def _strings_are_required(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [{"requirement": v} if isinstance(v, str) else v for v in value]
        return value

    @property
    def machine(self) -> str:
        """The architecture the platform tags name (for evaluating dependency markers)."""
        tag = self.platforms[0]
        for prefix in ("manylinux2014_", "manylinux2010_", "manylinux1_", "linux_", "musllinux_"):
            if tag.startswith(prefix):
                return tag[len(prefix):]
        match = re.match(r"(?:many|musl)linux_\d+_\d+_(.+)$", tag)
        return match[1] if match else tag


def runtime_wheelhouse(ctx: StepContext) -> StepResult:
    try:
        params = WheelhouseParams.model_validate(dict(ctx.params))
    except ValidationError as exc:
        raise BuildError(f"runtime.wheelhouse: bad params: {exc.errors(include_url=False)[0]['msg']} "
                         f"at {'.'.join(str(p) for p in exc.errors()[0]['loc'])}") from None
    wheels = ctx.out_dir / WHEELS
    wheels.mkdir(parents=True, exist_ok=True)
    resolver = _Resolver(params, wheels, ctx.log)
    available = [p for p in params.packages if resolver.probe(p)]
    resolver.download_all(available)
    manifest = _manifest(params, wheels, resolver)
    (ctx.out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    ctx.log(f"{len(manifest['files'])} wheels for {params.platforms[0]} / python {params.python_version}; "
            f"unavailable: {', '.join(u['requirement'] for u in resolver.unavailable) or 'none'}")
    return StepResult(
        files=[MANIFEST, *(f["file"] for f in manifest["files"])],
        report={k: manifest[k] for k in ("platforms", "python_version", "unavailable", "unresolved_dependencies")}
        | {"wheels": len(manifest["files"]), "bytes": sum(f["size"] for f in manifest["files"])},
        tool_versions={"pip": metadata.version("pip")},
    )


class _Resolver:
    def __init__(self, params: WheelhouseParams, dest: Path, log: Any) -> None:
        self.params = params
        self.dest = dest
        self.log = log
        self.unavailable: list[dict[str, str]] = []
        self.unresolved: list[dict[str, str]] = []

    def command(self, requirements: list[str], dest: Path, *, deps: bool) -> list[str]:
        extra = [*_PIP_NETWORK_ARGS, *(["--index-url", self.params.index_url] if self.params.index_url else [])]
        return pip_download_command(requirements, dest, python_version=self.params.python_version,
                                    platforms=self.params.platforms, implementation=self.params.implementation,
                                    deps=deps, extra_args=extra)

    def probe(self, package: PackageRequest) -> bool:
        """Is there a wheel of this package itself for the platform? Optional and missing: record it."""
        with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
            command = self.command([package.requirement], Path(tmp), deps=False)
            code, lines = run_logged(command, self.log)
        if code == 0:
            return True
        if not _missing(lines):
            raise BuildError(f"runtime.wheelhouse: pip failed while looking up {package.requirement}",
                             command=command, returncode=code, log=lines)
        if not package.optional:
            raise BuildError(f"runtime.wheelhouse: required package {package.requirement} has no wheel for "
                             f"{', '.join(self.params.platforms)} (python {self.params.python_version})",
                             command=command, returncode=code, log=lines)
        self.unavailable.append({"requirement": package.requirement,
                                 "reason": f"no wheel for {', '.join(self.params.platforms)}"})
        return False

    def download_all(self, packages: list[PackageRequest]) -> None:
        """Resolve everything together; if a dependency is a missing optional package, go package by package."""
        if not packages:
            return
        command = self.command([p.requirement for p in packages], self.dest, deps=True)
        code, lines = run_logged(command, self.log)
        if code == 0:
            return
        missing = _missing(lines)
        skipped = {canonicalize_name(Requirement(u["requirement"]).name) for u in self.unavailable} | \
            {canonicalize_name(name) for name in self.params.provided_by_os}
        if not missing or not missing <= skipped:
            raise BuildError(f"runtime.wheelhouse: no wheel of {', '.join(sorted(missing)) or 'a dependency'} "
                             f"for {', '.join(self.params.platforms)} (python {self.params.python_version})",
                             command=command, returncode=code, log=lines)
        self.log(f"{', '.join(sorted(missing))} is unavailable here; resolving the others without it")
        for package in packages:
            self._download_without(package, skipped)

    def _download_without(self, package: PackageRequest, skipped: set[str]) -> None:
        with tempfile.TemporaryDirectory(prefix="nodeps-") as tmp:
            command = self.command([package.requirement], Path(tmp), deps=False)
            code, lines = run_logged(command, self.log)
            if code != 0:
                raise BuildError(f"runtime.wheelhouse: downloading {package.requirement} failed", command=command,
                                 returncode=code, log=lines)
            wheel = next(Path(tmp).glob("*.whl"))
            shutil.move(str(wheel), self.dest / wheel.name)
        env = target_environment(self.params.python_version, self.params.machine)
        for dep in wheel_requirements(self.dest / wheel.name):
            if not applicable(dep, environment=env):
                continue
            if canonicalize_name(dep.name) in skipped:
                self.unresolved.append({"package": package.requirement, "requires": str(dep)})
                continue
            command = self.command([str(dep)], self.dest, deps=True)
            code, lines = run_logged(command, self.log)
            if code != 0:
                raise BuildError(f"runtime.wheelhouse: no wheel of {dep} (needed by {package.requirement}) for "
                                 f"{', '.join(self.params.platforms)}", command=command, returncode=code, log=lines)


def _missing(lines: list[str]) -> set[str]:
    """Project names pip reported it could not find."""
    names = set()
    for line in lines:
        match = _NOT_FOUND.search(line)
        if match:
            try:
                names.add(canonicalize_name(Requirement(match[1]).name))
            except InvalidRequirement:
                names.add(canonicalize_name(match[1].split()[0]))
    return names


def _manifest(params: WheelhouseParams, wheels: Path, resolver: _Resolver) -> dict[str, Any]:
    files = []
    for path in sorted(wheels.glob("*.whl")):
        project, version, _, tags = parse_wheel_filename(path.name)
        files.append({"file": f"{WHEELS}/{path.name}", "project": str(project), "version": str(version),
                      "tags": sorted(str(t) for t in tags), "sha256": sha256_file(path),
                      "size": path.stat().st_size})
    return {
        "platforms": list(params.platforms), "python_version": params.python_version,
        "implementation": params.implementation,
        "requested": [p.model_dump() for p in params.packages],
        "files": files,
        "unavailable": resolver.unavailable,
        "unresolved_dependencies": resolver.unresolved,
        "provided_by_os": list(params.provided_by_os),
    }
