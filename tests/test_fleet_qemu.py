"""The architecture-faithful fleet: each board's own CPU architecture, Debian userland and runtime under qemu-user.

rpi3 is an armhf (armv7l) userland whose runtime venv is provisioned offline from the pushed wheelhouse
(tflite-runtime 2.14.0's armv7l wheel) and sees the OS's numpy; coral is an arm64 userland with the
tflite-runtime stand-in. Deploy, benchmark and on-device evaluation run there for real, and a device
without its OS numpy package is stopped before anything is sent.

The root filesystems are built once (debootstrap, minutes) into the cache that
``EDGEFLEET_ROOTFS_CACHE`` names (conftest points it at the repository's cache), never per test.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from edgefleet.api.collect import CollectOptions, collect_benchmarks, results_db_path
from edgefleet.api.context import Env
from edgefleet.api.deploy import DeployOptions, deploy
from edgefleet.api.fleet import device_specs, userland_for
from edgefleet.console import make_console
from edgefleet.deploy.apply import runtime_python
from edgefleet.deploy.devices import fleet_dir
from edgefleet.deploy.plan import StartAgent
from edgefleet.errors import DeployError
from edgefleet.fleet import DeviceSpec, EmulatedFleet
from edgefleet.profiles.load import load_profile
from edgefleet.testing import trt_standin
from edgefleet.transport.registry import open_transport
from edgefleet.workspace import open_workspace
from fleet_fixtures import require_fleet_tools

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ssh, pytest.mark.convert, pytest.mark.slow]

# Fewer cells than the real profiles (qemu is 100-500x slower); the boards, runtimes and variants are theirs.
TEST_PROFILES = {
    "rpi3": "extends: rpi3\nformats: {tflite: {quantizations: [fp32, int8]}}\nbench: {threads: [1, 2]}\n",
    "coral": "extends: coral\nbench: {threads: [1]}\n",
    # One TF-TRT variant (the bundled detector's rewrites change nothing), its tf-native baseline, one tflite.
    "jetson-nano": "extends: jetson-nano\nformats: {tflite: {quantizations: [fp32]}, tftrt: {jetpack_tf_version: "
                   "'1.15.5', relu6_replace: [false], nms_on_cpu: [true]}}\nbench: {threads: [1]}\n",
}
NO_NUMPY = "rpi3-fresh"  # the same board before its user ran the profile's `apt install python3-numpy`


def env() -> Env:
    return Env(console=make_console(quiet=True))


def _workspace(root: Path) -> Path:
    for name in ("targets", "templates", "builders", "models"):
        shutil.copytree(REPO / name, root / name)
    (root / "edgefleet.yaml").write_text("backend: local\njobs: 2\n")
    for name, text in TEST_PROFILES.items():
        (root / "targets" / f"q{name}.yaml").write_text(text.replace("extends: ", "extends: ", 1))
    (root / "targets" / f"{NO_NUMPY}.yaml").write_text("extends: rpi3\nformats: {tflite: {quantizations: [fp32]}}\n"
                                                       "bench: {threads: [1]}\n")
    return root


@pytest.fixture(scope="module")
def qfleet(tmp_path_factory):
    require_fleet_tools()
    if os.geteuid() != 0:
        message = "the qemu-user fleet needs root (chroot, mounts)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    root = _workspace(tmp_path_factory.mktemp("qemu-ws"))
    targets = root / "targets"
    specs = device_specs(targets, ("qrpi3", "qcoral", "qjetson-nano"))
    fresh = load_profile(targets, NO_NUMPY).profile
    specs.append(DeviceSpec(name=NO_NUMPY, stands_in_for=fresh.device.board, arch=fresh.device.arch,
                            userland=userland_for(fresh, without_packages=("python3-numpy",))))
    with EmulatedFleet(fleet_dir(root / ".edgefleet"), specs,
                       rootfs_cache=Path(os.environ["EDGEFLEET_ROOTFS_CACHE"])) as fleet:
        yield root, fleet


def _run(fleet, name: str, argv: list[str]) -> str:
    with open_transport(fleet.device(name).connection, name=name) as transport:
        return transport.run(argv, timeout=120).stdout


def test_devices_run_their_boards_architecture_and_os(qfleet):
    _, fleet = qfleet
    assert _run(fleet, "qrpi3", ["uname", "-m"]).strip() == "armv7l"
    assert _run(fleet, "qcoral", ["uname", "-m"]).strip() == "aarch64"
    assert "bookworm" in _run(fleet, "qrpi3", ["cat", "/etc/os-release"])
    # The device's own python3 is the armhf interpreter, not this host's.
    machine = _run(fleet, "qrpi3", ["python3", "-c", "import platform; print(platform.machine())"])
    assert machine.strip() == "armv7l"
    emulation = fleet.device("qrpi3").emulation
    assert emulation["kind"] == "qemu-user" and emulation["emulator"].startswith("qemu-arm ")
    assert emulation["board_os"].startswith("Raspberry Pi OS")


def test_rpi3_provisions_offline_and_measures_with_the_boards_runtime(qfleet):
    root, fleet = qfleet
    outcome = deploy(DeployOptions(target="qrpi3", eval=True, wait=True, workspace=root), env())
    assert outcome.applied is not None and outcome.applied.provisioned
    wheels = [a.what for a in outcome.plan.uploads if a.what.startswith("wheel ")]
    assert any("tflite_runtime-2.14.0" in w and "armv7l" in w for w in wheels), wheels
    assert not any("numpy" in w for w in wheels), wheels  # numpy is the OS's

    collected = collect_benchmarks(CollectOptions(runs=(outcome.run_id,), workspace=root), env())
    assert not collected.errors, collected.errors
    with sqlite3.connect(results_db_path(open_workspace(root))) as db:
        cells = db.execute("SELECT cell, status, p50_ms, raw, env FROM cells WHERE run_id = ?",
                           (outcome.run_id,)).fetchall()
        accuracy = {(c, m): v for c, m, v in db.execute(
            "SELECT cell, metric, value FROM accuracy WHERE run_id = ?", (outcome.run_id,))}
    # qemu-user leaves the host a CPU: on a 2-CPU host only t1 is measured, and the plan says why.
    threads = [t for t in (1, 2) if t <= max(1, len(os.sched_getaffinity(0)) - 1)]
    assert sorted(c[0] for c in cells) == sorted(f"tflite-{q}/xnnpack/t{t}" for q in ("fp32", "int8") for t in threads)
    if threads == [1]:
        assert any("qrpi3 is emulated by qemu-user" in w and "threads 2 not measured" in w
                   for w in outcome.plan.warnings), outcome.plan.warnings
    for cell, status, p50, raw, env_text in cells:
        assert status == "ok" and p50 > 0, (cell, json.loads(raw).get("reason"))
        result, environment = json.loads(raw), json.loads(env_text)
        assert result["runtime_info"]["version"] == "2.14.0", result["runtime_info"]
        assert "tflite_runtime" in result["runtime_info"]["module"]
        assert environment["uname"]["machine"] == "armv7l" and environment["emulated"] is True
        assert environment["numpy_path"].startswith("/usr/lib/python3/dist-packages")
        assert environment["emulation"]["emulator"].startswith("qemu-arm ")
        assert environment["emulation"]["bench_from_fleet"]["min_runs"] == 10
    # Correctness carries over from armv7 kernels: the host's fp32 mAP within 0.5 points.
    metrics = json.loads((REPO / "models" / "shapes" / "metrics.json").read_text())
    assert accuracy[("tflite-fp32/xnnpack/t1", "map_50_95")] == pytest.approx(metrics["map_50_95"], abs=0.005)
    assert 0.0 < accuracy[("tflite-int8/xnnpack/t1", "map_50_95")] <= 1.0
    # The report says what the device was: its arch, OS, runtime version and emulator.
    assert collected.report is not None
    devices = json.loads(collected.report.json.read_text())["devices"]
    assert len(devices) == 1, devices
    shown = json.dumps(devices[0])
    for fact in ("armv7l", "tflite_runtime", "2.14.0", "qemu-arm 7.2", "Raspberry Pi OS", "bookworm"):
        assert fact in shown, (fact, devices[0])

    again = deploy(DeployOptions(target="qrpi3", dry_run=True, workspace=root), env())
    assert again.plan.bytes_to_send == 0  # wheels, agent and artifacts are all there


def test_arm64_board_measures_and_evaluates(qfleet):
    root, fleet = qfleet
    outcome = deploy(DeployOptions(target="qcoral", eval=True, wait=True, workspace=root), env())
    collected = collect_benchmarks(CollectOptions(runs=(outcome.run_id,), workspace=root), env())
    assert not collected.errors, collected.errors
    with sqlite3.connect(results_db_path(open_workspace(root))) as db:
        rows = db.execute("SELECT cell, status, env FROM cells WHERE run_id = ?", (outcome.run_id,)).fetchall()
        accuracy = {(c, m): v for c, m, v in db.execute(
            "SELECT cell, metric, value FROM accuracy WHERE run_id = ?", (outcome.run_id,))}
    statuses = {cell: status for cell, status, _ in rows}
    # The CPU cell runs on the aarch64 runtime (the Edge TPU model is not compiled here: no edgetpu_compiler).
    assert statuses == {"tflite-full-int8/cpu/t1": "ok"}
    assert all(json.loads(e)["uname"]["machine"] == "aarch64" for _, _, e in rows)
    assert 0.0 < accuracy[("tflite-full-int8/cpu/t1", "map_50_95")] <= 1.0


def test_a_board_without_its_os_numpy_is_stopped_before_anything_is_sent(qfleet):
    root, fleet = qfleet
    with pytest.raises(DeployError) as failure:
        deploy(DeployOptions(target=NO_NUMPY, workspace=root), env())
    message = str(failure.value)
    assert "numpy" in message and "sudo apt install python3-numpy" in message and "Nothing was sent" in message
    workdir = fleet.device(NO_NUMPY).workdir
    assert _run(fleet, NO_NUMPY, ["ls", "-A", workdir]).split() == ["device.json"]

    # The user's fix, on the board itself (from apt's cache: the devices have no internet).
    _run(fleet, NO_NUMPY, ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                           "--no-download", "python3-numpy"])
    outcome = deploy(DeployOptions(target=NO_NUMPY, wait=True, workspace=root), env())
    assert outcome.applied is not None and outcome.applied.provisioned
    assert outcome.final_status and outcome.final_status["state"] == "done"


def _cells(root: Path, run_id: str) -> dict[str, dict]:
    with sqlite3.connect(results_db_path(open_workspace(root))) as db:
        return {cell: json.loads(raw) for cell, raw in db.execute("SELECT cell, raw FROM cells WHERE run_id = ?",
                                                                  (run_id,))}


@pytest.fixture(scope="module")
def jetson_run(qfleet):
    root, fleet = qfleet
    return root, fleet, deploy(DeployOptions(target="qjetson-nano", wait=True, workspace=root), env())


def test_jetson_times_tf_native_and_each_tftrt_cell_says_why_it_has_no_engine(jetson_run):
    root, fleet, outcome = jetson_run
    shipped = {a.remote.rsplit("/", 1)[-1] for a in outcome.plan.uploads}
    assert {"frozen.pb", "graph.json", "tftrt_convert.py"} <= shipped
    collected = collect_benchmarks(CollectOptions(runs=(outcome.run_id,), workspace=root), env())
    assert not collected.errors, collected.errors
    cells = _cells(root, outcome.run_id)

    native = cells["tf-native/cpu/t1"]
    assert native["status"] == "ok" and native["latency_ms"]["p50"] > 0, native["reason"]
    assert native["runtime_info"]["module"] == "tensorflow" and native["env"]["uname"]["machine"] == "aarch64"
    trt = cells["tftrt-fp16-relu6-nms-cpu/cpu/t1"]
    # The stand-in TensorFlow has no TensorRT: the script's own reason, not a bare missing_runtime.
    assert trt["status"] == "missing_runtime", trt["reason"]
    assert trt["reason"].startswith("tftrt_convert.py: ") and "TensorRT" in trt["reason"]
    assert trt["runtime_info"]["tftrt"]["tf_version"] == native["runtime_info"]["version"]
    assert cells["tflite-fp32/cpu/t1"]["status"] == "ok"


def test_jetson_tftrt_with_the_tensorrt_standin_converts_once_on_the_device(jetson_run, tmp_path):
    """TensorRT cannot exist here: edgefleet/testing/trt_standin.py stands in for its converter, named in
    every line. The agent runs in the foreground on the device with the stand-in's path in its environment."""
    root, fleet, outcome = jetson_run
    device = fleet.device("qjetson-nano")
    run_dir = f"{device.workdir}/runs/{outcome.run_id}"
    standin = f"{device.workdir}/trt_standin.py"
    with open_transport(device.connection, name="qjetson-nano") as transport:
        transport.put(Path(trt_standin.__file__), standin)
        run = json.loads(transport.run(["cat", f"{run_dir}/run.json"]).stdout)
        cell = next(c for c in run["cells"] if c["runtime"] == "tftrt")
        again = f"{run_dir}-standin"
        config = dict(run, run_id=f"{outcome.run_id}-standin", cells=[cell, dict(cell, cell=cell["cell"] + "-again")])
        (tmp_path / "run.json").write_text(json.dumps(config))
        transport.run(["mkdir", "-p", again])
        transport.put(tmp_path / "run.json", f"{again}/run.json")
        assert outcome.applied is not None
        python = runtime_python(device.workdir, outcome.applied.runtime_venv, "python3")
        agent = next(a for a in outcome.plan.actions if isinstance(a, StartAgent)).agent
        proc = transport.run(["env", f"EDGEFLEET_TRT_STANDIN={standin}", python, agent, "run", again], timeout=900)
        lines = [json.loads(line) for line in transport.run(["cat", f"{again}/results.jsonl"]).stdout.splitlines()]
    assert [line["status"] for line in lines] == ["ok", "ok"], (proc.stderr[-2000:], [l["reason"] for l in lines])
    facts = [line["runtime_info"]["tftrt"] for line in lines]
    assert [f["cached"] for f in facts] == [False, True]
    assert all(f["tensorrt_standin"] == trt_standin.NAME and f["trt_engine_ops"] >= 1 for f in facts)
    assert all(line["env"]["uname"]["machine"] == "aarch64" and line["first_inference_ms"] > 0 for line in lines)
