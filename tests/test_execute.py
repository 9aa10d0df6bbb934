"""The executor and the artifact store, driving real steps through the local backend."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from rich.text import Text

from edgefleet.backends.local import LocalBackend
from edgefleet.execute import execute_plan, step_description
from edgefleet.plan.model import Plan, SourceInput, Step, StepInput, step_key
from edgefleet.recipes.sources import sha256_file
from edgefleet.store import ArtifactStore


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
    assert "exit code: 1" in summary.outcomes[0].message
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
