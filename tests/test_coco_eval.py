"""Host-side COCO scoring with the real pycocotools."""
from __future__ import annotations

import copy
import json
from importlib.metadata import version

import pytest

from edgefleet.datasets import CLASSES, generate, write_coco
from edgefleet.errors import ResultsError
from edgefleet.evaluation import score_detections


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory):
    out = tmp_path_factory.mktemp("gt")
    images, annotations = generate(10, seed=11)
    path = write_coco(out, images, annotations, CLASSES)
    return path, json.loads(path.read_text())


def _as_detections(doc, transform=lambda box: box, category=lambda c: c):
    return [{"image_id": a["image_id"], "category_id": category(a["category_id"]),
             "bbox": transform(list(a["bbox"])), "score": 0.9} for a in doc["annotations"]]


def test_perfect_detections_score_one(ground_truth, capsys):
    path, doc = ground_truth
    detections = _as_detections(doc)
    before = copy.deepcopy(detections)
    result = score_detections(path, detections)
    assert result["map_50"] == pytest.approx(1.0)
    assert result["map_50_95"] == pytest.approx(1.0)
    assert result["evaluator"] == {"name": "pycocotools", "version": version("pycocotools")}
    assert result["iou_thresholds"] == pytest.approx([0.5 + 0.05 * i for i in range(10)])
    assert result["num_detections"] == result["num_ground_truth"] == len(doc["annotations"])
    assert detections == before  # pycocotools' loadRes mutates what it gets; ours must not leak that
    assert capsys.readouterr().out == ""  # pycocotools' progress chatter is swallowed


def test_empty_detections_score_zero_without_crashing(ground_truth):
    path, _ = ground_truth
    result = score_detections(path, [])
    assert result["map_50"] == 0.0 and result["map_50_95"] == 0.0
    assert result["evaluator"]["name"] == "pycocotools"
    assert result["num_detections"] == 0


def test_shifted_boxes_score_lower_and_wrong_classes_score_zero(ground_truth):
    path, doc = ground_truth
    perfect = score_detections(path, _as_detections(doc))
    slightly = score_detections(path, _as_detections(doc, lambda b: [b[0] + 0.1 * b[2], b[1], b[2], b[3]]))
    badly = score_detections(path, _as_detections(doc, lambda b: [b[0] + 0.6 * b[2], b[1], b[2], b[3]]))
    assert badly["map_50_95"] < slightly["map_50_95"] < perfect["map_50_95"]
    assert badly["map_50"] < perfect["map_50"]
    wrong = score_detections(path, _as_detections(doc, category=lambda c: c % len(CLASSES) + 1))
    assert wrong["map_50"] == 0.0


def test_half_the_objects_found_scores_in_between(ground_truth):
    path, doc = ground_truth
    found = _as_detections(doc)[::2]
    result = score_detections(path, found)
    assert 0.2 < result["map_50"] < 0.8


def test_bad_input_raises_results_error(ground_truth, tmp_path):
    path, doc = ground_truth
    good = _as_detections(doc)[0]
    with pytest.raises(ResultsError, match="image_id 999"):
        score_detections(path, [{**good, "image_id": 999}])
    with pytest.raises(ResultsError, match="category_id 42"):
        score_detections(path, [{**good, "category_id": 42}])
    with pytest.raises(ResultsError, match=r"missing \['score'\]"):
        score_detections(path, [{k: v for k, v in good.items() if k != "score"}])
    with pytest.raises(ResultsError, match="not a valid box"):
        score_detections(path, [{**good, "bbox": [0, 0, float("nan"), 4]}])
    with pytest.raises(ResultsError, match="not found"):
        score_detections(tmp_path / "missing.json", [])
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [\n  oops]}')
    with pytest.raises(ResultsError, match=r"broken.json:2:3: invalid JSON"):
        score_detections(broken, [])
    no_gt = tmp_path / "no_gt.json"
    no_gt.write_text(json.dumps({**doc, "annotations": []}))
    with pytest.raises(ResultsError, match="no ground-truth"):
        score_detections(no_gt, [])
