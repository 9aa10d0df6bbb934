"""The model's input contract and the calibration images turned into model inputs.

Every converter and the fidelity gate feed models through here, so the
representative dataset, the reference run and the artifact run all see the
same float tensors: ``(raw_pixel - mean) / std`` at the model's size, in the
layout the model wants.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgefleet.errors import BuildError, SourceError

Layout = Literal["NHWC", "NCHW"]
# Letterbox padding grey, the value YOLO-family preprocessing uses.
_LETTERBOX_FILL = 114


class Normalization(BaseModel):
    model_config = ConfigDict(frozen=True)

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @model_validator(mode="after")
    def _valid(self) -> Normalization:
        if any(s == 0 for s in self.std):
            raise ValueError("normalization.std may not contain 0")
        return self


class InputSpec(BaseModel):
    """The ``input_spec`` step param: one 4-D image input with batch 1."""

    # Unknown keys are ignored: the recipe's spec may carry fields only the planner uses.
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = "input"
    shape: tuple[int, int, int, int]
    layout: Layout = "NHWC"
    dtype: str = "float32"
    normalization: Normalization = Normalization()
    resize: Literal["stretch", "letterbox"] = "stretch"

    @model_validator(mode="after")
    def _batch_one(self) -> InputSpec:
        if self.shape[0] != 1 or any(d < 1 for d in self.shape):
            raise ValueError(f"shape {list(self.shape)} must be static with batch 1")
        for key in ("mean", "std"):
            n = len(getattr(self.normalization, key))
            if n not in (1, self.channels):
                raise ValueError(f"normalization.{key} has {n} values for {self.channels} channels")
        return self

    @property
    def height(self) -> int:
        return self.shape[1] if self.layout == "NHWC" else self.shape[2]

    @property
    def width(self) -> int:
        return self.shape[2] if self.layout == "NHWC" else self.shape[3]

    @property
    def channels(self) -> int:
        return self.shape[3] if self.layout == "NHWC" else self.shape[1]

    def shape_in(self, layout: Layout) -> tuple[int, int, int, int]:
        h, w, c = self.height, self.width, self.channels
        return (1, h, w, c) if layout == "NHWC" else (1, c, h, w)

    def layout_of(self, shape: tuple[int, ...] | list[int]) -> Layout:
        """Which layout a model whose input has ``shape`` expects (batch may be dynamic)."""
        dims = tuple(int(d) if d is not None and int(d) > 0 else -1 for d in shape)
        for layout in ("NHWC", "NCHW"):
            want = self.shape_in(layout)  # type: ignore[arg-type]
            if len(dims) == 4 and all(d in (-1, e) for d, e in zip(dims[1:], want[1:], strict=True)):
                return layout  # type: ignore[return-value]
        raise BuildError(f"model input shape {list(shape)} fits neither NHWC nor NCHW of input_spec "
                         f"{list(self.shape)} ({self.layout})")


def load_calibration(path: Path, limit: int | None = None) -> np.ndarray:
    """The raw images (N,H,W,3) uint8 of a calibration .npy, at most ``limit`` of them."""
    try:
        images = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise SourceError(f"calibration data {path.name!r} is not a readable .npy: {exc}") from None
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
        raise SourceError(f"calibration data {path.name!r} must be (N,H,W,3) images; it is {images.shape}")
    if images.dtype != np.uint8:
        raise SourceError(f"calibration data {path.name!r} must be raw uint8 pixels; it is {images.dtype}")
    return np.ascontiguousarray(images[:limit])


def read_rgb(path: Path, error: type[Exception] = SourceError) -> np.ndarray:
    """An image file's pixels as (H, W, 3) uint8 RGB (grey and RGBA converted); ``error`` if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise error(f"{path}: not a readable image: {exc}") from None


def fit_images(raw: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Raw (N,H,W,3) uint8 resized to the model's height and width, still uint8 NHWC."""
    h, w = spec.height, spec.width
    if raw.shape[1:3] == (h, w):
        return raw
    return np.stack([_resize(img, h, w, spec.resize) for img in raw])


def _resize(img: np.ndarray, h: int, w: int, mode: str) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(img)
    if mode == "stretch":
        return np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR))
    scale = min(h / img.shape[0], w / img.shape[1])
    nh, nw = max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale))
    canvas = np.full((h, w, img.shape[2]), _LETTERBOX_FILL, np.uint8)
    top, left = (h - nh) // 2, (w - nw) // 2
    canvas[top:top + nh, left:left + nw] = np.asarray(pil.resize((nw, nh), Image.Resampling.BILINEAR))
    return canvas


def normalize(raw: np.ndarray, spec: InputSpec) -> np.ndarray:
    """(raw - mean) / std as float32, NHWC, at the model's size."""
    fitted = fit_images(raw, spec).astype(np.float32)
    mean = np.asarray(spec.normalization.mean, np.float32)
    std = np.asarray(spec.normalization.std, np.float32)
    return (fitted - mean) / std


def to_layout(x_nhwc: np.ndarray, layout: Layout) -> np.ndarray:
    return np.ascontiguousarray(x_nhwc if layout == "NHWC" else x_nhwc.transpose(0, 3, 1, 2))


def model_inputs(raw: np.ndarray, spec: InputSpec, layout: Layout | None = None) -> np.ndarray:
    """Float model inputs (N, ...) in ``layout`` (default: the spec's), one image per batch-1 run."""
    return to_layout(normalize(raw, spec), layout or spec.layout)


class ConversionParams(BaseModel):
    """The params every conversion step shares."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    input_spec: InputSpec
    fidelity: dict[str, float] = Field(default_factory=dict)
    fidelity_samples: int = Field(8, ge=1, le=1000)
    # How many calibration images the representative dataset may use.
    calibration_samples: int = Field(100, ge=1, le=10_000)


def conversion_params(params: Mapping[str, Any]) -> ConversionParams:
    if "input_spec" not in params:
        raise BuildError("conversion step needs param 'input_spec'")
    try:
        return ConversionParams.model_validate(dict(params))
    except ValidationError as exc:
        raise BuildError(f"bad conversion params: {exc}") from None
