"""The conversion steps: convert, describe the artifact, and gate it against its reference.

Every step takes inputs ``model`` and ``calibration`` (raw uint8 images,
(N,H,W,3) .npy), an optional ``reference`` (the model the artifact must match;
default: ``model``), and the params of ``edgefleet.convert.preprocess.ConversionParams``.
The artifact is always written; a failed fidelity gate marks it invalid.
``tflite.import`` is the exception: a TFLite source is its own variant, copied, not gated.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np

from edgefleet.convert.preprocess import ConversionParams, Layout, conversion_params, load_calibration, model_inputs
from edgefleet.errors import BuildError
from edgefleet.steps.base import StepContext, StepResult

SAVED_MODEL_DIR = "saved_model"
ONNX_FILE = "model.onnx"
OPENVINO_FILE = "model.xml"


@dataclass(frozen=True)
class _Setup:
    params: ConversionParams
    model: Path
    reference: Path
    calibration: np.ndarray   # raw uint8 NHWC images


def _setup(ctx: StepContext) -> _Setup:
    from edgefleet.fidelity.gate import checked_overrides

    params = conversion_params(ctx.params)
    checked_overrides(params.fidelity)  # fail before converting, not after
    model = ctx.input("model")
    limit = max(params.calibration_samples, params.fidelity_samples)
    calibration = load_calibration(ctx.input("calibration"), limit)
    ctx.log(f"{len(calibration)} calibration images {calibration.shape[1]}x{calibration.shape[2]}; "
            f"model input {params.input_spec.name} {list(params.input_spec.shape)} {params.input_spec.layout}")
    return _Setup(params, model, ctx.inputs.get("reference", model), calibration)


def _choice(ctx: StepContext, name: str, allowed: tuple[str, ...], default: str | None = None) -> str:
    value = ctx.params.get(name, default)
    if value is None:
        raise BuildError(f"step {ctx.kind!r} needs param {name!r} (one of {', '.join(allowed)})")
    if value not in allowed:
        raise BuildError(f"step {ctx.kind!r}: param {name}={value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _versions(*dists: str) -> dict[str, str]:
    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _gated(ctx: StepContext, setup: _Setup, artifact: Path, precision: str, files: list[str],
           report: dict[str, Any], versions: dict[str, str]) -> StepResult:
    from edgefleet.fidelity import check_fidelity

    fidelity = check_fidelity(setup.reference, artifact, setup.params.input_spec, setup.calibration,
                              precision=precision, overrides=setup.params.fidelity,
                              samples=setup.params.fidelity_samples)
    for out in fidelity.outputs:
        top1 = "" if out.top1_agreement is None else f" top1={out.top1_agreement:.3f}"
        ctx.log(f"fidelity {out.reference} ~ {out.artifact}: cos_min={out.cosine_min:.6f} "
                f"rel={out.rel_error:.3g} max_abs={out.max_abs_error:.3g}{top1}")
    for reason in fidelity.reasons:
        ctx.log(f"fidelity FAILED: {reason}")
    report = {**report, "fidelity": fidelity.to_dict()}
    return StepResult(files=files, report=report, tool_versions=versions, valid=fidelity.passed,
                      invalid_reasons=[f"fidelity: {r}" for r in fidelity.reasons])


def tflite_convert(ctx: StepContext) -> StepResult:
    """Keras (.keras) or SavedModel -> ``model_<quantization>.tflite``."""
    from edgefleet.analysis.tflite_report import describe_tflite
    from edgefleet.convert.tflite import QUANTIZATIONS, RECIPES, convert_to_tflite

    quantization = _choice(ctx, "quantization", QUANTIZATIONS)
    setup = _setup(ctx)
    representative = None
    if RECIPES[quantization].calibrated:
        images = setup.calibration[:setup.params.calibration_samples]
        representative = model_inputs(images, setup.params.input_spec)
    name = f"model_{quantization}.tflite"
    artifact = ctx.out_dir / name
    artifact.write_bytes(convert_to_tflite(setup.model, quantization, representative, log=ctx.log))
    report = {**describe_tflite(artifact), "conversion": {"converter": "tf.lite", "quantization": quantization,
                                                          "representative_samples": len(representative)
                                                          if representative is not None else 0}}
    return _gated(ctx, setup, artifact, quantization, [name], report,
                  _versions("tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert"))


def savedmodel_export(ctx: StepContext) -> StepResult:
    """Keras (.keras) -> ``saved_model/`` (a directory artifact)."""
    from edgefleet.convert.savedmodel import describe_saved_model, export_saved_model

    setup = _setup(ctx)
    artifact = ctx.out_dir / SAVED_MODEL_DIR
    export_saved_model(setup.model, artifact, log=ctx.log)
    return _gated(ctx, setup, artifact, "fp32", [SAVED_MODEL_DIR], describe_saved_model(artifact),
                  _versions("tensorflow", "tensorflow-cpu", "keras"))


def onnx_from_tf(ctx: StepContext) -> StepResult:
    """Keras (.keras) or SavedModel -> ``model.onnx`` with tf2onnx. Params: ``opset``, ``input_layout``."""
    from edgefleet.convert.onnx import tf_to_onnx

    return _to_onnx(ctx, tf_to_onnx, {"converter": "tf2onnx"},
                    _versions("tf2onnx", "onnx", "tensorflow", "tensorflow-cpu", "keras", "onnxruntime"))


def onnx_from_tflite(ctx: StepContext) -> StepResult:
    """TFLite -> ``model.onnx`` with tf2onnx's TFLite reader. Params: ``opset``, ``input_layout``."""
    from edgefleet.convert.onnx import tflite_to_onnx

    return _to_onnx(ctx, tflite_to_onnx, {"converter": "tf2onnx", "from": "tflite"},
                    _versions("tf2onnx", "onnx", "tensorflow", "tensorflow-cpu", "onnxruntime", "ai-edge-litert"))


