"""The agent's tf and tftrt plug-ins on a real frozen graph of the bundled detector, under this host's
TensorFlow, which (like any TensorFlow without NVIDIA's TensorRT) cannot build TensorRT engines.

Two paths: the real absence of TensorRT (the script's own reason ends the cells missing_runtime, and
the tf-native cells are measured), and the TensorRT STAND-IN (edgefleet/testing/trt_standin.py),
because TensorRT cannot exist here: the conversion runs once, is cached, and every line says stand-in.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from edgefleet.testing import trt_standin
from edgefleet.tftrt.device_script import SCRIPT_NAME, TrtSettings, render_device_script
from agent_fixtures import FAST_BENCH, run_agent

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["agent_fixtures"]
NORMALIZATION = {"mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0]}


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from edgefleet.tftrt.freeze import freeze_model, write_graph

    folder = tmp_path_factory.mktemp("tftrt-graph")
    graph_def, info = freeze_model(REPO / "models" / "shapes" / "shapes_detector.keras", batch_size=1)
    write_graph(graph_def, folder / "frozen.pb")
    (folder / "graph.json").write_text(info.model_dump_json())
    return folder, info


def _variant(tmp_path: Path, frozen: tuple[Path, Any], **settings: Any) -> Path:
    """A deployed TF-TRT variant: graph, graph.json and the rendered script in one folder."""
    source, info = frozen
    folder = tmp_path / "artifact"
    shutil.copytree(source, folder)
    script = render_device_script(TrtSettings(**settings), graph_file="frozen.pb", output_nodes=info.output_nodes)
    (folder / SCRIPT_NAME).write_text(script)
    return folder


def _run(tmp_path: Path, folder: Path, pyz: Path, runtimes: tuple[str, ...]) -> list[dict[str, Any]]:
    sha = hashlib.sha256((folder / "frozen.pb").read_bytes()).hexdigest()
    cells = [{"cell": f"{runtime}/t{threads}", "variant": runtime, "artifact": "frozen.pb", "artifact_sha256": sha,
              "runtime": runtime, "threads": threads, "delegate": None,
              "input": {"samples": None, "normalization": NORMALIZATION}}
             for runtime in runtimes for threads in (1, 2)]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({
        "schema": 1, "run_id": "tftrt", "device": "host", "emulated": True, "workdir": str(folder),
        "bench": FAST_BENCH, "cells": cells}))
    proc = run_agent(pyz, "run", str(run_dir), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_without_tensorrt_the_scripts_reason_ends_the_cells_and_tf_native_is_measured(
        tmp_path: Path, frozen: tuple[Path, Any], agent_pyz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEFLEET_TRT_STANDIN", raising=False)
    folder = _variant(tmp_path, frozen)
    lines = {line["cell"]: line for line in _run(tmp_path, folder, agent_pyz, ("tf", "tftrt"))}

    for threads in (1, 2):
        native = lines[f"tf/t{threads}"]
        assert native["status"] == "ok", native["reason"]
        assert native["runs"] >= FAST_BENCH["min_runs"] and native["latency_ms"]["mean"] > 0
        assert [o["shape"] for o in native["outputs"]] == [t.shape for t in frozen[1].outputs]
        trt = lines[f"tftrt/t{threads}"]
        assert trt["status"] == "missing_runtime"
        assert trt["reason"].startswith("tftrt_convert.py: ") and "TensorRT" in trt["reason"]
        assert trt["latency_ms"] is None
        assert trt["runtime_info"]["tftrt"]["ops_left_in_tf"] is None
    # One conversion attempt for the variant: the second cell got the cached verdict.
    assert lines["tftrt/t1"]["runtime_info"]["tftrt"]["cached"] is False
    assert lines["tftrt/t2"]["runtime_info"]["tftrt"]["cached"] is True
    assert len(list((folder / "converted").iterdir())) == 1


def test_the_standin_converts_once_and_every_line_says_standin(
        tmp_path: Path, frozen: tuple[Path, Any], agent_pyz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_TRT_STANDIN", trt_standin.__file__)
    folder = _variant(tmp_path, frozen, minimum_segment_size=5)
    lines = _run(tmp_path, folder, agent_pyz, ("tftrt",))

    facts = [line["runtime_info"]["tftrt"] for line in lines]
    assert [line["status"] for line in lines] == ["ok", "ok"], [line["reason"] for line in lines]
    assert [f["cached"] for f in facts] == [False, True]
    assert all(f["tensorrt_standin"] == trt_standin.NAME for f in facts)
    assert all(f["trt_engine_ops"] >= 1 and f["convert_seconds"] is not None for f in facts)
    # The stand-in leaves every node in TensorFlow, and the cell says so.
    assert facts[0]["nodes_left_in_tf"] == frozen[1].node_count
    assert all(line["first_inference_ms"] > 0 and line["runs"] >= FAST_BENCH["min_runs"] for line in lines)
    summary = json.loads(next((folder / "converted").iterdir()).joinpath("tftrt_summary.json").read_text())
    assert summary["ok"] and summary["tensorrt_standin"] == trt_standin.NAME and summary["exit_code"] == 0


def test_a_variant_where_tensorrt_does_not_engage_is_flagged_not_timed(
        tmp_path: Path, frozen: tuple[Path, Any], agent_pyz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_TRT_STANDIN", trt_standin.__file__)
    folder = _variant(tmp_path, frozen, minimum_segment_size=100000)  # no segment is that large
    lines = _run(tmp_path, folder, agent_pyz, ("tftrt",))

    for line in lines:
        assert line["status"] == "error" and "TensorRT did not engage" in line["reason"]
        assert line["latency_ms"] is None
        assert line["runtime_info"]["tftrt"]["engaged"] is False
        assert line["runtime_info"]["tftrt"]["trt_engine_ops"] == 0
