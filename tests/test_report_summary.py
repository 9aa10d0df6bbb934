"""The report's summary (fastest within the accuracy gate, what each quantization step cost and gained),
a variant's size with the files beside it, and the time-vs-accuracy plot's y axis."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from agent_fixtures import FAST_BENCH, run_agent

from edgefleet.deploy.plan import DeployRequest, build_cells, variant_files
from edgefleet.deploy.variants import built_variants, local_file
from edgefleet.evaluation.score_run import EvalScore, judge
from edgefleet.plan.model import Plan, Step
from edgefleet.profiles.model import Profile
from edgefleet.report import build_table, render_report
from edgefleet.report.plots import MIN_ACCURACY_SPAN, accuracy_limits, pareto_figure
from edgefleet.report.summary import columns, gate_floor, step_text, summarize
from edgefleet.report.tables import FLAG_GATE_FAILED, FLAG_INVALID_ARTIFACT, ReportRow
from edgefleet.report.variants import VariantRow, VariantTable, build_variant_table
from edgefleet.results import AccuracyRecord, ResultsDB, ingest_run_dir
from edgefleet.store import ArtifactStore

pytest_plugins = ["agent_fixtures"]

GATE_REASON = "passed: map_50_95 {:.4f}, {:+.2f} points vs tflite-fp32's 0.9575 (limit -2.00 points)"


def row(variant: str, p50: dict[int, float | None], map_: float | None, gate: str | None, *,
        device: str = "rpi4", delegate: str | None = "cpu", flags: tuple[str, ...] = (),
        size_mb: float | None = 1.0) -> VariantRow:
    metrics = {} if map_ is None else {"map_50_95": map_, "delta_map_50_95": map_ - 0.9575}
    reason = None if gate is None else GATE_REASON.format(map_, (map_ - 0.9575) * 100).replace(
        "passed", gate, 1)
    return VariantRow(run_id="r1", device=device, emulated=False, variant=variant, runtime="tflite",
                      delegate=delegate, size_mb=size_mb, metrics=metrics, p50_ms=p50, gate=gate,
                      gate_reason=reason, flags=flags + ((FLAG_GATE_FAILED,) if gate == "failed" else ()))


def table(*rows: VariantRow, metrics=("map_50_95",)) -> VariantTable:
    return VariantTable(tuple(rows), (1, 2, 4), tuple(metrics))


# ---------------------------------------------------------------- the summary, as a table

ROWS = (
    row("tflite-fp32", {1: 40.0, 2: 22.0, 4: 13.5}, 0.9575, "passed"),
    row("tflite-fp16", {1: 39.0, 2: 21.0, 4: 13.0}, 0.9575, "passed"),
    row("tflite-int8", {1: 18.0, 2: 10.0, 4: 6.0}, 0.9559, "passed", size_mb=2.75),
    row("tflite-full-int8", {1: 15.0, 2: 8.5, 4: 5.0}, 0.9101, "failed"),  # faster, but failed the gate
)


def test_the_fastest_variant_within_the_gate_is_chosen_not_a_faster_one_that_failed():
    (summary,) = summarize(table(*ROWS))
    assert (summary.fastest.variant, summary.fastest.threads, summary.fastest.p50_ms) == ("tflite-int8", 4, 6.0)
    assert summary.reference.variant == "tflite-fp32" and summary.reference.p50_ms == 13.5
    assert summary.headline == ("Fastest within the accuracy gate: tflite-int8 (4 threads, cpu), p50 6 ms: "
                                "2.25× as fast as tflite-fp32, −0.16 pt mAP@[.5:.95]")


def test_a_setting_flagged_unstable_is_not_the_fastest_while_a_steady_one_exists():
    """Under qemu-user at as many threads as CPUs, the runs split between two speeds: the p50 of such a cell
    can come out faster than the steady one, by luck."""
    fp32 = replace(row("tflite-fp32", {1: 204.0, 2: 132.0}, 0.9575, "passed", flags=("unstable",)),
                   unstable_threads=(2,))
    int8 = replace(row("tflite-int8", {1: 33.4, 2: 31.0}, 0.9559, "passed", flags=("unstable",)),
                   unstable_threads=(1, 2))
    (summary,) = summarize(table(fp32, int8))
    assert (summary.reference.threads, summary.reference.p50_ms) == (1, 204.0), "the steady setting"
    # A variant flagged at every setting still competes, at its fastest, and the headline says so.
    assert (summary.fastest.variant, summary.fastest.threads) == ("tflite-int8", 2)
    assert "tflite-int8 (2 threads, cpu), p50 31 ms (flagged unstable at every setting" in summary.headline
    assert "unstable" not in summary.reference.flags and "unstable" in summary.fastest.flags


def test_each_quantization_step_shows_its_cost_in_points_and_its_speed_up_at_its_best_setting():
    (summary,) = summarize(table(*ROWS))
    keys = [key for key, _, _ in columns(summary)]
    got = [[step_text(step, key) for key in keys] for step in summary.steps]
    assert keys == ["variant", "where", "p50_ms", "speedup", "size_mb", "accuracy", "delta", "gate"]
    assert got == [  # the reference first, then fastest to slowest
        ["tflite-fp32 (reference)", "4 threads, cpu", "13.5", "1.00×", "1", "0.9575", "+0.00 pt", "passed"],
        ["tflite-full-int8", "4 threads, cpu", "5", "2.70×", "1", "0.9101", "−4.74 pt", "failed"],
        ["tflite-int8", "4 threads, cpu", "6", "2.25×", "2.75", "0.9559", "−0.16 pt", "passed"],
        ["tflite-fp16", "4 threads, cpu", "13", "1.04×", "1", "0.9575", "+0.00 pt", "passed"],
    ]


def test_a_variant_whose_file_was_not_the_built_one_is_not_chosen_and_a_tie_goes_to_the_reference():
    tampered = row("tflite-int8", {1: 5.0}, 0.9570, "passed", flags=(FLAG_INVALID_ARTIFACT,))
    same_speed = row("tflite-fp16", {1: 10.0}, 0.9575, "passed")
    (summary,) = summarize(table(row("tflite-fp32", {1: 10.0}, 0.9575, "passed"), same_speed, tampered))
    assert summary.fastest.variant == "tflite-fp32"
    assert summary.headline == "Fastest within the accuracy gate: tflite-fp32 (1 thread, cpu), p50 10 ms"


def test_without_a_passing_variant_or_without_accuracy_the_summary_says_so():
    (failed,) = summarize(table(row("tflite-fp32", {1: 10.0}, 0.9575, "failed"),
                                row("tflite-int8", {1: 5.0}, 0.90, "failed")))
    assert failed.fastest is None and failed.headline.startswith("No variant passed the accuracy gate")
    latency_only = table(row("tflite-fp32", {1: 10.0, 2: None}, None, None), row("tflite-int8", {1: 4.0}, None, None),
                         metrics=())
    (summary,) = summarize(latency_only)
    assert summary.metric is None and [key for key, _, _ in columns(summary)] == [
        "variant", "where", "p50_ms", "speedup", "size_mb"]
    assert summary.headline == ("Fastest measured (no on-device accuracy evaluation, so no accuracy gate): "
                                "tflite-int8 (1 thread, cpu), p50 4 ms: 2.50× as fast as tflite-fp32")


def test_each_device_gets_its_own_summary():
    summaries = summarize(table(*ROWS, row("tflite-fp32", {1: 4.0}, 0.95, "passed", device="jetson"),
                                row("tflite-int8", {1: 1.0}, 0.94, "passed", device="jetson")))
    assert [(s.label, s.fastest.variant, s.steps[1].speedup) for s in summaries] == [
        ("jetson", "tflite-int8", 4.0), ("rpi4", "tflite-int8", 13.5 / 5.0)]


def test_the_gate_floor_is_read_from_the_verdicts_the_scorer_writes():
    scores = [EvalScore(f"{v}/cpu/t1", v, "cpu", (f"{v}/cpu/t1",), {"map_50_95": m}, "pycocotools")
              for v, m in (("tflite-fp32", 0.9575), ("tflite-int8", 0.9559), ("tflite-full-int8", 0.9101))]
    verdicts = judge(scores, {"metric": "map_50_95", "max_drop": 0.02, "source_metrics": {"map_50_95": 0.96}})
    rows = [VariantRow("r1", "d", False, v.variant, "tflite", "cpu", None, gate="passed" if v.passed else "failed",
                       gate_reason=v.reason) for v in verdicts]
    assert gate_floor(rows) == pytest.approx(0.9575 - 0.02)
    # Only the reference was judged (against the source model): its floor is the one there is.
    assert gate_floor(rows[:1]) == pytest.approx(0.96 - 0.02)
    assert gate_floor([row("tflite-fp32", {1: 1.0}, None, None)]) is None


# ---------------------------------------------------------------- the time-vs-accuracy plot's y axis

def test_the_accuracy_axis_spans_the_gate_line_and_at_least_two_points():
    low, high = accuracy_limits([0.9559, 0.9575])
    assert high - low >= MIN_ACCURACY_SPAN and low < 0.9559 and high > 0.9575
    low, high = accuracy_limits([0.9559, 0.9575], gate=0.9375)
    assert low < 0.9375 and high > 0.9575
    low, high = accuracy_limits([0.995, 1.0])
    assert high == 1.0 and high - low >= MIN_ACCURACY_SPAN  # a fraction never shows 1.01


def _report_row(variant: str, threads: int, p50: float, accuracy: float) -> ReportRow:
    return ReportRow(run_id="r1", device="rpi4", emulated=True, cell=f"{variant}/t{threads}", variant=variant,
                     runtime="tflite", threads=threads, delegate=None, status="ok", reason=None, run_state="done",
                     p50_ms=p50, p90_ms=p50, p99_ms=p50, mean_ms=p50, cv=0.01, runs=10, first_inference_ms=p50,
                     load_ms=1.0, peak_rss_mb=10.0, delegate_nodes=None, total_nodes=None, accuracy=accuracy,
                     accuracy_metric="map_50_95")


def test_the_plot_draws_the_gate_line_inside_an_axis_a_reader_can_judge():
    rows = [_report_row("tflite-fp32", 1, 40.0, 0.9575), _report_row("tflite-int8", 1, 18.0, 0.9559)]
    axes = pareto_figure(rows, "map_50_95", "rpi4", gate=0.9375).axes[0]
    low, high = axes.get_ylim()
    assert low < 0.9375 < 0.9575 < high and high - low >= MIN_ACCURACY_SPAN
    gate_lines = [line for line in axes.get_lines() if line.get_label().startswith("accuracy gate")]
    assert [tuple(line.get_ydata()) for line in gate_lines] == [(0.9375, 0.9375)]
    assert "mAP@[.5:.95] ≥ 0.9375" in gate_lines[0].get_label()
    low, high = pareto_figure(rows, "map_50_95", "rpi4").axes[0].get_ylim()
    assert high - low >= MIN_ACCURACY_SPAN  # no gate known: still no 0.15-point cliff


# ---------------------------------------------------------------- the summary in both report formats

def test_the_summary_opens_both_report_formats(tmp_path: Path):
    db = ResultsDB(tmp_path / "results.db")
    lines = []
    for variant, p50, accuracy, passed in (("tflite-fp32", 40.0, 0.9575, 1.0), ("tflite-int8", 18.0, 0.9559, 1.0),
                                           ("tflite-full-int8", 15.0, 0.9101, 0.0)):
        cell = f"{variant}/cpu/t1"
        lines.append({"schema": 1, "run_id": "r1", "device": "rpi4", "cell": cell, "variant": variant,
                      "runtime": "tflite", "threads": 1, "status": "ok", "emulated": False, "runs": 10,
                      "load_ms": 1.0, "first_inference_ms": p50, "duration_s": 1.0, "cv": 0.01, "unstable": False,
                      "artifact_bytes": 2_000_000, "latency_ms": {k: p50 for k in ("mean", "min", "p50", "p90",
                                                                                   "p99", "max")} | {"std": 0.0}})
        reason = GATE_REASON.format(accuracy, (accuracy - 0.9575) * 100)
        for metric, value, evaluator in (("map_50_95", accuracy, "pycocotools"),
                                         ("delta_map_50_95", accuracy - 0.9575, "vs tflite-fp32"),
                                         ("accuracy_gate", passed, reason if passed else reason.replace(
                                             "passed", "failed"))):
            db.add_accuracy(AccuracyRecord("r1", variant, metric, value, evaluator, "rpi4", cell))
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"run_id": "r1", "device": "rpi4"}))
    (folder / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    ingest_run_dir(db, folder, tmp_path / "quarantine")
    paths = render_report(db, ["r1"], tmp_path / "report")
    markdown, html = paths.markdown.read_text(), paths.html.read_text()
    headline = ("Fastest within the accuracy gate: tflite-int8 (1 thread), p50 18 ms: 2.22× as fast as "
                "tflite-fp32, −0.16 pt mAP@[.5:.95]")
    assert markdown.index("## Summary") < markdown.index("## Runs") and headline in markdown
    assert "| tflite-full-int8 | 1 thread | 15 | 2.67× | 2 | 0.9101 | −4.74 pt | failed |" in markdown
    assert html.index("<h2>Summary</h2>") < html.index("<h2>Runs</h2>") and headline in html
    assert "<td class=\"num\">2.67×</td>" in html and "mAP@[.5:.95] ≥ 0.9375" in html


# ---------------------------------------------------------------- a variant's size: every file the device needs

def _openvino_ir(folder: Path) -> None:
    """A one-conv OpenVINO IR: model.xml (the graph) and model.bin (its weights) beside it."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    image = ops.parameter([1, 3, 24, 24], np.float32, name="image")
    weights = ops.constant(np.random.default_rng(0).normal(size=(256, 3, 3, 3)).astype(np.float32))
    conv = ops.convolution(image, weights, [1, 1], [0, 0], [0, 0], [1, 1])
    ov.save_model(ov.Model([conv], [image], "tiny"), folder / "model.xml", compress_to_fp16=False)


