"""Recipes validate at load; sources resolve to checksum-verified files, downloads included."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
import zipfile
from pathlib import Path

import pytest

from edgefleet.errors import ConfigError, SourceError
from edgefleet.recipes.load import load_recipe, load_recipe_file
from edgefleet.recipes.sources import LOCK_FILE, resolve_source

REPO = Path(__file__).resolve().parents[1]

RECIPE = """\
source:
  format: onnx
  {location}
input:
  shape: [1, 3, 64, 64]
  layout: NCHW
task:
  kind: detection
  classes: [a]
  postprocess: {{kind: yolov5}}
calibration:
  path: calib.npy
"""


def write_recipe(folder: Path, location: str, name: str = "net") -> Path:
    (folder / name).mkdir(parents=True, exist_ok=True)
    path = folder / name / "recipe.yaml"
    path.write_text(RECIPE.format(location=location))
    (folder / name / "calib.npy").write_bytes(b"x" * 32)
    return path


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_shipped_recipes_load():
    for name in ("shapes", "yolov5s"):
        if (REPO / "models" / name / "recipe.yaml").exists():
            assert load_recipe(REPO / "models", name).recipe.name == name


def test_unknown_recipe_key_has_position(tmp_path):
    path = write_recipe(tmp_path, "path: m.onnx")
    path.write_text(path.read_text().replace("  layout: NCHW", "  layuot: NCHW"))
    with pytest.raises(ConfigError, match=r"recipe.yaml:6:3: unknown key 'layuot' \(did you mean 'layout'\?\)"):
        load_recipe_file(path)


@pytest.mark.parametrize("change, message", [
    (("[1, 3, 64, 64]", "[2, 3, 64, 64]"), "batch 1"),
    (("[1, 3, 64, 64]", "[1, 3, -1, 64]"), "static and positive"),
    (("kind: yolov5", "kind: argmax"), "does not fit a detection task"),
    (("path: m.onnx", "path: ../m.onnx"), "inside the recipe folder"),
    (("path: m.onnx", "path: m.onnx\n  url: https://example.invalid/m.onnx"), "exactly one of"),
])
def test_bad_recipes_are_rejected(tmp_path, change, message):
    path = write_recipe(tmp_path, "path: m.onnx")
    path.write_text(path.read_text().replace(*change))
    with pytest.raises(ConfigError, match=message):
        load_recipe_file(path)


def test_local_source_digest_and_corrupt_keras(tmp_path):
    path = write_recipe(tmp_path, "path: m.onnx")
    (path.parent / "m.onnx").write_bytes(b"\x08\x07" + b"\0" * 100)
    resolved = resolve_source(load_recipe_file(path), tmp_path / "cache")
    assert resolved.sha256 == hashlib.sha256((path.parent / "m.onnx").read_bytes()).hexdigest()

    path.write_text(path.read_text().replace("format: onnx", "format: keras").replace("m.onnx", "m.keras"))
    (path.parent / "m.keras").write_bytes(b"not a zip")
    with pytest.raises(SourceError, match="not a valid .keras file"):
        resolve_source(load_recipe_file(path), tmp_path / "cache")
    with zipfile.ZipFile(path.parent / "m.keras", "w") as zf:
        zf.writestr("config.json", "{}")
    assert resolve_source(load_recipe_file(path), tmp_path / "cache").path.name == "m.keras"


def test_download_is_locked_on_first_use_and_verified_after(tmp_path, http_root):
    www, base = http_root
    (www / "m.onnx").write_bytes(b"\x08\x07" + b"1" * 200)
    path = write_recipe(tmp_path, f"url: {base}/m.onnx")
    cache = tmp_path / "cache"
    first = resolve_source(load_recipe_file(path), cache)
    lock = json.loads((path.parent / LOCK_FILE).read_text())
    assert lock == {f"{base}/m.onnx": first.sha256}

    # Upstream changes: the cached copy still verifies, a fresh download does not.
    (www / "m.onnx").write_bytes(b"\x08\x07" + b"2" * 200)
    assert resolve_source(load_recipe_file(path), cache).sha256 == first.sha256
    for item in cache.rglob("m.onnx"):
        item.unlink()
    with pytest.raises(SourceError, match="expects"):
        resolve_source(load_recipe_file(path), cache)
    assert not list(cache.rglob("m.onnx")) and not list(cache.rglob("*.part-*"))


def test_recipe_sha256_mismatch_is_an_error(tmp_path, http_root):
    www, base = http_root
    (www / "m.onnx").write_bytes(b"\x08\x07" + b"1" * 200)
    path = write_recipe(tmp_path, f"url: {base}/m.onnx\n  sha256: '{'0' * 64}'")
    with pytest.raises(SourceError, match="does not match|expects"):
        resolve_source(load_recipe_file(path), tmp_path / "cache")
    assert not (path.parent / LOCK_FILE).exists()


def test_unreachable_download_is_a_clear_error(tmp_path):
    path = write_recipe(tmp_path, "url: http://127.0.0.1:9/m.onnx")
    with pytest.raises(SourceError, match="cannot download"):
        resolve_source(load_recipe_file(path), tmp_path / "cache")
