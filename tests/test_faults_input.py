"""R5, hostile input: fuzzed profiles and recipes, hostile names and paths.

Every input is either rejected by validation with ``file:line:col`` or accepted and then
handled as data; nothing ever ends in a traceback. These tests build nothing: each
example is a YAML file written to tmp and loaded. The end-to-end half of R5 (a hostile
workdir and hostile file names through a real deploy on the emulated fleet) lives in
test_faults_deploy.py; argv quoting over real sshd in test_transport_ssh.py.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from edgefleet.config.yamlsrc import display_path
from edgefleet.errors import ConfigError, EdgefleetError
from edgefleet.profiles.load import load_profile_file
from edgefleet.profiles.model import Profile
from edgefleet.recipes.load import load_recipe_file
from edgefleet.recipes.sources import resolve_source

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])

# What an engineer (or a copy-paste from a chat) puts where a name or a path belongs.
HOSTILE = [
    "'", '"', "a'b", 'a"b', "; touch CANARY", "a;b", "$(touch CANARY)", "`touch CANARY`", "${HOME}", "$HOME",
    "../..", "../../etc/passwd", "..", "/", "//", "a b", " lead", "trail ", "a\nb", "a\rb", "a\tb", "\x00",
    "\x1b[31mred", "naïve ☃ 日本語", "\u202eevil", "-rf", "--help", "*", "?", "[a]", "~", "|", "&&", ">", "<",
    "#comment", "%(x)s", "{x}", "{{x}}", "\\", "C:\\x", "", " ", "a" * 300, "é" * 70, "null", "~", "yes", "0x1F",
    "1e9", ".inf", "-", "&anchor", "*alias", "!!python/object:os.system", "@", "!tag",
]
hostile_text = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40))
scalars = st.one_of(hostile_text, st.integers(-10**12, 10**12), st.floats(allow_nan=True), st.booleans(), st.none())
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(hostile_text, inner, max_size=3)),
                      max_leaves=8)

BASE_PROFILE: dict[str, Any] = {
    "description": "a fuzzed profile",
    "device": {"board": "Raspberry Pi 3", "arch": "armv7l", "os": "Raspberry Pi OS", "python": "3.11",
               "glibc": "2.36"},
    "runtime": {"name": "tflite-runtime", "packages": ["tflite-runtime==2.14.0"],
                "optional_packages": ["numpy<2"], "platform_tags": ["linux_armv7l"]},
    "formats": {"tflite": {"quantizations": ["fp32", "int8"]}, "onnx": {"opset": 13},
                "tftrt": {"jetpack_tf_version": "1.15.5", "converter": {"precision_mode": "FP16"}}},
    "bench": {"threads": [1, 2], "delegates": ["cpu", "xnnpack"], "warmup_runs": 1, "min_runs": 5},
    "transport": {"kind": "ssh", "host": "pi.local", "user": "pi", "connect_timeout_s": 5},
    "workdir": "/home/pi/edgefleet",
    "fidelity": {"int8": {"min_cosine": 0.9}},
}
BASE_RECIPE: dict[str, Any] = {
    "description": "a fuzzed recipe",
    "source": {"format": "keras", "path": "model.keras"},
    "input": {"name": "image", "shape": [1, 96, 96, 3], "layout": "NHWC",
              "normalization": {"mean": [0, 0, 0], "std": [255, 255, 255]}},
    "task": {"kind": "detection", "classes": ["a", "b"], "postprocess": {"kind": "ssd_anchors", "params": {}}},
    "calibration": {"path": "data/calibration.npy", "samples": 10},
    "evaluation": {"kind": "coco", "annotations": "data/val.json", "images": "data/val"},
}


BASE_PROFILE_TEXT = json.dumps(BASE_PROFILE, indent=1)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, prefix + (index,))
    return found


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> str:
    """``base`` with 1-3 random edits (replace, delete, add or rename a key), as YAML text, sometimes then
    cut short or spliced with junk at a random place."""
    doc = _copy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add", "rename"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(hostile_text)] = draw(values)
        elif action == "rename" and isinstance(parent, dict) and isinstance(path[-1], str):
            key = path[-1]
            parent[key[:-1] + draw(st.sampled_from(["s", "_", "", key[-1:].upper()]))] = parent.pop(key)
    if draw(st.booleans()):
        buffer = io.StringIO()
        YAML(typ="safe", pure=True).dump(doc, buffer)
        text = buffer.getvalue()
    else:  # JSON is YAML too (and what generated profiles often are); one line per value
        text = json.dumps(doc, indent=1, ensure_ascii=False, default=str)
    damage = draw(st.sampled_from(["none", "none", "none", "cut", "splice"]))
    if damage == "cut":
        text = text[:draw(st.integers(0, len(text)))]
    elif damage == "splice":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from([": ", "- ", "{", "[", "'", '"', "\t", "&a ", "*a ", "!!str ",
                                                 "? ", "|\n", "%YAML 1.1\n", "\n  bad: indent\n"])) + text[at:]
    return text


def assert_located(error: ConfigError, file: Path) -> None:
    """Every problem line of the message names file:line:col; no traceback text ever."""
    message = str(error)
    assert "Traceback" not in message
    shown = re.escape(display_path(file))
    lines = message.splitlines()
    problems = lines[1:] if lines[0].startswith("invalid ") and lines[0].endswith(":") else lines[:1]
    assert problems, message
    for line in problems:
        assert re.match(rf"\s*{shown}:\d+:\d+: \S", line), message


@FUZZ
@given(text=mutated(BASE_PROFILE))
def test_fuzzed_profiles_are_rejected_at_a_line_or_loaded(text: str, tmp_path: Path) -> None:
    path = tmp_path / "fz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        loaded = load_profile_file(path)
    except ConfigError as err:
        assert_located(err, path)
    else:
        assert isinstance(loaded.profile, Profile) and loaded.profile.name == "fz"
        # What validation lets through is safe to use as a path on the device.
        workdir = loaded.profile.workdir
        assert workdir.startswith("/") and ".." not in workdir.split("/") and "\n" not in workdir


@FUZZ
@given(text=mutated(BASE_RECIPE), corrupt=st.binary(max_size=8))
def test_fuzzed_recipes_are_rejected_at_a_line_or_loaded(text: str, corrupt: bytes, tmp_path: Path) -> None:
    folder = tmp_path / "fz"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "model.keras").write_bytes(b"not really a model")
    (folder / "data" / "calibration.npy").write_bytes(b"\x93NUMPY")
    path = folder / "recipe.yaml"
    # Sometimes raw bytes in front: a file saved in the wrong encoding.
    path.write_bytes((corrupt if corrupt[:1] == b"\xff" else b"") + text.encode("utf-8"))
    try:
        loaded = load_recipe_file(path)
        # Paths the recipe names resolve inside its folder or are refused, never followed outside it.
        loaded.file(loaded.recipe.calibration.path)
        resolve_source(loaded, tmp_path / "downloads")
    except ConfigError as err:
        if "does not exist" in str(err):  # a missing file is named, with the recipe that names it
            assert str(err).startswith(f"{display_path(path)}: "), str(err)
        else:  # an escaping path included: refused by validation, at its line
            assert_located(err, path)
    except EdgefleetError as err:  # e.g. a URL source: a SourceError naming the recipe, never a traceback
        assert "Traceback" not in str(err)


@pytest.mark.parametrize("workdir", ["relative/dir", "/opt/../etc", "/opt/a/..", "/opt/x\ny", "/tmp", "/", "/usr/",
                                     "/opt/\x00x"])
def test_dangerous_workdirs_are_rejected_at_their_line(workdir: str, tmp_path: Path) -> None:
    doc = _copy(BASE_PROFILE) | {"workdir": workdir}
    path = tmp_path / "fz.yaml"
    buffer = io.StringIO()
    YAML(typ="safe", pure=True).dump(doc, buffer)
    path.write_text(buffer.getvalue())
    with pytest.raises(ConfigError) as caught:
        load_profile_file(path)
    assert_located(caught.value, path)
    assert "workdir" in str(caught.value)


@pytest.mark.parametrize("workdir", ["/opt/we ird", "/opt/a;b", "/opt/$(touch x)", "/opt/`id`", "/opt/it's",
                                     '/opt/"q"', "/opt/naïve ☃", "/opt/-rf", "/opt/*"])
def test_odd_but_harmless_workdirs_are_kept_verbatim(workdir: str, tmp_path: Path) -> None:
    doc = _copy(BASE_PROFILE) | {"workdir": workdir}
    path = tmp_path / "fz.yaml"
    buffer = io.StringIO()
    YAML(typ="safe", pure=True).dump(doc, buffer)
    path.write_text(buffer.getvalue())
    assert load_profile_file(path).profile.workdir == workdir


@pytest.mark.parametrize("base", ["../elsewhere/x", "{tmp}/elsewhere/x", "builtin:{tmp}/elsewhere/x",
                                  "builtin:../../x", "..", ".hidden", "a\\b"])
def test_extends_names_a_profile_never_a_path(base: str, tmp_path: Path) -> None:
    # A file that exists at each of those paths: following any of them would load it.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.yaml").write_text(BASE_PROFILE_TEXT)
    path = tmp_path / "targets" / "fz.yaml"
    path.parent.mkdir()
    path.write_text(f"extends: {json.dumps(base.format(tmp=tmp_path))}\n")
    with pytest.raises(ConfigError) as caught:
        load_profile_file(path)
    assert_located(caught.value, path)
    assert "not a path" in str(caught.value)


def _invoke(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    invoke = Path(sys.executable).with_name("invoke")
    return subprocess.run([str(invoke), *args], cwd=workspace, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize("args", [
    ("deploy", "--target", "$(touch CANARY)"),
    ("deploy", "--target", "../targets/rpi3"),
    ("build", "--target", "rpi3; touch CANARY"),
    ("build", "--target", "rpi3", "--model", "../models/shapes"),
    ("deploy", "--target", "rpi3", "--model", "`touch CANARY`"),
    ("deploy", "--target", "rpi3", "--device", "x'; touch CANARY; '"),
    ("collect-benchmarks", "--run", "$(touch CANARY)"),
    ("resume", "--run", "../../runs/x"),
    ("doctor", "--target", "a\nb; touch CANARY"),
])
def test_hostile_names_on_the_command_line_are_clean_errors(args: tuple[str, ...], workspace_copy: Path) -> None:
    proc = _invoke(workspace_copy, *args)
    output = proc.stdout + proc.stderr
    assert proc.returncode in (2, 9), output          # ConfigError or ResultsError, never a crash
    assert "Traceback" not in output
    assert output.strip().startswith("error: ") and output.count("error: ") == 1
    assert not list(workspace_copy.rglob("CANARY")) and not Path("CANARY").exists()
    # Fail fast: a bad name is caught before anything is built.
    assert not (workspace_copy / ".edgefleet" / "artifacts").exists()