def _to_onnx(ctx: StepContext, convert: Callable[..., None], conversion: dict[str, Any],
             versions: dict[str, str]) -> StepResult:
    from edgefleet.analysis.onnx_report import describe_onnx
    from edgefleet.convert.onnx import DEFAULT_OPSET

    setup = _setup(ctx)
    opset = ctx.params.get("opset", DEFAULT_OPSET)
    if not isinstance(opset, int) or not 9 <= opset <= 21:
        raise BuildError(f"step {ctx.kind!r}: param opset={opset!r} must be an integer 9..21")
    layout = cast(Layout, _choice(ctx, "input_layout", ("NHWC", "NCHW"), setup.params.input_spec.layout))
    artifact = ctx.out_dir / ONNX_FILE
    convert(setup.model, artifact, setup.params.input_spec, opset=opset, input_layout=layout, log=ctx.log)
    report = describe_onnx(artifact)
    report["input_layout"] = setup.params.input_spec.layout_of(report["inputs"][0]["shape"])
    report["conversion"] = {**conversion, "opset": opset}
    return _gated(ctx, setup, artifact, "fp32", [ONNX_FILE], report, versions)


def tflite_import(ctx: StepContext) -> StepResult:
    """A .tflite source as the ``model_<quantization>.tflite`` it already is: copied and described.

    Not gated: the source is the reference of every other variant, and a gate against itself measures
    nothing. The report is the source's (digest, ops, I/O), checked against the recipe's input.
    """
    from edgefleet.analysis.tflite_report import describe_tflite
    from edgefleet.convert.tflite import QUANTIZATIONS

    quantization = _choice(ctx, "quantization", QUANTIZATIONS, "fp32")
    spec = conversion_params(ctx.params).input_spec
    source = ctx.input("model")
    report = describe_tflite(source)
    inputs = report["inputs"]
    if len(inputs) != 1:
        raise BuildError(f"{source.name!r} has {len(inputs)} inputs; edgefleet handles one image input")
    if (tuple(inputs[0]["shape"]), inputs[0]["dtype"]) != (tuple(spec.shape), spec.dtype):
        raise BuildError(f"{source.name!r} has input {inputs[0]['name']!r} {inputs[0]['shape']} "
                         f"{inputs[0]['dtype']}; the recipe says {list(spec.shape)} {spec.dtype}")
    name = f"model_{quantization}.tflite"
    shutil.copyfile(source, ctx.out_dir / name)
    ctx.log(f"imported {source.name} as {name}: {report['op_count']} ops, weights "
            f"{', '.join(report['weight_bytes_by_dtype']) or 'none'}")
    report = {**report, "file": name,
              "conversion": {"converter": "import", "quantization": quantization, "source": source.name}}
    return StepResult(files=[name], report=report, tool_versions=_versions("ai-edge-litert"))


