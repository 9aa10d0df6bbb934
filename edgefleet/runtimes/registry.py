"""The registry itself: every module of this package with a ``SPEC`` is a runtime, found by name, so
adding a runtime is adding one module."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import edgefleet.runtimes as package
from edgefleet.config.validate import did_you_mean
from edgefleet.runtimes.base import RuntimeSpec

_NOT_RUNTIMES = {"base", "registry"}


def _discover() -> dict[str, RuntimeSpec]:
    specs = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name in _NOT_RUNTIMES:
            continue
        spec = getattr(importlib.import_module(f"{package.__name__}.{info.name}"), "SPEC", None)
        if isinstance(spec, RuntimeSpec):
            specs[spec.name] = spec
    return specs


_REGISTRY: dict[str, RuntimeSpec] = _discover()


def all_runtimes() -> tuple[RuntimeSpec, ...]:
    return tuple(_REGISTRY.values())


def _unknown(kind: str, name: str, known: list[str]) -> KeyError:
    return KeyError(f"unknown {kind} {name!r}{did_you_mean(name, known)}; known: {', '.join(sorted(known))}")


def get_runtime(name: str) -> RuntimeSpec:
    """By agent plug-in name (a Variant's runtime)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise _unknown("runtime", name, list(_REGISTRY)) from None


def runtime_for_profile(name: str) -> RuntimeSpec:
    """By the name a profile's `runtime.name` uses (tflite-runtime, ai-edge-litert, tensorflow...)."""
    for spec in _REGISTRY.values():
        if name in spec.profile_names:
            return spec
    raise _unknown("runtime", name, [n for s in _REGISTRY.values() for n in s.profile_names])


def delegate_names() -> tuple[str, ...]:
    return tuple(sorted({d for spec in _REGISTRY.values() for d in spec.delegates}))


def device_templates() -> dict[str, str]:
    return {name: path for spec in _REGISTRY.values() for name, path in spec.templates.items()}


def ships_wheels(runtime: Any) -> bool:
    """Does deploy push a wheelhouse for this profile runtime (else the device provides it)?"""
    return runtime.provided_by == "wheelhouse" and bool(runtime.packages)
