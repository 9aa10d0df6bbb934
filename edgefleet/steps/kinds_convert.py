"""The conversion step kinds, for the registry. All run in the ``tf`` builder image."""
from __future__ import annotations

from edgefleet.steps.registry import StepKind

KINDS = [
    StepKind(name="tflite.convert", builder="tf", target="edgefleet.steps.convert:tflite_convert", version=1),
    StepKind(name="savedmodel.export", builder="tf", target="edgefleet.steps.convert:savedmodel_export", version=1),
    StepKind(name="onnx.from_tf", builder="tf", target="edgefleet.steps.convert:onnx_from_tf", version=1),
    StepKind(name="onnx2tf.convert", builder="tf", target="edgefleet.steps.convert:onnx2tf_convert", version=1),
    StepKind(name="openvino.convert", builder="tf", target="edgefleet.steps.convert:openvino_convert", version=1),
]
