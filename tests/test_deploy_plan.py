"""Deploy planning is pure: (profile, variants, facts) -> actions, pinned as tables."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.deploy.facts import DeviceFacts
from edgefleet.deploy.plan import (DISK_MARGIN_BYTES, DeployRequest, LocalFile, ProvisionRuntime, Skip,
                                   StartAgent, Upload, Variant, WriteRunConfig, expected_files, plan_deploy)
from edgefleet.errors import DeployError
from edgefleet.profiles.model import Profile

WD = "/opt/ef"


def profile(arch: str = "armv7l", delegates=("cpu",), threads=(1, 2)) -> Profile:
    return Profile.model_validate({
        "name": "dev", "device": {"board": "b", "arch": arch, "os": "o", "python": "3.11"},
        "runtime": {"name": "rt", "provided_by": "device"}, "formats": {"tflite": {"quantizations": ["fp32"]}},
        "bench": {"threads": list(threads), "delegates": list(delegates)}, "workdir": WD,
    })


def lf(name: str, size: int = 1000) -> LocalFile:
    return LocalFile(Path(name), name[0] * 64, size)


VARIANTS = [
    Variant("tflite-fp32", "tflite", "k1", lf("a.tflite")),
    Variant("tflite-full-int8", "tflite", "k2", lf("b.tflite")),
    Variant("edgetpu", "tflite", "k3", lf("c_edgetpu.tflite")),
    Variant("onnx", "onnxruntime", "k4", lf("d.onnx")),
    Variant("tflite-int8", "tflite", "k5", lf("e.tflite"), valid=False),
]


def request(prof: Profile, *, wheels=(), emulated=False, variants=VARIANTS) -> DeployRequest:
    return DeployRequest("dev", prof, WD, "run1", variants, lf("agent.pyz"), lf("samples.npy"), None,
                         wheelhouse=tuple(wheels), runtime_requirements=("x",), emulated_inventory=emulated)


def facts(arch="armv7l", free=10**10, present=(), identity=None, runtime=None) -> DeviceFacts:
    return DeviceFacts(arch, "os", "3.11", "/usr/bin/python3", free, WD, identity, {p: True for p in present},
                       runtime)


def cells_of(plan):
    config = next(a for a in plan.actions if isinstance(a, WriteRunConfig)).config
    return [c["cell"] for c in config["cells"]]


@pytest.mark.parametrize("delegates, expected", [
    (("cpu",), ["tflite-fp32/cpu/t1", "tflite-fp32/cpu/t2", "tflite-full-int8/cpu/t1", "tflite-full-int8/cpu/t2",
                "onnx/cpu/t1", "onnx/cpu/t2"]),
    (("edgetpu",), ["edgetpu/edgetpu/t1", "edgetpu/edgetpu/t2"]),
    (("xnnpack", "gpu-fp16"), ["tflite-fp32/xnnpack/t1", "tflite-fp32/xnnpack/t2", "tflite-fp32/gpu-fp16/t1",
                               "tflite-fp32/gpu-fp16/t2", "tflite-full-int8/xnnpack/t1",
                               "tflite-full-int8/xnnpack/t2", "tflite-full-int8/gpu-fp16/t1",
                               "tflite-full-int8/gpu-fp16/t2"]),
])
def test_cells_follow_delegates_and_never_ship_invalid(delegates, expected):
    plan = plan_deploy(request(profile(delegates=delegates)), facts())
    assert cells_of(plan) == expected
    assert not any("e.tflite" in a.remote for a in plan.actions if isinstance(a, (Upload, Skip)))
    assert any("fidelity gate" in w and "tflite-int8" in w for w in plan.warnings)


def test_action_order_and_skips():
    req = request(profile())
    present = [p for p in expected_files(req) if p.endswith("a.tflite")]
    plan = plan_deploy(req, facts(present=present))
    kinds = [type(a).__name__ for a in plan.actions]
    assert kinds[-2:] == ["WriteRunConfig", "StartAgent"]
    assert [a.what for a in plan.actions if isinstance(a, Skip)] == ["artifact tflite-fp32"]
    assert plan.bytes_to_send == sum(a.size for a in plan.actions if isinstance(a, Upload))
    start = plan.actions[-1]
    assert isinstance(start, StartAgent) and start.run_dir == f"{WD}/runs/run1"


def test_everything_present_sends_nothing():
    req = request(profile())
    plan = plan_deploy(req, facts(present=list(expected_files(req))))
    assert plan.bytes_to_send == 0 and plan.uploads == []


def test_real_device_with_wrong_arch_is_an_error():
    with pytest.raises(DeployError, match="reports arch 'x86_64' but profile 'dev' says 'armv7l'"):
        plan_deploy(request(profile()), facts(arch="x86_64"))


def test_emulated_device_may_differ_and_it_is_recorded():
    plan = plan_deploy(request(profile()), facts(arch="x86_64", identity={"emulated": True}))
    assert any("emulated" in w for w in plan.warnings)
    config = next(a for a in plan.actions if isinstance(a, WriteRunConfig)).config
    assert config["emulated"] is True


def test_full_disk_fails_before_sending_and_names_bytes():
    req = request(profile())
    need = sum(f.size for f in [lf("a.tflite"), lf("b.tflite"), lf("c_edgetpu.tflite"), lf("d.onnx"),
                               lf("agent.pyz"), lf("samples.npy")])
    with pytest.raises(DeployError, match=rf"needs {need:,} bytes .* only 5,000 are free"):
        plan_deploy(req, facts(free=5000))
    assert plan_deploy(req, facts(free=need + DISK_MARGIN_BYTES)).bytes_to_send == need


def test_runtime_provisioned_once_per_wheelhouse_digest():
    wheels = [lf("w1.whl"), lf("w2.whl")]
    first = plan_deploy(request(profile(), wheels=wheels), facts())
    provision = [a for a in first.actions if isinstance(a, ProvisionRuntime)]
    assert len(provision) == 1
    again = plan_deploy(request(profile(), wheels=wheels), facts(runtime={"digest": provision[0].digest}))
    assert not [a for a in again.actions if isinstance(a, ProvisionRuntime)]


def test_nothing_to_benchmark_is_an_error():
    with pytest.raises(DeployError, match="nothing to benchmark"):
        plan_deploy(request(profile(delegates=("edgetpu",)), variants=VARIANTS[:2]), facts())
