"""What the host knows about each on-device runtime, in one place: the agent plug-in that runs its
variants, the profile names and formats it answers to, the device-side Python modules doctor looks for,
its delegates (and what each sends to the device), where it comes from (wheels or the device), and the
device templates its steps render. Adding a runtime is adding one module to this package."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Source = Literal["wheelhouse", "device"]


@dataclass(frozen=True)
class DelegateSpec:
    """How the agent loads a delegate; ``payload`` None is the runtime's default CPU path."""

    payload: Mapping[str, Any] | None = None
    only_variants: frozenset[str] | None = None   # variants it makes sense for (None: every variant)


@dataclass(frozen=True)
class Distribution:
    """A package that provides the runtime on a device, and the module its models load through."""

    name: str                                  # canonical PyPI name
    module: str
    companions: tuple[str, ...] = ()           # what its wheel needs beside its declared requirements


@dataclass(frozen=True)
class RuntimeSpec:
    name: str                                  # the agent plug-in that runs its variants: a Variant's runtime
    profile_names: tuple[str, ...]             # what a profile's `runtime.name` may call it
    formats: tuple[str, ...]                   # profile formats whose variants it runs
    device_modules: tuple[str, ...]            # any one of them on the device can run them
    delegates: Mapping[str, DelegateSpec]
    sources: tuple[Source, ...] = ("wheelhouse", "device")   # where a profile may say it comes from
    templates: Mapping[str, str] = field(default_factory=dict)  # device template name -> path under templates/
    # Variants that cannot run without their accelerator (the compiled Edge TPU model is one custom op).
    accelerator_only: Mapping[str, str] = field(default_factory=dict)
    agent: bool = True                         # False: no Python on the device; a vendor binary measures
    # Packages that provide it, in the order the agent tries them (a build check loads models with these).
    distributions: tuple[Distribution, ...] = ()

    def delegate(self, name: str, variant: str) -> DelegateSpec | None:
        """The delegate for this variant, or None when the pair makes no cell."""
        spec = self.delegates.get(name)
        if spec is None or (spec.only_variants is not None and variant not in spec.only_variants):
            return None
        needed = self.accelerator_only.get(variant)
        return spec if needed is None or needed == name else None