def onnx2tf_convert(ctx: StepContext) -> StepResult:
    """ONNX -> ``model_<quantization>.tflite`` + ``saved_model/`` with onnx2tf (NCHW becomes NHWC).

    Param ``primary``: "tflite" (default) or "saved_model" picks the artifact
    listed first and gated; the other is described beside it.
    """
    from edgefleet.analysis.tflite_report import describe_tflite
    from edgefleet.convert.onnx import ONNX2TF_OUTPUTS, onnx_to_tf
    from edgefleet.convert.savedmodel import describe_saved_model

    quantization = _choice(ctx, "quantization", tuple(ONNX2TF_OUTPUTS), "fp32")
    primary = _choice(ctx, "primary", ("tflite", "saved_model"), "tflite")
    setup = _setup(ctx)
    name = f"model_{quantization}.tflite"
    result = onnx_to_tf(setup.model, ctx.out_dir, setup.params.input_spec, setup.calibration, quantization,
                        tflite_name=name, log=ctx.log)
    tflite_report = describe_tflite(result.tflite)
    tflite_report["input_layout"] = setup.params.input_spec.layout_of(tflite_report["inputs"][0]["shape"])
    saved_report = describe_saved_model(result.saved_model)
    conversion = {"converter": "onnx2tf", "quantization": quantization,
                  "keep_input_shape": result.keep_nhwc_input}
    versions = _versions("onnx2tf", "onnx", "onnxsim", "onnxruntime", "tensorflow", "tensorflow-cpu",
                         "tf-keras", "ai-edge-litert")
    if primary == "saved_model":
        report = {**saved_report, "tflite": tflite_report, "conversion": conversion}
        return _gated(ctx, setup, result.saved_model, "fp32", [SAVED_MODEL_DIR, name], report, versions)
    report = {**tflite_report, "saved_model": saved_report, "conversion": conversion}
    return _gated(ctx, setup, result.tflite, quantization, [name, SAVED_MODEL_DIR], report, versions)


def openvino_convert(ctx: StepContext) -> StepResult:
    """ONNX -> ``model.xml`` + ``model.bin``. Param ``precision``: fp32 (default) or fp16 weights."""
    from edgefleet.convert.openvino import PRECISIONS, describe_openvino, onnx_to_openvino

    precision = _choice(ctx, "precision", PRECISIONS, "fp32")
    setup = _setup(ctx)
    artifact = ctx.out_dir / OPENVINO_FILE
    onnx_to_openvino(setup.model, artifact, precision, log=ctx.log)
    report = {**describe_openvino(artifact), "conversion": {"converter": "openvino.convert_model",
                                                            "compress_to_fp16": precision == "fp16"}}
    return _gated(ctx, setup, artifact, precision, [OPENVINO_FILE, artifact.with_suffix(".bin").name], report,
                  _versions("openvino", "onnx", "onnxruntime"))
