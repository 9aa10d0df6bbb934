"""The on-device decode: anchors, SSD box coding, NMS, YOLOv5 heads, and Python 3.6 compatibility."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.efagent import postprocess as pp

REPO = Path(__file__).resolve().parents[1]
POSTPROCESS = REPO / "edgefleet" / "agent" / "efagent" / "postprocess.py"

PARAMS = {
    "num_classes": 3,
    "score_kind": "sigmoid",
    "feature_maps": [[12, 12], [6, 6]],
    "anchor_scales": [[0.14, 0.2], [0.29, 0.41]],
    "aspect_ratios": [1.0, 2.0, 0.5],
    "variances": [0.1, 0.1, 0.2, 0.2],
    "score_threshold": 0.3,
    "iou_threshold": 0.5,
    "max_detections": 20,
}


def _xywh_to_xyxy(box):
    x, y, w, h = box
    return [x, y, x + w, y + h]


# ---------------------------------------------------------------- anchors and box coding

def test_anchor_layout_matches_a_keras_reshape_of_the_heads():
    anchors = pp.generate_anchors(PARAMS)
    k = pp.anchors_per_location(PARAMS)
    assert k == [6, 6]
    assert anchors.shape == (12 * 12 * 6 + 6 * 6 * 6, 4)
    # A head output (H, W, K*4) reshaped to (H*W*K, 4): cell (row, col), anchor j is row*W*K + col*K + j.
    first = anchors[: 12 * 12 * 6].reshape(12, 12, 6, 4)
    assert np.allclose(first[2, 5, :, 0], (5 + 0.5) / 12)  # cx follows the column
    assert np.allclose(first[2, 5, :, 1], (2 + 0.5) / 12)  # cy follows the row
    # j = scale_index * len(aspects) + aspect_index; aspect = w / h
    assert np.allclose(first[0, 0, 1, 2] / first[0, 0, 1, 3], 2.0)
    assert np.allclose(first[0, 0, 3, 2], 0.2)
    second = anchors[12 * 12 * 6:].reshape(6, 6, 6, 4)
    assert np.allclose(second[5, 0, 0, :2], [0.5 / 6, 5.5 / 6])


def test_encode_then_decode_recovers_boxes_exactly():
    rng = np.random.default_rng(0)
    anchors = pp.generate_anchors(PARAMS)
    idx = rng.integers(0, len(anchors), 200)
    boxes = np.concatenate([rng.uniform(0.05, 0.95, (200, 2)), rng.uniform(0.05, 0.6, (200, 2))], axis=1)
    deltas = pp.encode_boxes(boxes, anchors[idx], PARAMS["variances"])
    assert np.allclose(pp.decode_boxes(deltas, anchors[idx], PARAMS["variances"]), boxes, atol=1e-9)
    # An anchor encodes to zero deltas against itself.
    assert np.allclose(pp.encode_boxes(anchors, anchors, PARAMS["variances"]), 0.0, atol=1e-6)


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    assert np.allclose(pp.iou_matrix(a, b), [[1.0, 50 / 150, 0.0], [0.0, 0.0, 0.0]])


# ---------------------------------------------------------------- NMS

def test_nms_suppresses_same_class_overlaps_but_keeps_other_classes():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 1, 10, 11], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert pp.nms(boxes, scores, 0.5).tolist() == [0, 3]
    classes = np.array([0, 0, 1, 0])
    # box 2 overlaps box 0 as much as box 1 does, but is another class: it survives.
    assert pp.class_wise_nms(boxes, scores, classes, 0.5).tolist() == [0, 2, 3]
    assert pp.class_wise_nms(boxes, scores, classes, 0.5, max_output=2).tolist() == [0, 2]
    # Below the IoU threshold nothing is suppressed.
    assert pp.nms(boxes, scores, 0.95).tolist() == [0, 1, 2, 3]
    assert pp.class_wise_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).tolist() == []


# ---------------------------------------------------------------- SSD decode

def _ssd_outputs(params, objects, image_size, extra_columns=0):
    """Build raw model outputs encoding ``objects`` [(xywh pixels, class, score)] on their best anchors."""
    anchors = pp.generate_anchors(params)
    width, height = image_size
    deltas = np.zeros((len(anchors), 4), np.float32)
    scores = np.zeros((len(anchors), params["num_classes"] + extra_columns), np.float32)
    anchors_xyxy = pp.cxcywh_to_xyxy(anchors)
    used = set()
    for box, cls, score in objects:
        norm = np.array(_xywh_to_xyxy(box), float) / [width, height, width, height]
        order = np.argsort(-pp.iou_matrix(norm[None], anchors_xyxy)[0])
        a = next(int(i) for i in order if int(i) not in used)
        used.add(a)
        deltas[a] = pp.encode_boxes(pp.xyxy_to_cxcywh(norm), anchors[a], params["variances"])
        scores[a, cls + extra_columns] = score
    return deltas[None], scores[None]


def test_decode_recovers_constructed_boxes_in_image_pixels():
    image_size = (640, 480)  # not the model's 96x96: stretch resize maps back per axis
    objects = [((100.0, 50.0, 120.0, 90.0), 0, 0.95),
               ((400.0, 300.0, 60.0, 150.0), 2, 0.8),
               ((300.0, 100.0, 200.0, 200.0), 1, 0.6)]
    deltas, scores = _ssd_outputs(PARAMS, objects, image_size)
    # Scores first: the converter may reorder outputs, so decode must go by shape.
    dets = pp.decode_detections([scores, deltas], PARAMS, image_size)
    assert [d["category_id"] for d in dets] == [1, 3, 2]
    assert [d["score"] for d in dets] == pytest.approx([0.95, 0.8, 0.6], abs=1e-6)
    for det, (box, _, _) in zip(dets, objects):
        assert det["bbox"] == pytest.approx(list(box), abs=1e-3)
    # A name -> array mapping works as well as a list.
    assert pp.decode_detections({"b": deltas, "a": scores}, PARAMS, image_size) == dets


def test_decode_nms_is_class_wise_and_thresholded():
    image_size = (96, 96)
    objects = [((10.0, 10.0, 30.0, 30.0), 1, 0.9),
               ((11.0, 10.0, 30.0, 30.0), 1, 0.7),   # same class, overlapping: suppressed
               ((10.0, 11.0, 30.0, 30.0), 0, 0.8),   # other class, overlapping: kept
               ((60.0, 60.0, 20.0, 20.0), 2, 0.2)]   # below score_threshold: dropped
    deltas, scores = _ssd_outputs(PARAMS, objects, image_size)
    dets = pp.decode_detections([deltas, scores], PARAMS, image_size)
    assert [(d["category_id"], round(d["score"], 3)) for d in dets] == [(2, 0.9), (1, 0.8)]
    assert dets[0]["bbox"] == pytest.approx([10.0, 10.0, 30.0, 30.0], abs=1e-3)
    capped = pp.decode_detections([deltas, scores], {**PARAMS, "max_detections": 1}, image_size)
    assert len(capped) == 1 and capped[0]["score"] == pytest.approx(0.9)


def test_decode_softmax_scores_skip_the_background_column():
    params = {**PARAMS, "num_classes": 4, "score_kind": "softmax", "category_ids": [11, 12, 13, 14]}
    objects = [((20.0, 20.0, 40.0, 40.0), 3, 0.9)]
    deltas, scores = _ssd_outputs(params, objects, (96, 96), extra_columns=1)
    scores[0, :, 0] = 1.0 - scores[0].sum(axis=1)  # background takes the rest, as a softmax would
    dets = pp.decode_detections([scores, deltas], params, (96, 96))
    assert len(dets) == 1 and dets[0]["category_id"] == 14
    assert dets[0]["bbox"] == pytest.approx([20.0, 20.0, 40.0, 40.0], abs=1e-3)


def test_decode_undoes_letterbox():
    # 192x96 image letterboxed into the 96x96 input: scale 0.5, 24 px bars above and below.
    params = {**PARAMS, "input_size": [96, 96]}
    box_in_input = (20.0, 40.0, 30.0, 20.0)
    deltas, scores = _ssd_outputs(params, [(box_in_input, 0, 0.9)], (96, 96))
    dets = pp.decode_detections([deltas, scores], params, (192, 96), resize="letterbox")
    assert dets[0]["bbox"] == pytest.approx([40.0, 32.0, 60.0, 40.0], abs=1e-3)


def test_decode_rejects_outputs_it_cannot_identify():
    deltas, scores = _ssd_outputs(PARAMS, [((10.0, 10.0, 20.0, 20.0), 0, 0.9)], (96, 96))
    with pytest.raises(ValueError, match="score output"):
        pp.decode_detections([deltas], PARAMS, (96, 96))
    with pytest.raises(ValueError, match="score output"):
        pp.decode_detections([deltas[:, :-6], scores[:, :-6]], PARAMS, (96, 96))  # wrong anchor count
    with pytest.raises(ValueError, match="cannot tell them apart"):
        pp.decode_detections([deltas, deltas], {**PARAMS, "score_kind": "softmax"}, (96, 96))
    with pytest.raises(ValueError, match="missing 'variances'"):
        pp.decode_detections([deltas, scores], {k: v for k, v in PARAMS.items() if k != "variances"}, (96, 96))
    with pytest.raises(ValueError, match="batch size 1"):
        pp.decode_detections([np.repeat(deltas, 2, 0), scores], PARAMS, (96, 96))


def test_dequantize_inverts_affine_quantization():
    real = np.linspace(-2.0, 3.0, 50, dtype=np.float32)
    scale, zero_point = 5.0 / 255.0, 102
    q = np.clip(np.round(real / scale) + zero_point, 0, 255).astype(np.uint8)
    back = pp.dequantize(q, scale, zero_point)
    assert back.dtype == np.float32
    assert np.abs(back - real).max() <= scale / 2 + 1e-6
    assert pp.dequantize(np.array([zero_point], np.uint8), scale, zero_point)[0] == 0.0


def test_quantized_outputs_decode_close_to_float_ones():
    objects = [((30.0, 20.0, 40.0, 30.0), 2, 0.9)]
    deltas, scores = _ssd_outputs(PARAMS, objects, (96, 96))
    d_scale, d_zp = float(np.abs(deltas).max() * 2 / 255), 128
    q_deltas = np.clip(np.round(deltas / d_scale) + d_zp, 0, 255).astype(np.uint8)
    q_scores = np.clip(np.round(scores * 255), 0, 255).astype(np.uint8)
    dets = pp.decode_detections([pp.dequantize(q_scores, 1 / 255, 0), pp.dequantize(q_deltas, d_scale, d_zp)],
                                PARAMS, (96, 96))
    assert len(dets) == 1 and dets[0]["category_id"] == 3
    assert dets[0]["bbox"] == pytest.approx([30.0, 20.0, 40.0, 30.0], abs=0.5)


# ---------------------------------------------------------------- already-decoded detections (kind detections)

DETECTIONS = {"num_classes": 3, "score_threshold": 0.05, "max_detections": 50}


def _nms_outputs(found, slots=5):
    """A post-NMS model's outputs for ``found`` [(yxyx normalised, class, score)]; padding is zeros."""
    boxes, scores, classes = np.zeros((1, slots, 4), np.float32), np.zeros((1, slots), np.float32), \
        np.zeros((1, slots), np.float32)
    for i, (box, cls, score) in enumerate(found):
        boxes[0, i], classes[0, i], scores[0, i] = box, cls, score
    return {"boxes": boxes, "scores": scores, "classes": classes,
            "num_detections": np.array([len(found)], np.float32)}


