"""One planner per format: which steps make each variant a profile asks for.

What a step needs depends on the recipe's source format; the tables below say
which converter takes which source, so adding a source format is a table edit.
"""
from __future__ import annotations

from collections.abc import Callable

from edgefleet.compat.runtimes import pinned_tflite_runtime
from edgefleet.errors import PlanError
from edgefleet.plan.model import Input, StepInput
from edgefleet.plan.planner import PlanBuilder, format_planner
from edgefleet.profiles import model as pm
from edgefleet.runtimes import ships_wheels
from edgefleet.store import MANIFEST

TFLITE_FROM = {"keras": "tflite.convert", "savedmodel": "tflite.convert", "onnx": "onnx2tf.convert",
               "tflite": "tflite.convert"}
# (source format, quantization) a source already is: that variant is the source itself, imported unchanged.
TFLITE_AS_IS = {("tflite", "fp32"): "tflite.import"}
ONNX2TF_QUANTIZATIONS = ("fp32", "fp16")
ONNX_FROM = {"keras": "onnx.from_tf", "savedmodel": "onnx.from_tf", "onnx": "onnx.import",
             "tflite": "onnx.from_tflite"}
SAVEDMODEL_FROM = {"keras": "savedmodel.export", "onnx": "onnx2tf.convert", "tflite": "onnx2tf.convert"}
FROZEN_FROM = {"keras": "tftrt.freeze", "savedmodel": "tftrt.freeze"}
# (source format, converter) -> the intermediate the converter reads instead of the source, one of
# INTERMEDIATES. Nothing quantizes a .tflite directly, so a TFLite source goes TFLite -> ONNX (tf2onnx)
# -> SavedModel (onnx2tf) -> TFLite (the TF converter, calibrated).
READS = {("tflite", "onnx2tf.convert"): "onnx", ("tflite", "tflite.convert"): "savedmodel"}
# Source formats whose converted variants are gated against the source rather than the intermediate
# they read: a TFLite source's variants pass through two converters before the quantizer, and the gate
# must see what the whole chain changed. (Other sources' openvino steps keep their ONNX as the reference.)
GATED_AGAINST_SOURCE = {"tflite"}
# Params a converter kind needs in one role beside conversion_params.
ONNX_PARAMS = {
    # onnx2tf gives an NCHW ONNX input back as NHWC with no TRANSPOSE; from the TFLite's own NHWC input
    # it would make [1,H,C,W] and a TRANSPOSE.
    "onnx.from_tflite": {"input_layout": "NCHW"},
}
SAVEDMODEL_PARAMS = {
    # onnx2tf makes a TFLite and a SavedModel; here the SavedModel is the artifact it gates.
    "onnx2tf.convert": {"quantization": "fp32", "primary": "saved_model"},
}


def _converter(b: PlanBuilder, table: dict[str, str], what: str) -> str:
    fmt = b.recipe.source.format
    if fmt not in table:
        takes = ", ".join(sorted(table))
        raise PlanError(f"target {b.profile.name!r} asks for {what}, which edgefleet makes from a "
                        f"{takes} source; model {b.recipe.name!r} is {fmt}")
    return table[fmt]


def _model_inputs(b: PlanBuilder, kind: str) -> dict[str, Input]:
    """What converter ``kind`` reads: the source, or the intermediate READS names for it."""
    intermediate = READS.get((b.recipe.source.format, kind))
    if intermediate is None:
        return {"model": b.inputs.source, "calibration": b.inputs.calibration}
    return _reading(b, INTERMEDIATES[intermediate](b))


def _reading(b: PlanBuilder, step_id: str) -> dict[str, Input]:
    """The inputs of a conversion of step ``step_id``'s output."""
    inputs: dict[str, Input] = {"model": StepInput(step_id), "calibration": b.inputs.calibration}
    if b.recipe.source.format in GATED_AGAINST_SOURCE:
        inputs["reference"] = b.inputs.source
    return inputs


