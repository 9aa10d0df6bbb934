"""Accuracy evaluation ON THE DEVICE: every eval image through the exact artifact, decoded here.

The cell calls :func:`evaluate` with its loaded session right after the latency measurement, so the
numbers come from the very file and runtime that were timed, and the inputs are made by the same
code (inputs.to_input) as the latency loop's.

The eval spec (run.json ``eval``; see CONTRACT in the package docstring)::

    {"images": str (.npy of uint8 (N, H, W, 3) images ALREADY at the model's input size:
                    the host resized them, exactly, when it packed the split),
     "image_ids": [int] (N), "image_sizes": [[width, height]] (N, the ORIGINAL sizes),
     "postprocess": {"kind": "ssd_anchors" | "detections" | "yolov5" | "mediapipe_ssd" | "argmax",
                     "params": {...}},
     "resize": "stretch" | "letterbox" (how the host resized; boxes are mapped back with it),
     "layout": "NHWC" | "NCHW" (the recipe's; the artifact's own input shape decides when it differs),
     "normalization": null | {"mean", "std"}}

Output: ``RUN_DIR/eval/<cell>.json``. Detection: a COCO results list
``[{"image_id", "category_id", "bbox": [x, y, w, h] in original pixels, "score"}]``.
Classification (``argmax``): ``[{"image_id", "top_k": [{"category_id", "score"}, ...]}]``,
best first (``params.top_k``, default 5; ``params.label_offset`` is subtracted from the
output index first, for models with a background column; category_id is index + 1 unless
``params.category_ids`` maps it, as for detection).

Timing per image: ``invoke`` alone (the runtime's invoke, as in the latency loop) and
``invoke + postprocess`` (invoke, reading and dequantizing the outputs, decoding and
NMS). Preparing the input (normalize, quantize) is outside both, as in the latency loop.
"""
import re
import time
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from . import postprocess
from .bench import latency_stats
from .fileio import write_json_atomic
from .inputs import fitted

EVAL_DIR = "eval"  # in RUN_DIR
LAYOUTS = ("NHWC", "NCHW")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class EvalError(Exception):
    """The evaluation cannot run or decode (bad spec, shapes that do not fit): reported in the line."""


def _top_k(outputs, params, image_size, resize, input_size):
    # type: (Sequence[np.ndarray], Mapping[str, Any], Sequence[int], str, Sequence[int]) -> List[Dict[str, Any]]
    if len(outputs) != 1:
        raise ValueError("argmax expects one output, got {}".format(len(outputs)))
    scores = np.asarray(outputs[0], dtype=np.float64).reshape(-1)
    offset = int(params.get("label_offset", 0))
    k = max(1, int(params.get("top_k", 5)))
    ids = params.get("category_ids")
    best = []
    for index in np.argsort(-scores, kind="mergesort"):
        label = int(index) - offset
        if label < 0:
            continue  # a background column
        if ids is not None and label >= len(ids):
            raise ValueError("class index {} has no entry in category_ids ({} entries)".format(label, len(ids)))
        best.append({"category_id": int(ids[label]) if ids is not None else label + 1,
                     "score": float(scores[index])})
        if len(best) == k:
            break
    return [{"top_k": best}]


# postprocess.kind -> decode(outputs, params, image_size, resize, input_size): the kinds a spec may name.
DECODERS = (
    ("ssd_anchors", postprocess.decode_detections),
    ("detections", postprocess.read_detections),  # decoded and NMS-ed inside the model's own graph
    ("yolov5", postprocess.decode_yolov5),
    ("mediapipe_ssd", postprocess.decode_mediapipe_ssd),  # BlazeFace, palm detection
    ("argmax", _top_k),
)  # type: Tuple[Tuple[str, Callable[..., List[Dict[str, Any]]]], ...]
POSTPROCESS_KINDS = tuple(kind for kind, _ in DECODERS)


def _is_int(value):
    # type: (Any) -> bool
    return isinstance(value, int) and not isinstance(value, bool)


def _image_problems(spec):
    # type: (Mapping[str, Any]) -> List[str]
    problems = []
    if not isinstance(spec.get("images"), str) or not spec.get("images"):
        problems.append("'images' must be the path of a .npy")
    ids = spec.get("image_ids")
    sizes = spec.get("image_sizes")
    if not isinstance(ids, list) or not ids or not all(_is_int(i) for i in ids):
        problems.append("'image_ids' must be a non-empty list of integers")
    if not isinstance(sizes, list) or not all(
            isinstance(s, list) and len(s) == 2 and all(_is_int(v) and v > 0 for v in s) for s in sizes):
        problems.append("'image_sizes' must be a list of [width, height] positive integers")
    elif isinstance(ids, list) and len(sizes) != len(ids):
        problems.append("'image_sizes' has {} entries for {} image_ids".format(len(sizes), len(ids)))
    return problems


def _decode_problems(spec):
    # type: (Mapping[str, Any]) -> List[str]
    problems = []
    post = spec.get("postprocess")
    if not isinstance(post, dict) or post.get("kind") not in POSTPROCESS_KINDS:
        problems.append("'postprocess.kind' must be one of {}".format(", ".join(POSTPROCESS_KINDS)))
    elif not isinstance(post.get("params", {}), dict):
        problems.append("'postprocess.params' must be an object")
    if spec.get("resize", "stretch") not in postprocess.RESIZE_MODES:
        problems.append("'resize' must be one of {}".format(", ".join(postprocess.RESIZE_MODES)))
    if spec.get("layout", "NHWC") not in LAYOUTS:
        problems.append("'layout' must be one of {}".format(", ".join(LAYOUTS)))
    norm = spec.get("normalization")
    if norm is not None and not (isinstance(norm, dict) and "mean" in norm and "std" in norm):
        problems.append("'normalization' must be null or have 'mean' and 'std'")
    return problems


