"""The committed shapes detector: its files, its real accuracy, and the script that makes it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from ruamel.yaml import YAML

from edgefleet.agent.efagent import postprocess as pp
from edgefleet.evaluation import score_detections

pytestmark = pytest.mark.slow

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "shapes"
MAX_MODEL_BYTES = 5 * 1024 * 1024
MAX_VAL_BYTES = int(3.5 * 1024 * 1024)


@pytest.fixture(scope="module")
def recipe() -> dict:
    return YAML(typ="safe").load((MODEL_DIR / "recipe.yaml").read_text())


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((MODEL_DIR / "metrics.json").read_text())


def _val_images(recipe: dict) -> tuple[Path, dict, list[np.ndarray]]:
    annotations = MODEL_DIR / recipe["evaluation"]["annotations"]
    doc = json.loads(annotations.read_text())
    image_dir = MODEL_DIR / recipe["evaluation"]["images"]
    images = [np.asarray(Image.open(image_dir / info["file_name"]).convert("RGB")) for info in doc["images"]]
    return annotations, doc, images


def test_committed_files_are_present_small_and_consistent(recipe, metrics):
    model = MODEL_DIR / recipe["source"]["path"]
    assert model.stat().st_size <= MAX_MODEL_BYTES
    annotations, doc, images = _val_images(recipe)
    image_dir = MODEL_DIR / recipe["evaluation"]["images"]
    assert len(images) == len(list(image_dir.glob("*.png"))) == metrics["val_images"]
    assert 100 <= len(images) <= 200
    assert sum(p.stat().st_size for p in image_dir.glob("*.png")) + annotations.stat().st_size <= MAX_VAL_BYTES
    assert [c["name"] for c in doc["categories"]] == recipe["task"]["classes"]

    calibration = np.load(MODEL_DIR / recipe["calibration"]["path"])
    assert calibration.dtype == np.uint8
    assert calibration.shape[1:] == tuple(recipe["input"]["shape"][1:])
    assert 64 <= len(calibration) <= 100
    val_bytes = {img.tobytes() for img in images}
    assert not any(img.tobytes() in val_bytes for img in calibration)  # calibration never sees the val split
    assert metrics["quick"] is False
    assert metrics["evaluator"]["name"] == "pycocotools"


def test_committed_model_reproduces_its_held_out_map(recipe, metrics):
    import keras

    model = keras.models.load_model(MODEL_DIR / recipe["source"]["path"], compile=False)
    params = recipe["task"]["postprocess"]["params"]
    n_anchors = len(pp.generate_anchors(params))
    assert tuple(model.inputs[0].shape) == tuple(recipe["input"]["shape"])
    assert sorted(tuple(o.shape) for o in model.outputs) == sorted(
        [(1, n_anchors, 4), (1, n_anchors, len(recipe["task"]["classes"]))])

    norm = recipe["input"]["normalization"]
    mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
    annotations, doc, images = _val_images(recipe)
    detections = []
    for info, image in zip(doc["images"], images):
        x = ((image.astype(np.float32) - mean) / std)[None]
        outputs = [np.asarray(o) for o in model(x, training=False)]
        for det in pp.decode_detections(outputs, params, (info["width"], info["height"])):
            detections.append({"image_id": info["id"], **det})

    score = score_detections(annotations, detections)
    assert score["map_50"] > 0.5
    assert abs(score["map_50"] - metrics["map_50"]) <= 0.005
    assert abs(score["map_50_95"] - metrics["map_50_95"]) <= 0.005


def test_train_script_quick_run_writes_a_complete_model_dir(tmp_path, recipe):
    result = subprocess.run([sys.executable, str(MODEL_DIR / "train.py"), "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["quick"] is True and metrics["epochs"] == 2
    assert 0.0 <= metrics["map_50"] <= 1.0 and metrics["parameters"] > 0
    doc = json.loads((tmp_path / recipe["evaluation"]["annotations"]).read_text())
    assert len(doc["images"]) == metrics["val_images"] == len(list((tmp_path / "data/val/images").glob("*.png")))
    assert np.load(tmp_path / "data" / "calibration.npy").shape == (metrics["calibration_images"], 96, 96, 3)
    assert (tmp_path / recipe["source"]["path"]).stat().st_size > 0
    assert not list(tmp_path.glob(".train-*"))  # the scratch directory is gone
