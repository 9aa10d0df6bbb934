"""``builders/<name>/builder.yaml``: what a builder image contains, as a typed, validated spec."""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from edgefleet.errors import ConfigError
from edgefleet.images.base_image import DEFAULT_BASE_IMAGE
from edgefleet.steps.registry import kinds_in_builder

SPEC_FILE = "builder.yaml"
TEMPLATE_FILE = "Dockerfile.j2"
_FLOATING_TAGS = {"latest", "stable", "nightly", "edge", "main", "master"}


def _exact_pin(value: str) -> str:
    try:
        req = Requirement(value)
    except InvalidRequirement as exc:
        raise ValueError(f"{value!r} is not a requirement: {exc}") from None
    specs = list(req.specifier)
    if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
        raise ValueError(f"{value!r} must be pinned exactly (name==version)")
    if req.marker is not None or req.url:
        raise ValueError(f"{value!r}: markers and URLs are not allowed in builder pins")
    return value


def _not_floating(value: str) -> str:
    if value.strip().lower() in _FLOATING_TAGS:
        raise ValueError(f"{value!r} is a floating version; pin an exact one")
    return value


def _pinned_image(value: str) -> str:
    tag = value.rsplit("/", 1)[-1].partition(":")[2]    # a registry's :port sits before the last "/"
    if "@sha256:" not in value and (not tag or tag in _FLOATING_TAGS):
        raise ValueError(f"base image {value!r} needs an explicit, non-floating tag or digest")
    return value


Pin = Annotated[str, AfterValidator(_exact_pin)]
PinnedVersion = Annotated[str, AfterValidator(_not_floating)]
ImageRef = Annotated[str, AfterValidator(_pinned_image)]
# Debian package, optionally with an exact version: "curl" or "edgetpu-compiler=16.0".
AptPackage = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.+-]*(=[A-Za-z0-9.+:~-]+)?$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EdgefleetInstall(_Frozen):
    """Install edgefleet itself (a wheel built from the workspace) into this venv."""

    extras: tuple[str, ...] = ()


class VenvSpec(_Frozen):
    """A virtualenv in the image whose wheels are resolved on the host into a wheelhouse."""

    path: str = Field(default="/opt/edgefleet", pattern=r"^/[A-Za-z0-9._/-]+$")
    interpreter: str = "python3"                    # the image's python that creates the venv
    python_version: str = Field(default="3.11", pattern=r"^3\.\d+$")
    arch: str = "x86_64"
    # The image's glibc bounds which manylinux wheels it can load (bookworm: 2.36).
    glibc: str = Field(default="2.36", pattern=r"^2\.\d+$")
    packages: tuple[Pin, ...] = ()
    # Installed with --no-deps, after the rest (tf_keras would otherwise pull the full tensorflow).
    no_deps: tuple[Pin, ...] = ()
    # Resolve transitive dependencies with requirements/constraints.txt: the image then runs
    # the same versions the host tests. Off for envs that target another ecosystem (old TF).
    host_constraints: bool = True
    edgefleet: EdgefleetInstall | None = None

    @property
    def python(self) -> str:
        return f"{self.path}/bin/python"


class TargetRuntime(_Frozen):
    """The device runtime an image prepares artifacts for (tftrt-prep: the JetPack's TensorFlow)."""

    jetpack: PinnedVersion
    tensorflow: PinnedVersion
    python: PinnedVersion
    tensorrt: PinnedVersion | None = None


class BuilderSpec(_Frozen):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = Field(min_length=1)
    base_image: ImageRef = DEFAULT_BASE_IMAGE
    apt_packages: tuple[AptPackage, ...] = ()
    # Pinned tool versions and checksums the template uses (bazel, ndk, edgetpu-compiler...).
    versions: dict[str, PinnedVersion] = Field(default_factory=dict)
    needs_network: bool = False          # building the image needs the network (apt repos, downloads)
    step_network: bool = False           # its steps' containers get a network (else they run with none)
    venvs: tuple[VenvSpec, ...] = Field(min_length=1)
    target: TargetRuntime | None = None

    @model_validator(mode="after")
    def _one_step_runner(self) -> BuilderSpec:
        runners = [v.path for v in self.venvs if v.edgefleet is not None]
        if len(runners) != 1:
            raise ValueError(f"exactly one venv must install edgefleet (it runs the steps); found {len(runners)}")
        paths = [v.path for v in self.venvs]
        if len(set(paths)) != len(paths):
            raise ValueError(f"venv paths must be distinct: {paths}")
        return self

    @property
    def step_kinds(self) -> tuple[str, ...]:
        """The step kinds that run in this image. The step registry names each kind's builder, so
        builder.yaml does not list them: one place for the fact, nothing to keep in step."""
        return kinds_in_builder(self.name)

    @property
    def runner(self) -> VenvSpec:
        """The venv whose python runs ``python -m edgefleet.steps.process``."""
        return next(v for v in self.venvs if v.edgefleet is not None)


def load_builder_spec(builder_dir: Path) -> BuilderSpec:
    """Read and validate ``builder_dir/builder.yaml``; errors name file:line:col."""
    from edgefleet.config.validate import validate
    from edgefleet.config.yamlsrc import load_yaml

    path = builder_dir / SPEC_FILE
    data, smap = load_yaml(path)
    if isinstance(data, dict) and "step_kinds" in data:
        raise ConfigError(f"{smap.nearest(('step_kinds',))}: step_kinds is not read any more: each step kind "
                          "names its builder in edgefleet/steps/registry.py; remove the key")
    spec = validate(BuilderSpec, data, smap, what=f"builder spec {path.name}")
    if spec.name != builder_dir.name:
        raise ConfigError(f"{smap.nearest(('name',))}: name {spec.name!r} must match its directory "
                          f"{builder_dir.name!r}")
    return spec


def read_constraints(path: Path) -> dict[str, str]:
    """``requirements/constraints.txt`` as {canonical name: exact version}."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)\s*==\s*([^\s;]+)", line)
        if match:
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def pin_mismatches(spec: BuilderSpec, constraints: Mapping[str, str]) -> list[str]:
    """Pins in host-constrained venvs that disagree with the host's constraints file."""
    problems = []
    for venv in spec.venvs:
        if not venv.host_constraints:
            continue
        for pin in (*venv.packages, *venv.no_deps):
            req = Requirement(pin)
            wanted = constraints.get(canonicalize_name(req.name))
            version = next(iter(req.specifier)).version
            if wanted is not None and wanted != version:
                problems.append(f"{spec.name}: {req.name}=={version} but the host pins {wanted}")
    return problems
