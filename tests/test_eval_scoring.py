"""Scoring on-device evaluations on the host: pycocotools on the bundled split, the accuracy gate's chain,
records beside the latency rows (idempotently), the by-variant report, and the ground-truth check of
the bundled model's fp32 TFLite through the device's own decode path, run here on the host.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from edgefleet.deploy.evalspec import eval_config, eval_request, gate_config
from edgefleet.errors import ResultsError
from edgefleet.evaluation.pack import pack_evaluation
from edgefleet.evaluation.score_run import EvalScore, eval_files, judge, pick_reference, score_run, store
from edgefleet.profiles.model import AccuracyGate
from edgefleet.recipes.load import load_recipe
from edgefleet.report import build_table, render_report
from edgefleet.report.tables import FLAG_GATE_FAILED
from edgefleet.report.variants import build_variant_table, rich_variant_table
from edgefleet.results import ResultsDB, ingest_run_dir

REPO = Path(__file__).resolve().parents[1]
SHAPES = REPO / "models" / "shapes"
GATE = {"metric": "map_50_95", "max_drop": 0.02, "source_metrics": {}}


def score(cell: str, variant: str, value: float, delegate: str = "cpu") -> EvalScore:
    return EvalScore(cell, variant, delegate, (cell,), {"map_50_95": value}, "test")


# ---------------------------------------------------------------- the gate

def test_reference_is_tflite_fp32_of_the_same_delegate_then_any_fp32():
    scores = [score("a", "tflite-int8", 0.5), score("b", "onnx", 0.6), score("c", "tflite-fp32", 0.7, "gpu"),
              score("d", "tflite-fp32", 0.7)]
    assert pick_reference(scores, "cpu").cell == "d"
    assert pick_reference(scores, "gpu").cell == "c"
    assert pick_reference(scores, "nnapi").cell == "c"
    assert pick_reference(scores[:2], "cpu").variant == "onnx"
    assert pick_reference([score("x", "openvino-fp16", 0.1), score("y", "openvino-fp32", 0.1)], "cpu").cell == "y"
    assert pick_reference(scores[:1], "cpu") is None


@pytest.mark.parametrize("values, source, passed", [
    # Within 2 points of fp32 passes, beyond fails; fp32 itself has nothing to be compared with.
    ({"tflite-fp32": 0.760, "tflite-fp16": 0.759, "tflite-int8": 0.735}, None,
     {"tflite-fp32": True, "tflite-fp16": True, "tflite-int8": False}),
    ({"tflite-fp32": 0.760, "tflite-int8": 0.740}, None, {"tflite-fp32": True, "tflite-int8": True}),
    # A broken fp32 (wrong normalization) fails against the source model, and drags every variant with it.
    ({"tflite-fp32": 0.010, "tflite-fp16": 0.010}, 0.765, {"tflite-fp32": False, "tflite-fp16": False}),
    ({"tflite-fp32": 0.760, "tflite-fp16": 0.759}, 0.765, {"tflite-fp32": True, "tflite-fp16": True}),
    # No fp32 deployed: each variant is judged against the source model directly.
    ({"tflite-int8": 0.70}, 0.765, {"tflite-int8": False}),
])
def test_gate_chain(values, source, passed):
    scores = [score(f"{v}/cpu/t1", v, value) for v, value in values.items()]
    verdicts = judge(scores, dict(GATE, source_metrics={"map_50_95": source} if source is not None else {}))
    assert {v.variant: v.passed for v in verdicts} == passed
    for verdict in verdicts:
        assert verdict.reason.startswith("passed: " if verdict.passed else "failed: ")
    broken = [v for v in verdicts if v.variant == "tflite-fp16" and not v.passed]
    assert all("reference tflite-fp32 itself failed" in v.reason for v in broken)


def test_eval_files_names_only_safe_successful_eval_files():
    lines = [{"cell": "a", "eval": {"status": "ok", "file": "eval/a.json"}},
             {"cell": "b", "eval": {"status": "error", "file": "eval/b.json"}},
             {"cell": "c", "eval": {"status": "ok", "file": "../../etc/passwd"}},
             {"cell": "d"}]
    raw = b"\n".join(json.dumps(line).encode() for line in lines) + b"\n{not json\n"
    assert eval_files(raw) == ["eval/a.json"]


# ---------------------------------------------------------------- a collected run, scored

def _line(cell: str, variant: str, threads: int, evaluation: dict | None) -> dict:
    line = {"schema": 1, "run_id": "run-x", "device": "dev-x", "cell": cell, "variant": variant,
            "runtime": "tflite", "threads": threads, "status": "ok", "emulated": True, "load_ms": 1.0,
            "first_inference_ms": 2.0, "runs": 10, "duration_s": 0.1, "cv": 0.01, "unstable": False,
            "artifact_bytes": 1_000_000 * threads,
            "latency_ms": {k: 1.0 / threads for k in ("mean", "min", "p50", "p90", "p99", "max")} | {"std": 0.0}}
    if evaluation is not None:
        line["eval"] = evaluation
    return line


def _detections(annotations: dict, keep_every: int) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for i, a in enumerate(annotations["annotations"]) if i % keep_every == 0]


@pytest.fixture
def collected(tmp_path: Path) -> tuple[Path, Path]:
    """A run folder as collect leaves it: fp32 and fp16 find every object, int8 half of them."""
    annotations_path = SHAPES / "data" / "val" / "annotations.json"
    annotations = json.loads(annotations_path.read_text())
    cache = tmp_path / "eval-cache"
    packed = pack_evaluation(load_recipe(REPO / "models", "shapes"), cache, tmp_path / "downloads")
    folder = tmp_path / "run-x" / "dev-x"
    (folder / "eval").mkdir(parents=True)
    cells, lines = [], []
    for variant, keep in (("tflite-fp32", 1), ("tflite-fp16", 1), ("tflite-int8", 2)):
        for threads in (1, 2):
            key = f"{variant}/cpu/t{threads}"
            cells.append({"cell": key, "variant": variant, "artifact": f"a/{variant}.tflite", "runtime": "tflite",
                          "threads": threads, "delegate": None, "delegate_name": "cpu", "eval": threads == 1})
            evaluation = None
            if threads == 1:
                name = f"eval/{key.replace('/', '_')}.json"
                (folder / name).write_text(json.dumps(_detections(annotations, keep)))
                evaluation = {"status": "ok", "file": name, "latency_ms": {"p50": 0.5},
                              "latency_with_postprocess_ms": {"p50": 1.5}}
            lines.append(_line(key, variant, threads, evaluation))
    run = {"schema": 1, "run_id": "run-x", "device": "dev-x", "emulated": True, "cells": cells,
           "eval": {"ground_truth": {"kind": "coco", "sha256": packed.ground_truth_sha256}},
           "accuracy_gate": gate_config(AccuracyGate(), "coco", {"map_50_95": 0.99})}
    (folder / "run.json").write_text(json.dumps(run))
    (folder / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder, cache


def test_scores_sit_beside_the_latency_rows_and_collecting_twice_changes_nothing(collected, tmp_path):
    folder, cache = collected
    db = ResultsDB(tmp_path / "results.db")
    ingest_run_dir(db, folder, tmp_path / "quarantine")
    scores = score_run(folder, db.cells(["run-x"]), run_id="run-x", device="dev-x", ground_truth_dir=cache)
    store(db, scores)
    by_variant = {s.variant: s.metrics for s in scores.scores}
    assert by_variant["tflite-fp32"]["map_50"] == pytest.approx(1.0)
    assert by_variant["tflite-fp16"] == by_variant["tflite-fp32"]
    assert 0.3 < by_variant["tflite-int8"]["map_50"] < 0.7
    assert {v.variant: v.passed for v in scores.verdicts} == {
        "tflite-fp32": True, "tflite-fp16": True, "tflite-int8": False}

    records = db.accuracy(["run-x"])
    # Accuracy does not depend on threads: the t2 cells carry the t1 evaluation's figures.
    for cell in ("tflite-int8/cpu/t1", "tflite-int8/cpu/t2"):
        mine = {r.metric: r for r in records if r.cell == cell}
        assert mine["accuracy_gate"].value == 0.0 and "failed" in mine["accuracy_gate"].evaluator
        assert mine["delta_map_50_95"].value < -0.02
        assert mine["map_50_95"].evaluator.startswith("pycocotools ")
        assert "IoU 0.50:0.95 (10 thresholds)" in mine["map_50_95"].evaluator
    before = db.dump()
    store(db, score_run(folder, db.cells(["run-x"]), run_id="run-x", device="dev-x", ground_truth_dir=cache))
    assert db.dump() == before

    table = build_table(db, ["run-x"])
    assert table.accuracy_metric == "map_50_95"
    assert {r.variant for r in table.rows if FLAG_GATE_FAILED in r.flags} == {"tflite-int8"}
    variants = build_variant_table(db, table)
    rows = {r.variant: r for r in variants.rows}
    assert rows["tflite-int8"].gate == "failed" and rows["tflite-fp16"].gate == "passed"
    assert rows["tflite-fp32"].size_mb == pytest.approx(1.0) and rows["tflite-fp32"].p50_ms == {1: 1.0, 2: 0.5}
    assert rows["tflite-fp32"].eval_ms == 0.5 and rows["tflite-fp32"].eval_post_ms == 1.5
    assert variants.text(rows["tflite-fp16"], "map_50_95").endswith("(+0.00 pt)")
    console = Console(record=True, width=400)
    console.print(rich_variant_table(variants))
    terminal = console.export_text()
    assert "accuracy gate failed" in terminal and "eval+post ms/img" in terminal

    paths = render_report(db, ["run-x"], tmp_path / "report")
    for text in (paths.markdown.read_text(), paths.html.read_text()):
        assert "By variant" in text and "accuracy gate failed" in text and "mAP@[.5:.95] (Δ vs fp32)" in text
    assert "accuracy gate failed" in paths.csv.read_text() and "accuracy gate failed" in paths.json.read_text()
    assert paths.variants_csv is not None and "tflite-int8" in paths.variants_csv.read_text()
    pareto = [p for p in paths.plots if p.name == "latency-vs-accuracy-dev-x.png"]
    assert pareto and pareto[0].read_bytes()[:4] == b"\x89PNG"


def test_missing_ground_truth_or_eval_file_is_a_results_error(collected, tmp_path):
    folder, cache = collected
    db = ResultsDB(":memory:")
    ingest_run_dir(db, folder, tmp_path / "quarantine")
    with pytest.raises(ResultsError, match="ground truth it was packed with"):
        score_run(folder, db.cells(["run-x"]), run_id="run-x", device="dev-x", ground_truth_dir=tmp_path / "none")
    (folder / "eval" / "tflite-fp16_cpu_t1.json").unlink()
    with pytest.raises(ResultsError, match="was not collected"):
        score_run(folder, db.cells(["run-x"]), run_id="run-x", device="dev-x", ground_truth_dir=cache)


def test_pack_is_cached_by_content(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(SHAPES, models / "shapes", ignore=shutil.ignore_patterns("*.keras"))
    recipe = load_recipe(models, "shapes")
    first = pack_evaluation(recipe, tmp_path / "cache", tmp_path / "downloads")
    assert first.images_sha256 == pack_evaluation(recipe, tmp_path / "cache", tmp_path / "downloads").images_sha256
    assert len(first.image_ids) == 128 and first.image_sizes[0] == (96, 96) and first.input_size == (96, 96)
    image = models / "shapes" / "data" / "val" / "images" / "000001.png"
    image.write_bytes((models / "shapes" / "data" / "val" / "images" / "000002.png").read_bytes())
    changed = pack_evaluation(recipe, tmp_path / "cache", tmp_path / "downloads")
    assert changed.images != first.images and changed.images_sha256 != first.images_sha256


# ---------------------------------------------------------------- ground truth on the host

@pytest.mark.convert
@pytest.mark.slow
def test_bundled_fp32_tflite_reproduces_metrics_json_through_the_device_decode(tmp_path):
    """The pipeline's own fp32 conversion, fed and decoded by the agent's eval code, here on the host."""
    from edgefleet.agent.efagent import evaluate, runtimes
    from edgefleet.api.build import BuildOptions, build
    from edgefleet.plan.workspace import load_plan
    from edgefleet.api.context import Env
    from edgefleet.console import make_console
    from edgefleet.evaluation.coco import score_detections
    from edgefleet.store import ArtifactStore
    from edgefleet.workspace import open_workspace

    root = tmp_path / "ws"
    for name in ("targets", "templates", "builders", "models"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, root / name)
    (root / "edgefleet.yaml").write_text("backend: local\njobs: 1\n")
    (root / "targets" / "gt-host.yaml").write_text(
        "description: ground-truth check\ndevice: {board: host, arch: x86_64, os: test, python: '3.11'}\n"
        "runtime: {name: ai-edge-litert, provided_by: device}\nformats: {tflite: {quantizations: [fp32]}}\n"
        "transport: {kind: local}\nworkdir: /opt/edgefleet-gt-host\n")
    build(BuildOptions(target="gt-host", model="shapes", workspace=root), Env(console=make_console(quiet=True)))
    ws = open_workspace(root)
    step = load_plan(ws, "gt-host", "shapes").variants[0]
    artifact = ArtifactStore(ws.artifacts_dir).primary_file(step.key)

    request = eval_request(load_recipe(ws.models_dir, "shapes"), ws.state_dir / "eval", ws.downloads_dir)
    spec = eval_config(request, str(request.images_path))
    session = runtimes.get_runtime("tflite").load(str(artifact), 1, None, {})
    out = tmp_path / "eval" / "fp32.json"
    summary = evaluate.evaluate(session, spec, spec["images"], str(out))
    assert summary["images"] == 128
    gt = ws.state_dir / "eval" / "ground-truth" / f"{request.ground_truth['sha256']}.json"
    scored = score_detections(gt, json.loads(out.read_text()))
    expected = json.loads((SHAPES / "metrics.json").read_text())
    assert scored["map_50"] == pytest.approx(expected["map_50"], abs=0.005)
    assert scored["map_50_95"] == pytest.approx(expected["map_50_95"], abs=0.005)
    assert request.source_metrics["map_50"] == expected["map_50"]
