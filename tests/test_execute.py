"""The executor and the artifact store, driving real steps through the local backend."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from rich.text import Text

from edgefleet.backends.base import StepRequest
from edgefleet.backends.local import LocalBackend
from edgefleet.errors import EXIT_CONFIG, EXIT_TOOL_UNAVAILABLE, BuildError, PlanError, ToolUnavailableError
from edgefleet.execute import execute_plan, step_description
from edgefleet.plan.model import Plan, SourceInput, Step, StepInput, step_key
from edgefleet.recipes.sources import sha256_file
from edgefleet.steps.process import ERROR_FILE, RESULT_FILE, STEP_MODULE
from edgefleet.store import ArtifactStore

REPO = Path(__file__).resolve().parents[1]


def tiny_onnx(path: Path) -> Path:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], np.eye(2, dtype=np.float32).ravel().tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def import_plan(source: Path, *, extra_step: bool = False) -> Plan:
    digest = sha256_file(source)
    first = Step("onnx", "onnx.import", "tf", {}, {"model": SourceInput(source, digest)}, "onnx", "onnxruntime",
                 step_key("onnx.import", 1, "v", {}, {"model": digest}))
    steps = [first]
    if extra_step:
        # A second import of the first step's output: proves StepInput resolution through the store.
        steps.append(Step("again", "onnx.import", "tf", {}, {"model": StepInput("onnx")}, None, None,
                          step_key("onnx.import", 1, "v", {}, {"model": first.key})))
    return Plan("dev", "tiny", tuple(steps))


def test_build_then_cache_hit(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    plan = import_plan(tiny_onnx(tmp_path / "m.onnx"), extra_step=True)
    first = execute_plan(plan, store, LocalBackend(), jobs=2)
    assert [o.status for o in first.outcomes] == ["built", "built"]
    manifest = store.manifest(plan.steps[0].key)
    assert manifest["files"][0]["name"] == "model.onnx"
    assert manifest["files"][0]["sha256"] == sha256_file(tmp_path / "m.onnx")
    assert manifest["inputs"] == {"model": sha256_file(tmp_path / "m.onnx")}
    assert "imported m.onnx" in (store.path(plan.steps[0].key) / "build.log").read_text()
    assert store.manifest(plan.steps[1].key)["inputs"] == {"model": plan.steps[0].key}

    second = execute_plan(plan, store, LocalBackend(), jobs=2)
    assert [o.status for o in second.outcomes] == ["cached", "cached"]


def test_failed_step_leaves_no_entry_and_skips_dependents(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01this is not an onnx model at all")
    store = ArtifactStore(tmp_path / "artifacts")
    plan = import_plan(bad, extra_step=True)
    summary = execute_plan(plan, store, LocalBackend())
    assert [o.status for o in summary.outcomes] == ["failed", "skipped"]
    assert "is not a valid ONNX model" in summary.outcomes[0].message
    assert f"exit code: {BuildError.exit_code}" in summary.outcomes[0].message
    assert store.entries() == []
    assert list((tmp_path / "artifacts").iterdir()) == []  # no staging folder left either


def test_step_timeout_is_named(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    plan = import_plan(tiny_onnx(tmp_path / "m.onnx"))
    # 0.01 s is less than the interpreter needs to start, so the timeout always fires.
    summary = execute_plan(plan, store, LocalBackend(), timeout_s=0.01)
    assert summary.outcomes[0].status == "failed"
    assert "timed out after" in summary.outcomes[0].message and "step_timeout_s" in summary.outcomes[0].message
    assert store.entries() == []


def test_manifest_is_json_with_sizes(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    plan = import_plan(tiny_onnx(tmp_path / "m.onnx"))
    execute_plan(plan, store, LocalBackend())
    raw = json.loads((store.path(plan.steps[0].key) / "manifest.json").read_text())
    assert raw["size_bytes"] == sum(f["size"] for f in raw["files"])
    assert raw["valid"] is True and raw["backend"] == "local"


@pytest.mark.parametrize("name", ["manifest.json", "build.log"])
def test_a_step_output_named_like_the_store_s_own_files_is_refused(tmp_path, name):
    """The store writes manifest.json and build.log beside the outputs: a step's file of that name would be
    replaced, and the manifest would list a digest the file no longer has."""
    store = ArtifactStore(tmp_path / "artifacts")
    with store.staging("k" * 64) as staging:
        staging.out_dir.mkdir(parents=True, exist_ok=True)
        (staging.out_dir / name).write_text("the step's own")
        with pytest.raises(BuildError, match=f"wrote {re.escape(name)}, a name the artifact store keeps"):
            store.commit(staging, {"step": "runtime/wheelhouse", "primary_files": []})
    assert store.entries() == []


@pytest.mark.parametrize("jobs", [1, 2])
def test_independent_steps_all_build(tmp_path, jobs):
    store = ArtifactStore(tmp_path / "artifacts")
    sources = [tiny_onnx(tmp_path / f"m{i}.onnx") for i in range(3)]
    steps = []
    for i, src in enumerate(sources):
        # Distinct params make distinct keys even though the files are identical.
        steps.append(Step(f"s{i}", "onnx.import", "tf", {"i": i}, {"model": SourceInput(src, sha256_file(src))},
                          None, None, step_key("onnx.import", 1, "v", {"i": i}, {"model": sha256_file(src)})))
    summary = execute_plan(Plan("dev", "tiny", tuple(steps)), store, LocalBackend(), jobs=jobs)
    assert summary.count("built") == 3
    assert len(store.entries()) == 3


@pytest.mark.parametrize("line", ["Epoch [1/3] loss [0.2]", "tensor [/bold] closes nothing", "[red]x[/red]"])
def test_a_log_line_with_brackets_shows_as_written(line):
    """Progress descriptions are rich markup: unescaped, "[red]" would vanish and "[/bold]" would raise."""
    assert Text.from_markup(step_description("tflite/fp32", line)).plain == f"  tflite/fp32: {line}"


# -- the step process: its entry point and its exit codes -------------------------------------

def run_process(tmp_path: Path, spec: dict, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return subprocess.run([sys.executable, "-m", STEP_MODULE, str(path)], capture_output=True, text=True,
                          timeout=300, env=env)


def no_edgetpu_compiler(tmp_path: Path) -> dict[str, str]:
    """This environment with a PATH that holds no edgetpu_compiler, whatever the machine has."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    return {**os.environ, "PATH": str(empty)}


