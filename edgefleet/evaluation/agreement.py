"""The label-free accuracy check: each variant's detections scored against the fp32 source's own.

Real published networks come without labelled data here. The ``agreement`` evaluation runs the
recipe's source model on this host, over the recipe's photographs (whole and seeded crops, a
different seed from calibration), through the very decoder the device uses (the agent's
``efagent.evaluate``), and writes those detections as a COCO ground truth. Each variant's
on-device detections are then scored against it with the same COCO evaluator as mAP and
reported as "agreement with fp32" (mAP@.5 and mAP@[.5:.95] of agreement), never as mAP.

The eval images are packed at the model's input size, so image sizes are the input size and
boxes are compared in input pixels, for the reference and the variants alike.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgefleet.errors import ConfigError, ResultsError
from edgefleet.evaluation.coco import score_detections
from edgefleet.recipes.load import LoadedRecipe
from edgefleet.recipes.photos import EVALUATION_SEED, PhotoPack, photo_pack

Log = Callable[[str], None]
# Which agent runtime runs a source format on this host for the reference detections.
REFERENCE_RUNTIMES = {"tflite": "tflite", "onnx": "onnxruntime"}
AGREEMENT_METRICS = {"map_50": "agreement_50", "map_50_95": "agreement_50_95"}


def score_agreement(ground_truth: Path, detections: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """COCO scoring of ``detections`` against the fp32 source's detections, under agreement's names."""
    try:
        scored = score_detections(ground_truth, detections)
    except ResultsError as exc:
        raise ResultsError(f"agreement with fp32: {exc}") from None
    renamed = {new: scored.pop(old) for old, new in AGREEMENT_METRICS.items()}
    scored.pop("map_75", None)
    return {**scored, **renamed, "reference": "the fp32 source's detections (score >= the decoder's threshold)"}


def reference_detections(loaded: LoadedRecipe, source: Path, pack: PhotoPack) -> list[dict[str, Any]]:
    """The source model's detections on ``pack``, run here with the agent's own runtime and decoder."""
    from edgefleet.agent.efagent import evaluate, runtimes

    recipe = loaded.recipe
    runtime = REFERENCE_RUNTIMES.get(recipe.source.format)
    if runtime is None:
        raise ConfigError(f"{loaded.position('evaluation', 'kind')}: an agreement evaluation runs the fp32 "
                          f"source on this host, which edgefleet does for {', '.join(REFERENCE_RUNTIMES)} "
                          f"sources; this one is {recipe.source.format}")
    session = runtimes.get_runtime(runtime).load(str(source), 1, None, {})
    with tempfile.TemporaryDirectory(prefix="edgefleet-agreement-") as tmp:
        out = Path(tmp) / "reference.json"
        evaluate.evaluate(session, eval_spec(loaded, pack), str(pack.images), str(out))
        return list(json.loads(out.read_text()))


def eval_spec(loaded: LoadedRecipe, pack: PhotoPack) -> dict[str, Any]:
    """The agent's eval spec for a photo pack (images already at the input size: sizes are the input's)."""
    recipe = loaded.recipe
    height, width = recipe.input.height_width
    return {"images": str(pack.images), "image_ids": list(range(1, pack.count + 1)),
            "image_sizes": [[width, height]] * pack.count,
            "postprocess": recipe.task.postprocess.model_dump(mode="json"), "resize": "stretch",
            "layout": recipe.input.layout, "normalization": recipe.input.normalization.model_dump(mode="json")}


def ground_truth(loaded: LoadedRecipe, pack: PhotoPack, detections: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The reference detections as a COCO annotations file; at least one, or agreement means nothing."""
    if not detections:
        raise ConfigError(f"{loaded.position('evaluation', 'kind')}: the fp32 source finds nothing on the "
                          f"{pack.count} photographs and crops, so agreement with it is undefined: add photographs "
                          "showing what the model detects")
    height, width = loaded.recipe.input.height_width
    images = [{"id": i, "file_name": name, "width": width, "height": height}
              for i, name in enumerate(pack.provenance, start=1)]
    annotations = [{"id": i, "image_id": d["image_id"], "category_id": d["category_id"], "bbox": d["bbox"],
                    "area": d["bbox"][2] * d["bbox"][3], "iscrowd": 0, "score": d["score"]}
                   for i, d in enumerate(detections, start=1)]
    categories = [{"id": i, "name": name} for i, name in enumerate(loaded.recipe.task.classes, start=1)]
    return {"info": {"description": f"agreement reference: {loaded.recipe.name}'s fp32 source on its photos",
                     "images_sha256": pack.sha256},
            "images": images, "annotations": annotations, "categories": categories}


def agreement_reference(loaded: LoadedRecipe, source: Path, downloads_dir: Path, log: Log) -> tuple[PhotoPack, bytes]:
    """The eval photo pack and the reference ground truth's bytes (JSON)."""
    pack = photo_pack(loaded, downloads_dir, seed=EVALUATION_SEED, log=log)
    detections = reference_detections(loaded, source, pack)
    log(f"agreement reference: the fp32 source finds {len(detections)} detections on {pack.count} images")
    doc = ground_truth(loaded, pack, detections)
    return pack, json.dumps(doc, indent=1, sort_keys=True).encode()
