"""Resolve a recipe's model source to a local, checksum-verified file.

Downloads go to the workspace cache; without a sha256 in the recipe the first
good download's digest is recorded in the recipe's ``sources.lock`` and every
later download is verified against it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.config.yamlsrc import display_path
from edgefleet.digest import sha256_file, sha256_tree
from edgefleet.errors import SourceError
from edgefleet.recipes.load import LoadedRecipe

LOCK_FILE = "sources.lock"
Fetcher = Callable[[str, Path], None]


@dataclass(frozen=True)
class ResolvedSource:
    path: Path
    sha256: str
    format: str


def urllib_fetch(url: str, dest: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
    except (urllib.error.URLError, OSError) as exc:
        raise SourceError(f"cannot download {url}: {exc}") from None


def check_source_file(fmt: str, path: Path) -> None:
    """Cheap structural checks so a corrupt file fails before a converter starts."""
    if not path.exists():
        raise SourceError(f"model source {display_path(path)} does not exist")
    if fmt == "keras" and not zipfile.is_zipfile(path):
        raise SourceError(f"{display_path(path)} is not a valid .keras file (it must be a zip archive); "
                          "re-save it with model.save('model.keras')")
    if fmt == "savedmodel" and not (path / "saved_model.pb").is_file():
        raise SourceError(f"{display_path(path)} is not a SavedModel directory (no saved_model.pb)")
    if fmt in ("onnx", "frozen_graph") and (not path.is_file() or path.stat().st_size < 16):
        raise SourceError(f"{display_path(path)} is empty or not a file; expected a {fmt} model")


def _read_lock(lock: Path) -> dict[str, str]:
    if not lock.exists():
        return {}
    try:
        return dict(json.loads(lock.read_text()))
    except (ValueError, TypeError) as exc:
        raise SourceError(f"{display_path(lock)} is corrupt ({exc}); delete it to re-learn the digests") from None


def _write_lock(lock: Path, entries: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=lock.parent, prefix=".sources.lock.")
    with os.fdopen(fd, "w") as fh:
        json.dump(entries, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, lock)


def resolve_source(loaded: LoadedRecipe, cache_dir: Path, fetch: Fetcher = urllib_fetch) -> ResolvedSource:
    source = loaded.recipe.source
    if source.path is not None:
        path = loaded.file(source.path)
        check_source_file(source.format, path)
        digest = sha256_tree(path)
        if source.sha256 and digest != source.sha256:
            raise SourceError(f"{display_path(path)}: sha256 {digest} does not match the recipe's {source.sha256}")
        return ResolvedSource(path, digest, source.format)

    url = str(source.url)
    lock_path = loaded.folder / LOCK_FILE
    lock = _read_lock(lock_path)
    expected = source.sha256 or lock.get(url)
    name = Path(url.split("?", 1)[0]).name or "model"
    target_dir = cache_dir / hashlib.sha256(url.encode()).hexdigest()[:16]
    target = target_dir / name
    if target.exists():
        digest = sha256_file(target)
        if expected is None or digest == expected:
            check_source_file(source.format, target)
            if expected is None:
                _write_lock(lock_path, {**lock, url: digest})
            return ResolvedSource(target, digest, source.format)
        target.unlink()  # a stale or tampered cache entry: fetch again and verify

    target_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target_dir, prefix=f".{name}.part-")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        fetch(url, tmp)
        digest = sha256_file(tmp)
        if expected is not None and digest != expected:
            origin = "the recipe" if source.sha256 else display_path(lock_path)
            raise SourceError(f"download of {url} has sha256 {digest}, but {origin} expects {expected}; "
                              "the file changed upstream or the download is corrupt")
        check_source_file(source.format, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if expected is None:
        _write_lock(lock_path, {**lock, url: digest})
    return ResolvedSource(target, digest, source.format)