def test_the_step_process_exits_with_its_errors_own_code(tmp_path):
    """Codes from edgefleet/errors.py: a failed step is not "not built here", and neither is a plan error."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01this is not an onnx model at all")
    cases = [
        ({"kind": "onnx.import", "inputs": {"model": str(bad)}}, BuildError, None),
        ({"kind": "no.such_kind", "inputs": {}}, PlanError, None),
        ({"kind": "edgetpu.compile", "inputs": {"model": str(bad)}}, ToolUnavailableError, no_edgetpu_compiler(tmp_path)),
    ]
    for i, (spec, error, env) in enumerate(cases):
        out = tmp_path / f"out{i}"
        proc = run_process(tmp_path, {**spec, "params": {}, "out_dir": str(out)}, env)
        assert proc.returncode == error.exit_code, (spec["kind"], proc.stdout + proc.stderr)
        assert json.loads((out / ERROR_FILE).read_text())["type"] == error.__name__
        assert "Traceback" not in proc.stdout + proc.stderr and not (out / RESULT_FILE).exists()
    assert ToolUnavailableError.exit_code == EXIT_TOOL_UNAVAILABLE != PlanError.exit_code


def test_a_step_process_called_wrongly_says_how_to_call_it():
    proc = subprocess.run([sys.executable, "-m", STEP_MODULE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_CONFIG
    assert proc.stderr.strip() == f"usage: python -m {STEP_MODULE} SPEC.json"


def test_the_local_backend_reads_the_step_process_codes_back(tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3")
    backend = LocalBackend(env=no_edgetpu_compiler(tmp_path))
    with pytest.raises(ToolUnavailableError, match="Edge TPU compile did not run"):
        backend.run_step(StepRequest("edgetpu.compile", "edgetpu", {"model": model}, {}, tmp_path / "out"),
                         lambda line: None)
    with pytest.raises(BuildError) as caught:
        backend.run_step(StepRequest("probe.env", "tf", {}, {"convert": "yes please"}, tmp_path / "out2"),
                         lambda line: None)
    assert not isinstance(caught.value, ToolUnavailableError)
    assert caught.value.returncode == BuildError.exit_code


def test_the_probe_step_reports_what_a_local_step_process_sees(tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * 10)
    out = tmp_path / "out"
    lines: list[str] = []
    LocalBackend().run_step(StepRequest("probe.env", "tf", {"data": data}, {}, out), lines.append)
    assert lines[0].startswith(f"+ {sys.executable} -m {STEP_MODULE} ")
    env = json.loads((out / "env.json").read_text())
    assert env["executable"] == sys.executable and env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["inputs"]["data"]["bytes"] == 10
    assert json.loads((out / RESULT_FILE).read_text())["files"] == ["env.json"]


def test_the_step_process_lives_in_the_steps_package_only():
    """``python -m edgefleet.steps.process`` is the one entry point; nothing names the old module."""
    assert importlib.util.find_spec("edgefleet.step") is None
    old = re.compile(r"edgefleet[./]step(\.py)?\b(?!s)")
    files = [p for folder in ("edgefleet", "builders", "bench", "docs", "tests") for p in (REPO / folder).rglob("*")
             if p.suffix in (".py", ".j2", ".yaml", ".md") and "__pycache__" not in p.parts]
    files.append(REPO / "README.md")
    stale = [f"{p.relative_to(REPO)}:{n}" for p in files for n, line in enumerate(p.read_text().splitlines(), 1)
             if old.search(line) and p.name != "test_execute.py"]
    assert stale == []
