"""COCO bbox mAP with pycocotools, the reference implementation, run on the host.

pycocotools prints progress on stdout; it is captured so that the CLI's own
output stays clean (and ``--json`` output stays parseable).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from edgefleet.errors import ResultsError

EVALUATOR = "pycocotools"


def score_detections(annotations_json: Path, detections: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Score ``detections`` (COCO results: image_id, category_id, bbox [x, y, w, h], score).

    Returns map_50_95, map_50, map_75, the evaluator's name and version, and the thresholds used.
    An empty detection list scores 0 rather than crashing pycocotools.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval, Params

    ground_truth = _load_ground_truth(Path(annotations_json))
    results = _validated(detections, ground_truth, Path(annotations_json))
    if not ground_truth["annotations"]:
        raise ResultsError(f"{annotations_json}: no ground-truth annotations, so mAP is undefined")

    summary = {"map_50_95": 0.0, "map_50": 0.0, "map_75": 0.0}
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = ground_truth
            gt.createIndex()
            # loadRes writes ids/areas into the dicts it gets, so it gets copies.
            dt = gt.loadRes(copy.deepcopy(results))
            evaluator = COCOeval(gt, dt, iouType="bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = evaluator.stats
        # COCOeval reports -1 where no category had ground truth; those score as 0 here.
        summary = {"map_50_95": max(float(stats[0]), 0.0), "map_50": max(float(stats[1]), 0.0),
                   "map_75": max(float(stats[2]), 0.0)}
    # COCO's standard settings, unchanged: reported so a reader knows what the numbers mean.
    params = Params(iouType="bbox")
    return {
        **summary,
        "evaluator": {"name": EVALUATOR, "version": version(EVALUATOR)},
        "iou_type": "bbox",
        "iou_thresholds": [round(float(t), 2) for t in params.iouThrs],
        "max_detections_per_image": int(params.maxDets[-1]),
        "area_range": "all",
        "num_images": len(ground_truth["images"]),
        "num_ground_truth": len(ground_truth["annotations"]),
        "num_detections": len(results),
    }


def _load_ground_truth(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: annotations file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: cannot read annotations: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise ResultsError(f"{path}: a COCO annotations file is a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise ResultsError(f"{path}: COCO annotations need a {key!r} list")
    doc.setdefault("info", {})
    return doc


def _validated(detections: Sequence[dict[str, Any]], ground_truth: dict[str, Any],
               path: Path) -> list[dict[str, Any]]:
    image_ids = {img["id"] for img in ground_truth["images"]}
    category_ids = {cat["id"] for cat in ground_truth["categories"]}
    out = []
    for i, det in enumerate(detections):
        where = f"detection {i}"
        if not isinstance(det, dict):
            raise ResultsError(f"{where}: expected an object, got {type(det).__name__}")
        missing = {"image_id", "category_id", "bbox", "score"} - det.keys()
        if missing:
            raise ResultsError(f"{where}: missing {sorted(missing)}")
        if det["image_id"] not in image_ids:
            raise ResultsError(f"{where}: image_id {det['image_id']!r} is not an image of {path}")
        if det["category_id"] not in category_ids:
            raise ResultsError(f"{where}: category_id {det['category_id']!r} is not a category of {path}")
        try:
            bbox = [float(v) for v in det["bbox"]]
            score = float(det["score"])
        except (TypeError, ValueError):
            raise ResultsError(f"{where}: bbox must be 4 numbers and score a number") from None
        if len(bbox) != 4 or not all(math.isfinite(v) for v in [*bbox, score]) or bbox[2] < 0 or bbox[3] < 0:
            raise ResultsError(f"{where}: bbox {det['bbox']!r} / score {det['score']!r} is not a valid box")
        out.append({"image_id": det["image_id"], "category_id": det["category_id"], "bbox": bbox, "score": score})
    return out
