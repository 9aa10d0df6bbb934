"""What edgefleet knows about each kind of accuracy evaluation, in one place: the recipe task it serves,
the decoders that fit it, its ground-truth file's check, its scorer and metrics, the metric the accuracy
gate compares (and how a profile's allowance converts), and a study's default metric. Adding a kind of
evaluation (an `agreement` with fp32, say) is adding one entry here.

Light on purpose: recipes validate against it at load, so scorers are imported only when scoring."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.config.validate import did_you_mean


@dataclass(frozen=True)
class EvaluatorKind:
    name: str                          # the recipe's evaluation.kind, and the ground truth's kind
    task: str                          # the recipe's task.kind it evaluates
    decoders: tuple[str, ...]          # task.postprocess.kind values the agent decodes for it
    metrics: tuple[str, ...]           # what its scorer reports, stored per cell
    gate_metric: str                   # what the accuracy gate compares
    study_metric: str                  # what a study plots by default
    scorer: str                        # "module:function" (path, predictions) -> {metric: value, "evaluator"...}
    gate_field: str                    # the profile's accuracy_gate field that allows its drop
    gate_unit: str                     # "points": the profile states drops in hundredths; "fraction": as is
    one_label_per_image: bool = False  # its ground truth has exactly one annotation per image
    # "annotations": the recipe's labelled split; "fp32": the fp32 source's own outputs on the recipe's photos.
    reference: str = "annotations"
    labels: tuple[tuple[str, str], ...] = ()  # metric -> how reports name it
    shown: tuple[str, ...] = ()        # the report's accuracy columns, the gated one first

    def score(self, ground_truth: Path, predictions: list[Any]) -> dict[str, Any]:
        module, function = self.scorer.split(":")
        scorer: Callable[[Path, list[Any]], dict[str, Any]] = getattr(importlib.import_module(module), function)
        return scorer(ground_truth, predictions)

    def max_drop(self, gate: Any) -> float:
        """The gate's allowance in the metric's own unit, from the profile's accuracy_gate."""
        value = float(getattr(gate, self.gate_field))
        return value / 100.0 if self.gate_unit == "points" else value


_DETECTION_DECODERS = ("ssd_anchors", "yolov5", "detections", "mediapipe_ssd")
EVALUATORS: dict[str, EvaluatorKind] = {e.name: e for e in (
    EvaluatorKind("coco", "detection", _DETECTION_DECODERS, ("map_50_95", "map_50", "map_75"),
                  gate_metric="map_50_95", study_metric="map_50",
                  scorer="edgefleet.evaluation.coco:score_detections", gate_field="max_map_drop", gate_unit="points",
                  labels=(("map_50_95", "mAP@[.5:.95]"), ("map_50", "mAP@.5"), ("map_75", "mAP@.75")),
                  shown=("map_50_95", "map_50")),
    EvaluatorKind("labels", "classification", ("argmax",), ("top1", "top5"),
                  gate_metric="top1", study_metric="top1",
                  scorer="edgefleet.evaluation.score_run:score_classification", gate_field="max_top1_drop",
                  gate_unit="fraction",
                  one_label_per_image=True, labels=(("top1", "top-1"), ("top5", "top-5")), shown=("top1", "top5")),
    # No labels: each variant's detections against the fp32 source's, on real photographs, by COCO's rules.
    EvaluatorKind("agreement", "detection", _DETECTION_DECODERS, ("agreement_50", "agreement_50_95"),
                  gate_metric="agreement_50", study_metric="agreement_50",
                  scorer="edgefleet.evaluation.agreement:score_agreement", gate_field="max_agreement_drop",
                  gate_unit="fraction", reference="fp32",
                  labels=(("agreement_50", "agreement with fp32 @.5"), ("agreement_50_95", "agreement with fp32 @[.5:.95]")),
                  shown=("agreement_50", "agreement_50_95")),
)}
# How reports name each metric, from every kind.
METRIC_LABELS: dict[str, str] = {metric: label for kind in EVALUATORS.values() for metric, label in kind.labels}


def evaluator(name: str) -> EvaluatorKind:
    try:
        return EVALUATORS[name]
    except KeyError:
        raise KeyError(f"unknown evaluation kind {name!r}{did_you_mean(name, EVALUATORS)}; "
                       f"known: {', '.join(EVALUATORS)}") from None


def for_task(task: str) -> EvaluatorKind:
    for kind in EVALUATORS.values():
        if kind.task == task:
            return kind
    raise KeyError(f"no evaluation for task {task!r}; tasks: {', '.join(k.task for k in EVALUATORS.values())}")


def for_recipe(task: str, evaluation_kind: str | None) -> EvaluatorKind:
    """The kind a recipe is judged by: its evaluation's, else its task's first (coco for detection)."""
    return evaluator(evaluation_kind) if evaluation_kind else for_task(task)


def shown_metrics(metric_names: set[str]) -> tuple[str, ...]:
    """The accuracy columns for results holding ``metric_names``: the first kind whose gated metric is there."""
    return next((k.shown for k in EVALUATORS.values() if k.gate_metric in metric_names), ())


def tasks() -> tuple[str, ...]:
    return tuple(dict.fromkeys(k.task for k in EVALUATORS.values()))


def decoders() -> tuple[str, ...]:
    return tuple(dict.fromkeys(d for k in EVALUATORS.values() for d in k.decoders))