def tflite_step(b: PlanBuilder, quantization: str) -> str:
    """Plan the ``tflite-<quantization>`` variant; returns the id of the step that converts it."""
    kind = TFLITE_AS_IS.get((b.recipe.source.format, quantization)) \
        or _converter(b, TFLITE_FROM, f"tflite {quantization}")
    if kind == "onnx2tf.convert" and quantization not in ONNX2TF_QUANTIZATIONS:
        raise PlanError(f"target {b.profile.name!r}: tflite {quantization!r} from an ONNX source is not supported; "
                        f"onnx2tf makes {', '.join(ONNX2TF_QUANTIZATIONS)}. Start from a Keras/SavedModel source "
                        "for integer quantization.")
    step_id, variant = f"tflite/{quantization}", f"tflite-{quantization}"
    params = b.conversion_params(quantization, quantization=quantization)
    inputs = _model_inputs(b, kind)
    pin = pinned_tflite_runtime(b.profile.runtime.packages)
    if pin is None:
        return b.add(step_id, kind, inputs, params, variant=variant, runtime="tflite")
    # Deploy ships a variant by the verdict of the step that carries it, so the load check carries the
    # variant (and the conversion's verdict with its own) and the conversion becomes an inner step.
    converted = b.add(f"{step_id}/convert", kind, inputs, params)
    b.add(step_id, "tflite.runtime_compat", {"model": StepInput(converted), "build": StepInput(converted, MANIFEST)},
          {"runtime": pin.model_dump()}, variant=variant, runtime="tflite")
    note = (f"tflite variants must load in {pin.label}, the runtime the target pins (checked with its x86_64 "
            "wheel on this host) before they ship: tflite/<q> is tflite/<q>/convert's model with that verdict.")
    if note not in b.notes:
        b.notes.append(note)
    return converted


def onnx_step(b: PlanBuilder, opset: int, *, variant: bool = True) -> str:
    kind = _converter(b, ONNX_FROM, "onnx")
    params = b.conversion_params("fp32", opset=opset, **ONNX_PARAMS.get(kind, {}))
    return b.add("onnx", kind, _model_inputs(b, kind), params,
                 variant="onnx" if variant else None, runtime="onnxruntime" if variant else None)


def savedmodel_step(b: PlanBuilder, *, variant: bool = True) -> str:
    kind = _converter(b, SAVEDMODEL_FROM, "a SavedModel")
    params = b.conversion_params("fp32", **SAVEDMODEL_PARAMS.get(kind, {}))
    return b.add("savedmodel", kind, _model_inputs(b, kind), params,
                 variant="savedmodel" if variant else None, runtime="tf" if variant else None)


def _onnx_opset(b: PlanBuilder) -> int:
    return b.profile.formats.onnx.opset if b.profile.formats.onnx else pm.OnnxFormat().opset


# The intermediates READS names; a step planned as one becomes a variant only if the profile asks for it.
INTERMEDIATES: dict[str, Callable[[PlanBuilder], str]] = {
    "onnx": lambda b: onnx_step(b, _onnx_opset(b), variant=False),
    "savedmodel": lambda b: savedmodel_step(b, variant=False),
}


@format_planner("tflite")
def plan_tflite(b: PlanBuilder, spec: pm.TfliteFormat) -> None:
    for quantization in spec.quantizations:
        tflite_step(b, quantization)


@format_planner("onnx")
def plan_onnx(b: PlanBuilder, spec: pm.OnnxFormat) -> None:
    onnx_step(b, spec.opset)


@format_planner("openvino")
def plan_openvino(b: PlanBuilder, spec: pm.OpenvinoFormat) -> None:
    onnx_id = onnx_step(b, _onnx_opset(b))
    for precision in spec.precisions:
        b.add(f"openvino/{precision}", "openvino.convert", _reading(b, onnx_id),
              b.conversion_params(precision, precision=precision),
              variant=f"openvino-{precision}", runtime="openvino")


