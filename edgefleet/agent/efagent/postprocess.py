"""Detection post-processing that runs ON THE DEVICE.

Pure numpy and Python 3.6 compatible: boards ship old interpreters (JetPack 4,
Debian buster), so this file avoids anything newer (no dataclasses, no walrus,
no postponed annotations) and imports nothing from edgefleet, whose host code is
3.10+. It raises ValueError for outputs or params it cannot interpret; the host
turns that into a ResultsError.

Conventions
-----------
* Anchors and SSD boxes are normalised to the model input: ``[cx, cy, w, h]``
  in [0, 1], anchor ``k`` of cell ``(row, col)`` of feature map ``m`` at index
  ``offset_m + (row * W_m + col) * K_m + k`` with ``k = scale_index * len(aspects) + aspect_index``.
  That is the order a Keras head ``(1, H, W, K * 4) -> Reshape((H * W * K, 4))`` produces.
* Box regressions are SSD deltas ``[dx, dy, dw, dh]`` scaled by ``variances``.
* ``image_size`` is ``(width, height)`` of the original image in pixels;
  detections come back as COCO ``bbox = [x, y, w, h]`` in those pixels.
* ``category_id`` is ``class_index + 1`` (COCO ids 1..C) unless params give
  ``category_ids``, a list mapping class index to id (e.g. COCO's 80 -> 91 ids).
* Models with decoding and NMS in their graph (kind ``detections``) return boxes
  ``[ymin, xmin, ymax, xmax]`` normalised to the model input, TensorFlow's order.
* MediaPipe's SSD detectors (kind ``mediapipe_ssd``: BlazeFace, palm detection) follow the
  TensorsToDetections convention instead: fixed-size anchors (1 x 1, only centers matter, same
  order as above with ``anchors_per_cell`` per map), regressors ``[dx, dy, w, h, keypoints...]``
  in input pixels divided by ``box_scale`` (x before y: reverse_output_order), sigmoid logits.
"""
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

Outputs = Union[Mapping[str, Any], Sequence[Any]]
Detection = Dict[str, Any]

# Keeps exp() from overflowing on garbage regressions (the torchvision bound).
_MAX_LOG_SCALE = math.log(1000.0 / 16.0)
_REQUIRED = object()
SCORE_KINDS = ("sigmoid", "softmax")
# How far a float class index may sit from a whole number (float rounding, not quantization).
_WHOLE_TOLERANCE = 1e-3
RESIZE_MODES = ("stretch", "letterbox")


def _param(params, key, default=_REQUIRED):
    # type: (Mapping[str, Any], str, Any) -> Any
    if key in params:
        return params[key]
    if default is _REQUIRED:
        raise ValueError("postprocess params are missing {!r} (have: {})".format(key, sorted(params)))
    return default


def dequantize(array, scale, zero_point):
    # type: (Any, Any, Any) -> np.ndarray
    """``(q - zero_point) * scale`` as float32; scale/zero_point may be per-axis arrays."""
    q = np.asarray(array).astype(np.float32)
    return (q - np.asarray(zero_point, dtype=np.float32)) * np.asarray(scale, dtype=np.float32)


# ---------------------------------------------------------------- anchors and boxes

def _feature_map_sizes(params):
    # type: (Mapping[str, Any]) -> List[Tuple[int, int]]
    sizes = []
    for fm in _param(params, "feature_maps"):
        if isinstance(fm, (int, np.integer)):
            sizes.append((int(fm), int(fm)))
        else:
            height, width = fm
            sizes.append((int(height), int(width)))
    return sizes


def _scales_per_map(params, n_maps):
    # type: (Mapping[str, Any], int) -> List[List[float]]
    scales = _param(params, "anchor_scales")
    if len(scales) != n_maps:
        raise ValueError("anchor_scales has {} entries for {} feature maps".format(len(scales), n_maps))
    return [[float(s) for s in (row if isinstance(row, (list, tuple)) else [row])] for row in scales]


