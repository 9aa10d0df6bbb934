"""The agent runs on the boards' old interpreters (Jetson Nano: Python 3.6) with only the stdlib and numpy.

No 3.6 interpreter exists here, so the checks are static: vermin's minimum
version, Python's own 3.6 grammar, and the import list.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgefleet.agent.bundle import build_agent_bundle

REPO = Path(__file__).resolve().parents[1]
AGENT_DIR = REPO / "edgefleet" / "agent"
DEVICE_FILES = ["__init__.py", "agent.py", "runtimes.py", "postprocess.py", "evaluate.py"]
# What the device side may import at module level besides the stdlib.
ALLOWED_THIRD_PARTY = {"numpy", "runtimes", "postprocess", "evaluate"}
# The runtimes, imported inside runtimes.py's functions only.
RUNTIME_MODULES = {"ai_edge_litert", "tflite_runtime", "tensorflow", "onnxruntime", "openvino", "pkg_resources"}


def _device_files() -> list[Path]:
    return [AGENT_DIR / name for name in DEVICE_FILES if (AGENT_DIR / name).exists()]


def test_vermin_says_python_36_is_enough() -> None:
    vermin = Path(sys.executable).with_name("vermin")
    files = [str(p) for p in _device_files()]
    proc = subprocess.run([str(vermin), "-t=3.6-", "--no-tips", "--violations", *files],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([str(vermin), "--no-tips", *files], capture_output=True, text=True, timeout=120)
    minimum = next(line for line in proc.stdout.splitlines() if line.startswith("Minimum required versions"))
    version = minimum.split(":", 1)[1].strip().split(",")[-1].strip()
    assert tuple(int(p) for p in version.split(".")) <= (3, 6), minimum


@pytest.mark.parametrize("path", _device_files(), ids=lambda p: p.name)
def test_parses_with_the_python_36_grammar(path: Path) -> None:
    # feature_version rejects walrus, positional-only parameters, parenthesised context managers...
    tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, 6))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module not in ("dataclasses", "__future__"), f"{path.name}:{node.lineno}: 3.7+"
        if isinstance(node, ast.keyword):
            # subprocess.run(capture_output=, text=) are 3.7.
            assert node.arg not in ("capture_output", "text"), f"{path.name}:{node.value.lineno}: 3.7+"


@pytest.mark.parametrize("path", _device_files(), ids=lambda p: p.name)
def test_imports_only_stdlib_numpy_and_runtimes(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # `from . import runtimes`: a sibling shipped in the same zipapp
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top != "edgefleet", f"{path.name} imports {name}: host code is 3.10+ and not on the device"
            allowed = sys.stdlib_module_names | ALLOWED_THIRD_PARTY | (
                RUNTIME_MODULES if path.name == "runtimes.py" else set())
            assert top in allowed, f"{path.name} imports {name}"


def test_runtime_libraries_are_imported_lazily() -> None:
    tree = ast.parse((AGENT_DIR / "runtimes.py").read_text())
    top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top_level |= {(node.module or "").split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert not top_level & RUNTIME_MODULES, "a device without one runtime must still load the agent"


def test_bundle_holds_the_device_modules_and_is_reproducible(tmp_path: Path) -> None:
    first = build_agent_bundle(tmp_path / "a")
    second = build_agent_bundle(tmp_path / "b" / "agent.pyz")
    assert first.path.name == "edgefleet-agent.pyz"
    assert first.sha256 == second.sha256
    assert first.path.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    names = set(zipfile.ZipFile(first.path).namelist())
    expected = {"__main__.py", "agent.py", "runtimes.py"} | {
        name for name in ("postprocess.py", "evaluate.py") if (AGENT_DIR / name).exists()}
    assert names == expected
    proc = subprocess.run([sys.executable, str(first.path), "version"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"schema": 1' in proc.stdout and '"tflite"' in proc.stdout
