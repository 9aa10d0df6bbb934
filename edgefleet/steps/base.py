"""The contract between the executor and a step implementation.

A step function takes a StepContext and returns a StepResult. It reads only its
inputs, writes only into ``ctx.out_dir`` and reports through ``ctx.log``. It runs
in a child process (``python -m edgefleet.steps.process SPEC``), locally or in a container,
so it may import heavy converters freely.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.errors import BuildError


@dataclass(frozen=True)
class StepContext:
    kind: str
    inputs: Mapping[str, Path]
    params: Mapping[str, Any]
    out_dir: Path
    log: Callable[[str], None] = print

    def input(self, name: str) -> Path:
        try:
            return self.inputs[name]
        except KeyError:
            raise BuildError(f"step {self.kind!r} needs input {name!r}; it got {sorted(self.inputs)}") from None


@dataclass
class StepResult:
    """What a step made. ``files`` are relative to out_dir, the primary artifact first."""

    files: list[str]
    report: dict[str, Any] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    # False when the fidelity gate (or another check) failed: the artifact is kept but marked invalid.
    valid: bool = True
    invalid_reasons: list[str] = field(default_factory=list)
    # Files a device needs beside the primary one (deploy ships them into the same folder).
    device_files: list[str] = field(default_factory=list)


StepFunction = Callable[[StepContext], StepResult]
