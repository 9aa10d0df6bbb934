"""Predict, before compiling, where the Edge TPU compiler's single TPU partition will end.

The compiler maps ops in execution order and cuts the graph once: from the first
op it cannot map, everything runs on the CPU ("More than one subgraph is not
supported"). This module reads a full-int8 ``.tflite`` flatbuffer, checks each op
against the documented requirements, and reports every finding with the usual
fix, the first op that ends the partition, and the predicted TPU/CPU op counts.
It is a prediction from documented rules, not the compiler: the compiler's own
report (see ``logparse``) is what counts once a compiler is available.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field

from edgefleet.edgetpu.logparse import KNOWN_STATUSES, MAPPED, OperatorRow
from edgefleet.errors import BuildError

SUPPORTED_OPS_SOURCE = (
    "coral.ai, 'TensorFlow models on the Edge TPU', section 'Supported operations' "
    "(https://coral.ai/docs/edgetpu/models-intro/#supported-operations), table for Edge TPU compiler 16; "
    "names translated to TFLite BuiltinOperator names"
)

# TFLite builtin op -> the limitation the Coral table documents for it ("" when none).
EDGETPU_SUPPORTED_OPS: Mapping[str, str] = {
    "ADD": "",
    "AVERAGE_POOL_2D": "No fused activation function.",
    "CONCATENATION": "No fused activation function. A compile-time constant input must be all zeros "
                     "and the only other input.",
    "CONV_2D": "Must use the same dilation in x and y dimensions.",
    "DEPTHWISE_CONV_2D": "Must use the same dilation in x and y dimensions.",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "Only the default format for fully-connected weights. Output tensor is one-dimensional.",
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "Unidirectional LSTM only.",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "Unidirectional LSTM only.",
    "MAXIMUM": "",
    "MAX_POOL_2D": "No fused activation function.",
    "MEAN": "No reduction in the batch dimension; a z-reduction needs a z-dimension that is a multiple of 4.",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "No packing in the batch dimension.",
    "PAD": "No padding in the batch dimension.",
    "PRELU": "Alpha must be 1-dimensional (Keras PReLU on 4-D input needs shared_axes=[1, 2]).",
    "QUANTIZE": "",
    "REDUCE_MAX": "Cannot operate on the batch dimension.",
    "REDUCE_MIN": "Cannot operate on the batch dimension.",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "Certain reshapes might not be mapped for large tensor sizes.",
    "RESIZE_BILINEAR": "Input/output is a 3-dimensional tensor; may stay on the CPU to avoid precision loss.",
    "RESIZE_NEAREST_NEIGHBOR": "Input/output is a 3-dimensional tensor; may stay on the CPU to avoid precision loss.",
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "Supports only a 1-D input tensor with at most 16,000 elements.",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "No splitting in the batch dimension.",
    "SQUEEZE": "Only when no relayout is needed (the squeezed dimensions are leading 1s).",
    "STRIDED_SLICE": "All strides must be 1 (effectively a Slice), with ellipsis_mask == 0 and new_axis_mask == 0.",
    "SUB": "",
    "SUM": "Cannot operate on the batch dimension.",
    "SQUARED_DIFFERENCE": "",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}

DETECTION_POSTPROCESS = "TFLite_Detection_PostProcess"
_INTEGER_DATA_TYPES = frozenset({"INT8", "UINT8"})
# Integer parameter tensors (bias, shape, axis, paddings, strides) are compile-time constants, not data.
_CONSTANT_PARAM_TYPES = frozenset({"INT32", "INT64"})
_NO_FUSED_ACTIVATION = frozenset({"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"})

_FULL_INT8_FIX = ("quantize the whole model to int8: converter.optimizations=[tf.lite.Optimize.DEFAULT], a "
                  "representative_dataset, converter.target_spec.supported_ops=[tf.lite.OpsSet.TFLITE_BUILTINS_INT8], "
                  "converter.inference_input_type=tf.uint8 and converter.inference_output_type=tf.uint8")

_OP_FIXES: Mapping[str, str] = {
    "LEAKY_RELU": "replace LeakyReLU with ReLU, or with PReLU (shared_axes=[1, 2]) which the Edge TPU maps, "
                  "then fine-tune",
    "HARD_SWISH": "replace hard-swish with ReLU or ReLU6, then fine-tune",
    "TILE": "avoid tile: Keras UpSampling2D(interpolation='nearest') lowers to reshape+tile; use "
            "tf.compat.v1.image.resize_nearest_neighbor(x, size, half_pixel_centers=False) instead",
    "DEQUANTIZE": _FULL_INT8_FIX,
    "ARG_MAX": "take the argmax in CPU post-processing instead of inside the model",
    "EXP": "move the exponential into CPU post-processing or replace it with a supported activation",
    "DIV": "replace the division by a multiplication with a constant reciprocal",
    "GATHER": "replace gather with a slice or move it into CPU post-processing",
}


class Problem(str, Enum):
    UNSUPPORTED_OP = "unsupported-op"
    DATA_TYPE = "unsupported-data-type"
    DYNAMIC_SHAPE = "dynamic-shape"
    TENSOR_RANK = "tensor-rank"
    STRIDED_SLICE = "non-unit-strides"
    RESIZE_HALF_PIXEL = "resize-half-pixel-centers"
    FUSED_ACTIVATION = "fused-activation"
    DETECTION_POSTPROCESS = "detection-postprocess"
    FLOAT_INPUT_QUANTIZE = "float-input-quantize"
    FLOAT_OUTPUT_DEQUANTIZE = "float-output-dequantize"


# The status the compiler prints for each problem. For the boundary quantize/dequantize the real
# mobilenet_v2_integer_quant log shows exactly these; resize with half_pixel_centers is a newer op
# version, which the yolov3-tiny log reports as "Operation version not supported".
_STATUS: Mapping[Problem, str] = {
    Problem.UNSUPPORTED_OP: "Operation not supported",
    Problem.DATA_TYPE: "Operation is working on an unsupported data type",
    Problem.DYNAMIC_SHAPE: "Operation is otherwise supported, but not mapped due to some unspecified limitation",
    Problem.TENSOR_RANK: "Tensor has unsupported rank (up to 3 innermost dimensions mapped)",
    Problem.STRIDED_SLICE: "Only Strided-Slice with unitary strides supported",
    Problem.RESIZE_HALF_PIXEL: "Operation version not supported",
    Problem.FUSED_ACTIVATION: "Operation is otherwise supported, but not mapped due to some unspecified limitation",
    Problem.DETECTION_POSTPROCESS: "Operation is working on an unsupported data type",
    Problem.FLOAT_INPUT_QUANTIZE: "Operation is otherwise supported, but not mapped due to some unspecified limitation",
    Problem.FLOAT_OUTPUT_DEQUANTIZE: "Operation is working on an unsupported data type",
}
_AFTER_CUT = "More than one subgraph is not supported"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Finding(_Frozen):
    op_index: int
    op_name: str
    problem: Problem
    explanation: str
    fix: str
    # False for problems that leave the op on the CPU without cutting the TPU partition
    # (a float input's QUANTIZE, a float output's DEQUANTIZE, a dynamic batch dimension).
    breaks_partition: bool = True
    tensors: tuple[str, ...] = ()

    def summary(self) -> str:
        return f"op {self.op_index} {self.op_name}: {self.problem.value}: {self.explanation} Fix: {self.fix}"


class OpPrediction(_Frozen):
    index: int
    name: str
    placement: str  # "tpu" or "cpu"
    status: str     # the status string the compiler would print for it


class PreflightReport(_Frozen):
    model: str
    supported_ops_source: str = SUPPORTED_OPS_SOURCE
    ops: tuple[OpPrediction, ...]
    findings: tuple[Finding, ...]
    first_unmappable_op: int | None
    first_unmappable_op_name: str | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def predicted_tpu_ops(self) -> int:
        return sum(1 for op in self.ops if op.placement == "tpu")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def predicted_cpu_ops(self) -> int:
        return sum(1 for op in self.ops if op.placement == "cpu")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def predicted_fully_mapped(self) -> bool:
        return bool(self.ops) and self.predicted_cpu_ops == 0

    @property
    def predicted_table(self) -> list[OperatorRow]:
        """The prediction in the shape of the compiler's "Operator Count Status" table."""
        counts = Counter((op.name, op.status) for op in self.ops)
        return [OperatorRow(operator=name, count=n, status=status, known_status=status in KNOWN_STATUSES)
                for (name, status), n in counts.items()]

    def findings_for(self, op_index: int) -> list[Finding]:
        return [f for f in self.findings if f.op_index == op_index]

    def summary(self) -> dict[str, Any]:
        return {
            "first_unmappable_op": self.first_unmappable_op,
            "first_unmappable_op_name": self.first_unmappable_op_name,
            "predicted_tpu_ops": self.predicted_tpu_ops,
            "predicted_cpu_ops": self.predicted_cpu_ops,
            "predicted_fully_mapped": self.predicted_fully_mapped,
            "n_findings": len(self.findings),
            "findings": [f.summary() for f in self.findings],
        }


