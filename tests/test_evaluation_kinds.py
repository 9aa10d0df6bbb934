"""Each kind of accuracy evaluation lives in one registry entry (edgefleet/evaluation/kinds.py): recipes
validate against it, deploy's gate, packing, scoring and the study read it. A new kind is one entry."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.deploy.evalspec import gate_config
from edgefleet.errors import ConfigError
from edgefleet.evaluation import kinds
from edgefleet.evaluation.kinds import EVALUATORS, EvaluatorKind, evaluator, for_task
from edgefleet.evaluation.score_run import _score_file
from edgefleet.profiles.model import AccuracyGate
from edgefleet.recipes.load import load_recipe_file
from test_recipes import write_recipe

PACKAGE = Path(__file__).resolve().parents[1] / "edgefleet"


@pytest.mark.parametrize("old, new, expected", [
    ("kind: detection", "kind: detektion", "unknown task kind 'detektion' (did you mean 'detection'?)"),
    ("{kind: yolov5}", "{kind: yolo5}", "unknown postprocess kind 'yolo5' (did you mean 'yolov5'?)"),
    ("{kind: yolov5}", "{kind: argmax}", "postprocess 'argmax' does not fit a detection task"),
    ("path: calib.npy\n", "path: calib.npy\nevaluation: {kind: labels, annotations: a.json, images: img}\n",
     "evaluation kind 'labels' does not evaluate a detection task (use 'coco')"),
])
def test_recipes_are_checked_against_the_registry_at_load(tmp_path, old, new, expected):
    path = write_recipe(tmp_path, "path: m.onnx")
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(ConfigError) as failure:
        load_recipe_file(path)
    assert expected in str(failure.value) and "recipe.yaml:" in str(failure.value)


def test_the_gate_reads_its_metric_and_unit_from_the_kind():
    gate = AccuracyGate(max_map_drop=2.0, max_top1_drop=0.03)
    assert gate_config(gate, "coco", {})["metric"] == "map_50_95"
    assert gate_config(gate, "coco", {})["max_drop"] == pytest.approx(0.02)  # points -> fraction
    assert gate_config(gate, "labels", {})["max_drop"] == pytest.approx(0.03)
    assert for_task("classification").study_metric == "top1" and for_task("detection").study_metric == "map_50"


def test_a_new_kind_is_one_entry(tmp_path, monkeypatch):
    """An `agreement`-style kind: detections scored against another variant's, with COCO's evaluator."""
    agreement = EvaluatorKind("agreement", "agreement-detection", ("ssd_anchors",), ("map_50",),
                              gate_metric="map_50", study_metric="map_50",
                              scorer="edgefleet.evaluation.coco:score_detections", gate_field="max_map_drop",
                              gate_unit="points")
    monkeypatch.setitem(EVALUATORS, "agreement", agreement)
    assert evaluator("agreement") is agreement and "agreement-detection" in kinds.tasks()
    assert gate_config(AccuracyGate(max_map_drop=5.0), "agreement", {})["metric"] == "map_50"
    reference = {"images": [{"id": 1, "width": 10, "height": 10, "file_name": "a.png"}],
                 "categories": [{"id": 1, "name": "x"}],
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25,
                                  "iscrowd": 0}]}
    gt = tmp_path / "reference.json"
    gt.write_text(json.dumps(reference))
    metrics, described = _score_file("agreement", gt, [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5],
                                                        "score": 0.9}])
    assert metrics == {"map_50": pytest.approx(1.0)} and "pycocotools" in described


def test_task_kinds_have_no_branches_outside_the_registry():
    branches = ('== "labels"', '== "coco"', '== "detection"', '== "classification"', '"ssd_anchors", "yolov5"')
    for path in PACKAGE.rglob("*.py"):
        if "agent" in path.parts or path.name == "kinds.py":
            continue  # the agent runs on the device and keeps its decoders' own table
        text = path.read_text()
        assert not [b for b in branches if b in text], path
