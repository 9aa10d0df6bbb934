"""A YOLOv5s-shaped ONNX graph built with ``onnx.helper``, for tests without the real weights.

It has the structure that matters to converters: a Focus stem (four strided
``Slice``\\ s and a ``Concat``), Conv + SiLU (``Sigmoid`` * x) blocks, a
top-down neck with nearest ``Resize`` x2 and ``Concat``, and a three-scale
Detect head that permutes/reshapes each scale to ``(1, 3*H*W, 85)``, decodes
boxes with ``Slice``\\ s on the last axis and concatenates to ``(1, N, 85)``.
The weights are random (seeded), so the outputs mean nothing; only shapes,
op types and numerics are realistic.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INPUT_NAME = "images"
OUTPUT_NAME = "output0"
NUM_CLASSES = 80
NUM_ANCHORS = 3
OPSET = 13
# YOLOv5s channel widths at width_multiple 0.5 (v5s), before our own width_mult.
_STEM, _WIDTHS = 32, (64, 128, 256, 512)
_STRIDES = (8, 16, 32)
_ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))


@dataclass
class _Graph:
    """Accumulates nodes and initializers; names are unique by construction."""

    rng: np.random.Generator
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    _count: int = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = out or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "_node", **attrs))
        return out

    def conv_silu(self, x: str, c_in: int, c_out: int, k: int = 1, s: int = 1, act: bool = True) -> str:
        # He-normal keeps activations O(1) through the random stack, so float32 and
        # float16 results stay comparable instead of overflowing or vanishing.
        w = self.rng.normal(0.0, np.sqrt(2.0 / (c_in * k * k)), (c_out, c_in, k, k)).astype(np.float32)
        b = self.rng.normal(0.0, 0.05, (c_out,)).astype(np.float32)
        y = self.node("Conv", [x, self.const("w", w), self.const("b", b)],
                      kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4)
        if not act:
            return y
        return self.node("Mul", [y, self.node("Sigmoid", [y])])

    def slice(self, x: str, starts: list[int], ends: list[int], axes: list[int], steps: list[int]) -> str:
        return self.node("Slice", [x, *(self.const(n, np.array(v, np.int64)) for n, v in
                                        (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps)))])

    def upsample2(self, x: str) -> str:
        scales = self.const("scales", np.array([1, 1, 2, 2], np.float32))
        return self.node("Resize", [x, "", scales], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def _width(c: int, width_mult: float) -> int:
    return max(8, round(c * width_mult / 8) * 8)


def make_yolov5s_like_onnx(path: Path | str, width_mult: float = 0.125, seed: int = 0, *,
                           image_size: int = 640, num_classes: int = NUM_CLASSES,
                           anchor_major: bool = False) -> Path:
    """Write the graph to ``path`` and return it: input ``images`` (1,3,S,S) float, output (1,N,5+classes).

    ``width_mult`` scales YOLOv5s' channel widths (1.0 = yolov5s; the default keeps
    conversion tests fast). ``anchor_major=True`` orders the boxes like YOLOv5
    (anchor, y, x), whose 5-D permute an NHWC converter cannot fold away; the
    default orders them (y, x, anchor), the channels-last head layout most
    TFLite-oriented exports use, where the permute is a pure layout change.
    """
    import onnx
    from onnx import TensorProto, helper

    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
    g = _Graph(np.random.default_rng(seed))
    no = num_classes + 5
    stem = _width(_STEM, width_mult)
    c2, c3, c4, c5 = (_width(c, width_mult) for c in _WIDTHS)

    # Focus: space-to-depth with four stride-2 slices, as in YOLOv5 up to v6.0.
    big = 1 << 30
    quads = [g.slice(INPUT_NAME, [dy, dx], [big, big], [2, 3], [2, 2]) for dx in (0, 1) for dy in (0, 1)]
    x = g.conv_silu(g.node("Concat", quads, axis=1), 12, stem, k=3)
    x = g.conv_silu(x, stem, c2, k=3, s=2)                      # /4
    p3 = g.conv_silu(g.conv_silu(x, c2, c3, k=3, s=2), c3, c3, k=3)   # /8
    p4 = g.conv_silu(g.conv_silu(p3, c3, c4, k=3, s=2), c4, c4, k=3)  # /16
    p5 = g.conv_silu(g.conv_silu(p4, c4, c5, k=3, s=2), c5, c5)       # /32

    # Top-down neck (FPN) then bottom-up (PAN), like YOLOv5's head.
    h5 = g.conv_silu(p5, c5, c4)
    n4 = g.conv_silu(g.node("Concat", [g.upsample2(h5), p4], axis=1), 2 * c4, c4, k=3)
    h4 = g.conv_silu(n4, c4, c3)
    out3 = g.conv_silu(g.node("Concat", [g.upsample2(h4), p3], axis=1), 2 * c3, c3, k=3)
    out4 = g.conv_silu(g.node("Concat", [g.conv_silu(out3, c3, c3, k=3, s=2), h4], axis=1), 2 * c3, c4, k=3)
    out5 = g.conv_silu(g.node("Concat", [g.conv_silu(out4, c4, c4, k=3, s=2), h5], axis=1), 2 * c4, c5, k=3)

    scales = []
    for feat, c, stride, anchors in zip((out3, out4, out5), (c3, c4, c5), _STRIDES, _ANCHORS, strict=True):
        scales.append(_detect(g, feat, c, image_size // stride, stride, anchors, no, anchor_major))
    g.node("Concat", scales, out=OUTPUT_NAME, axis=1)

    n_boxes = NUM_ANCHORS * sum((image_size // s) ** 2 for s in _STRIDES)
    graph = helper.make_graph(
        g.nodes, "yolov5s_like",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, image_size, image_size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, n_boxes, no])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgefleet.testing")
    model.ir_version = 8  # what onnxruntime and onnx2tf of this era read without complaint
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save(model, path)
    return path


def _detect(g: _Graph, feat: str, c: int, size: int, stride: int, anchors: tuple[int, ...], no: int,
            anchor_major: bool) -> str:
    """One Detect scale: 1x1 conv to 3*no, reshape to (1, 3*H*W, no), decode xywh like YOLOv5."""
    y = g.conv_silu(feat, c, NUM_ANCHORS * no, act=False)
    if anchor_major:
        # YOLOv5's own order: view(1, na, no, ny, nx).permute(0, 1, 3, 4, 2).
        y = g.node("Reshape", [y, g.const("shape", np.array([1, NUM_ANCHORS, no, size, size], np.int64))])
        y = g.node("Transpose", [y], perm=[0, 1, 3, 4, 2])
        anchor_axis, cell_axes = 1, (2, 3)
    else:
        # Channels-last order: permute(0, 2, 3, 1).view(1, ny, nx, na, no).
        y = g.node("Transpose", [y], perm=[0, 2, 3, 1])
        y = g.node("Reshape", [y, g.const("shape", np.array([1, size, size, NUM_ANCHORS, no], np.int64))])
        anchor_axis, cell_axes = 3, (1, 2)
    y = g.node("Sigmoid", [y])

    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    grid_shape = [1, 1, 1, 1, 2]
    grid_shape[cell_axes[0]], grid_shape[cell_axes[1]] = size, size
    grid = (np.stack([xx, yy], -1) - 0.5).reshape(grid_shape)
    anchor_shape = [1, 1, 1, 1, 2]
    anchor_shape[anchor_axis] = NUM_ANCHORS
    anchor_grid = np.array(anchors, np.float32).reshape(anchor_shape)

    big = 1 << 30
    xy = g.slice(y, [0], [2], [4], [1])
    wh = g.slice(y, [2], [4], [4], [1])
    conf = g.slice(y, [4], [big], [4], [1])
    two = g.const("two", np.array(2, np.float32))
    xy = g.node("Mul", [g.node("Add", [g.node("Mul", [xy, two]), g.const("grid", grid)]),
                        g.const("stride", np.array(stride, np.float32))])
    wh2 = g.node("Mul", [wh, two])
    wh = g.node("Mul", [g.node("Mul", [wh2, wh2]), g.const("anchor_grid", anchor_grid)])
    y = g.node("Concat", [xy, wh, conf], axis=4)
    return g.node("Reshape", [y, g.const("shape", np.array([1, -1, no], np.int64))])