@format_planner("savedmodel")
def plan_savedmodel(b: PlanBuilder, spec: pm.SavedModelFormat) -> None:
    savedmodel_step(b)


@format_planner("tftrt")
def plan_tftrt(b: PlanBuilder, spec: pm.TftrtFormat) -> None:
    kind = _converter(b, FROZEN_FROM, "a TF-TRT frozen graph")
    registry = b.inputs.tf_op_registries.get(spec.jetpack_tf_version)
    if registry is None:
        raise PlanError(f"target {b.profile.name!r} freezes graphs for TensorFlow {spec.jetpack_tf_version}, but "
                        "the planner was given no op registry for it (edgefleet.plan.workspace fetches it)")
    # The frozen graph itself is the tf-native variant: plain TensorFlow on the device, the baseline
    # every TF-TRT variant is compared against.
    frozen = b.add("tftrt/frozen", kind, {"model": b.inputs.source, "op_registry": registry},
                   {"target_tf_version": spec.jetpack_tf_version, "batch_size": b.recipe.input.shape[0]},
                   variant="tf-native", runtime="tf")
    script_inputs: dict[str, Input] = {"graph_info": StepInput(frozen, "graph.json")}
    template = b.inputs.templates.get("tftrt_convert")
    if template is not None:
        script_inputs["template"] = template
    script = b.add("tftrt/device-script", "tftrt.device_script", script_inputs,
                   spec.converter.model_dump(mode="json"))
    precision = spec.converter.precision_mode.lower()
    for relu6 in spec.relu6_replace:
        for nms_cpu in spec.nms_on_cpu:
            name = f"relu6{'-replaced' if relu6 else ''}-nms{'-cpu' if nms_cpu else '-default'}"
            # Each variant carries the conversion script and graph.json, so the device converts it in place.
            b.add(f"tftrt/{name}", "tftrt.rewrite",
                  {"graph": StepInput(frozen, "frozen.pb"), "graph_info": StepInput(frozen, "graph.json"),
                   "script": StepInput(script, "tftrt_convert.py"), "op_registry": registry},
                  {"relu6_replace": relu6, "nms_on_cpu": nms_cpu, "remove_asserts": spec.remove_asserts},
                  variant=f"tftrt-{precision}-{name}", runtime="tftrt")
    b.notes.append("TF-TRT engines are built on the Jetson itself (they are tied to its GPU and TensorRT): "
                   "deploy ships each variant's frozen graph with tftrt_convert.py, and the agent converts it "
                   "once per device and caches the result.")


@format_planner("edgetpu")
def plan_edgetpu(b: PlanBuilder, spec: pm.EdgetpuFormat) -> None:
    int8 = tflite_step(b, "full-int8")
    b.add("edgetpu/preflight", "edgetpu.preflight", {"model": StepInput(int8)}, {})
    b.add("edgetpu/compiled", "edgetpu.compile", {"model": StepInput(int8)},
          spec.compiler.model_dump(mode="json", exclude_none=True), variant="edgetpu", runtime="tflite")


@format_planner("android_aar")
def plan_android_aar(b: PlanBuilder, spec: pm.AndroidAar) -> None:
    b.add("android/aar", "android.aar", {}, {"fat_apk_cpu": list(spec.fat_apk_cpu)})


@format_planner("runtime")
def plan_runtime(b: PlanBuilder, runtime: pm.Runtime) -> None:
    if not ships_wheels(runtime):
        b.notes.append(f"runtime {runtime.name!r} is provided by the device: {runtime.note or 'no wheels shipped'}")
        return
    b.add("runtime/wheelhouse", "runtime.wheelhouse", {}, {
        "platforms": list(runtime.platform_tags),
        "python_version": b.profile.device.python,
        "packages": [{"requirement": r} for r in runtime.packages]
                    + [{"requirement": r, "optional": True} for r in runtime.optional_packages],
        # Dependencies the device's OS provides (runtime.os_packages): the device venv sees them, so no wheel.
        "provided_by_os": sorted(runtime.os_packages),
    })