def spec_problems(spec):
    # type: (Any) -> List[str]
    """What is wrong with an eval spec, as messages; empty when it is usable."""
    if not isinstance(spec, dict):
        return ["must be an object"]
    return _image_problems(spec) + _decode_problems(spec)


def output_name(cell_key):
    # type: (str) -> str
    """The eval file of a cell, relative to RUN_DIR: cell keys hold slashes."""
    return "{}/{}.json".format(EVAL_DIR, _UNSAFE.sub("_", cell_key))


def _layout_of(shape, height, width, preferred):
    # type: (Sequence[Any], int, int, str) -> str
    """NHWC or NCHW from the artifact's input shape: a converter may have changed the recipe's layout."""
    dims = list(shape[1:])
    fits = {"NHWC": dims == [height, width, 3], "NCHW": dims == [3, height, width]}
    if fits[preferred]:
        return preferred
    for layout in LAYOUTS:
        if fits[layout]:
            return layout
    raise EvalError("eval images of {}x{} fit neither NHWC nor NCHW of the input shape {}".format(
        height, width, list(shape)))


def _float_outputs(arrays, details):
    # type: (Sequence[np.ndarray], Sequence[Mapping[str, Any]]) -> List[np.ndarray]
    outputs = []
    for array, detail in zip(arrays, details):
        if np.dtype(array.dtype).kind in "iu" and detail.get("scale"):
            outputs.append(postprocess.dequantize(array, detail["scale"], detail.get("zero_point", 0)))
        else:
            outputs.append(np.asarray(array, dtype=np.float32))
    return outputs


def _per_image_stats(seconds):
    # type: (Sequence[float]) -> Dict[str, float]
    stats = latency_stats(seconds)
    return {key: stats[key] for key in ("mean", "p50", "min", "max")}


def load_images(path, count):
    # type: (str, int) -> np.ndarray
    try:
        images = np.load(path, allow_pickle=False)
    except (IOError, OSError, ValueError) as exc:
        raise EvalError("cannot read eval images {}: {}".format(path, exc))
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise EvalError("eval images {} must be uint8 (N, H, W, 3); they are {} {}".format(
            path, images.dtype, list(images.shape)))
    if images.shape[0] != count:
        raise EvalError("eval images {} hold {} images for {} image_ids".format(path, images.shape[0], count))
    return images


class _Decoding(object):
    """One image at a time through the session: feed, invoke, dequantize, decode; timed per image."""

    def __init__(self, session, spec, detail, layout, input_size):
        # type: (Any, Mapping[str, Any], Mapping[str, Any], str, Tuple[int, int]) -> None
        self.session = session
        self.detail = detail
        self.layout = layout
        self.input_size = input_size
        self.kind = spec["postprocess"]["kind"]
        self.params = spec["postprocess"].get("params") or {}
        self.decode = dict(DECODERS)[self.kind]
        self.resize = spec.get("resize", "stretch")
        self.normalization = spec.get("normalization")
        self.output_details = session.output_details()
        self.invoke_s = []  # type: List[float]
        self.total_s = []  # type: List[float]

    def predict(self, raw, image_id, image_size):
        # type: (np.ndarray, int, Sequence[int]) -> List[Dict[str, Any]]
        # Normalized as NHWC pixels (per channel, the last axis), then laid out as the artifact wants.
        self.session.set_input(0, fitted(np.ascontiguousarray(raw), self.detail, self.normalization,
                                         self.layout == "NCHW"))
        start = time.perf_counter()
        self.session.invoke()
        invoked = time.perf_counter()
        outputs = _float_outputs(self.session.get_outputs(), self.output_details)
        try:
            found = self.decode(outputs, self.params, image_size, self.resize, self.input_size)
        except ValueError as exc:
            raise EvalError("{} decode of image {}: {}".format(self.kind, image_id, exc))
        done = time.perf_counter()
        self.invoke_s.append(invoked - start)
        self.total_s.append(done - start)
        for item in found:
            item["image_id"] = image_id
        return found


def evaluate(session, spec, images_path, out_path):
    # type: (Any, Mapping[str, Any], str, str) -> Dict[str, Any]
    """Run every eval image through ``session``, decode, write ``out_path``; the summary for the line."""
    problems = spec_problems(spec)
    if problems:
        raise EvalError("eval spec: " + "; ".join(problems))
    details = session.input_details()
    if len(details) != 1:
        raise EvalError("evaluation serves single-input models; this one has {} inputs".format(len(details)))
    ids = spec["image_ids"]
    images = load_images(images_path, len(ids))
    height, width = int(images.shape[1]), int(images.shape[2])
    layout = _layout_of(details[0]["shape"], height, width, spec.get("layout", "NHWC"))
    decoding = _Decoding(session, spec, details[0], layout, (width, height))
    predictions = []  # type: List[Dict[str, Any]]
    for index, image_id in enumerate(ids):
        predictions.extend(decoding.predict(images[index:index + 1], image_id, spec["image_sizes"][index]))
    write_json_atomic(out_path, predictions)
    return {"status": "ok", "reason": None, "images": len(ids), "predictions": len(predictions),
            "kind": decoding.kind, "layout": layout, "input_size": [width, height], "resize": decoding.resize,
            "latency_ms": _per_image_stats(decoding.invoke_s),
            "latency_with_postprocess_ms": _per_image_stats(decoding.total_s)}
