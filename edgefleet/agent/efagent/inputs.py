"""What a cell feeds its model, for the latency loop and the evaluation alike.

Samples (a .npy of raw images) are normalized, ``(x - mean) / std``, then quantized with the input
tensor's own scale/zero point for an integer input; without normalization, samples whose dtype
already matches the input are fed as they are. Without samples: seeded random data within the
input dtype's range.
"""
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import CellError
from .fileio import resolve_path


def quantize(values, scale, zero_point, dtype):
    # type: (np.ndarray, float, int, Any) -> np.ndarray
    info = np.iinfo(dtype)
    q = np.round(np.asarray(values, dtype=np.float64) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def to_input(raw, detail, normalization):
    # type: (np.ndarray, Mapping[str, Any], Optional[Mapping[str, Any]]) -> np.ndarray
    """Raw samples -> the input tensor's dtype: normalize, then quantize for an integer input."""
    dtype = np.dtype(detail["dtype"])
    if normalization is None and raw.dtype == dtype:
        return np.ascontiguousarray(raw)
    values = raw.astype(np.float32)
    if normalization is not None:
        std = np.asarray(normalization["std"], dtype=np.float32)
        if np.any(std == 0):
            raise CellError("input.normalization.std must not be zero")
        values = (values - np.asarray(normalization["mean"], dtype=np.float32)) / std
    if dtype.kind in "iu":
        if detail.get("scale"):
            return quantize(values, detail["scale"], detail.get("zero_point", 0), dtype)
        info = np.iinfo(dtype)
        return np.clip(np.round(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def random_input(detail, rng):
    # type: (Mapping[str, Any], np.random.RandomState) -> np.ndarray
    shape = [d if d else 1 for d in detail["shape"]]  # a dynamic dimension runs at 1
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "b":
        return rng.randint(0, 2, size=shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        # Bounded to int32 so int64/uint64 inputs do not overflow randint's own range.
        low, high = max(int(info.min), -2 ** 31), min(int(info.max), 2 ** 31 - 1)
        return rng.randint(low, high + 1, size=shape, dtype=np.int64).astype(dtype)
    if dtype.kind == "f":
        return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    raise CellError("cannot make random data for input {!r} of dtype {}".format(detail["name"], dtype))


def make_feeds(details, spec, workdir):
    # type: (List[Dict[str, Any]], Optional[Mapping[str, Any]], str) -> Tuple[List[List[np.ndarray]], Dict[str, Any]]
    """A list of feeds (one array per input), cycled through by the timed loop, and how they were made."""
    spec = spec or {}
    described = {"details": details, "normalization": spec.get("normalization")}
    if not spec.get("samples"):
        rng = np.random.RandomState(0)
        described["source"] = "random"
        return [[random_input(d, rng) for d in details]], described
    if len(details) != 1:
        raise CellError("input.samples serves single-input models; this one has {} inputs".format(len(details)))
    detail = details[0]
    samples = _load_samples(resolve_path(spec["samples"], workdir), detail)
    batch = int(detail["shape"][0]) if detail["shape"] and detail["shape"][0] else 1
    if samples.shape[0] < batch:
        raise CellError("{} samples cannot fill one batch of {}".format(samples.shape[0], batch))
    nchw = channels_first(samples.shape, detail["shape"])
    feeds = [[fitted(samples[start:start + batch], detail, spec.get("normalization"), nchw)]
             for start in range(0, samples.shape[0] - batch + 1, batch)]
    described.update({"source": "samples", "samples": spec["samples"], "count": int(samples.shape[0]),
                      "fed_dtype": str(feeds[0][0].dtype)})
    return feeds, described


def channels_first(images_shape, input_shape):
    # type: (Sequence[int], Sequence[Optional[int]]) -> bool
    """Raw NHWC images for an NCHW input (a converter's choice, e.g. tf2onnx's inputs_as_nchw)."""
    return (len(images_shape) == 4 and len(input_shape) == 4 and images_shape[3] in (1, 3)
            and list(input_shape[1:]) == [images_shape[3], images_shape[1], images_shape[2]])


def fitted(raw, detail, normalization, nchw):
    # type: (np.ndarray, Mapping[str, Any], Optional[Mapping[str, Any]], bool) -> np.ndarray
    """to_input on NHWC pixels (normalization is per channel, the last axis), then NCHW if the input is."""
    values = to_input(raw, detail, normalization)
    return np.ascontiguousarray(values.transpose(0, 3, 1, 2)) if nchw else values


def _load_samples(path, detail):
    # type: (str, Mapping[str, Any]) -> np.ndarray
    try:
        samples = np.load(path, allow_pickle=False)
    except (IOError, OSError, ValueError) as exc:
        raise CellError("cannot read samples {}: {}".format(path, exc))
    expected = list(detail["shape"][1:])  # type: Sequence[Optional[int]]
    actual = list(samples.shape[1:])
    if channels_first(samples.shape, detail["shape"]):
        actual = [actual[2], actual[0], actual[1]]
    if len(expected) != len(actual) or any(e is not None and e != a for e, a in zip(expected, actual)):
        raise CellError("samples of shape {} do not match input {!r} of shape {} (one image is {})".format(
            list(samples.shape), detail["name"], detail["shape"], expected))
    return samples