def test_detections_in_any_output_order_come_back_in_image_pixels():
    found = [([0.1, 0.2, 0.5, 0.6], 2, 0.9), ([0.5, 0.5, 1.0, 0.75], 0, 0.4)]
    out = _nms_outputs(found)
    # TFLite lists this model's outputs as num_detections, boxes, classes, scores, under meaningless names.
    as_list = [out["num_detections"], out["boxes"], out["classes"], out["scores"]]
    dets = pp.read_detections(as_list, DETECTIONS, (200, 100))  # stretch: x * 200, y * 100
    assert [d["category_id"] for d in dets] == [3, 1]
    assert [d["score"] for d in dets] == pytest.approx([0.9, 0.4])
    assert dets[0]["bbox"] == pytest.approx([40.0, 10.0, 80.0, 40.0], abs=1e-4)  # [x, y, w, h]
    assert dets[1]["bbox"] == pytest.approx([100.0, 50.0, 50.0, 50.0], abs=1e-4)
    for order in ([3, 2, 1, 0], [2, 0, 3, 1]):
        assert pp.read_detections([as_list[i] for i in order], DETECTIONS, (200, 100)) == dets
    # The TensorFlow object detection API's names pick the outputs by name.
    named = {"detection_" + k if k != "num_detections" else k: v for k, v in out.items()}
    assert pp.read_detections(named, DETECTIONS, (200, 100)) == dets
    assert pp.read_detections(out, DETECTIONS, (200, 100)) == dets


