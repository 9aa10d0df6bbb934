"""A procedural detection dataset: coloured shapes on textured backgrounds.

It exists so the bundled detector can be trained and scored without internet.
Every image is a pure function of ``(seed, index)``, so ``generate(n, seed)`` is
reproducible byte for byte and a prefix of a longer run with the same seed.
Only numpy and Pillow are used.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 96
CLASSES: tuple[str, ...] = ("circle", "square", "triangle")

# Objects are drawn on a finer grid and box-filtered down, which gives
# anti-aliased edges like a real camera instead of jagged 1-pixel staircases.
_SUPERSAMPLE = 4
_MIN_EXTENT, _MAX_EXTENT = 12.0, 40.0  # approximate bbox side, pixels
_MAX_OVERLAP = 0.15  # of the smaller object's area: "small occlusion"
_PLACEMENT_TRIES = 30
_MIN_COLOUR_DISTANCE = 70.0


@dataclass(frozen=True)
class ShapeObject:
    label: int  # index into CLASSES; the COCO category id is label + 1
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels, tight around the drawn shape
    area: float  # drawn pixels (alpha >= 0.5) before later objects occlude it


@dataclass(frozen=True)
class ImageAnnotation:
    objects: tuple[ShapeObject, ...]

    @property
    def boxes(self) -> np.ndarray:
        """(k, 4) float32 [x, y, w, h] in pixels."""
        return np.array([o.bbox for o in self.objects], dtype=np.float32).reshape(-1, 4)

    @property
    def labels(self) -> np.ndarray:
        """(k,) int64 class indices into CLASSES."""
        return np.array([o.label for o in self.objects], dtype=np.int64)


def generate(n: int, seed: int) -> tuple[np.ndarray, list[ImageAnnotation]]:
    """Make ``n`` images (N, 96, 96, 3) uint8 and their annotations, deterministic from ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    annotations = []
    for i in range(n):
        images[i], ann = _generate_one(np.random.default_rng([seed, i]))
        annotations.append(ann)
    return images, annotations