def preflight(model_path: Path) -> PreflightReport:
    """Check a full-int8 ``.tflite`` against the Edge TPU's documented requirements."""
    model = _TfliteModel.load(model_path)
    findings: list[Finding] = []
    for index in range(model.n_ops):
        findings.extend(_check_op(model, index))
    findings = _once_per_model_dynamic_batch(findings)
    breaking = sorted({f.op_index for f in findings if f.breaks_partition})
    cut = breaking[0] if breaking else None
    predictions = []
    for index in range(model.n_ops):
        op_findings = [f for f in findings if f.op_index == index]
        if cut is not None and index > cut:
            # A later op's own problem (if any) is moot: it is already on the CPU.
            placement, status = "cpu", _AFTER_CUT
        elif cut is not None and index == cut:
            first = next(f for f in op_findings if f.breaks_partition)
            placement, status = "cpu", _STATUS[first.problem]
        else:
            cpu_findings = [f for f in op_findings if f.problem in
                            (Problem.FLOAT_INPUT_QUANTIZE, Problem.FLOAT_OUTPUT_DEQUANTIZE)]
            placement, status = ("cpu", _STATUS[cpu_findings[0].problem]) if cpu_findings else ("tpu", MAPPED)
        predictions.append(OpPrediction(index=index, name=model.op_name(index), placement=placement, status=status))
    return PreflightReport(
        model=model_path.name,
        ops=tuple(predictions),
        findings=tuple(findings),
        first_unmappable_op=cut,
        first_unmappable_op_name=None if cut is None else model.op_name(cut),
    )


