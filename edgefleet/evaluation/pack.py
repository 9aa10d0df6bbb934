"""Pack a recipe's evaluation split for a device: one .npy of images at the model's input size.

Resizing happens here, on the host, with PIL and the same code the converters use
(``edgefleet.convert.preprocess``), so the device needs no image library and every
device sees identical pixels. The original sizes go with the pack; the device maps
boxes back to original pixels with them (and, for letterbox, the model input size).

Ground truth is a COCO-style JSON for both kinds of task:

* ``coco`` (detection): the standard COCO annotations file.
* ``labels`` (classification): the same ``images`` and ``categories`` lists, and one
  ``annotations`` entry per image, ``{"image_id", "category_id"}``: the image's label.

The pack is cached in ``cache_dir`` by content (annotations, image bytes, input size,
resize mode): packing the same split again reads the images only to hash them. The
ground truth is copied to ``cache_dir/ground-truth/<sha256>.json`` so that collect
scores against exactly the annotations the images were packed from.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.console import progress_line
from edgefleet.digest import sha256_file
from edgefleet.errors import ConfigError
from edgefleet.evaluation.kinds import evaluator
from edgefleet.files import npy_bytes, write_atomic
from edgefleet.recipes.load import LoadedRecipe

PACK_VERSION = 1  # bump when the packed bytes would change for the same inputs
GROUND_TRUTH_DIR = "ground-truth"
TaskKind = str  # an evaluation kind of edgefleet/evaluation/kinds.py


@dataclass(frozen=True)
class PackedEval:
    images: Path                          # uint8 (N, H, W, 3) at the model's input size
    images_sha256: str
    image_ids: tuple[int, ...]
    image_sizes: tuple[tuple[int, int], ...]   # original (width, height)
    ground_truth: Path
    ground_truth_sha256: str
    kind: TaskKind
    input_size: tuple[int, int]           # (width, height) the images were resized to
    resize: str


def _ground_truth(loaded: LoadedRecipe, relative: str, kind: TaskKind) -> tuple[Path, dict[str, Any]]:
    path = loaded.file(relative)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the evaluation annotations: {exc}") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations",
                                                                                   "categories")):
        raise ConfigError(f"{path}: evaluation annotations need 'images', 'annotations' and 'categories' lists "
                          f"(COCO style, also for kind {kind!r})")
    if not doc["images"]:
        raise ConfigError(f"{path}: the evaluation split has no images")
    for index, image in enumerate(doc["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("id"), int) or \
                not isinstance(image.get("file_name"), str):
            raise ConfigError(f"{path}: images[{index}] needs an integer 'id' and a 'file_name'")
    ids = [image["id"] for image in doc["images"]]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: image ids repeat")
    if evaluator(kind).one_label_per_image:
        labelled = [a.get("image_id") for a in doc["annotations"] if isinstance(a, dict)]
        if sorted(labelled) != sorted(ids):
            raise ConfigError(f"{path}: a labels file has exactly one annotation (its label) per image")
    return path, doc


def _pack_key(gt_bytes: bytes, image_paths: list[Path], input_size: tuple[int, int], resize: str) -> str:
    digest = hashlib.sha256(f"pack v{PACK_VERSION} {input_size} {resize}\n".encode())
    digest.update(hashlib.sha256(gt_bytes).digest())
    for path in image_paths:
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def pack_evaluation(loaded: LoadedRecipe, cache_dir: Path, downloads_dir: Path,
                    log: Callable[[str], None] = progress_line) -> PackedEval:
    """The recipe's evaluation split as a device-ready pack, built or taken from ``cache_dir``."""
    recipe = loaded.recipe
    if recipe.evaluation is None:
        raise ConfigError(f"model {recipe.name!r} has no evaluation split: add an `evaluation:` block "
                          f"(annotations + images) to {loaded.path.name} to use --eval")
    if len(recipe.input.shape) != 4:
        raise ConfigError(f"model {recipe.name!r}: evaluation needs an image input (4-D), "
                          f"input.shape is {list(recipe.input.shape)}")
    if evaluator(recipe.evaluation.kind).reference == "fp32":
        return _pack_agreement(loaded, cache_dir, downloads_dir, log)
    return _pack_split(loaded, cache_dir)