def test_detections_tell_saturated_scores_from_classes():
    # fp16 rounds confident scores to exactly 1.0: whole numbers, like classes. Class 0 (or 2) cannot be a
    # score of a kept detection, and when every value of both is 1 either reading is the same.
    out = _nms_outputs([([0.1, 0.1, 0.3, 0.3], 1, 1.0), ([0.5, 0.5, 0.9, 0.9], 0, 1.0)])
    for outputs in ([out["scores"], out["classes"], out["boxes"], out["num_detections"]],
                    [out["classes"], out["scores"], out["boxes"], out["num_detections"]]):
        assert [(d["category_id"], d["score"]) for d in pp.read_detections(outputs, DETECTIONS, (96, 96))] == [
            (2, 1.0), (1, 1.0)]
    ones = _nms_outputs([([0.1, 0.1, 0.3, 0.3], 1, 1.0)])
    assert [d["category_id"] for d in pp.read_detections(list(ones.values()), DETECTIONS, (96, 96))] == [2]


def test_detections_threshold_cap_padding_and_category_ids():
    found = [([0.1, 0.1, 0.2, 0.2], 0, 0.8), ([0.3, 0.3, 0.4, 0.4], 1, 0.6), ([0.5, 0.5, 0.6, 0.6], 2, 0.3)]
    out = _nms_outputs(found, slots=6)
    out["classes"][0, 4] = 7.0  # a padded slot past num_detections: never read
    params = {**DETECTIONS, "score_threshold": 0.5, "category_ids": [11, 12, 13]}
    assert [d["category_id"] for d in pp.read_detections(out, params, (96, 96))] == [11, 12]
    assert len(pp.read_detections(out, {**DETECTIONS, "max_detections": 1}, (96, 96))) == 1
    assert pp.read_detections(_nms_outputs([]), DETECTIONS, (96, 96)) == []
    # letterbox: 192x96 into 96x96 puts the image in rows 24..72 of the input.
    wide = _nms_outputs([([0.25, 0.0, 0.75, 1.0], 0, 0.9)])
    det = pp.read_detections(wide, DETECTIONS, (192, 96), resize="letterbox", input_size=(96, 96))[0]
    assert det["bbox"] == pytest.approx([0.0, 0.0, 192.0, 96.0], abs=1e-4)