def anchors_per_location(params):
    # type: (Mapping[str, Any]) -> List[int]
    """K_m for each feature map: the number of anchors in one cell."""
    sizes = _feature_map_sizes(params)
    n_aspects = len(_param(params, "aspect_ratios"))
    return [len(row) * n_aspects for row in _scales_per_map(params, len(sizes))]


def generate_anchors(params):
    # type: (Mapping[str, Any]) -> np.ndarray
    """(A, 4) float32 ``[cx, cy, w, h]`` normalised; see the module docstring for the order.

    params: ``feature_maps`` ([[H, W], ...] or [S, ...]), ``anchor_scales`` (per map, a list of
    anchor sides as a fraction of the input), ``aspect_ratios`` (width / height, shared by all maps).
    """
    sizes = _feature_map_sizes(params)
    scales = _scales_per_map(params, len(sizes))
    aspects = [float(a) for a in _param(params, "aspect_ratios")]
    if not sizes or not aspects or any(a <= 0 for a in aspects):
        raise ValueError("need at least one feature map and positive aspect_ratios, got {}".format(aspects))
    blocks = []
    for (height, width), map_scales in zip(sizes, scales):
        shapes = np.array([[s * math.sqrt(a), s / math.sqrt(a)] for s in map_scales for a in aspects],
                          dtype=np.float64)  # (K, 2) as w, h
        cy, cx = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width,
                             indexing="ij")
        centers = np.stack([cx.ravel(), cy.ravel()], axis=1)  # (H*W, 2), row-major
        k = len(shapes)
        block = np.concatenate([np.repeat(centers, k, axis=0), np.tile(shapes, (height * width, 1))], axis=1)
        blocks.append(block)
    return np.concatenate(blocks, axis=0).astype(np.float32)


def cxcywh_to_xyxy(boxes):
    # type: (np.ndarray) -> np.ndarray
    boxes = np.asarray(boxes, dtype=np.float64)
    half = boxes[..., 2:4] / 2.0
    return np.concatenate([boxes[..., 0:2] - half, boxes[..., 0:2] + half], axis=-1)


def xyxy_to_cxcywh(boxes):
    # type: (np.ndarray) -> np.ndarray
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.concatenate([(boxes[..., 0:2] + boxes[..., 2:4]) / 2.0, boxes[..., 2:4] - boxes[..., 0:2]], axis=-1)


