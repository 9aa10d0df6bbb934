"""What `deploy --eval` adds to a run: the eval spec the agent reads and the gate collect applies.

Both go into run.json, so collect needs neither the recipe nor the profile: it finds
the ground truth by digest in the host's eval cache and the gate's limits in the run.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.errors import ConfigError
from edgefleet.evaluation.kinds import evaluator
from edgefleet.evaluation.pack import PackedEval, pack_evaluation
from edgefleet.profiles.model import AccuracyGate
from edgefleet.recipes.load import LoadedRecipe

# The model's own held-out accuracy, as its trainer measured it, next to the recipe (optional).
SOURCE_METRICS_FILE = "metrics.json"
SOURCE_METRIC_KEYS = ("map_50_95", "map_50", "map_75", "top1", "top5")


@dataclass(frozen=True)
class EvalRequest:
    images_path: Path
    images_sha256: str
    images_size: int
    image_ids: tuple[int, ...]
    image_sizes: tuple[tuple[int, int], ...]
    postprocess: Mapping[str, Any]
    resize: str
    layout: str
    normalization: Mapping[str, Any] | None
    ground_truth: Mapping[str, Any]       # {"kind", "sha256"}: the host's copy, by digest
    input_size: tuple[int, int]
    source_metrics: Mapping[str, float] = field(default_factory=dict)


def images_remote(data_dir: str, request: EvalRequest) -> str:
    return f"{data_dir}/{request.images_sha256[:16]}.npy"


def eval_config(request: EvalRequest, remote_images: str) -> dict[str, Any]:
    """run.json's ``eval``: what the agent reads (see edgefleet/agent/efagent/__init__.py) plus the host's ground-truth pointer."""
    return {
        "images": remote_images, "images_sha256": request.images_sha256,
        "image_ids": list(request.image_ids), "image_sizes": [list(s) for s in request.image_sizes],
        "postprocess": {"kind": request.postprocess["kind"], "params": dict(request.postprocess.get("params", {}))},
        "resize": request.resize, "layout": request.layout,
        "normalization": dict(request.normalization) if request.normalization is not None else None,
        "input_size": list(request.input_size), "ground_truth": dict(request.ground_truth),
    }


def gate_config(gate: AccuracyGate, kind: str, source_metrics: Mapping[str, float]) -> dict[str, Any]:
    """run.json's ``accuracy_gate``; ``max_drop`` is in the metric's own unit (a fraction)."""
    kind_spec = evaluator(kind)
    # The profile states mAP in points (2.0 = 0.02 mAP) and top-1 as a fraction (0.02); the kind knows which.
    max_drop = kind_spec.max_drop(gate)
    return {"metric": kind_spec.gate_metric, "max_drop": max_drop,
            "profile": gate.model_dump(mode="json"),
            "source_metrics": dict(source_metrics)}


def source_metrics(loaded: LoadedRecipe) -> dict[str, float]:
    path = loaded.folder / SOURCE_METRICS_FILE
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the model's reference metrics: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a JSON object of metrics")
    return {k: float(doc[k]) for k in SOURCE_METRIC_KEYS
            if isinstance(doc.get(k), (int, float)) and not isinstance(doc.get(k), bool)}


def eval_request(loaded: LoadedRecipe, cache_dir: Path, downloads_dir: Path) -> EvalRequest:
    """Pack the recipe's evaluation split (cached by content) and describe it for the planner."""
    packed: PackedEval = pack_evaluation(loaded, cache_dir, downloads_dir)
    recipe = loaded.recipe
    return EvalRequest(
        images_path=packed.images, images_sha256=packed.images_sha256, images_size=packed.images.stat().st_size,
        image_ids=packed.image_ids, image_sizes=packed.image_sizes,
        postprocess=recipe.task.postprocess.model_dump(mode="json"), resize=packed.resize,
        layout=recipe.input.layout, normalization=recipe.input.normalization.model_dump(mode="json"),
        ground_truth={"kind": packed.kind, "sha256": packed.ground_truth_sha256},
        input_size=packed.input_size, source_metrics=source_metrics(loaded))
