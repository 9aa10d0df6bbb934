"""The build planner: a pure function from (recipe, profile, source digests) to a sealed Plan.

Each format in a profile is planned by a function in FORMAT_PLANNERS; the core
loop never names a format, a target family or a transport.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.errors import PlanError
from edgefleet.plan.model import Input, Plan, SourceInput, Step, StepInput, step_key
from edgefleet.profiles.model import Profile
from edgefleet.recipes.model import Recipe
from edgefleet.steps.registry import step_kind


@dataclass(frozen=True)
class PlanInputs:
    """Everything planning needs, already read from disk by the caller."""

    recipe: Recipe
    profile: Profile
    source: SourceInput
    calibration: SourceInput
    # Where each calibration image came from (a recipe's photographs), recorded in every manifest.
    calibration_images: tuple[str, ...] = ()
    builder_versions: Mapping[str, str] = field(default_factory=dict)
    fidelity_samples: int = 8
    # Device-side templates a step renders (name -> file), so a template edit changes the key.
    templates: Mapping[str, SourceInput] = field(default_factory=dict)
    # TensorFlow version -> its op registry (JSON, edgefleet.tftrt.opregistry), one per tftrt format's
    # jetpack_tf_version: frozen graphs are checked against it, and a new registry changes their keys.
    tf_op_registries: Mapping[str, SourceInput] = field(default_factory=dict)


class PlanBuilder:
    """Collects steps; a step requested twice (e.g. the ONNX both openvino and onnx need) is planned once."""

    def __init__(self, inputs: PlanInputs) -> None:
        self.inputs = inputs
        self._steps: dict[str, Step] = {}
        self.notes: list[str] = []

    @property
    def recipe(self) -> Recipe:
        return self.inputs.recipe

    @property
    def profile(self) -> Profile:
        return self.inputs.profile

    def conversion_params(self, fidelity_precision: str, /, **extra: Any) -> dict[str, Any]:
        threshold = self.profile.fidelity.get(fidelity_precision)  # type: ignore[call-overload]
        return {
            "input_spec": self.recipe.input.model_dump(mode="json"),
            "fidelity": threshold.model_dump(exclude_none=True) if threshold else {},
            "fidelity_samples": self.inputs.fidelity_samples,
            "calibration_samples": self.recipe.calibration.samples,
            **({"calibration_images": list(self.inputs.calibration_images)} if self.inputs.calibration_images
               else {}),
            **extra,
        }

    def add(self, step_id: str, kind: str, inputs: Mapping[str, Input], params: Mapping[str, Any],
            *, variant: str | None = None, runtime: str | None = None) -> str:
        existing = self._steps.get(step_id)
        step = Step(step_id, kind, step_kind(kind).builder, dict(params), dict(inputs), variant, runtime)
        if existing is not None:
            if (existing.kind, existing.params, existing.inputs) != (step.kind, step.params, step.inputs):
                raise PlanError(f"two different steps were planned under one id {step_id!r}")
            if variant and not existing.variant:
                self._steps[step_id] = step
            return step_id
        self._steps[step_id] = step
        return step_id

    def seal(self) -> Plan:
        ordered = _topological(self._steps)
        sealed: dict[str, Step] = {}
        for step in ordered:
            digests = {}
            for name, item in step.inputs.items():
                if isinstance(item, SourceInput):
                    digests[name] = item.digest
                else:
                    digests[name] = sealed[item.step_id].key + (f":{item.file}" if item.file else "")
            kind = step_kind(step.kind)
            builder_version = self.inputs.builder_versions.get(step.builder, "unversioned")
            key = step_key(step.kind, kind.version, builder_version, step.params, digests)
            sealed[step.id] = Step(step.id, step.kind, step.builder, step.params, step.inputs,
                                   step.variant, step.runtime, key)
        return Plan(self.profile.name, self.recipe.name, tuple(sealed.values()), tuple(self.notes))


def _topological(steps: Mapping[str, Step]) -> list[Step]:
    order: list[Step] = []
    state: dict[str, int] = {}

    def visit(step_id: str, path: tuple[str, ...]) -> None:
        if state.get(step_id) == 2:
            return
        if state.get(step_id) == 1:
            raise PlanError(f"dependency cycle: {' -> '.join(path + (step_id,))}")
        if step_id not in steps:
            raise PlanError(f"step {path[-1]!r} needs {step_id!r}, which is not planned")
        state[step_id] = 1
        for item in steps[step_id].inputs.values():
            if isinstance(item, StepInput):
                visit(item.step_id, path + (step_id,))
        state[step_id] = 2
        order.append(steps[step_id])

    for step_id in steps:
        visit(step_id, ())
    return order


FormatPlanner = Callable[[PlanBuilder, Any], None]
FORMAT_PLANNERS: dict[str, FormatPlanner] = {}


def format_planner(name: str) -> Callable[[FormatPlanner], FormatPlanner]:
    def register(func: FormatPlanner) -> FormatPlanner:
        FORMAT_PLANNERS[name] = func
        return func
    return register


def plan_build(inputs: PlanInputs) -> Plan:
    from edgefleet.plan import formats  # noqa: F401  (registers the format planners)

    builder = PlanBuilder(inputs)
    for name in type(inputs.profile.formats).model_fields:
        spec = getattr(inputs.profile.formats, name)
        if spec is None:
            continue
        if name not in FORMAT_PLANNERS:
            raise PlanError(f"format {name!r} has no planner")
        FORMAT_PLANNERS[name](builder, spec)
    runtime_planner = FORMAT_PLANNERS.get("runtime")
    if runtime_planner is not None:
        runtime_planner(builder, inputs.profile.runtime)
    return builder.seal()
