"""A model taken out of a PyPI wheel: real pip, real PyPI, the real mediapipe 0.10.14 wheel.

The wheel (~35 MB) is fetched once into EDGEFLEET_PACKAGE_SOURCE_CACHE (conftest shares it across the
session and later runs); every test extracts its member into its own download cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from edgefleet.errors import ConfigError, SourceError
from edgefleet.plan.model import SourceInput
from edgefleet.plan.workspace import load_plan
from edgefleet.recipes.load import LoadedRecipe, load_recipe, load_recipe_file
from edgefleet.recipes.sources import LOCK_FILE, ResolvedSource, resolve_source
from edgefleet.recipes.wheels import CACHE_ENV, WheelSpec, cache_folder, cached_wheel
from edgefleet.workspace import open_workspace

REPO = Path(__file__).resolve().parents[1]
MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
DIGEST = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"
LOCK_KEY = f"mediapipe==0.10.14:{MEMBER}"

RECIPE = """\
source:
  format: tflite
  package: mediapipe
  version: {version}
  member: {member}
{extra}input:
  shape: [1, 128, 128, 3]
  normalization: {{mean: [127.5], std: [127.5]}}
task:
  kind: detection
  classes: [face]
  postprocess: {{kind: ssd_anchors}}
calibration:
  path: calib.npy
"""


def write_recipe(folder: Path, *, member: str = MEMBER, version: str = '"0.10.14"', extra: str = "") -> Path:
    (folder / "net").mkdir(parents=True, exist_ok=True)
    path = folder / "net" / "recipe.yaml"
    path.write_text(RECIPE.format(member=member, version=version, extra=extra))
    (folder / "net" / "calib.npy").write_bytes(b"x" * 32)
    return path


def leftovers(folder: Path) -> list[str]:
    """Files a later run could mistake for a fetched model or wheel (the fetch lock aside)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != ".lock")


@pytest.fixture(scope="session")
def shipped() -> LoadedRecipe:
    return load_recipe(REPO / "models", "blazeface")


@pytest.fixture(scope="session")
def fetched(shipped: LoadedRecipe, tmp_path_factory: pytest.TempPathFactory) -> ResolvedSource:
    """The shipped recipe's source, fetched once per session (the wheel only once ever, if cached)."""
    try:
        return resolve_source(shipped, tmp_path_factory.mktemp("downloads"), log=print)
    except SourceError as exc:
        if "not reachable" in str(exc):
            # CI installs from PyPI, so there an unreachable PyPI is a failure, never a silent skip.
            (pytest.fail if os.environ.get("CI") else pytest.skip)(f"PyPI is not reachable for the mediapipe wheel: {exc}")
        raise


def test_shipped_recipe_resolves_to_the_real_member(shipped: LoadedRecipe, fetched: ResolvedSource) -> None:
    source = shipped.recipe.source
    assert (source.format, source.package, source.version, source.member) == ("tflite", "mediapipe", "0.10.14",
                                                                               MEMBER)
    assert shipped.recipe.input.shape == (1, 128, 128, 3)
    assert shipped.recipe.input.normalization.mean == (127.5,) * 3 == shipped.recipe.input.normalization.std
    assert fetched.format == "tflite" and fetched.sha256 == DIGEST == source.sha256
    data = fetched.path.read_bytes()
    assert fetched.path.as_posix().endswith("/members/" + MEMBER)
    assert hashlib.sha256(data).hexdigest() == DIGEST and data[4:8] == b"TFL3" and len(data) == 229_714
    # The wheel sits in the shared cache with the digest pip's download had; never in site-packages.
    wheel = cached_wheel(cache_folder(Path(os.environ[CACHE_ENV]), WheelSpec("mediapipe", "0.10.14")))
    assert wheel is not None and wheel.name.startswith("mediapipe-0.10.14-") and wheel.suffix == ".whl"
    assert not list(fetched.path.parents[len(MEMBER.split("/"))].glob("*.whl"))
    assert not (shipped.folder / LOCK_FILE).exists()  # the recipe gives its sha256: nothing to learn


def test_first_fetch_is_locked_and_cached_copies_are_verified(tmp_path: Path, fetched: ResolvedSource) -> None:
    path = write_recipe(tmp_path)
    cache = tmp_path / "downloads"
    first = resolve_source(load_recipe_file(path), cache)
    assert first.sha256 == DIGEST and first.path != fetched.path
    assert json.loads((path.parent / LOCK_FILE).read_text()) == {LOCK_KEY: DIGEST}

    # A damaged cached member is noticed and extracted again from the wheel.
    first.path.write_bytes(b"\x1c\0\0\0TFL3" + b"\0" * 64)
    again = resolve_source(load_recipe_file(path), cache)
    assert again.path == first.path and again.sha256 == DIGEST
    assert hashlib.sha256(again.path.read_bytes()).hexdigest() == DIGEST

    # A lock that names another digest: the cached member fails it, and so does a fresh extraction.
    (path.parent / LOCK_FILE).write_text(json.dumps({LOCK_KEY: "0" * 64}))
    with pytest.raises(SourceError, match=f"{MEMBER} from the wheel of mediapipe==0.10.14 .* has sha256 {DIGEST}, "
                                          f"but .*sources.lock .* expects {'0' * 64}"):
        resolve_source(load_recipe_file(path), cache)
    assert leftovers(cache) == []