def encode_boxes(boxes, anchors, variances):
    # type: (np.ndarray, np.ndarray, Sequence[float]) -> np.ndarray
    """SSD regression targets for ``boxes`` (cx, cy, w, h, normalised) against ``anchors``."""
    b = np.asarray(boxes, dtype=np.float64)
    a = np.asarray(anchors, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    dxy = (b[..., 0:2] - a[..., 0:2]) / a[..., 2:4] / v[0:2]
    dwh = np.log(np.maximum(b[..., 2:4], 1e-12) / a[..., 2:4]) / v[2:4]
    return np.concatenate([dxy, dwh], axis=-1)


def decode_boxes(deltas, anchors, variances):
    # type: (np.ndarray, np.ndarray, Sequence[float]) -> np.ndarray
    """Inverse of encode_boxes: (A, 4) deltas -> (A, 4) ``[cx, cy, w, h]`` normalised."""
    d = np.asarray(deltas, dtype=np.float64)
    a = np.asarray(anchors, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    cxy = d[..., 0:2] * v[0:2] * a[..., 2:4] + a[..., 0:2]
    wh = np.exp(np.minimum(d[..., 2:4] * v[2:4], _MAX_LOG_SCALE)) * a[..., 2:4]
    return np.concatenate([cxy, wh], axis=-1)


def iou_matrix(boxes_a, boxes_b):
    # type: (np.ndarray, np.ndarray) -> np.ndarray
    """(N, M) IoU of xyxy boxes."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, 0:2], b[None, :, 0:2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


# ---------------------------------------------------------------- NMS

def nms(boxes, scores, iou_threshold, max_output=0):
    # type: (np.ndarray, np.ndarray, float, int) -> np.ndarray
    """Greedy NMS over xyxy boxes: indices kept, best score first. Suppresses IoU > threshold."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="mergesort")  # stable, so ties keep input order on every numpy
    keep = []  # type: List[int]
    while order.size:
        best = int(order[0])
        keep.append(best)
        if max_output and len(keep) >= max_output:
            break
        rest = order[1:]
        ious = iou_matrix(boxes[best:best + 1], boxes[rest])[0]
        order = rest[ious <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def class_wise_nms(boxes, scores, classes, iou_threshold, max_output=0):
    # type: (np.ndarray, np.ndarray, np.ndarray, float, int) -> np.ndarray
    """NMS within each class only; boxes of different classes never suppress each other."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    kept = []
    for c in np.unique(classes):
        members = np.nonzero(classes == c)[0]
        kept.append(members[nms(boxes[members], scores[members], iou_threshold)])
    if not kept:
        return np.zeros((0,), dtype=np.int64)
    kept_all = np.concatenate(kept)
    kept_all = kept_all[np.argsort(-scores[kept_all], kind="mergesort")]
    return kept_all[:max_output] if max_output else kept_all


# ---------------------------------------------------------------- output handling

def _as_arrays(outputs):
    # type: (Outputs) -> List[np.ndarray]
    values = list(outputs.values()) if isinstance(outputs, Mapping) else list(outputs)
    arrays = []
    for value in values:
        arr = np.asarray(value)
        if arr.ndim == 3:
            if arr.shape[0] != 1:
                raise ValueError("expected batch size 1, got output of shape {}".format(arr.shape))
            arr = arr[0]
        arrays.append(arr)
    return arrays


def _pick_ssd_outputs(outputs, n_anchors, n_score_columns):
    # type: (Outputs, int, int) -> Tuple[np.ndarray, np.ndarray]
    """Find (boxes (A, 4), scores (A, S)) by shape: the TFLite converter may reorder outputs."""
    arrays = _as_arrays(outputs)
    shapes = [tuple(a.shape) for a in arrays]
    if n_score_columns == 4:
        raise ValueError("score and box outputs would both be (A, 4); shape cannot tell them apart")
    boxes = [a for a in arrays if a.shape == (n_anchors, 4)]
    scores = [a for a in arrays if a.shape == (n_anchors, n_score_columns)]
    if len(boxes) != 1 or len(scores) != 1:
        raise ValueError("expected one ({0}, 4) box output and one ({0}, {1}) score output, got shapes {2}"
                         .format(n_anchors, n_score_columns, shapes))
    return boxes[0].astype(np.float64), scores[0].astype(np.float64)


def _input_size(params, input_size):
    # type: (Mapping[str, Any], Optional[Sequence[int]]) -> Optional[Tuple[float, float]]
    size = input_size if input_size is not None else params.get("input_size")
    if size is None:
        return None
    width, height = size
    return float(width), float(height)


def to_image_pixels(boxes_xyxy, image_size, resize="stretch", input_size=None):
    # type: (np.ndarray, Sequence[int], str, Optional[Sequence[float]]) -> np.ndarray
    """Map xyxy boxes normalised to the model input back to (N, 4) xywh pixels of the original image.

    ``letterbox`` needs ``input_size`` (width, height) of the model input to undo the padding.
    """
    width, height = float(image_size[0]), float(image_size[1])
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    if resize == "stretch":
        px = b * np.array([width, height, width, height])
    elif resize == "letterbox":
        if input_size is None:
            raise ValueError("letterbox resize needs the model input size")
        in_w, in_h = input_size
        scale = min(in_w / width, in_h / height)
        pad_x, pad_y = (in_w - width * scale) / 2.0, (in_h - height * scale) / 2.0
        px = (b * np.array([in_w, in_h, in_w, in_h]) - np.array([pad_x, pad_y, pad_x, pad_y])) / scale
    else:
        raise ValueError("resize must be one of {}, got {!r}".format(RESIZE_MODES, resize))
    px = np.clip(px, 0.0, np.array([width, height, width, height]))
    return np.concatenate([px[:, 0:2], px[:, 2:4] - px[:, 0:2]], axis=1)


def _to_detections(xywh, scores, classes, params):
    # type: (np.ndarray, np.ndarray, np.ndarray, Mapping[str, Any]) -> List[Detection]
    ids = params.get("category_ids")
    detections = []
    for box, score, cls in zip(xywh, scores, classes):
        c = int(cls)
        if ids is not None and c >= len(ids):
            raise ValueError("class index {} has no entry in category_ids ({} entries)".format(c, len(ids)))
        detections.append({
            "bbox": [float(v) for v in box],
            "category_id": int(ids[c]) if ids is not None else c + 1,
            "score": float(score),
        })
    return detections


# ---------------------------------------------------------------- SSD

def decode_detections(outputs, params, image_size, resize="stretch", input_size=None):
    # type: (Outputs, Mapping[str, Any], Sequence[int], str, Optional[Sequence[int]]) -> List[Detection]
    """Decode an SSD-style model's raw (dequantized) outputs into COCO detections.

    ``outputs``: the model's output arrays in any order, as a list or a name->array mapping:
    box regressions (1, A, 4) and class scores (1, A, S). With ``score_kind: sigmoid`` S = C
    (independent per-class probabilities); with ``softmax`` S = C + 1 and column 0 is background.
    params: the anchor keys of generate_anchors plus ``num_classes``, ``variances``,
    ``score_kind``, ``score_threshold``, ``iou_threshold``, ``max_detections`` and optionally
    ``pre_nms_top_k`` and ``category_ids``.
    """
    anchors = generate_anchors(params)
    num_classes = int(_param(params, "num_classes"))
    score_kind = _param(params, "score_kind")
    if score_kind not in SCORE_KINDS:
        raise ValueError("score_kind must be one of {}, got {!r}".format(SCORE_KINDS, score_kind))
    n_columns = num_classes + (1 if score_kind == "softmax" else 0)
    deltas, scores = _pick_ssd_outputs(outputs, len(anchors), n_columns)
    class_scores = scores[:, 1:] if score_kind == "softmax" else scores

    anchor_idx, class_idx = np.nonzero(class_scores >= float(_param(params, "score_threshold")))
    candidate_scores = class_scores[anchor_idx, class_idx]
    top_k = int(params.get("pre_nms_top_k", 0))
    if top_k and candidate_scores.size > top_k:
        best = np.argsort(-candidate_scores, kind="mergesort")[:top_k]
        anchor_idx, class_idx, candidate_scores = anchor_idx[best], class_idx[best], candidate_scores[best]

    boxes = cxcywh_to_xyxy(decode_boxes(deltas[anchor_idx], anchors[anchor_idx], _param(params, "variances")))
    boxes = np.clip(boxes, 0.0, 1.0)
    keep = class_wise_nms(boxes, candidate_scores, class_idx, float(_param(params, "iou_threshold")),
                          int(_param(params, "max_detections")))
    xywh = to_image_pixels(boxes[keep], image_size, resize, _input_size(params, input_size))
    return _to_detections(xywh, candidate_scores[keep], class_idx[keep], params)


# ---------------------------------------------------------------- already-decoded detections

_DETECTION_KEYS = (("boxes", "box"), ("scores", "score"), ("classes", "class"), ("num", "num"))


def _named_detection_outputs(outputs):
    # type: (Outputs) -> Optional[Dict[str, np.ndarray]]
    """The four outputs by name (``detection_boxes``, ``scores``, ``num_detections``...), if names say."""
    if not isinstance(outputs, Mapping):
        return None
    chosen = {}
    for role, part in _DETECTION_KEYS:
        keys = [k for k in outputs if part in str(k).lower()]
        if len(keys) != 1:
            return None
        chosen[role] = keys[0]
    if len(set(chosen.values())) != len(chosen):
        return None  # one name fits two roles ("num_boxes"): shapes decide instead
    return dict((role, np.asarray(outputs[key])) for role, key in chosen.items())


def _fits_classes(values, num_classes):
    # type: (np.ndarray, int) -> bool
    rounded = np.round(values)
    return bool(np.all(np.abs(values - rounded) <= _WHOLE_TOLERANCE)
                and np.all((rounded >= 0) & (rounded < num_classes)))


def _fits_scores(values):
    # type: (np.ndarray) -> bool
    return bool(np.all((values > 0) & (values <= 1.0 + _WHOLE_TOLERANCE)))


def _scores_and_classes(first, second, count, num_classes):
    # type: (np.ndarray, np.ndarray, int, int) -> Tuple[np.ndarray, np.ndarray]
    """Tell the (N,) scores from the (N,) classes by their first ``count`` values.

    Classes are whole numbers in [0, C); scores of kept detections are in (0, 1]. When both
    orders fit, every value of both is 1, so the two orders give the same detections.
    """
    for scores, classes in ((first, second), (second, first)):
        if _fits_scores(scores[:count]) and _fits_classes(classes[:count], num_classes):
            return scores, classes
    raise ValueError("cannot tell the scores from the classes: neither (N,) output holds whole class indices "
                     "in [0, {}) while the other holds scores in (0, 1]".format(num_classes))


def _pick_detection_outputs(outputs, num_classes):
    # type: (Outputs, int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]
    """(boxes (N, 4), scores (N,), classes (N,), count) from a post-NMS model's four outputs.

    By name when ``outputs`` is a mapping whose keys contain box/score/class/num once each;
    otherwise by shape: boxes (1, N, 4), two (1, N) vectors, num_detections (1,). Shape cannot
    tell scores from classes, so their values do (see _scores_and_classes).
    """
    named = _named_detection_outputs(outputs)
    arrays = list(named.values()) if named else [
        np.asarray(v) for v in (outputs.values() if isinstance(outputs, Mapping) else outputs)]
    shapes = [tuple(a.shape) for a in arrays]
    boxes = [a for a in arrays if a.ndim == 3 and a.shape[0] == 1 and a.shape[2] == 4]
    counts = [a for a in arrays if a.shape == (1,)]
    if len(boxes) != 1 or len(counts) != 1:
        raise ValueError("expected outputs boxes (1, N, 4), scores and classes (1, N) and num_detections (1,), "
                         "got shapes {}".format(shapes))
    n = boxes[0].shape[1]
    vectors = [a for a in arrays if a.shape == (1, n)]
    if len(arrays) != 4 or len(vectors) != 2:
        raise ValueError("expected outputs boxes (1, {0}, 4), scores and classes (1, {0}) and num_detections (1,), "
                         "got shapes {1}".format(n, shapes))
    count = int(round(float(counts[0][0])))
    if not 0 <= count <= n:
        raise ValueError("num_detections is {} for {} detection slots".format(counts[0][0], n))
    if named:  # the shape checks above hold for them too: both are (1, N)
        scores, classes = named["scores"][0].astype(np.float64), named["classes"][0].astype(np.float64)
    else:
        first, second = (v[0].astype(np.float64) for v in vectors)
        scores, classes = _scores_and_classes(first, second, count, num_classes)
    return boxes[0][0].astype(np.float64), scores, classes, count


def read_detections(outputs, params, image_size, resize="stretch", input_size=None):
    # type: (Outputs, Mapping[str, Any], Sequence[int], str, Optional[Sequence[int]]) -> List[Detection]
    """Read the outputs of a model that decodes and runs NMS in its own graph into COCO detections.

    ``outputs``, in any order, as a list or a name->array mapping (as TensorFlow's object
    detection API exports them): boxes (1, N, 4) ``[ymin, xmin, ymax, xmax]`` normalised to the
    model input, scores (1, N), classes (1, N) as 0-based class indices (floats are fine) and
    num_detections (1,); only the first num_detections slots count. See _pick_detection_outputs
    for how the outputs are told apart. params: ``num_classes``; optionally ``score_threshold``
    (drops weaker ones; default 0), ``max_detections`` (a cap) and ``category_ids``.
    """
    num_classes = int(_param(params, "num_classes"))
    boxes, scores, classes, count = _pick_detection_outputs(outputs, num_classes)
    boxes, scores, classes = boxes[:count], scores[:count], np.round(classes[:count]).astype(np.int64)
    if np.any((classes < 0) | (classes >= num_classes)):
        raise ValueError("class indices {} fall outside [0, {})".format(sorted(set(classes.tolist())), num_classes))
    keep = np.nonzero(scores >= float(params.get("score_threshold", 0.0)))[0]
    keep = keep[np.argsort(-scores[keep], kind="mergesort")]
    limit = int(params.get("max_detections", 0))
    if limit:
        keep = keep[:limit]
    xyxy = boxes[keep][:, [1, 0, 3, 2]]
    xywh = to_image_pixels(xyxy, image_size, resize, _input_size(params, input_size))
    return _to_detections(xywh, scores[keep], classes[keep], params)


# ---------------------------------------------------------------- YOLOv5

def decode_yolov5(output, params, image_size, resize="stretch", input_size=None):
    # type: (Any, Mapping[str, Any], Sequence[int], str, Optional[Sequence[int]]) -> List[Detection]
    """Decode a YOLOv5 head (1, N, 5 + C): ``[cx, cy, w, h, objectness, class_0..class_C-1]``.

    Boxes are in model-input pixels, or normalised to [0, 1] with ``normalized: true`` (the
    TFLite export). Score = objectness * class probability; one class per box (the best) unless
    ``multi_label: true``. params: ``score_threshold``, ``iou_threshold``, ``max_detections``;
    optional ``num_classes``, ``normalized``, ``multi_label``, ``input_size`` [width, height]
    (needed for pixel boxes and for letterbox), ``category_ids``.
    """
    arrays = _as_arrays(output if isinstance(output, (list, tuple, Mapping)) else [output])
    num_classes = params.get("num_classes")
    heads = [a for a in arrays if a.ndim == 2 and a.shape[1] > 5
             and (num_classes is None or a.shape[1] == 5 + int(num_classes))]
    if len(heads) != 1:
        raise ValueError("expected one (1, N, 5 + C) YOLOv5 output, got shapes {}"
                         .format([tuple(a.shape) for a in arrays]))
    pred = heads[0].astype(np.float64)
    threshold = float(_param(params, "score_threshold"))
    size = _input_size(params, input_size)

    pred = pred[pred[:, 4] > threshold]  # objectness gate first, as YOLOv5 does
    scores = pred[:, 5:] * pred[:, 4:5]
    if params.get("multi_label", False):
        rows, classes = np.nonzero(scores > threshold)
        confidence = scores[rows, classes]
    else:
        classes = np.argmax(scores, axis=1) if len(scores) else np.zeros((0,), dtype=np.int64)
        confidence = scores[np.arange(len(scores)), classes]
        rows = np.nonzero(confidence > threshold)[0]
        classes, confidence = classes[rows], confidence[rows]
    boxes = cxcywh_to_xyxy(pred[rows, 0:4])
    if not params.get("normalized", False):
        if size is None:
            raise ValueError("YOLOv5 boxes in pixels need input_size [width, height]")
        boxes = boxes / np.array([size[0], size[1], size[0], size[1]])
    keep = class_wise_nms(boxes, confidence, classes, float(_param(params, "iou_threshold")),
                          int(_param(params, "max_detections")))
    xywh = to_image_pixels(boxes[keep], image_size, resize, size)
    return _to_detections(xywh, confidence[keep], classes[keep], params)


# ---------------------------------------------------------------- MediaPipe SSD (BlazeFace, palm detection)

def mediapipe_anchors(params):
    # type: (Mapping[str, Any]) -> np.ndarray
    """(A, 2) float64 anchor centers ``[cx, cy]`` normalised; every anchor is 1 x 1 (fixed_anchor_size).

    params: ``feature_maps`` ([[H, W], ...] or [S, ...], layers of one stride already merged) and
    ``anchors_per_cell`` (one count per map). Order: map, row, column, anchor of the cell.
    """
    sizes = _feature_map_sizes(params)
    per_cell = [int(k) for k in _param(params, "anchors_per_cell")]
    if not sizes or len(per_cell) != len(sizes) or any(k < 1 for k in per_cell):
        raise ValueError("anchors_per_cell {} must give a positive count for each of the {} feature maps"
                         .format(per_cell, len(sizes)))
    blocks = []
    for (height, width), k in zip(sizes, per_cell):
        cy, cx = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width,
                             indexing="ij")
        blocks.append(np.repeat(np.stack([cx.ravel(), cy.ravel()], axis=1), k, axis=0))
    return np.concatenate(blocks, axis=0)


def _box_scales(params):
    # type: (Mapping[str, Any]) -> np.ndarray
    scale = _param(params, "box_scale")
    scales = np.asarray([scale] * 4 if np.ndim(scale) == 0 else scale, dtype=np.float64)
    if scales.shape != (4,) or np.any(scales <= 0):
        raise ValueError("box_scale must be a positive number or [x, y, w, h] scales, got {!r}".format(scale))
    return scales


def _pick_mediapipe_outputs(outputs, n_anchors, num_classes):
    # type: (Outputs, int, int) -> Tuple[np.ndarray, np.ndarray]
    """(regressors (A, R), scores (A, C)) by shape: the scores have C columns, the regressors more (>= 4)."""
    arrays = _as_arrays(outputs)
    scores = [a for a in arrays if a.shape == (n_anchors, num_classes)]
    regressors = [a for a in arrays if a.ndim == 2 and a.shape[0] == n_anchors and a.shape[1] >= 4
                  and a.shape[1] > num_classes]
    if len(scores) != 1 or len(regressors) != 1:
        raise ValueError("expected one ({0}, {1}) score output and one ({0}, R > {1}, R >= 4) regressor output, "
                         "got shapes {2}".format(n_anchors, num_classes, [tuple(a.shape) for a in arrays]))
    return regressors[0].astype(np.float64), scores[0].astype(np.float64)


def decode_mediapipe_ssd(outputs, params, image_size, resize="stretch", input_size=None):
    # type: (Outputs, Mapping[str, Any], Sequence[int], str, Optional[Sequence[int]]) -> List[Detection]
    """Decode MediaPipe's TensorsToDetections convention (BlazeFace, palm detection) into COCO detections.

    ``outputs``, in any order: regressors (1, A, R) ``[dx, dy, w, h, keypoints...]`` in input
    pixels (keypoints ignored) and score logits (1, A, C). Center = d / box_scale + anchor center,
    size = w / box_scale (anchors are 1 x 1); score = sigmoid(logit clipped to +-score_clip), best
    class per anchor. NMS is plain greedy per class, where MediaPipe blends overlaps (weighted NMS).
    params: mediapipe_anchors' keys, ``box_scale``, ``score_threshold``, ``iou_threshold``,
    ``max_detections``; optionally ``num_classes`` (1), ``score_clip`` (100), ``category_ids``.
    """
    centers = mediapipe_anchors(params)
    num_classes = int(params.get("num_classes", 1))
    raw, logits = _pick_mediapipe_outputs(outputs, len(centers), num_classes)
    clip = float(params.get("score_clip", 100.0))
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -clip, clip)))
    classes = np.argmax(scores, axis=1)
    best = scores[np.arange(len(scores)), classes]
    rows = np.nonzero(best >= float(_param(params, "score_threshold")))[0]

    scaled = raw[rows, 0:4] / _box_scales(params)
    boxes = cxcywh_to_xyxy(np.concatenate([scaled[:, 0:2] + centers[rows], scaled[:, 2:4]], axis=1))
    boxes = np.clip(boxes, 0.0, 1.0)
    keep = class_wise_nms(boxes, best[rows], classes[rows], float(_param(params, "iou_threshold")),
                          int(_param(params, "max_detections")))
    xywh = to_image_pixels(boxes[keep], image_size, resize, _input_size(params, input_size))
    return _to_detections(xywh, best[rows][keep], classes[rows][keep], params)