def _once_per_model_dynamic_batch(findings: list[Finding]) -> list[Finding]:
    # A dynamic batch dimension runs through every op; saying so once is enough.
    kept: list[Finding] = []
    seen = False
    for f in findings:
        if f.problem is Problem.DYNAMIC_SHAPE and not f.breaks_partition:
            if seen:
                continue
            seen = True
        kept.append(f)
    return kept


def _check_op(model: _TfliteModel, index: int) -> list[Finding]:
    name = model.op_name(index)
    op = model.operators[index]
    found: list[Finding] = []

    def add(problem: Problem, explanation: str, fix: str, *, breaks: bool = True,
            tensors: Sequence[str] = ()) -> None:
        found.append(Finding(op_index=index, op_name=name, problem=problem, explanation=explanation,
                             fix=fix, breaks_partition=breaks, tensors=tuple(tensors)))

    boundary = _boundary_problem(model, index, name)
    if boundary is not None:
        problem, explanation, fix = boundary
        add(problem, explanation, fix, breaks=False)
        return found

    if name == DETECTION_POSTPROCESS:
        add(Problem.DETECTION_POSTPROCESS,
            "the SSD post-processing custom op (box decoding + NMS) runs on the CPU; every op after it does too.",
            "move NMS out of the model into CPU post-processing, or keep it as the model's last op so it "
            "cuts nothing off the TPU partition")
    elif name not in EDGETPU_SUPPORTED_OPS:
        add(Problem.UNSUPPORTED_OP, f"{name} is not in the Edge TPU's supported operations table.",
            _OP_FIXES.get(name, f"replace {name} with supported ops, or move it after every TPU op "
                                "(into CPU post-processing) so it does not cut the TPU partition short"))

    float_tensors = [model.tensor_label(t) for t in model.op_tensors(index)
                     if not _integer_ok(model, t)]
    if float_tensors:
        types = sorted({model.tensor_type(t) for t in model.op_tensors(index) if not _integer_ok(model, t)})
        add(Problem.DATA_TYPE, f"{'/'.join(types)} tensor(s) on the data path; the Edge TPU computes in int8/uint8 "
                               "only.", _FULL_INT8_FIX, tensors=float_tensors)

    activations = model.op_tensors(index, activations_only=True)
    signatures = {t: model.shape_signature(t) or () for t in activations}
    dynamic = [t for t in activations if -1 in signatures[t]]
    if dynamic:
        only_batch = all(-1 not in signatures[t][1:] for t in dynamic)
        shown = ", ".join(str(list(signatures[t])) for t in dynamic)
        add(Problem.DYNAMIC_SHAPE,
            f"shape signature(s) {shown} have a dynamic dimension; the Edge TPU needs sizes fixed at compile "
            "time." + (" Only the batch dimension is dynamic and the stored shape fixes it, so the compiler uses "
                       "that." if only_batch else ""),
            "give the model a fixed input shape before converting (keras.Input(shape=..., batch_size=1), or a "
            "concrete function with a fully defined input signature)",
            breaks=not only_batch, tensors=[model.tensor_label(t) for t in dynamic])
    too_deep = [t for t in activations if len(model.shape(t)) > 3 and any(d != 1 for d in model.shape(t)[:-3])]
    if too_deep:
        shapes = ", ".join(str(list(model.shape(t))) for t in too_deep)
        add(Problem.TENSOR_RANK,
            f"tensor shape(s) {shapes} have a dimension larger than 1 outside the innermost three; only the 3 "
            "innermost dimensions may exceed 1.",
            "reshape so at most the 3 innermost dimensions exceed 1 (fold the extra dimension into another); "
            "5-D tensors typically come from UpSampling2D(nearest) lowered to reshape+tile",
            tensors=[model.tensor_label(t) for t in too_deep])

    if name == "STRIDED_SLICE":
        _check_strided_slice(model, index, add)
    if name in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR") and getattr(op.builtinOptions, "halfPixelCenters", False):
        add(Problem.RESIZE_HALF_PIXEL,
            f"{name} with half_pixel_centers=True (the TF2 default of tf.image.resize and Keras UpSampling2D) is an "
            "op version the Edge TPU compiler does not map.",
            "set half_pixel_centers=False: resize with tf.compat.v1.image.resize(x, size) (which keeps "
            "half_pixel_centers=False), or tf.compat.v1.image.resize_bilinear / resize_nearest_neighbor(..., "
            "half_pixel_centers=False), instead of tf.image.resize or Keras UpSampling2D")
    if name in _NO_FUSED_ACTIVATION and getattr(op.builtinOptions, "fusedActivationFunction", 0):
        add(Problem.FUSED_ACTIVATION, f"{name} has a fused activation; the Edge TPU maps it only without one.",
            "apply the activation before the pooling/concatenation, as its own op")
    return found


