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

    def score(self, ground_truth: Path, predictions: list[Any]) -> dict[str, Any]:
        module, function = self.scorer.split(":")
        scorer: Callable[[Path, list[Any]], dict[str, Any]] = getattr(importlib.import_module(module), function)
        return scorer(ground_truth, predictions)

    def max_drop(self, gate: Any) -> float:
        """The gate's allowance in the metric's own unit, from the profile's accuracy_gate."""
        value = float(getattr(gate, self.gate_field))
        return value / 100.0 if self.gate_unit == "points" else value


EVALUATORS: dict[str, EvaluatorKind] = {e.name: e for e in (
    EvaluatorKind("coco", "detection", ("ssd_anchors", "yolov5", "detections"), ("map_50_95", "map_50", "map_75"),
                  gate_metric="map_50_95", study_metric="map_50",
                  scorer="edgefleet.evaluation.coco:score_detections", gate_field="max_map_drop", gate_unit="points"),
    EvaluatorKind("labels", "classification", ("argmax",), ("top1", "top5"),
                  gate_metric="top1", study_metric="top1",
                  scorer="edgefleet.evaluation.score_run:score_classification", gate_field="max_top1_drop",
                  gate_unit="fraction",
                  one_label_per_image=True),
)}


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


def tasks() -> tuple[str, ...]:
    return tuple(k.task for k in EVALUATORS.values())


def decoders() -> tuple[str, ...]:
    return tuple(d for k in EVALUATORS.values() for d in k.decoders)