def test_detections_reject_outputs_they_cannot_read():
    out = _nms_outputs([([0.1, 0.1, 0.2, 0.2], 0, 0.8)])
    with pytest.raises(ValueError, match="num_detections"):
        pp.read_detections([out["boxes"], out["scores"], out["classes"]], DETECTIONS, (96, 96))
    with pytest.raises(ValueError, match="scores and classes"):
        pp.read_detections([out["boxes"], out["scores"], out["scores"][:, :3], out["num_detections"]],
                           DETECTIONS, (96, 96))
    with pytest.raises(ValueError, match="5 detection slots"):
        pp.read_detections({**out, "num_detections": np.array([9.0], np.float32)}, DETECTIONS, (96, 96))
    with pytest.raises(ValueError, match="cannot tell the scores from the classes"):
        bad = {**out, "classes": np.full((1, 5), 0.5, np.float32)}  # not a class index
        pp.read_detections(list(bad.values()), DETECTIONS, (96, 96))
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        pp.read_detections({**out, "classes": np.full((1, 5), 5.0, np.float32)}, DETECTIONS, (96, 96))
    with pytest.raises(ValueError, match="missing 'num_classes'"):
        pp.read_detections(out, {}, (96, 96))


# ---------------------------------------------------------------- YOLOv5

