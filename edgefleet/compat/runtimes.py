"""Which TFLite runtime, at which exact version, a profile pins. Pure: the planner calls it."""
from __future__ import annotations

from collections.abc import Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, field_validator

from edgefleet.errors import PlanError
from edgefleet.runtimes import Distribution, get_runtime


# The TFLite runtime's distributions come from the runtime registry, in the order the agent tries them.
TFLITE_RUNTIMES: tuple[Distribution, ...] = get_runtime("tflite").distributions
_BY_NAME = {r.name: r for r in TFLITE_RUNTIMES}


class RuntimePin(BaseModel):
    """One TFLite runtime at one exact version; the step's params, so the version is in its cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    distribution: str
    version: str

    @field_validator("distribution")
    @classmethod
    def _known(cls, value: str) -> str:
        name = canonicalize_name(value)
        if name not in _BY_NAME:
            raise ValueError(f"{value!r} is not a TFLite runtime edgefleet can check; known: {', '.join(_BY_NAME)}")
        return name

    @field_validator("version")
    @classmethod
    def _exact(cls, value: str) -> str:
        try:
            return str(Version(value))
        except InvalidVersion:
            raise ValueError(f"{value!r} is not an exact version") from None

    @property
    def runtime(self) -> Distribution:
        return _BY_NAME[self.distribution]

    @property
    def requirements(self) -> tuple[str, ...]:
        return (f"{self.distribution}=={self.version}", *self.runtime.companions)

    @property
    def label(self) -> str:
        return f"{self.distribution} {self.version}"


def pinned_tflite_runtime(packages: Sequence[str]) -> RuntimePin | None:
    """The TFLite runtime ``packages`` pin to one exact version (``tflite-runtime==2.14.0``), if any.

    A range (``>=2.14``) pins nothing: the device may get any version in it, so no single one can be checked.
    """
    pins: dict[str, str] = {}
    for text in packages:
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            raise PlanError(f"runtime package {text!r} is not a pip requirement: {exc}") from None
        name = canonicalize_name(requirement.name)
        version = _exact_version(requirement.specifier)
        if name in _BY_NAME and version is not None:
            pins[name] = version
    for runtime in TFLITE_RUNTIMES:
        if runtime.name in pins:
            return RuntimePin(distribution=runtime.name, version=pins[runtime.name])
    return None


def _exact_version(specifier: SpecifierSet) -> str | None:
    specs = list(specifier)
    if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
        return None
    return specs[0].version