def _pack_agreement(loaded: LoadedRecipe, cache_dir: Path, downloads_dir: Path,
                    log: Callable[[str], None]) -> PackedEval:
    from edgefleet.evaluation.agreement import agreement_reference, eval_spec
    from edgefleet.recipes.sources import resolve_source

    source = resolve_source(loaded, downloads_dir, log=log)
    pack, gt_bytes = agreement_reference(loaded, source.path, downloads_dir, log)
    gt_sha = hashlib.sha256(gt_bytes).hexdigest()
    gt_cached = Path(cache_dir) / GROUND_TRUTH_DIR / f"{gt_sha}.json"
    if not gt_cached.is_file():
        write_atomic(gt_cached, gt_bytes)
    # The very ids, sizes and resize the reference was decoded with: the variants' boxes land on its pixels.
    spec = eval_spec(loaded, pack)
    meta = {"images_sha256": pack.sha256, "image_ids": spec["image_ids"], "image_sizes": spec["image_sizes"]}
    width, height = spec["image_sizes"][0]
    return _packed(pack.images, meta, gt_cached, gt_sha, "agreement", (width, height), spec["resize"])


def _pack_split(loaded: LoadedRecipe, cache_dir: Path) -> PackedEval:
    """A labelled split: annotations plus a folder of images, resized here."""
    from edgefleet.convert.preprocess import InputSpec, fit_images, read_rgb

    recipe = loaded.recipe
    assert recipe.evaluation is not None and recipe.evaluation.annotations and recipe.evaluation.images  # narrowing
    kind: TaskKind = recipe.evaluation.kind
    gt_path, doc = _ground_truth(loaded, recipe.evaluation.annotations, kind)
    image_dir = loaded.file(recipe.evaluation.images)
    images_meta = sorted(doc["images"], key=lambda image: image["id"])
    image_paths = [image_dir / image["file_name"] for image in images_meta]
    missing = [p.name for p in image_paths if not p.is_file()]
    if missing:
        raise ConfigError(f"{image_dir}: {len(missing)} evaluation image(s) missing, e.g. {missing[0]}")
    spec = InputSpec(shape=recipe.input.shape, layout=recipe.input.layout, resize=recipe.input.resize)
    input_size = (spec.width, spec.height)

    gt_bytes = gt_path.read_bytes()
    gt_sha = hashlib.sha256(gt_bytes).hexdigest()
    cache_dir = Path(cache_dir)
    gt_cached = cache_dir / GROUND_TRUTH_DIR / f"{gt_sha}.json"
    if not gt_cached.is_file():
        write_atomic(gt_cached, gt_bytes)
    key = _pack_key(gt_bytes, image_paths, input_size, spec.resize)[:24]
    npy = cache_dir / f"{key}.npy"
    meta_path = cache_dir / f"{key}.json"
    if npy.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if sha256_file(npy) == meta.get("images_sha256"):
            return _packed(npy, meta, gt_cached, gt_sha, kind, input_size, spec.resize)

    sizes = []
    packed = []
    for path in image_paths:
        rgb = read_rgb(path, ConfigError)
        sizes.append((int(rgb.shape[1]), int(rgb.shape[0])))
        packed.append(fit_images(rgb[None], spec)[0])
    array = np.ascontiguousarray(np.stack(packed).astype(np.uint8))
    write_atomic(npy, npy_bytes(array))
    meta = {"image_ids": [image["id"] for image in images_meta], "image_sizes": [list(s) for s in sizes],
            "images_sha256": sha256_file(npy), "source": str(image_dir.name), "pack_version": PACK_VERSION}
    write_atomic(meta_path, json.dumps(meta, indent=1).encode())
    return _packed(npy, meta, gt_cached, gt_sha, kind, input_size, spec.resize)


def _packed(npy: Path, meta: dict[str, Any], gt: Path, gt_sha: str, kind: TaskKind,
            input_size: tuple[int, int], resize: str) -> PackedEval:
    return PackedEval(images=npy, images_sha256=meta["images_sha256"],
                      image_ids=tuple(int(i) for i in meta["image_ids"]),
                      image_sizes=tuple((int(w), int(h)) for w, h in meta["image_sizes"]),
                      ground_truth=gt, ground_truth_sha256=gt_sha, kind=kind, input_size=input_size,
                      resize=resize)


def ground_truth_path(cache_dir: Path, sha256: str) -> Path:
    return Path(cache_dir) / GROUND_TRUTH_DIR / f"{sha256}.json"