def test_a_variants_size_counts_the_files_beside_it(tmp_path: Path, agent_pyz: Path):
    pytest.importorskip("openvino")
    store = ArtifactStore(tmp_path / "artifacts")
    with store.staging("k9") as staging:
        _openvino_ir(staging.out_dir)
        store.commit(staging, {"step": "openvino/fp32", "primary_files": ["model.xml"]})
    step = Step("openvino/fp32", "openvino", "b", {}, {}, variant="openvino-fp32", runtime="openvino", key="k9")
    (variant,) = built_variants(Plan("t", "m", (step,)), store, print)
    xml, binary = store.path("k9") / "model.xml", store.path("k9") / "model.bin"
    assert [c.path for c in variant.companions] == [binary] and binary.stat().st_size > 5 * xml.stat().st_size

    # Deploy's cells name the companions; the files go where deploy puts them; the real agent measures.
    device = tmp_path / "device"
    profile = Profile.model_validate({
        "name": "dev", "device": {"board": "b", "arch": "x86_64", "os": "o", "python": "3.11"},
        "runtime": {"name": "openvino", "provided_by": "device"}, "formats": {"openvino": {}},
        "bench": {"threads": [1], "delegates": ["cpu"]}, "workdir": str(device)})
    request = DeployRequest("dev", profile, str(device), "r1", [variant], local_file(xml), None, None)
    for remote, local in variant_files(str(device), variant):
        Path(remote).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local.path, remote)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({
        "schema": 1, "run_id": "r1", "device": "dev", "emulated": True, "workdir": str(device),
        "bench": FAST_BENCH, "cells": build_cells(request, None)}))
    proc = run_agent(agent_pyz, "run", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    (line,) = [json.loads(text) for text in (run_dir / "results.jsonl").read_text().splitlines()]
    assert line["status"] == "ok", line["reason"]
    assert line["artifact_bytes"] == xml.stat().st_size + binary.stat().st_size

    db = ResultsDB(tmp_path / "results.db")
    ingest_run_dir(db, run_dir, tmp_path / "quarantine")
    (by_variant,) = build_variant_table(db, build_table(db, ["r1"])).rows
    assert by_variant.size_mb == pytest.approx((xml.stat().st_size + binary.stat().st_size) / 1e6)


def test_a_missing_companion_is_the_cells_error_not_a_smaller_size(tmp_path: Path, agent_pyz: Path):
    pytest.importorskip("openvino")  # without the runtime the cell stops before its files are looked at
    (tmp_path / "model.xml").write_text("<net/>")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cell = {"cell": "ov/cpu/t1", "variant": "openvino-fp32", "artifact": "model.xml", "companions": ["model.bin"],
            "runtime": "openvino", "threads": 1, "delegate": None}
    (run_dir / "run.json").write_text(json.dumps({"schema": 1, "run_id": "r1", "device": "dev", "emulated": True,
                                                  "workdir": str(tmp_path), "bench": FAST_BENCH, "cells": [cell]}))
    proc = run_agent(agent_pyz, "run", str(run_dir))
    (line,) = [json.loads(text) for text in (run_dir / "results.jsonl").read_text().splitlines()]
    assert line["status"] == "error" and "artifact_bytes" not in line  # no size rather than a wrong one
    assert line["reason"].endswith("model.bin, which does not exist"), (line["reason"], proc.stderr)