def _boundary_problem(model: _TfliteModel, index: int, name: str) -> tuple[Problem, str, str] | None:
    """A float graph input's QUANTIZE or a float graph output's DEQUANTIZE: CPU, but it cuts nothing."""
    op = model.operators[index]
    if name == "QUANTIZE" and op.inputs[0] in model.graph_inputs and model.tensor_type(op.inputs[0]) == "FLOAT32":
        return (Problem.FLOAT_INPUT_QUANTIZE,
                "the model takes float input, so its first QUANTIZE runs on the CPU (the rest can still map).",
                "convert with converter.inference_input_type=tf.uint8 so the model takes quantized input")
    if name == "DEQUANTIZE" and op.outputs[0] in model.graph_outputs and model.tensor_type(op.outputs[0]) == "FLOAT32":
        return (Problem.FLOAT_OUTPUT_DEQUANTIZE,
                "the model returns float output, so its last DEQUANTIZE runs on the CPU.",
                "convert with converter.inference_output_type=tf.uint8 and dequantize in post-processing")
    return None


def _check_strided_slice(model: _TfliteModel, index: int, add: Callable[..., None]) -> None:
    op = model.operators[index]
    strides = model.constant_values(op.inputs[3]) if len(op.inputs) > 3 else None
    if strides is None:
        add(Problem.STRIDED_SLICE, "the strides are not a compile-time constant.", "use constant unit strides")
    elif any(s != 1 for s in strides):
        add(Problem.STRIDED_SLICE, f"strides {list(strides)} are not all 1; the Edge TPU maps only unit strides.",
            "use unit strides: slice with step 1, and downsample with a stride-2 convolution or pooling instead of "
            "x[:, ::2, ::2, :]")
    options = op.builtinOptions
    if getattr(options, "ellipsisMask", 0) or getattr(options, "newAxisMask", 0):
        add(Problem.STRIDED_SLICE, "the slice uses an ellipsis or new-axis mask, which the Edge TPU does not map.",
            "spell out every axis in the slice and add axes with a reshape")


def _integer_ok(model: _TfliteModel, t: int) -> bool:
    kind = model.tensor_type(t)
    return kind in _INTEGER_DATA_TYPES or (kind in _CONSTANT_PARAM_TYPES and model.is_constant(t))


