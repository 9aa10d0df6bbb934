"""Step kinds: name -> implementation, loaded lazily so planning never imports a converter."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from edgefleet.errors import PlanError
from edgefleet.steps.base import StepFunction


@dataclass(frozen=True)
class StepKind:
    name: str
    # builders/<builder>/ is the image it runs in. This table is the only place that says so:
    # builder.yaml lists no kinds, a builder's spec asks kinds_in_builder().
    builder: str
    target: str           # "package.module:function"
    version: int = 1      # bump when the step's output for the same inputs changes


STEP_KINDS: dict[str, StepKind] = {}


def register(kind: StepKind) -> None:
    STEP_KINDS[kind.name] = kind


def step_kind(name: str) -> StepKind:
    try:
        return STEP_KINDS[name]
    except KeyError:
        raise PlanError(f"unknown step kind {name!r}; known: {', '.join(sorted(STEP_KINDS))}") from None


def kinds_in_builder(builder: str) -> tuple[str, ...]:
    """The step kinds that run in ``builders/<builder>/``'s image, in registration order."""
    return tuple(kind.name for kind in STEP_KINDS.values() if kind.builder == builder)


def resolve_step(name: str) -> StepFunction:
    module_name, _, func = step_kind(name).target.partition(":")
    return getattr(importlib.import_module(module_name), func)


def _register_all() -> None:
    # Implementations import their converters inside the function, so this table is cheap.
    for kind in (
        StepKind("tflite.convert", "tf", "edgefleet.steps.convert:tflite_convert"),
        StepKind("savedmodel.export", "tf", "edgefleet.steps.convert:savedmodel_export"),
        StepKind("onnx.from_tf", "tf", "edgefleet.steps.convert:onnx_from_tf"),
        StepKind("onnx.import", "tf", "edgefleet.steps.source:onnx_import"),
        StepKind("onnx.from_tflite", "tf", "edgefleet.steps.convert:onnx_from_tflite"),
        StepKind("tflite.import", "tf", "edgefleet.steps.convert:tflite_import"),
        StepKind("onnx2tf.convert", "tf", "edgefleet.steps.convert:onnx2tf_convert"),
        StepKind("openvino.convert", "tf", "edgefleet.steps.convert:openvino_convert"),
        StepKind("edgetpu.preflight", "tf", "edgefleet.steps.edgetpu:edgetpu_preflight"),
        StepKind("edgetpu.compile", "edgetpu", "edgefleet.steps.edgetpu:edgetpu_compile"),
        StepKind("tftrt.freeze", "tftrt-prep", "edgefleet.steps.tftrt:tftrt_freeze", version=2),  # deterministic bytes
        StepKind("tftrt.rewrite", "tftrt-prep", "edgefleet.steps.tftrt:tftrt_rewrite", version=3),  # + script beside, deterministic bytes
        StepKind("tftrt.device_script", "tftrt-prep", "edgefleet.steps.tftrt:tftrt_device_script"),
        StepKind("runtime.wheelhouse", "runtime", "edgefleet.steps.runtime:runtime_wheelhouse"),
        # Needs PyPI (the pinned runtime's x86_64 wheel) but no converter: the runtime image has both.
        StepKind("tflite.runtime_compat", "runtime", "edgefleet.steps.compat:tflite_runtime_compat"),
        StepKind("android.aar", "android-aar", "edgefleet.steps.android:android_aar", version=2),  # + benchmark_model
        # Not planned: it probes the environment a backend gives its steps, in any builder (tf has TensorFlow
        # for params.convert).
        StepKind("probe.env", "tf", "edgefleet.steps.probe:probe_env"),
    ):
        register(kind)


_register_all()
