"""Deploy planning is pure: (profile, variants, facts) -> actions, pinned as tables."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgefleet.deploy.evalspec import EvalRequest, gate_config
from edgefleet.deploy.facts import DeviceFacts
from edgefleet.deploy.plan import (DISK_MARGIN_BYTES, DeployRequest, LocalFile, ProvisionRuntime, Skip,
                                   StartAgent, Upload, Variant, WriteRunConfig, expected_files, plan_deploy)
from edgefleet.errors import DeployError
from edgefleet.profiles.model import AccuracyGate, Profile

WD = "/opt/ef"


def profile(arch: str = "armv7l", delegates=("cpu",), threads=(1, 2)) -> Profile:
    return Profile.model_validate({
        "name": "dev", "device": {"board": "b", "arch": arch, "os": "o", "python": "3.11"},
        "runtime": {"name": "tflite-runtime", "provided_by": "device"}, "formats": {"tflite": {"quantizations": ["fp32"]}},
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


@pytest.mark.parametrize("emulated, host_cpu, via_inventory, allowed", [
    (False, False, True, False),  # a real board that answers with another arch: wrong host
    (True, False, True, False),   # a qemu-user device runs the board's own arch, so a mismatch is an error too
    (True, True, True, True),     # only the explicit host-CPU stand-in (`--emulate host`) may differ, labelled
    (True, True, False, True),    # ... also when a profile points at it directly: its identity file says so
])
def test_only_the_host_cpu_standin_may_differ_in_arch(emulated, host_cpu, via_inventory, allowed):
    kind = "host-cpu" if host_cpu else "qemu-user"
    req = replace(request(profile(), emulated=emulated and via_inventory), host_cpu_standin=host_cpu and via_inventory,
                  emulation={"kind": kind} if via_inventory else None)
    wrong_arch = facts(arch="x86_64", identity={"emulated": True, "emulation": {"kind": kind}} if emulated else None)
    if not allowed:
        with pytest.raises(DeployError, match="reports arch 'x86_64' but profile 'dev' says 'armv7l'"):
            plan_deploy(req, wrong_arch)
        return
    plan = plan_deploy(req, wrong_arch)
    assert any("emulated by this host's CPU" in w for w in plan.warnings)
    config = next(a for a in plan.actions if isinstance(a, WriteRunConfig)).config
    assert config["emulated"] is True and config.get("emulation") == ({"kind": "host-cpu"} if via_inventory else None)


def os_numpy_profile() -> Profile:
    return profile().model_copy(update={"runtime": profile().runtime.model_copy(
        update={"os_packages": {"numpy": "python3-numpy"}})})


@pytest.mark.parametrize("host_cpu, missing, error", [
    (False, (), None),
    (False, ("numpy",), "cannot import numpy, which profile 'dev' takes from the OS package python3-numpy"),
    (True, ("numpy",), None),   # the host-CPU stand-in gets this host's wheels, numpy included
])
def test_os_packages_are_checked_before_anything_is_sent(host_cpu, missing, error):
    req = replace(request(os_numpy_profile(), wheels=[lf("w.whl")]), host_cpu_standin=host_cpu)
    device = replace(facts(), missing_modules=missing)
    if error:
        with pytest.raises(DeployError, match=error) as failure:
            plan_deploy(req, device)
        assert "`sudo apt install python3-numpy`" in str(failure.value) and "Nothing was sent" in str(failure.value)
        return
    provision = [a for a in plan_deploy(req, device).actions if isinstance(a, ProvisionRuntime)]
    # The venv sees the OS's numpy exactly when the profile takes it from the OS.
    assert [a.system_site_packages for a in provision] == [not host_cpu]


def test_switching_to_system_site_packages_reprovisions():
    plain = plan_deploy(request(profile(), wheels=[lf("w.whl")]), facts())
    digest = next(a for a in plain.actions if isinstance(a, ProvisionRuntime)).digest
    seeing_os = plan_deploy(request(os_numpy_profile(), wheels=[lf("w.whl")]), facts(runtime={"digest": digest}))
    assert [a.system_site_packages for a in seeing_os.actions if isinstance(a, ProvisionRuntime)] == [True]


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


# ---------------------------------------------------------------- deploy --eval

EVAL = EvalRequest(images_path=Path("eval.npy"), images_sha256="e" * 64, images_size=500, image_ids=(7, 9),
                   image_sizes=((96, 96), (120, 80)), postprocess={"kind": "ssd_anchors", "params": {"x": 1}},
                   resize="stretch", layout="NHWC", normalization={"mean": [0.0], "std": [255.0]},
                   ground_truth={"kind": "coco", "sha256": "g" * 64}, input_size=(96, 96),
                   source_metrics={"map_50_95": 0.76})
GATE = gate_config(AccuracyGate(max_map_drop=2.0), "coco", {"map_50_95": 0.76})


def eval_request(prof: Profile, **kw) -> DeployRequest:
    return replace(request(prof, **kw), eval=EVAL, accuracy_gate=GATE)


def config_of(plan) -> dict:
    return next(a for a in plan.actions if isinstance(a, WriteRunConfig)).config


@pytest.mark.parametrize("delegates, evaluated", [
    (("cpu",), ["tflite-fp32/cpu/t1", "tflite-full-int8/cpu/t1", "onnx/cpu/t1"]),
    # Accuracy can change with the delegate (GPU fp16), never with the thread count.
    (("xnnpack", "gpu-fp16"), ["tflite-fp32/xnnpack/t1", "tflite-fp32/gpu-fp16/t1", "tflite-full-int8/xnnpack/t1",
                               "tflite-full-int8/gpu-fp16/t1"]),
    (("edgetpu",), ["edgetpu/edgetpu/t1"]),
])
def test_eval_runs_once_per_artifact_and_delegate(delegates, evaluated):
    plan = plan_deploy(eval_request(profile(delegates=delegates, threads=(1, 2, 4))), facts())
    cells = config_of(plan)["cells"]
    assert [c["cell"] for c in cells if c.get("eval")] == evaluated
    assert all(c.get("eval") is True for c in cells if c.get("eval"))


def test_eval_ships_its_images_once_and_writes_spec_and_gate():
    req = eval_request(profile())
    remote = f"{WD}/data/{'e' * 16}.npy"
    assert expected_files(req)[remote] == "e" * 64
    plan = plan_deploy(req, facts())
    assert [a.what for a in plan.uploads if a.remote == remote] == ["eval images (2)"]
    config = config_of(plan)
    assert config["eval"]["images"] == remote
    assert config["eval"]["image_ids"] == [7, 9] and config["eval"]["image_sizes"] == [[96, 96], [120, 80]]
    assert config["eval"]["ground_truth"] == {"kind": "coco", "sha256": "g" * 64}
    assert config["accuracy_gate"]["metric"] == "map_50_95"
    assert config["accuracy_gate"]["max_drop"] == pytest.approx(0.02)  # 2.0 mAP points
    assert config["accuracy_gate"]["source_metrics"] == {"map_50_95": 0.76}

    again = plan_deploy(req, facts(present=[remote]))
    assert [a.what for a in again.actions if isinstance(a, Skip) and a.remote == remote] == ["eval images (2)"]


def test_without_eval_nothing_is_evaluated_or_shipped():
    plan = plan_deploy(request(profile()), facts())
    config = config_of(plan)
    assert "eval" not in config and not any(c.get("eval") for c in config["cells"])
    assert not any("eval images" in a.what for a in plan.uploads)


def test_gate_units_follow_the_task():
    gate = AccuracyGate(max_map_drop=1.5, max_top1_drop=0.01)
    assert gate_config(gate, "coco", {})["max_drop"] == pytest.approx(0.015)
    assert gate_config(gate, "labels", {}) == {"metric": "top1", "max_drop": 0.01, "source_metrics": {},
                                               "profile": {"max_map_drop": 1.5, "max_top1_drop": 0.01,
                                                           "max_agreement_drop": 0.1}}


def test_companion_files_ship_beside_their_model():
    xml = Variant("openvino-fp32", "openvino", "k9", lf("model.xml"), companions=(lf("model.bin", 5000),))
    plan = plan_deploy(request(profile(), variants=[xml]), facts())
    uploads = {a.remote: a.size for a in plan.uploads}
    assert uploads[f"{WD}/artifacts/k9/model.xml"] == 1000 and uploads[f"{WD}/artifacts/k9/model.bin"] == 5000
    assert cells_of(plan) == ["openvino-fp32/cpu/t1", "openvino-fp32/cpu/t2"]


def _tftrt(name: str, key: str, graph: str, script: str = "s") -> Variant:
    return Variant(name, "tftrt", key, LocalFile(Path("frozen.pb"), graph * 64, 1000),
                   companions=(LocalFile(Path("tftrt_convert.py"), script * 64, 10),))


@pytest.mark.parametrize("graphs, measured, same_as", [
    # Rewrites that changed nothing: one graph under four names is measured once.
    ("aaaa", ["relu6-nms-cpu"], {"relu6-nms-default": "relu6-nms-cpu", "relu6-replaced-nms-cpu": "relu6-nms-cpu",
                                  "relu6-replaced-nms-default": "relu6-nms-cpu"}),
    ("abab", ["relu6-nms-cpu", "relu6-nms-default"],
     {"relu6-replaced-nms-cpu": "relu6-nms-cpu", "relu6-replaced-nms-default": "relu6-nms-default"}),
    ("abcd", ["relu6-nms-cpu", "relu6-nms-default", "relu6-replaced-nms-cpu", "relu6-replaced-nms-default"], {}),
])
def test_variants_that_differ_only_in_name_are_measured_once(graphs, measured, same_as):
    names = ["relu6-nms-cpu", "relu6-nms-default", "relu6-replaced-nms-cpu", "relu6-replaced-nms-default"]
    variants = [_tftrt(n, f"k{i}", g) for i, (n, g) in enumerate(zip(names, graphs))]
    # The tf-native baseline has the same bytes as an unchanged rewrite but another runtime: it stays.
    variants.append(Variant("tf-native", "tf", "k9", LocalFile(Path("frozen.pb"), "a" * 64, 1000)))
    plan = plan_deploy(request(profile(threads=(1,)), variants=variants), facts())
    assert cells_of(plan) == [f"{n}/cpu/t1" for n in measured] + ["tf-native/cpu/t1"]
    config = next(a for a in plan.actions if isinstance(a, WriteRunConfig)).config
    assert config.get("same_as", {}) == same_as
    assert all(any(name in w and other in w for w in plan.warnings) for name, other in same_as.items())
    shipped_graphs = [a.remote for a in plan.uploads if a.remote.endswith("frozen.pb")]
    assert len(shipped_graphs) == len(measured) + 1


def test_a_host_cpu_standin_plans_only_the_hosts_runtime(workspace_copy: Path) -> None:
    """`--emulate host` ships this host's runtime wheels whatever the model: a SavedModel source (shapes-relu6,
    the demo's Jetson model), from which the host profile's savedmodel format cannot be planned, still gets
    them."""
    from edgefleet.api.deploy import host_runtime_plan
    from edgefleet.recipes.load import load_recipe
    from edgefleet.workspace import open_workspace

    ws = open_workspace(workspace_copy)
    profile, plan = host_runtime_plan(ws, load_recipe(ws.models_dir, "shapes-relu6"))
    assert profile.name == "local"
    assert [step.id for step in plan.steps] == ["runtime/wheelhouse"]


HOST_STANDIN = {"emulated": True, "emulation": {"kind": "host-cpu"}}
QEMU = {"emulated": True, "emulation": {"kind": "qemu-user", "emulator": "qemu-arm"}}
CONTENTION = "(they would time the host's contention, not the board's cores)"
QEMU_SPARE = "(qemu-user needs a CPU besides the board's threads; with none to spare, its runs split between two speeds)"


@pytest.mark.parametrize("emulated, identity, cpus, threads, cells, skipped", [
    # A host-CPU stand-in runs on this host's CPUs: more threads than those would time the host's contention.
    (True, HOST_STANDIN, 2, (1, 2, 3, 4), ["t1", "t2"],
     f"dev is emulated on this host's 2 CPUs: threads 3, 4 not measured {CONTENTION}"),
    (True, HOST_STANDIN, 1, (2, 4), ["t2"], f"dev is emulated on this host's 1 CPU: threads 4 not measured {CONTENTION}"),
    (True, HOST_STANDIN, 4, (1, 2, 3, 4), ["t1", "t2", "t3", "t4"], None),
    # qemu-user leaves the host one CPU (the demo measured p50 132 ms, p90 205 ms at 2 threads on 2 CPUs).
    (True, QEMU, 2, (1, 2, 3, 4), ["t1"],
     f"dev is emulated by qemu-user on this host's 2 CPUs: threads 2, 3, 4 not measured {QEMU_SPARE}"),
    (True, QEMU, 8, (1, 2, 3, 4), ["t1", "t2", "t3", "t4"], None),
    (True, QEMU, 1, (2, 4), ["t2"], f"dev is emulated by qemu-user on this host's 1 CPU: threads 4 not measured "
                                    f"{QEMU_SPARE}"),
    (True, None, None, (1, 4), ["t1", "t4"], None),           # an older probe that did not say
    (False, None, 2, (1, 2, 3, 4), ["t1", "t2", "t3", "t4"], None),  # a real board measures what the profile asks
])
def test_an_emulated_device_measures_no_more_threads_than_it_has_cpus(emulated, identity, cpus, threads, cells,
                                                                     skipped):
    only_fp32 = [VARIANTS[0]]
    plan = plan_deploy(request(profile(threads=threads), emulated=emulated, variants=only_fp32),
                       replace(facts(identity=identity), cpus=cpus))
    assert [cell.rsplit("/", 1)[1] for cell in cells_of(plan)] == cells
    found = [w for w in plan.warnings if "not measured" in w]
    assert found == ([] if skipped is None else [skipped])