def coco_dict(annotations: Sequence[ImageAnnotation], classes: Sequence[str] = CLASSES,
              file_names: Sequence[str] | None = None) -> dict:
    """The COCO detection document for ``annotations``; image ids are 1-based positions."""
    names = list(file_names) if file_names is not None else [_file_name(i) for i in range(len(annotations))]
    images, anns = [], []
    for index, (ann, name) in enumerate(zip(annotations, names, strict=True)):
        image_id = index + 1
        images.append({"id": image_id, "file_name": name, "width": IMAGE_SIZE, "height": IMAGE_SIZE})
        for obj in ann.objects:
            if not 0 <= obj.label < len(classes):
                raise ValueError(f"image {image_id}: label {obj.label} outside {len(classes)} classes")
            anns.append({
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": obj.label + 1,
                "bbox": [float(v) for v in obj.bbox],
                "area": float(obj.area),
                "iscrowd": 0,
            })
    return {
        "info": {"description": "edgefleet procedural shapes", "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(classes)],
    }


def write_coco(out_dir: Path, images: np.ndarray, annotations: Sequence[ImageAnnotation],
               classes: Sequence[str] = CLASSES) -> Path:
    """Write ``out_dir/images/NNNNNN.png`` and ``out_dir/annotations.json``; return the json path."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if len(images) != len(annotations):
        raise ValueError(f"{len(images)} images but {len(annotations)} annotations")
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    names = [_file_name(i) for i in range(len(images))]
    for image, name in zip(images, names):
        Image.fromarray(image, mode="RGB").save(image_dir / name, format="PNG", optimize=True)
    doc = coco_dict(annotations, classes, names)
    path = out_dir / "annotations.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def _file_name(index: int) -> str:
    return f"{index + 1:06d}.png"


def _generate_one(rng: np.random.Generator) -> tuple[np.ndarray, ImageAnnotation]:
    canvas = _background(rng)
    placed_alphas: list[np.ndarray] = []
    objects: list[ShapeObject] = []
    for _ in range(int(rng.integers(1, 5))):
        label = int(rng.integers(0, len(CLASSES)))
        alpha = _place(rng, label, placed_alphas)
        if alpha is None:
            continue  # the image is crowded; fewer objects is fine
        solid = alpha >= 0.5
        ys, xs = np.nonzero(solid)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        colour = _contrasting_colour(rng, canvas[y0:y1, x0:x1])
        # A gentle shading ramp so objects are not perfectly flat patches.
        shade = 1.0 + rng.uniform(-0.15, 0.15) * np.linspace(-1.0, 1.0, IMAGE_SIZE)[None, :, None]
        fill = np.clip(colour[None, None, :] * shade, 0, 255)
        a = alpha[..., None]
        canvas = canvas * (1.0 - a) + fill * a
        placed_alphas.append(alpha)
        objects.append(ShapeObject(label, (float(x0), float(y0), float(x1 - x0), float(y1 - y0)),
                                   float(solid.sum())))
    canvas += rng.normal(0.0, rng.uniform(2.0, 12.0), canvas.shape)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, ImageAnnotation(tuple(objects))


def _place(rng: np.random.Generator, label: int, placed: list[np.ndarray]) -> np.ndarray | None:
    for _ in range(_PLACEMENT_TRIES):
        alpha = _shape_alpha(rng, label)
        area = float((alpha >= 0.5).sum())
        if area == 0:
            continue
        ok = True
        for other in placed:
            inter = float(((alpha >= 0.5) & (other >= 0.5)).sum())
            if inter > _MAX_OVERLAP * min(area, float((other >= 0.5).sum())):
                ok = False
                break
        if ok:
            return alpha
    return None


def _shape_alpha(rng: np.random.Generator, label: int) -> np.ndarray:
    """Coverage in [0, 1] of one shape of class ``label``, fully inside the image."""
    extent = rng.uniform(_MIN_EXTENT, _MAX_EXTENT)
    name = CLASSES[label]
    if name == "circle":
        radius = extent / 2.0
        vertices = None
    elif name == "square":
        angle = math.radians(rng.uniform(-20.0, 20.0))
        side = extent / (abs(math.cos(angle)) + abs(math.sin(angle)))
        radius = side / math.sqrt(2.0)
        vertices = [angle + math.pi / 4 + k * math.pi / 2 for k in range(4)]
    else:  # triangle: equilateral with side ~ extent, any rotation
        radius = extent / math.sqrt(3.0)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        vertices = [angle + k * 2.0 * math.pi / 3.0 for k in range(3)]
    cx = rng.uniform(radius + 1.0, IMAGE_SIZE - radius - 1.0)
    cy = rng.uniform(radius + 1.0, IMAGE_SIZE - radius - 1.0)

    big = IMAGE_SIZE * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    s = _SUPERSAMPLE
    if vertices is None:
        draw.ellipse([(cx - radius) * s, (cy - radius) * s, (cx + radius) * s, (cy + radius) * s], fill=255)
    else:
        draw.polygon([((cx + radius * math.cos(t)) * s, (cy + radius * math.sin(t)) * s) for t in vertices],
                     fill=255)
    small = mask.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _contrasting_colour(rng: np.random.Generator, patch: np.ndarray) -> np.ndarray:
    """A random colour far enough from the background under the object to be visible."""
    mean = patch.reshape(-1, 3).mean(axis=0)
    best, best_distance = None, -1.0
    for _ in range(20):
        colour = rng.integers(0, 256, 3).astype(np.float32)
        distance = float(np.linalg.norm(colour - mean))
        if distance >= _MIN_COLOUR_DISTANCE:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def _background(rng: np.random.Generator) -> np.ndarray:
    kind = int(rng.integers(0, 4))
    size = IMAGE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    c0 = rng.uniform(0, 255, 3).astype(np.float32)
    c1 = rng.uniform(0, 255, 3).astype(np.float32)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    ramp = xx * math.cos(theta) + yy * math.sin(theta)
    if kind == 0:  # linear gradient
        t = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    elif kind == 1:  # stripes, soft or hard
        period = rng.uniform(0.06, 0.25)
        t = 0.5 + 0.5 * np.sin(2.0 * math.pi * ramp / period)
        if rng.random() < 0.5:
            t = (t > 0.5).astype(np.float32)
        # Keep stripes lower-contrast than objects, otherwise they read as objects.
        t = t * rng.uniform(0.3, 0.7)
    elif kind == 2:  # blotchy low-frequency noise
        cells = int(rng.integers(3, 9))
        coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        up = Image.fromarray(coarse, mode="RGB").resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(up, dtype=np.float32) * 0.6 + c0 * 0.4
    else:  # flat colour with strong pixel noise
        return np.broadcast_to(c0, (size, size, 3)) + rng.normal(0.0, rng.uniform(10.0, 30.0), (size, size, 3))
    return c0 + t[..., None] * (c1 - c0)
