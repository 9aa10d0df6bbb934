"""deploy --eval -> on-device accuracy -> collect, end to end, on real sshd devices in network namespaces.

Every variant of the bundled detector gets mAP beside its latency; fp32 reproduces metrics.json on the
device; a model whose recipe has the wrong normalization passes the fidelity gate (its reference sees
the same wrong inputs) but is flagged by the accuracy gate; the report has the by-variant table and a
time-vs-mAP plot per device; collecting twice leaves the results DB byte-identical.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from edgefleet.api.collect import CollectOptions, collect_benchmarks, results_db_path
from edgefleet.api.context import Env
from edgefleet.api.deploy import DeployOptions, deploy, follow_run
from edgefleet.console import make_console
from edgefleet.deploy.devices import fleet_dir
from edgefleet.deploy.plan import Skip
from edgefleet.fleet import DeviceSpec, EmulatedFleet
from edgefleet.transport.registry import open_transport
from edgefleet.workspace import open_workspace
from fleet_fixtures import require_fleet_tools

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.ssh, pytest.mark.convert, pytest.mark.slow]

GOOD, BROKEN = "ev-good", "ev-broken"
BROKEN_MODEL = "shapes-badnorm"
DEVICE_PROFILE = """\
description: an x86_64 eval test board
device: {{board: test board {name}, arch: x86_64, os: test, python: "3.11"}}
runtime: {{name: ai-edge-litert, provided_by: device}}
formats:
  tflite: {{quantizations: [{quantizations}]}}
bench: {{threads: [1, 2], warmup_runs: 1, min_runs: 5, min_duration_s: 0.05, cooldown_s: 0.0}}
accuracy_gate: {{max_map_drop: 2.0}}
transport: {{kind: ssh, host: {name}.invalid}}
workdir: /opt/edgefleet-{name}
"""
LOCAL_PROFILE = """\
extends: builtin:local
runtime:
  name: ai-edge-litert
  packages: ["ai-edge-litert==2.3.0", "numpy>=1.24,<3"]
  optional_packages: []
  platform_tags: [manylinux_2_17_x86_64, manylinux2014_x86_64, manylinux_2_28_x86_64, manylinux_2_27_x86_64]
