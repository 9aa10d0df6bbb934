"""Score a collected run's on-device evaluations and judge every variant with the accuracy gate.

Input: the collected run folder (run.json and ``eval/<cell>.json`` as the agent wrote
them), the run's ingested cells, and the host's ground-truth cache (by digest, see
``edgefleet.evaluation.pack``). Output: AccuracyRecords, one set per cell that shares
the evaluated artifact and delegate (accuracy does not depend on the thread count),
so every row of the report finds its figure. Scores are deterministic, so scoring the
same run twice writes the same records.

The gate works down a chain: the source model's own held-out accuracy (the recipe's
``metrics.json``, when there is one) -> the fp32 reference variant on this device
(``tflite-fp32``, else the first fp32-like variant) -> every other variant. A variant
fails when it lost more than ``max_drop`` against its link in the chain, or when the
reference it is compared with failed (a difference to a broken reference means nothing).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.errors import ResultsError
from edgefleet.evaluation.kinds import evaluator
from edgefleet.evaluation.pack import ground_truth_path
from edgefleet.report.tables import GATE_METRIC  # 1 passed, 0 failed
from edgefleet.results.db import AccuracyRecord, CellRecord, ResultsDB

REFERENCE_VARIANT = "tflite-fp32"
FP32_LIKE = re.compile(r"(^|-)fp32($|-)|^onnx$|^savedmodel$")
_EPS = 1e-9


@dataclass(frozen=True)
class EvalScore:
    cell: str                   # the cell that ran the evaluation
    variant: str
    delegate: str               # the planner's delegate name ("cpu", "xnnpack", ...)
    group: tuple[str, ...]      # every cell of this artifact and delegate (all thread counts)
    metrics: Mapping[str, float]
    evaluator: str


@dataclass(frozen=True)
class GateVerdict:
    cell: str
    variant: str
    passed: bool
    reason: str
    compared_with: str | None   # a variant, "source model", or None (nothing to compare with)
    drop: float | None          # in the metric's unit; positive = worse


@dataclass(frozen=True)
class RunScores:
    run_id: str
    device: str
    metric: str | None
    scores: tuple[EvalScore, ...] = ()
    verdicts: tuple[GateVerdict, ...] = ()
    problems: tuple[str, ...] = ()        # evaluations that failed on the device
    records: tuple[AccuracyRecord, ...] = field(default=(), compare=False)

    @property
    def failed_gate(self) -> tuple[GateVerdict, ...]:
        return tuple(v for v in self.verdicts if not v.passed)


# ---------------------------------------------------------------- scoring one file

def score_classification(ground_truth: Path, predictions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Top-1 and top-5 against a labels file (one annotation, the label, per image)."""
    try:
        doc = json.loads(Path(ground_truth).read_text())
        labels = {a["image_id"]: a["category_id"] for a in doc["annotations"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ResultsError(f"{ground_truth}: not a labels file: {exc}") from None
    if not labels:
        raise ResultsError(f"{ground_truth}: no labels, so top-1 is undefined")
    ranked: dict[Any, list[Any]] = {}
    for index, item in enumerate(predictions):
        if not isinstance(item, Mapping) or item.get("image_id") not in labels or \
                not isinstance(item.get("top_k"), list):
            raise ResultsError(f"prediction {index}: needs an image_id of the split and a top_k list")
        ranked[item["image_id"]] = [entry.get("category_id") for entry in item["top_k"]]
    top1 = sum(1 for image, label in labels.items() if ranked.get(image, [None])[:1] == [label])
    top5 = sum(1 for image, label in labels.items() if label in ranked.get(image, [])[:5])
    return {"top1": top1 / len(labels), "top5": top5 / len(labels), "num_images": len(labels),
            "evaluator": {"name": "edgefleet top-k", "version": "1"}}


def describe_evaluator(score: Mapping[str, Any]) -> str:
    evaluator = score["evaluator"]
    text = f"{evaluator['name']} {evaluator['version']}"
    if "iou_thresholds" in score:
        ious = score["iou_thresholds"]
        text += (f", {score['iou_type']} IoU {ious[0]:.2f}:{ious[-1]:.2f} ({len(ious)} thresholds), "
                 f"maxDets {score['max_detections_per_image']}, area {score['area_range']}")
    return text + f", {score['num_images']} images"


def _predictions(folder: Path, relative: str) -> list[Any]:
    path = (folder / relative).resolve()
    if folder.resolve() / "eval" not in path.parents:
        raise ResultsError(f"eval file {relative!r} is outside the run's eval folder")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: the eval file was not collected") from None
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: unreadable eval file: {exc}") from None
    if not isinstance(data, list):
        raise ResultsError(f"{path}: an eval file is a JSON list of predictions")
    return data


def _score_file(kind: str, gt: Path, predictions: list[Any]) -> tuple[dict[str, float], str]:
    try:
        spec = evaluator(kind)
    except KeyError as exc:
        raise ResultsError(f"ground truth: {exc.args[0]}") from None
    score = spec.score(gt, predictions)
    return {name: float(score[name]) for name in spec.metrics}, describe_evaluator(score)


# ---------------------------------------------------------------- the gate

def is_fp32_like(variant: str) -> bool:
    return bool(FP32_LIKE.search(variant))


def pick_reference(scores: Sequence[EvalScore], delegate: str) -> EvalScore | None:
    """tflite-fp32 under the same delegate, then under any, then the first fp32-like variant."""
    for wanted in ((REFERENCE_VARIANT, delegate), (REFERENCE_VARIANT, None)):
        for score in scores:
            if score.variant == wanted[0] and wanted[1] in (None, score.delegate):
                return score
    return next((s for s in scores if is_fp32_like(s.variant)), None)


def _points(value: float) -> str:
    """A signed change in points (hundredths of the metric); never "-0.00"."""
    points = round(value * 100.0, 2) + 0.0
    return f"{points:+.2f} points"


def judge(scores: Sequence[EvalScore], gate: Mapping[str, Any]) -> list[GateVerdict]:
    metric = gate["metric"]
    max_drop = float(gate["max_drop"])
    source = (gate.get("source_metrics") or {}).get(metric)
    limit = f"limit {_points(-max_drop)}"
    verdicts: dict[str, GateVerdict] = {}

    def against_source(score: EvalScore) -> GateVerdict:
        if source is None:
            return GateVerdict(score.cell, score.variant, True, "passed: the reference variant, and no "
                               "source-model figure to compare it with", None, None)
        drop = float(source) - score.metrics[metric]
        ok = drop <= max_drop + _EPS
        return GateVerdict(score.cell, score.variant, ok,
                           f"{'passed' if ok else 'failed'}: {metric} {score.metrics[metric]:.4f}, "
                           f"{_points(-drop)} vs the source model's {float(source):.4f} ({limit})",
                           "source model", drop)

    for score in scores:
        if metric not in score.metrics:
            continue
        reference = pick_reference([s for s in scores if metric in s.metrics], score.delegate)
        if reference is None or reference.cell == score.cell:
            verdicts[score.cell] = against_source(score)
            continue
        ref_verdict = verdicts.get(reference.cell) or against_source(reference)
        verdicts[reference.cell] = ref_verdict
        drop = reference.metrics[metric] - score.metrics[metric]
        ok = drop <= max_drop + _EPS
        reason = (f"{metric} {score.metrics[metric]:.4f}, {_points(-drop)} vs {reference.variant}'s "
                  f"{reference.metrics[metric]:.4f} ({limit})")
        if not ref_verdict.passed:
            ok = False
            reason = f"the reference {reference.variant} itself failed ({ref_verdict.reason}); {reason}"
        verdicts[score.cell] = GateVerdict(score.cell, score.variant, ok, f"{'passed' if ok else 'failed'}: {reason}",
                                           reference.variant, drop)
    return [verdicts[s.cell] for s in scores if s.cell in verdicts]


# ---------------------------------------------------------------- a run

def eval_files(results_jsonl: bytes) -> list[str]:
    """The eval files a results log names (relative to RUN_DIR), for collect to fetch; bad lines are skipped."""
    files = []
    for raw in results_jsonl.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue  # ingest quarantines it
        evaluation = line.get("eval") if isinstance(line, dict) else None
        relative = evaluation.get("file") if isinstance(evaluation, dict) else None
        if isinstance(relative, str) and relative.startswith("eval/") and ".." not in relative.split("/") \
                and evaluation.get("status") == "ok" and relative not in files:
            files.append(relative)
    return files


def _group(cells: Sequence[Mapping[str, Any]], cell_key: str) -> tuple[str, ...]:
    by_key = {c.get("cell"): c for c in cells}
    me = by_key.get(cell_key)
    if me is None:
        return (cell_key,)
    same = ("artifact", "artifact_sha256", "runtime", "delegate", "params")
    return tuple(c["cell"] for c in cells if all(c.get(k) == me.get(k) for k in same))


def score_run(folder: Path, cells: Sequence[CellRecord], *, run_id: str, device: str,
              ground_truth_dir: Path) -> RunScores:
    """Score every evaluated cell of one run on one device; raises ResultsError for a run that cannot be scored."""
    folder = Path(folder)
    try:
        run = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{folder}: cannot read run.json: {exc}") from None
    spec = run.get("eval")
    if not spec:
        return RunScores(run_id, device, None)
    ground_truth = spec.get("ground_truth") or {}
    gt_path = ground_truth_path(ground_truth_dir, str(ground_truth.get("sha256")))
    if not gt_path.is_file():
        raise ResultsError(f"run {run_id}: the ground truth it was packed with ({gt_path.name}) is not in "
                           f"{ground_truth_dir}; deploy with --eval from this workspace again")
    kind = ground_truth.get("kind", "coco")
    run_cells = [c for c in run.get("cells", []) if isinstance(c, dict)]
    delegate_of = {c.get("cell"): c.get("delegate_name") or "cpu" for c in run_cells}
    scores: list[EvalScore] = []
    problems: list[str] = []
    for cell in cells:
        if cell.device != device:
            continue
        evaluation = cell.raw_json.get("eval")
        if not isinstance(evaluation, dict):
            continue
        if evaluation.get("status") != "ok":
            problems.append(f"{cell.cell}: evaluation {evaluation.get('status')}: {evaluation.get('reason')}")
            continue
        metrics, evaluator = _score_file(kind, gt_path, _predictions(folder, str(evaluation.get("file"))))
        scores.append(EvalScore(cell.cell, cell.variant, delegate_of.get(cell.cell, "cpu"),
                                _group(run_cells, cell.cell), metrics, evaluator))
    gate = run.get("accuracy_gate")
    verdicts = judge(scores, gate) if gate and scores else []
    records = _records(run_id, device, scores, verdicts, gate or {})
    return RunScores(run_id, device, gate.get("metric") if gate else None, tuple(scores), tuple(verdicts),
                     tuple(problems), tuple(records))


def _records(run_id: str, device: str, scores: Sequence[EvalScore], verdicts: Sequence[GateVerdict],
             gate: Mapping[str, Any]) -> list[AccuracyRecord]:
    verdict_of = {v.cell: v for v in verdicts}
    source = gate.get("source_metrics") or {}
    records = []
    for score in scores:
        values: list[tuple[str, float, str]] = [(m, v, score.evaluator) for m, v in score.metrics.items()]
        reference = pick_reference(scores, score.delegate)
        if reference is not None:
            for metric, value in score.metrics.items():
                if metric in reference.metrics:
                    values.append((f"delta_{metric}", value - reference.metrics[metric],
                                   f"vs {reference.variant} ({reference.cell}) on {device}"))
        for metric, value in score.metrics.items():
            if metric in source:
                values.append((f"source_delta_{metric}", value - float(source[metric]),
                               "vs the source model's own held-out figure (metrics.json)"))
        verdict = verdict_of.get(score.cell)
        if verdict is not None:
            values.append((GATE_METRIC, 1.0 if verdict.passed else 0.0, verdict.reason))
        for cell in score.group:
            records.extend(AccuracyRecord(run_id=run_id, variant=score.variant, metric=metric, value=value,
                                          evaluator=evaluator, device=device, cell=cell)
                           for metric, value, evaluator in values)
    return records


def store(db: ResultsDB, scores: RunScores) -> int:
    for record in scores.records:
        db.add_accuracy(record)
    return len(scores.records)