YOLO = {"score_threshold": 0.25, "iou_threshold": 0.45, "max_detections": 300, "input_size": [640, 640]}


def _yolo_row(cx, cy, w, h, obj, cls, n_classes=4, cls_prob=0.9):
    row = np.zeros(5 + n_classes, np.float32)
    row[:5] = [cx, cy, w, h, obj]
    row[5 + cls] = cls_prob
    return row


def test_yolov5_decode_scores_suppresses_and_scales():
    rows = np.stack([
        _yolo_row(100, 100, 80, 60, 0.9, 1),            # kept: score 0.81
        _yolo_row(104, 100, 80, 60, 0.8, 1),            # same class, IoU > 0.45: suppressed
        _yolo_row(100, 102, 80, 60, 0.7, 3),            # other class at the same place: kept, 0.63
        _yolo_row(400, 300, 100, 100, 0.2, 0),          # objectness under threshold: dropped
        _yolo_row(500, 500, 50, 50, 0.5, 2, cls_prob=0.4),  # 0.5 * 0.4 = 0.2 < 0.25: dropped
    ])[None]
    dets = pp.decode_yolov5(rows, YOLO, (1280, 960))  # stretch: x * 2, y * 1.5
    assert [d["category_id"] for d in dets] == [2, 4]
    assert [d["score"] for d in dets] == pytest.approx([0.81, 0.63], abs=1e-6)
    assert dets[0]["bbox"] == pytest.approx([(100 - 40) * 2, (100 - 30) * 1.5, 160, 90], abs=1e-3)


def test_yolov5_normalized_letterbox_and_category_ids():
    # TFLite exports give normalised xywh. 1280x720 letterboxed into 640x640: scale 0.5, 140 px bars.
    row = _yolo_row(0.5, 0.5, 0.25, 0.125, 0.95, 0, n_classes=2)
    params = {**YOLO, "normalized": True, "category_ids": [7, 9]}
    dets = pp.decode_yolov5(row[None, None], params, (1280, 720), resize="letterbox")
    assert len(dets) == 1 and dets[0]["category_id"] == 7
    # centre (320, 320) in input -> (640, 360) in the image; 160x80 input -> 320x160 image
    assert dets[0]["bbox"] == pytest.approx([480.0, 280.0, 320.0, 160.0], abs=1e-3)


def test_yolov5_multi_label_and_errors():
    row = np.zeros(5 + 3, np.float32)
    row[:5] = [320, 320, 100, 100, 1.0]
    row[5:] = [0.9, 0.8, 0.1]
    single = pp.decode_yolov5(row[None, None], YOLO, (640, 640))
    multi = pp.decode_yolov5(row[None, None], {**YOLO, "multi_label": True}, (640, 640))
    assert [d["category_id"] for d in single] == [1]
    assert [d["category_id"] for d in multi] == [1, 2]
    assert pp.decode_yolov5(np.zeros((1, 0, 8), np.float32), YOLO, (640, 640)) == []
    with pytest.raises(ValueError, match="input_size"):
        pp.decode_yolov5(row[None, None], {k: v for k, v in YOLO.items() if k != "input_size"}, (640, 640))
    with pytest.raises(ValueError, match="YOLOv5 output"):
        pp.decode_yolov5(row[None, None], {**YOLO, "num_classes": 80}, (640, 640))


# ---------------------------------------------------------------- Python 3.6

def test_postprocess_runs_on_python_3_6_per_vermin():
    vermin = Path(sys.executable).parent / "vermin"
    result = subprocess.run([str(vermin), "-t=3.6-", "--no-tips", "--violations", "--no-parse-comments",
                             str(POSTPROCESS)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run([str(vermin), "--no-tips", str(POSTPROCESS)], capture_output=True, text=True,
                            timeout=120)
    found = re.search(r"Minimum required versions:\s*([\d.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert tuple(int(p) for p in found.group(1).split(".")) <= (3, 6)


def test_postprocess_imports_nothing_but_numpy_and_stdlib():
    # The device gets this one file; an import of edgefleet (3.10+ host code) would break it there.
    imports = re.findall(r"^\s*(?:from|import)\s+([\w.]+)", POSTPROCESS.read_text(), flags=re.M)
    assert set(imports) <= {"math", "typing", "numpy"}, imports
