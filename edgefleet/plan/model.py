"""Plan data: steps, their inputs, and their content-addressed keys."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SourceInput:
    """A file from the workspace (model source, calibration data), known by its digest."""

    path: Path
    digest: str


@dataclass(frozen=True)
class StepInput:
    """The output of another step; ``file`` picks one of its files (default: its primary file)."""

    step_id: str
    file: str | None = None


Input = SourceInput | StepInput


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Step:
    id: str                        # unique in the plan, human readable: "tflite/fp16"
    kind: str                      # the step kind in the registry
    builder: str                   # the builder image it needs
    params: Mapping[str, Any]
    inputs: Mapping[str, Input]
    variant: str | None = None     # set when the output is a deployable model variant
    runtime: str | None = None     # the agent runtime that runs the variant
    key: str = ""                  # filled by Plan.seal()

    def describe_inputs(self) -> str:
        parts = []
        for name, item in sorted(self.inputs.items()):
            ref = item.step_id + (f":{item.file}" if item.file else "") if isinstance(item, StepInput) \
                else item.path.name
            parts.append(f"{name}={ref}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Plan:
    target: str
    model: str
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = field(default=())

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def dependencies(self, step: Step) -> list[str]:
        return [i.step_id for i in step.inputs.values() if isinstance(i, StepInput)]

    @property
    def variants(self) -> list[Step]:
        return [s for s in self.steps if s.variant]


def step_key(kind: str, kind_version: int, builder_version: str, params: Mapping[str, Any],
             input_digests: Mapping[str, str]) -> str:
    """sha256 of (step kind, builder version, params, input digests): the artifact's address."""
    payload = canonical_json({
        "kind": kind, "kind_version": kind_version, "builder": builder_version,
        "params": params, "inputs": dict(sorted(input_digests.items())),
    })
    return hashlib.sha256(payload.encode()).hexdigest()
