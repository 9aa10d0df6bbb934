"""The host-side runtime registry: one module per runtime, and everything that needs runtime knowledge
(profiles, the planner, deploy's cells, doctor, the build's load check, device templates) reads it."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgefleet.compat.runtimes import pinned_tflite_runtime
from edgefleet.deploy.plan import build_cells
from edgefleet.plan.workspace import device_templates
from edgefleet.profiles.load import load_all_profiles
from edgefleet.runtimes import all_runtimes, delegate_names, get_runtime, runtime_for_profile
from edgefleet.workspace import open_workspace
from test_deploy_plan import VARIANTS, profile, request
from test_profiles import MINIMAL, error_of, write

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "edgefleet"


def test_every_shipped_profile_names_a_registered_runtime():
    loaded, errors = load_all_profiles(REPO / "targets")
    assert loaded and not errors, errors
    for item in loaded:
        spec = runtime_for_profile(item.profile.runtime.name)
        assert item.profile.runtime.provided_by in spec.sources


@pytest.mark.parametrize("text, expected", [
    (MINIMAL.replace("name: tflite-runtime", "name: tflite-runtme"),
     "unknown runtime 'tflite-runtme' (did you mean 'tflite-runtime'?)"),
    (MINIMAL.replace("  threads: [1, 2]", "  threads: [1, 2]\n  delegates: [xnnpak]"),
     "unknown delegate 'xnnpak' (did you mean 'xnnpack'?)"),
    (MINIMAL.replace("name: tflite-runtime\n  provided_by: device", "name: tensorflow\n  provided_by: wheelhouse"),
     None),  # TensorFlow may come from a wheelhouse or the device
    (MINIMAL.replace("name: tflite-runtime", "name: tflite-benchmark-model").replace("provided_by: device",
                                                                                     "provided_by: wheelhouse"),
     "runtime 'tflite-benchmark-model' cannot be provided_by 'wheelhouse' (it comes from: device)"),
])
def test_unknown_runtimes_and_delegates_are_errors_at_load(tmp_path, text, expected):
    path = write(tmp_path, "dev", text)
    if expected is None:
        assert not load_all_profiles(tmp_path)[1]
        return
    message = error_of(path)
    assert expected in message and "dev.yaml:" in message


def test_each_runtime_module_registers_itself():
    modules = {p.stem for p in (PACKAGE / "runtimes").glob("*.py")} - {"__init__", "base", "registry"}
    assert len(modules) == len(all_runtimes())
    assert {"tflite", "tf", "tftrt", "onnxruntime", "openvino", "tflite-benchmark-model"} == \
        {spec.name for spec in all_runtimes()}
    assert not get_runtime("tflite-benchmark-model").agent  # no Python on an Android phone


def test_cells_come_from_each_runtimes_delegates():
    # The Edge TPU model runs only on its delegate; the GPU delegates are TFLite's, not ONNX Runtime's.
    cells = build_cells(request(profile(delegates=("cpu", "edgetpu", "gpu-fp16"), threads=(1,))), None)
    assert [c["cell"] for c in cells] == [
        "tflite-fp32/cpu/t1", "tflite-fp32/gpu-fp16/t1", "tflite-full-int8/cpu/t1", "tflite-full-int8/gpu-fp16/t1",
        "edgetpu/edgetpu/t1", "onnx/cpu/t1"]
    gpu = next(c for c in cells if c["delegate_name"] == "gpu-fp16")
    assert gpu["delegate"] == dict(get_runtime("tflite").delegates["gpu-fp16"].payload)
    assert set(delegate_names()) >= {"cpu", "xnnpack", "edgetpu", "gpu-fp16", "gpu-fp32", "nnapi"}


def test_the_build_check_and_device_templates_read_the_registry():
    assert pinned_tflite_runtime(["tflite-runtime==2.14.0"]).runtime == get_runtime("tflite").distributions[1]
    templates = device_templates(open_workspace(REPO))
    assert templates["tftrt_convert"].path.name == "tftrt_convert.py.j2"


def test_runtime_module_lists_live_only_in_the_registry():
    """grep finds each runtime's list of device modules in one host file (the agent, which runs on the device
    and imports nothing from the host, keeps the device's own copy)."""
    for spec in all_runtimes():
        if len(spec.device_modules) < 2:
            continue
        listing = '", "'.join(spec.device_modules[:2])
        holders = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                   if listing in p.read_text() and "agent" not in p.parts}
        assert holders == {f"runtimes/{spec.name}.py"}, (spec.name, holders)
    # The delegate table too: one home.
    payload = '"libtensorflowlite_gpu_delegate.so"'
    assert {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
            if payload in p.read_text() and "agent" not in p.parts} == {"runtimes/tflite.py"}
