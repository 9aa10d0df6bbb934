"""The agent runs on the boards' old interpreters (Jetson Nano: Python 3.6) with only the stdlib and numpy.

No 3.6 interpreter exists here, so the checks are static: vermin's minimum
version, Python's own 3.6 grammar, and the import list.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgefleet.agent.bundle import build_agent_bundle

REPO = Path(__file__).resolve().parents[1]
AGENT_DIR = REPO / "edgefleet" / "agent"
PACKAGE_DIR = AGENT_DIR / "efagent"
# What runs on the device: the agent's package and the zipapp's __main__.
DEVICE_FILES = sorted(PACKAGE_DIR.glob("*.py")) + [AGENT_DIR / "launcher.py"]
# What the device side may import besides the stdlib (the launcher imports the package by its name).
ALLOWED_THIRD_PARTY = {"numpy", "efagent"}
# The runtimes, imported inside the plug-in modules' functions only.
RUNTIME_MODULES = {"ai_edge_litert", "tflite_runtime", "tensorflow", "onnxruntime", "openvino", "pkg_resources"}
PLUGIN_MODULES = ("runtimes.py", "tfgraph.py")


def _device_files() -> list[Path]:
    return DEVICE_FILES


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
            if node.level:  # `from . import runtimes`: a module of the same package
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top != "edgefleet", f"{path.name} imports {name}: host code is 3.10+ and not on the device"
            allowed = sys.stdlib_module_names | ALLOWED_THIRD_PARTY | (
                RUNTIME_MODULES if path.name in PLUGIN_MODULES else set())
            assert top in allowed, f"{path.name} imports {name}"


@pytest.mark.parametrize("name", PLUGIN_MODULES)
def test_runtime_libraries_are_imported_lazily(name: str) -> None:
    tree = ast.parse((PACKAGE_DIR / name).read_text())
    top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top_level |= {(node.module or "").split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert not top_level & RUNTIME_MODULES, "a device without one runtime must still load the agent"


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_the_package_imports_itself_relatively_and_without_fallbacks(path: Path) -> None:
    """One way to import a module of the agent, on the host and on the device alike: `from . import x`.
    No `try: from . import x / except ImportError: import x`, no module imported by its bare name."""
    siblings = {p.stem for p in PACKAGE_DIR.glob("*.py")} | {"efagent", "edgefleet"}
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {alias.name.split(".")[0] for alias in node.names} & siblings, f"{path.name}:{node.lineno}"
        if isinstance(node, ast.ImportFrom) and not node.level:
            assert (node.module or "").split(".")[0] not in siblings, f"{path.name}:{node.lineno}"
        if isinstance(node, ast.Try):
            imports = [n for n in ast.walk(node) if isinstance(n, ast.ImportFrom) and n.level]
            assert not imports, f"{path.name}:{node.lineno}: a relative import inside try"


def test_bundle_holds_the_device_modules_and_is_reproducible(tmp_path: Path) -> None:
    first = build_agent_bundle(tmp_path / "a")
    second = build_agent_bundle(tmp_path / "b" / "agent.pyz")
    assert first.path.name == "edgefleet-agent.pyz"
    assert first.sha256 == second.sha256
    assert first.path.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    names = set(zipfile.ZipFile(first.path).namelist())
    assert names == {"__main__.py"} | {f"efagent/{p.name}" for p in PACKAGE_DIR.glob("*.py")}
    assert set(first.modules) == names - {"__main__.py"}
    proc = subprocess.run([sys.executable, str(first.path), "version"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"schema": 1' in proc.stdout and '"tflite"' in proc.stdout


def test_first_start_unpacks_the_modules_once_so_later_starts_use_cached_bytecode(tmp_path: Path) -> None:
    bundle = build_agent_bundle(tmp_path / "agent.pyz")
    run_dir = tmp_path / "no-run"

    # As over SSH on a board; a user's PYTHONDONTWRITEBYTECODE is respected, so it is cleared here.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def status() -> dict:
        proc = subprocess.run([sys.executable, str(bundle.path), "status", str(run_dir)], capture_output=True,
                              text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    assert status()["state"] == "not_started"
    folders = list((tmp_path / "agent.pyz.d").iterdir())
    assert len(folders) == 1 and not folders[0].name.startswith(".")
    unpacked = folders[0]
    assert {str(p.relative_to(unpacked)) for p in unpacked.rglob("*.py")} == set(bundle.modules)
    # What `status` loads is compiled once, here, not at every poll.
    cached = {p.name.split(".")[0] for p in (unpacked / "efagent" / "__pycache__").glob("*.pyc")}
    assert {"__init__", "cli", "status"} <= cached
    stamp = {p: p.stat().st_mtime_ns for p in unpacked.rglob("*")}
    assert status()["state"] == "not_started"
    assert {p: p.stat().st_mtime_ns for p in unpacked.rglob("*")} == stamp  # reused, not unpacked again

    # The same sources, copied (new dates, another mode), make the same archive, which finds its folder.
    (tmp_path / "src" / "efagent").mkdir(parents=True)
    for name in (*bundle.modules, "launcher.py"):
        (tmp_path / "src" / name).write_bytes((AGENT_DIR / name).read_bytes())
        (tmp_path / "src" / name).chmod(0o600)
    assert build_agent_bundle(tmp_path / "agent.pyz", source_dir=tmp_path / "src").sha256 == bundle.sha256
    assert status()["state"] == "not_started"
    assert len(list((tmp_path / "agent.pyz.d").iterdir())) == 1

    # A different agent gets a folder of its own; a running older agent keeps its modules.
    with (tmp_path / "src" / "efagent" / "cli.py").open("a") as handle:
        handle.write("\n# another version\n")
    build_agent_bundle(tmp_path / "agent.pyz", source_dir=tmp_path / "src")
    assert status()["state"] == "not_started"
    assert len(list((tmp_path / "agent.pyz.d").iterdir())) == 2 and unpacked.is_dir()


def test_a_read_only_device_folder_still_runs_the_agent_from_the_archive(tmp_path: Path) -> None:
    bundle = build_agent_bundle(tmp_path / "ro" / "agent.pyz")
    (tmp_path / "ro").chmod(0o555)
    try:
        # root ignores permissions, so the folder it would unpack into is blocked by a file instead
        (tmp_path / "ro").chmod(0o755)
        (tmp_path / "ro" / "agent.pyz.d").write_text("in the way")
        (tmp_path / "ro").chmod(0o555)
        proc = subprocess.run([sys.executable, str(bundle.path), "status", str(tmp_path / "r")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["state"] == "not_started"
    finally:
        (tmp_path / "ro").chmod(0o755)