class _TfliteModel:
    """The main subgraph of a .tflite flatbuffer, through the generated schema's object API."""

    def __init__(self, data: bytes, schema: Any, path: Path) -> None:
        self._data = data
        self._schema = schema
        try:
            self._model = schema.ModelT.InitFromPackedBuf(data, 0)
        except Exception as exc:  # a truncated or foreign flatbuffer fails anywhere inside the generated code
            raise BuildError(f"{path}: cannot read the TFLite flatbuffer: {exc}") from None
        if not self._model.subgraphs:
            raise BuildError(f"{path}: the TFLite model has no subgraph")
        self._graph = self._model.subgraphs[0]
        self.operators = list(self._graph.operators or [])
        self.graph_inputs = set(_ints(self._graph.inputs))
        self.graph_outputs = set(_ints(self._graph.outputs))
        self._op_names = _enum_names(schema.BuiltinOperator)
        self._type_names = _enum_names(schema.TensorType)

    @classmethod
    def load(cls, path: Path) -> _TfliteModel:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BuildError(f"cannot read the model {path}: {exc.strerror}") from None
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise BuildError(f"{path} is not a TFLite flatbuffer (no 'TFL3' identifier)")
        return cls(data, _schema(), path)

    @property
    def n_ops(self) -> int:
        return len(self.operators)

    def op_name(self, index: int) -> str:
        code = self._model.operatorCodes[self.operators[index].opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = self._op_names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM" and code.customCode:
            custom = code.customCode
            return custom.decode() if isinstance(custom, bytes) else str(custom)
        return name

    def op_tensors(self, index: int, *, activations_only: bool = False) -> list[int]:
        op = self.operators[index]
        tensors = [t for t in [*_ints(op.inputs), *_ints(op.outputs)] if t >= 0]
        return [t for t in tensors if not (activations_only and self.is_constant(t))]

    def tensor_type(self, t: int) -> str:
        kind = self._graph.tensors[t].type
        return self._type_names.get(kind, f"TYPE_{kind}")

    def tensor_label(self, t: int) -> str:
        name = self._graph.tensors[t].name
        name = name.decode() if isinstance(name, bytes) else str(name)
        return f"{name} ({self.tensor_type(t)})"

    def shape(self, t: int) -> tuple[int, ...]:
        return tuple(_ints(self._graph.tensors[t].shape))

    def shape_signature(self, t: int) -> tuple[int, ...] | None:
        signature = self._graph.tensors[t].shapeSignature
        return None if signature is None or len(signature) == 0 else tuple(_ints(signature))

    def _buffer(self, t: int) -> Any:
        index = self._graph.tensors[t].buffer
        return self._model.buffers[index] if 0 < index < len(self._model.buffers) else None

    def is_constant(self, t: int) -> bool:
        buffer = self._buffer(t)
        if buffer is None:
            return False
        # Models over 2 GB keep buffer data outside the flatbuffer, addressed by offset/size.
        return (buffer.data is not None and len(buffer.data) > 0) or getattr(buffer, "offset", 0) > 1

    def constant_values(self, t: int) -> list[int] | None:
        import numpy as np

        buffer = self._buffer(t)
        if buffer is None:
            return None
        if buffer.data is not None and len(buffer.data) > 0:
            raw = bytes(np.asarray(buffer.data, dtype=np.uint8))
        elif getattr(buffer, "offset", 0) > 1:
            raw = self._data[buffer.offset:buffer.offset + buffer.size]
        else:
            return None
        dtype = {"INT32": "<i4", "INT64": "<i8"}.get(self.tensor_type(t))
        return None if dtype is None else [int(v) for v in np.frombuffer(raw, dtype=dtype)]


def _schema() -> Any:
    # LiteRT's copy of the generated schema needs only flatbuffers; TF's copy drags in all of TensorFlow.
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        try:
            from tensorflow.lite.python import schema_py_generated  # type: ignore[no-redef]
        except ImportError:
            raise BuildError("reading .tflite files needs the TFLite flatbuffer schema: install ai-edge-litert "
                             "or tensorflow") from None
    return schema_py_generated


def _enum_names(enum_class: type) -> dict[int, str]:
    return {value: key for key, value in vars(enum_class).items()
            if not key.startswith("_") and isinstance(value, int)}


def _ints(values: Any) -> list[int]:
    return [] if values is None else [int(v) for v in values]