"""


def _broken_model(models: Path) -> None:
    """The bundled detector under another name, fed raw 0..255 pixels instead of 0..1."""
    folder = models / BROKEN_MODEL
    shutil.copytree(models / "shapes", folder)
    recipe = folder / "recipe.yaml"
    text = recipe.read_text()
    wrong = text.replace("name: shapes\n", f"name: {BROKEN_MODEL}\n").replace(
        "std: [255.0, 255.0, 255.0]", "std: [1.0, 1.0, 1.0]")
    assert wrong.count("std: [1.0, 1.0, 1.0]") == 1 and f"name: {BROKEN_MODEL}" in wrong
    recipe.write_text(wrong)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    require_fleet_tools()
    root = tmp_path_factory.mktemp("eval-ws")
    for name in ("targets", "templates", "builders", "models"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, root / name)
    _broken_model(root / "models")
    (root / "edgefleet.yaml").write_text("backend: local\njobs: 2\n")
    (root / "targets" / f"{GOOD}.yaml").write_text(
        DEVICE_PROFILE.format(name=GOOD, quantizations="fp32, fp16, int8, full-int8"))
    # fp32 only: the broken model's fp16 fails the fidelity gate (fp16 activations of 0..255 inputs) and is
    # never shipped; fp32 passes it, which is the point: only the accuracy gate can catch this mistake.
    (root / "targets" / f"{BROKEN}.yaml").write_text(DEVICE_PROFILE.format(name=BROKEN, quantizations="fp32"))
    (root / "targets" / "local.yaml").write_text(LOCAL_PROFILE)
    devices = [DeviceSpec(name=n, stands_in_for=f"test board {n}", arch="x86_64") for n in (GOOD, BROKEN)]
    with EmulatedFleet(fleet_dir(root / ".edgefleet"), devices) as fleet:
        yield root, fleet


def env() -> Env:
    return Env(console=make_console(quiet=True))


def _wait(fleet, outcome) -> None:
    device = fleet.device(outcome.device)
    agent = next(a.agent for a in outcome.plan.actions if hasattr(a, "agent"))
    with open_transport(device.connection, name=outcome.device) as transport:
        status = follow_run(transport, f"{device.workdir}/runtime/venv/bin/python", agent,
                            f"{device.workdir}/runs/{outcome.run_id}", lambda _: None, poll_s=0.5, timeout_s=600)
    assert status["state"] == "done", status


def test_every_variant_gets_map_beside_latency_and_the_gate_catches_bad_normalization(ws):
    root, fleet = ws
    good = deploy(DeployOptions(target=GOOD, eval=True, workspace=root), env())
    broken = deploy(DeployOptions(target=BROKEN, model=BROKEN_MODEL, eval=True, workspace=root), env())
    assert any(a.what == "eval images (128)" for a in good.plan.uploads)
    _wait(fleet, good)
    _wait(fleet, broken)

    collected = collect_benchmarks(CollectOptions(workspace=root), env())
    assert not collected.errors, collected.errors
    db_path = results_db_path(open_workspace(root))
    with sqlite3.connect(db_path) as db:
        cells = db.execute("SELECT device, cell, variant, status, p50_ms, artifact_valid FROM cells").fetchall()
        accuracy = {(d, c, m): v for d, c, m, v in db.execute("SELECT device, cell, metric, value FROM accuracy")}
    good_cells = [c for c in cells if c[0] == GOOD]
    assert {c[2] for c in good_cells} == {"tflite-fp32", "tflite-fp16", "tflite-int8", "tflite-full-int8"}
    for device, cell, variant, status, p50, valid in cells:
        assert status == "ok" and p50 > 0 and valid == 1, (device, cell)
        # Every row, at every thread count, has its variant's mAP beside its latency.
        assert 0.0 <= accuracy[(device, cell, "map_50_95")] <= 1.0, (device, cell)
        assert (device, cell, "accuracy_gate") in accuracy, (device, cell)

    metrics = json.loads((REPO / "models" / "shapes" / "metrics.json").read_text())
    assert accuracy[(GOOD, "tflite-fp32/cpu/t1", "map_50")] == pytest.approx(metrics["map_50"], abs=0.005)
    assert accuracy[(GOOD, "tflite-fp32/cpu/t1", "accuracy_gate")] == 1.0
    assert accuracy[(GOOD, "tflite-fp16/cpu/t2", "accuracy_gate")] == 1.0
    assert abs(accuracy[(GOOD, "tflite-fp16/cpu/t1", "delta_map_50_95")]) < 0.005

    # The wrong normalization collapses mAP, yet every artifact passed the fidelity gate (valid == 1 above).
    assert accuracy[(BROKEN, "tflite-fp32/cpu/t1", "map_50")] < metrics["map_50"] - 0.2
    assert {c for (d, c, m), v in accuracy.items() if d == BROKEN and m == "accuracy_gate" and v == 0.0} == \
        {c[1] for c in cells if c[0] == BROKEN}

    report = collected.report
    assert report is not None
    markdown, html = report.markdown.read_text(), report.html.read_text()
    for text in (markdown, html):
        assert "By variant" in text and "mAP@[.5:.95] (Δ vs fp32)" in text and "p50 ms t2" in text
        assert "accuracy gate failed" in text
    variants = json.loads(report.variants_json.read_text())["rows"]
    assert {(r["device"], r["variant"]) for r in variants if r["gate"] == "failed"} == {(BROKEN, "tflite-fp32")}
    assert "vs the source model's" in next(r["gate_reason"] for r in variants if r["device"] == BROKEN)
    assert all(r["size_mb"] > 0 and r["metrics"]["map_50"] >= 0 and r["p50_ms"]["1"] > 0 for r in variants)
    for device in (GOOD, BROKEN):
        plot = report.out_dir / "plots" / f"latency-vs-accuracy-{device}.png"
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    before = _dump(db_path)
    collect_benchmarks(CollectOptions(workspace=root), env())
    assert _dump(db_path) == before

    again = deploy(DeployOptions(target=GOOD, eval=True, dry_run=True, workspace=root), env())
    assert [a.what for a in again.plan.actions if isinstance(a, Skip) and "eval" in a.what] == ["eval images (128)"]


def _dump(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return "\n".join(db.iterdump())
