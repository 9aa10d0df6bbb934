"""The planner is pure: tables of (source format, profile formats) -> expected steps."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.errors import PlanError
from edgefleet.plan.model import SourceInput, StepInput
from edgefleet.plan.planner import PlanInputs, plan_build
from edgefleet.profiles.model import Profile
from edgefleet.recipes.model import Recipe

RECIPE = {
    "name": "net",
    "source": {"format": "keras", "path": "net.keras"},
    "input": {"shape": [1, 32, 32, 3], "normalization": {"mean": [0, 0, 0], "std": [255, 255, 255]}},
    "task": {"kind": "classification", "classes": ["a", "b"], "postprocess": {"kind": "argmax"}},
    "calibration": {"path": "calib.npy"},
}


def profile(formats: dict, **extra) -> Profile:
    return Profile.model_validate({
        "name": "dev",
        "device": {"board": "b", "arch": "aarch64", "os": "o", "python": "3.11"},
        "runtime": {"name": "tflite-runtime", "provided_by": "device"},
        "formats": formats, "workdir": "/opt/ef", **extra,
    })


# What edgefleet.plan.workspace gathers for a tftrt target: the op registry of the TF it pins.
REGISTRIES = {"1.15.5": SourceInput(Path("tensorflow-1.15.5.json"), "r" * 64)}


def plan_for(formats: dict, source_format: str = "keras", registries=REGISTRIES, **extra):
    recipe = Recipe.model_validate({**RECIPE, "source": {"format": source_format, "path": "m"}})
    return plan_build(PlanInputs(recipe, profile(formats, **extra), SourceInput(Path("m"), "a" * 64),
                                 SourceInput(Path("calib.npy"), "c" * 64), {"tf": "v1"},
                                 tf_op_registries=registries))


def steps(plan) -> list[tuple[str, str, str | None]]:
    return [(s.id, s.kind, s.variant) for s in plan.steps]


CASES = [
    ("keras", {"tflite": {"quantizations": ["fp32", "full-int8"]}}, [
        ("tflite/fp32", "tflite.convert", "tflite-fp32"),
        ("tflite/full-int8", "tflite.convert", "tflite-full-int8"),
    ]),
    ("onnx", {"tflite": {"quantizations": ["fp16"]}}, [
        ("tflite/fp16", "onnx2tf.convert", "tflite-fp16"),
    ]),
    ("keras", {"openvino": {"precisions": ["fp32", "fp16"]}}, [
        ("onnx", "onnx.from_tf", "onnx"),
        ("openvino/fp32", "openvino.convert", "openvino-fp32"),
        ("openvino/fp16", "openvino.convert", "openvino-fp16"),
    ]),
    ("onnx", {"onnx": {}, "openvino": {}}, [
        ("onnx", "onnx.import", "onnx"),
        ("openvino/fp32", "openvino.convert", "openvino-fp32"),
    ]),
    ("keras", {"savedmodel": {}}, [("savedmodel", "savedmodel.export", "savedmodel")]),
    ("keras", {"edgetpu": {}}, [
        ("tflite/full-int8", "tflite.convert", "tflite-full-int8"),
        ("edgetpu/preflight", "edgetpu.preflight", None),
        ("edgetpu/compiled", "edgetpu.compile", "edgetpu"),
    ]),
    ("keras", {"tftrt": {"jetpack_tf_version": "1.15.5", "relu6_replace": [True], "nms_on_cpu": [True, False]}}, [
        ("tftrt/frozen", "tftrt.freeze", "tf-native"),
        ("tftrt/device-script", "tftrt.device_script", None),
        ("tftrt/relu6-replaced-nms-cpu", "tftrt.rewrite", "tftrt-fp16-relu6-replaced-nms-cpu"),
        ("tftrt/relu6-replaced-nms-default", "tftrt.rewrite", "tftrt-fp16-relu6-replaced-nms-default"),
    ]),
    ("keras", {"android_aar": {"fat_apk_cpu": ["arm64-v8a", "x86_64"]}}, [("android/aar", "android.aar", None)]),
]


@pytest.mark.parametrize("source_format, formats, expected", CASES)
def test_plan_table(source_format, formats, expected):
    assert steps(plan_for(formats, source_format)) == expected


def test_edgetpu_and_tflite_share_the_full_int8_step():
    plan = plan_for({"tflite": {"quantizations": ["full-int8"]}, "edgetpu": {}})
    assert [s.id for s in plan.steps].count("tflite/full-int8") == 1
    compiled = plan.step("edgetpu/compiled")
    assert compiled.inputs["model"] == StepInput("tflite/full-int8")


def test_wheelhouse_step_only_when_the_runtime_ships_wheels():
    runtime = {"name": "tflite-runtime", "packages": ["tflite-runtime==2.14.0"],
               "platform_tags": ["manylinux_2_34_armv7l"]}
    plan = plan_for({"tflite": {"quantizations": ["fp32"]}}, runtime=runtime)
    wheel = plan.step("runtime/wheelhouse")
    assert wheel.params["platforms"] == ["manylinux_2_34_armv7l"]
    assert wheel.params["packages"] == [{"requirement": "tflite-runtime==2.14.0"}]
    assert wheel.params["python_version"] == "3.11"
    assert "runtime/wheelhouse" not in [s.id for s in plan_for({"tflite": {"quantizations": ["fp32"]}}).steps]


@pytest.mark.parametrize("source_format, formats, message", [
    ("onnx", {"tflite": {"quantizations": ["int8"]}}, "from an ONNX source is not supported"),
    ("onnx", {"tftrt": {"jetpack_tf_version": "1.15.5"}}, "model 'net' is onnx"),
    ("frozen_graph", {"tflite": {"quantizations": ["fp32"]}}, "is frozen_graph"),
])
def test_impossible_matrices_are_plan_errors(source_format, formats, message):
    with pytest.raises(PlanError, match=message):
        plan_for(formats, source_format)


def test_keys_are_stable_and_change_with_what_matters():
    base = plan_for({"tflite": {"quantizations": ["fp32", "fp16"]}})
    again = plan_for({"tflite": {"quantizations": ["fp16", "fp32"]}})
    assert base.step("tflite/fp32").key == again.step("tflite/fp32").key
    tighter = plan_for({"tflite": {"quantizations": ["fp32"]}}, fidelity={"fp32": {"min_cosine": 0.99999}})
    assert tighter.step("tflite/fp32").key != base.step("tflite/fp32").key
    assert base.step("tflite/fp32").key != base.step("tflite/fp16").key


def test_downstream_keys_follow_upstream_keys():
    plan = plan_for({"openvino": {}})
    other_opset = plan_for({"openvino": {}, "onnx": {"opset": 17}})
    assert plan.step("onnx").key != other_opset.step("onnx").key
    assert plan.step("openvino/fp32").key != other_opset.step("openvino/fp32").key


def test_tftrt_graphs_are_checked_against_the_pinned_tf_registry():
    tftrt = {"tftrt": {"jetpack_tf_version": "1.15.5", "relu6_replace": [True], "nms_on_cpu": [True]}}
    plan = plan_for(tftrt)
    for step_id in ("tftrt/frozen", "tftrt/relu6-replaced-nms-cpu"):
        assert plan.step(step_id).inputs["op_registry"] == REGISTRIES["1.15.5"]
    assert "op_registry" not in plan.step("tftrt/device-script").inputs
    other = plan_for(tftrt, registries={"1.15.5": SourceInput(Path("tensorflow-1.15.5.json"), "s" * 64)})
    assert plan.step("tftrt/frozen").key != other.step("tftrt/frozen").key
    assert plan.step("tftrt/relu6-replaced-nms-cpu").key != other.step("tftrt/relu6-replaced-nms-cpu").key
    with pytest.raises(PlanError, match="no op registry for it"):
        plan_for(tftrt, registries={})
    assert "op_registry" not in str(plan_for({"tflite": {"quantizations": ["fp32"]}}, registries={}).steps)


def test_steps_come_in_dependency_order():
    plan = plan_for({"tftrt": {"jetpack_tf_version": "1.15.5"}, "openvino": {}})
    seen: set[str] = set()
    for step in plan.steps:
        assert all(dep in seen for dep in plan.dependencies(step)), step.id
        seen.add(step.id)