def test_recipe_sha256_mismatch_names_member_and_both_digests(tmp_path: Path, fetched: ResolvedSource) -> None:
    path = write_recipe(tmp_path, extra=f"  sha256: '{'1' * 64}'\n")
    cache = tmp_path / "downloads"
    with pytest.raises(SourceError) as caught:
        resolve_source(load_recipe_file(path), cache)
    message = str(caught.value)
    assert MEMBER in message and f"has sha256 {DIGEST}" in message and f"expects {'1' * 64}" in message
    assert "recipe.yaml:6:11: source.sha256: " in message
    assert leftovers(cache) == [] and not (path.parent / LOCK_FILE).exists()


@pytest.mark.parametrize("member, suggestion", [
    ("mediapipe/modules/face_detection/face_detection_short.tflite", f"did you mean '{MEMBER}'"),
    ("face_detection_short_range.tflite", f"did you mean '{MEMBER}'"),
    ("mediapipe/models/blazeface.tflite", "its .tflite files: .*palm_detection_lite.tflite"),
])
def test_missing_member_suggests_close_names(tmp_path: Path, fetched: ResolvedSource, member: str,
                                             suggestion: str) -> None:
    path = write_recipe(tmp_path, member=member)
    cache = tmp_path / "downloads"
    with pytest.raises(SourceError, match=rf"recipe.yaml:5:11: source.member: mediapipe-0.10.14-\S+\.whl has no "
                                          rf"'{member}'.*{suggestion}"):
        resolve_source(load_recipe_file(path), cache)
    assert leftovers(cache) == [] and not (path.parent / LOCK_FILE).exists()


@pytest.mark.parametrize("extra, command", [
    ("", "python -m pip download --no-deps --only-binary=:all: mediapipe==0.10.99"),
    ("  python_version: '3.11'\n  platform: macosx_11_0_arm64\n",
     "python -m pip download --no-deps --only-binary=:all: --python-version 3.11 --platform macosx_11_0_arm64 "
     "mediapipe==0.10.99"),
])
def test_nonexistent_version_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fetched: ResolvedSource,
                                              extra: str, command: str) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "wheels"))  # the failed fetch's folder is this test's alone
    path = write_recipe(tmp_path, version='"0.10.99"', extra=extra)
    with pytest.raises(SourceError) as caught:
        resolve_source(load_recipe_file(path), tmp_path / "downloads")
    message = str(caught.value)
    assert "recipe.yaml:4:12: source.version: PyPI has no wheel of mediapipe 0.10.99" in message
    assert f"`{command}` found none" in message and "it offers" in message and "0.10.14" in message
    assert leftovers(tmp_path / "wheels") == [] and leftovers(tmp_path / "downloads") == []


def test_cached_wheel_is_trusted_only_with_its_recorded_digest(tmp_path: Path, fetched: ResolvedSource) -> None:
    shared = cache_folder(Path(os.environ[CACHE_ENV]), WheelSpec("mediapipe", "0.10.14"))
    copy = shutil.copytree(shared, tmp_path / "copy", ignore=shutil.ignore_patterns(".lock"))
    wheel = cached_wheel(copy)
    assert wheel is not None
    with wheel.open("r+b") as fh:  # one flipped byte, as a damaged disk or an interrupted copy would leave
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert cached_wheel(copy) is None  # so ensure_wheel fetches it again


def test_planning_resolves_the_package_source(workspace_copy: Path, fetched: ResolvedSource) -> None:
    ws = open_workspace(workspace_copy)
    plan = load_plan(ws, "local", "blazeface")
    source = plan.step("tflite/fp32/convert").inputs["model"]  # the fetched member is the fp32 variant as is
    assert isinstance(source, SourceInput) and source.digest == DIGEST and source.path.is_file()
    members = list(ws.downloads_dir.rglob("*.tflite"))
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in members] == [DIGEST]


@pytest.mark.parametrize("change, message", [
    (('"0.10.14"', "0.10"), r"recipe.yaml:4:12: source.version: write it quoted.*\(got 0.1\)"),
    (('"0.10.14"', '">=0.10"'), "source.version: give one exact release"),
    (('  version: "0.10.14"\n', ""), "needs source.version"),
    ((f"member: {MEMBER}", "member: ../x.tflite"), "a member must be a file's path inside the wheel"),
    (("  format: tflite\n", "  format: tflite\n  url: https://example.invalid/m.tflite\n"), "exactly one of"),
    (("  package: mediapipe\n", "  path: m.tflite\n"), "source.version, source.member only go with source.package"),
    (("format: tflite", "format: tflit"), "did you mean 'tflite'"),
])
def test_bad_package_sources_are_rejected_at_load(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = write_recipe(tmp_path)
    text = path.read_text()
    assert change[0] in text
    path.write_text(text.replace(*change))
    with pytest.raises(ConfigError, match=message):
        load_recipe_file(path)
