"""The on-device agent, run for real: the built zipapp under a plain interpreter, on real TFLite models."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from agent_fixtures import (FAST_BENCH, AgentRun, Models, agent_status, main_cells, run_agent, tflite_cell,
                            wait_for, write_run)

from edgefleet.agent.efagent.inputs import to_input
from edgefleet.agent.efagent.locks import RunLock
from edgefleet.results.samples import decode_samples
from edgefleet.results.schema import ResultLine

pytest_plugins = ["agent_fixtures"]


def test_main_run_lines_validate_and_honour_the_stopping_rule(agent_run: AgentRun) -> None:
    assert agent_run.returncode == 0, agent_run.stderr
    lines = agent_run.lines
    assert sorted(line["cell"] for line in lines) == ["fp32-t1", "fp32-t2", "int8-t1", "int8-t2"]
    for raw in lines:
        line = ResultLine.model_validate(raw)
        assert line.status == "ok", line.reason
        assert line.runs >= FAST_BENCH["min_runs"]
        assert line.duration_s >= FAST_BENCH["min_duration_s"]
        # The timed invokes fit inside the loop's wall time they were measured in.
        assert line.latency_ms.mean * line.runs <= line.duration_s * 1000.0 * 1.001
        assert line.stopped_by == "min_runs_and_duration"
        assert line.first_inference_ms > 0 and line.load_ms > 0
        # The warm-up is adaptive: at least the configured runs, at most its cap, and it says why it stopped.
        assert line.warmup_min_runs == FAST_BENCH["warmup_runs"]
        assert FAST_BENCH["warmup_runs"] <= line.warmup_runs <= raw["warmup_max_runs"] == 200
        assert raw["warmup_stopped_by"] in ("settled", "duration", "warmup_max_runs")
        assert line.emulated is True and line.env["emulated"] is True
        assert line.cv == pytest.approx(line.latency_ms.std / line.latency_ms.mean)
        _assert_robust_verdict(line)
        # Every timed run is in the line, as measured.
        assert len(decode_samples(raw["samples"])) == line.runs
        assert np.median(decode_samples(raw["samples"])) == pytest.approx(line.latency_ms.p50, rel=1e-6)
        floor = line.env["noise_floor"]
        assert floor["calls"] == 1000 and 0 <= floor["p50_ms"] < line.latency_ms.p50 and floor["iqr_ms"] >= 0
        assert line.device_state["board"]["before"].keys() == {"vcgencmd", "nvpmodel", "devfreq",
                                                               "android_thermal_status"}
        assert line.peak_rss_kb >= line.rss_before_kb > 0
        assert line.env["runtime"]["module"] == "ai_edge_litert.interpreter"
        assert line.env["python"] and line.env["numpy"] and line.env["cpu_count"] >= 1
        assert isinstance(line.thermal.before, list) and isinstance(line.thermal.after, list)
        assert line.delegate_coverage is not None and line.delegate_coverage.total_nodes > 0
        assert line.delegate_coverage.model_extra["explicit_delegate"] is False
        assert line.inputs["source"] == "samples"
    status = json.loads((agent_run.run_dir / "status.json").read_text())
    assert status["state"] == "done" and status["cells_done"] == status["cells_total"] == 4
    # The pause between cells: none before the first, at most cooldown_s before the others.
    assert lines[0]["cooldown"] is None
    for raw in lines[1:]:
        assert raw["cooldown"]["mode"] in ("fixed", "thermal")
        assert raw["cooldown"]["waited_s"] <= FAST_BENCH["cooldown_s"] + 0.5
    assert {(raw["variant"], raw["threads"]) for raw in lines} == {(v, t) for v in ("fp32", "int8") for t in (1, 2)}


def _assert_robust_verdict(line: ResultLine) -> None:
    """unstable is exactly "some reason", and each reason is what the line's own numbers say."""
    stats = line.latency_ms.model_extra
    assert line.latency_ms.min <= stats["trimmed_mean"] <= line.latency_ms.max
    assert stats["iqr"] == pytest.approx(stats["p75"] - stats["p25"])
    assert line.robust_cv == pytest.approx(stats["iqr"] / (1.349 * line.latency_ms.p50))
    assert line.p99_over_p50 == pytest.approx(line.latency_ms.p99 / line.latency_ms.p50)
    assert line.unstable == bool(line.unstable_reasons)
    assert set(line.unstable_reasons) <= {"cv", "drift", "frequency"}
    assert ("cv" in line.unstable_reasons) <= (line.robust_cv > FAST_BENCH["cv_threshold"])
    assert ("drift" in line.unstable_reasons) == bool(line.drift.drifting)
    assert line.hot is False  # FAST_BENCH sets no temperature limit
    assert line.throttled == bool(line.throttle_reasons)


def test_quantized_uint8_input_gets_the_tensors_own_quantization(agent_run: AgentRun) -> None:
    int8 = [line for line in agent_run.lines if line["variant"] == "int8"]
    for line in int8:
        (detail,) = line["inputs"]["details"]
        assert detail["dtype"] == "uint8" and detail["scale"] > 0
        assert line["inputs"]["fed_dtype"] == "uint8"
    fp32 = [line for line in agent_run.lines if line["variant"] == "fp32"]
    assert all(line["inputs"]["fed_dtype"] == "float32" for line in fp32)


def test_normalize_then_quantize_matches_the_formula() -> None:
    raw = np.array([[0, 100, 255]], dtype=np.uint8)
    norm = {"mean": 127.5, "std": 127.5}
    # (x - 127.5) / 127.5 = [-1, -0.2157, 1]; at scale 1/128, zero point 0: [-128, -27.6 -> -28, 128 -> 127].
    int8 = to_input(raw, {"dtype": "int8", "scale": 1 / 128, "zero_point": 0}, norm)
    assert int8.dtype == np.int8 and int8.tolist() == [[-128, -28, 127]]
    # uint8 with zero point 128: the same values shifted, clipped to [0, 255].
    uint8 = to_input(raw, {"dtype": "uint8", "scale": 1 / 128, "zero_point": 128}, norm)
    assert uint8.tolist() == [[0, 100, 255]]
    floats = to_input(raw, {"dtype": "float32", "scale": 0.0, "zero_point": 0}, norm)
    assert floats == pytest.approx(np.array([[-1.0, -27.5 / 127.5, 1.0]]))
    # No normalization and matching dtypes: a uint8-input model takes the raw image.
    same = to_input(raw, {"dtype": "uint8", "scale": 1 / 255, "zero_point": 0}, None)
    assert same.tolist() == raw.tolist()


def test_runtime_missing_and_broken_cells_are_reported_never_as_zero(
        tmp_path: Path, agent_models: Models, agent_pyz: Path) -> None:
    good = tflite_cell(agent_models, "fp32", 1)
    small = agent_models.root / "samples-20px.npy"
    np.save(small, np.zeros((2, 20, 20, 3), np.uint8))
    onnx = dict(good, artifact=agent_models.onnx.name, artifact_sha256=None, runtime="onnxruntime")
    # No Edge TPU and no TensorRT on this machine: both are real "missing runtime" situations.
    cells = [
        dict(good, cell="tensorrt", runtime="tensorrt"),
        dict(good, cell="edgetpu", delegate={"name": "edgetpu", "library": "libedgetpu.so.1", "options": {}}),
        dict(onnx, cell="bad-shape", input={"samples": small.name, "normalization": None}),
        # NHWC images for the NCHW input a converter made (tf2onnx's inputs_as_nchw): laid out, not refused.
        dict(onnx, cell="nchw", input={"samples": agent_models.samples.name, "normalization": None}),
        dict(good, cell="bad-sha", artifact_sha256="0" * 64),
        dict(good, cell="no-file", artifact="missing.tflite", artifact_sha256=None),
        good,
    ]
    run_dir = write_run(tmp_path / "run", agent_models, cells, run_id="run-broken",
                        bench=dict(FAST_BENCH, min_duration_s=0.05, cooldown_s=0.0))
    proc = run_agent(agent_pyz, "run", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    lines = {line["cell"]: line for line in map(json.loads, (run_dir / "results.jsonl").read_text().splitlines())}
    expected = {"tensorrt": "missing_runtime", "edgetpu": "missing_runtime", "bad-shape": "error", "nchw": "ok",
                "bad-sha": "error", "no-file": "error", "fp32-t1": "ok"}
    assert {cell: line["status"] for cell, line in lines.items()} == expected
    for cell, line in lines.items():
        ResultLine.model_validate(line)
        if line["status"] != "ok":
            assert line["reason"]
            assert line["latency_ms"] is None and line["runs"] is None and line["first_inference_ms"] is None
            assert line["samples"] is None and line["unstable_reasons"] is None and line["throttled"] is None
    assert "tensorrt" in lines["tensorrt"]["reason"]
    assert "libedgetpu.so.1" in lines["edgetpu"]["reason"]
    assert "do not match" in lines["bad-shape"]["reason"]
    assert lines["bad-sha"]["artifact_sha256_actual"] == agent_models.sha256(agent_models.fp32)


def test_every_runtime_plugin_runs_through_the_same_loop(
        tmp_path: Path, agent_models: Models, agent_pyz: Path) -> None:
    base = {"artifact_sha256": None, "threads": 1, "delegate": None, "input": None}
    cells = [
        dict(base, cell="ort", variant="onnx", artifact=agent_models.onnx.name, runtime="onnxruntime", threads=2),
        # OpenVINO reads .tflite directly; the precision hint is a request, the line records what was used.
        dict(base, cell="ov", variant="fp32", artifact=agent_models.fp32.name, runtime="openvino",
             params={"precision": "f32"}),
    ]
    run_dir = write_run(tmp_path / "run", agent_models, cells, run_id="run-plugins",
                        bench=dict(FAST_BENCH, min_duration_s=0.05, cooldown_s=0.0))
    proc = run_agent(agent_pyz, "run", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    lines = {line["cell"]: line for line in map(json.loads, (run_dir / "results.jsonl").read_text().splitlines())}
    assert all(line["status"] == "ok" for line in lines.values()), {c: l["reason"] for c, l in lines.items()}
    assert lines["ort"]["inputs"]["source"] == "random"
    assert lines["ort"]["outputs"] == [{"shape": [1, 8, 22, 22], "dtype": "float32"}]
    assert lines["ort"]["delegate_coverage"] is None  # unknown for onnxruntime, not zero
    assert lines["ov"]["runtime_info"]["precision_requested"] == "f32"
    assert "32" in lines["ov"]["runtime_info"]["precision_used"]
    assert lines["ov"]["runtime_info"]["threads_used"] == 1


def _lines_per_cell(run_dir: Path) -> Counter[str]:
    text = (run_dir / "results.jsonl").read_text() if (run_dir / "results.jsonl").exists() else ""
    return Counter(json.loads(line)["cell"] for line in text.splitlines())


@pytest.mark.slow
def test_killed_detached_agent_reports_interrupted_and_a_rerun_resumes(
        tmp_path: Path, agent_models: Models, agent_pyz: Path) -> None:
    cells = main_cells(agent_models)
    run_dir = write_run(tmp_path / "run", agent_models, cells, run_id="run-kill",
                        bench=dict(FAST_BENCH, min_duration_s=0.7, cooldown_s=0.0))
    started = run_agent(agent_pyz, "start", str(run_dir))
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.strip())
    assert pid != os.getpid()

    status = wait_for(lambda: (s := agent_status(agent_pyz, run_dir)).get("cells_done", 0) >= 1 and s, 60)
    assert status["state"] == "running" and status["pid"] == pid
    os.kill(pid, signal.SIGKILL)

    status = wait_for(lambda: (s := agent_status(agent_pyz, run_dir))["state"] != "running" and s, 10)
    assert status["state"] == "interrupted" and str(pid) in status["reason"]
    finished = _lines_per_cell(run_dir)
    assert 1 <= len(finished) < len(cells)
    assert set(finished.values()) == {1}

    log_before = (run_dir / "agent.log").read_text()
    rerun = run_agent(agent_pyz, "run", str(run_dir))
    assert rerun.returncode == 0, rerun.stderr
    after = _lines_per_cell(run_dir)
    assert after == Counter({cell["cell"]: 1 for cell in cells})
    for cell in (c["cell"] for c in cells):
        skipped = f"skip cell {cell}: already ok" in rerun.stderr
        assert skipped == (cell in finished)
        assert (f"cell {cell}: ok" in rerun.stderr) == (cell not in finished)
    assert f"pid {pid}" in log_before  # the detached agent logged into RUN_DIR/agent.log
    assert agent_status(agent_pyz, run_dir)["state"] == "done"


def test_bad_run_json_is_one_line_not_a_traceback(tmp_path: Path, agent_models: Models, agent_pyz: Path) -> None:
    run_dir = write_run(tmp_path / "run", agent_models, [tflite_cell(agent_models, "fp32", 0)], run_id="bad")
    for command in ("run", "start"):
        proc = run_agent(agent_pyz, command, str(run_dir))
        assert proc.returncode == 2
        assert "threads" in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert agent_status(agent_pyz, tmp_path / "nowhere")["state"] == "not_started"


def test_second_agent_on_the_same_run_dir_is_refused(tmp_path: Path, agent_models: Models, agent_pyz: Path) -> None:
    run_dir = write_run(tmp_path / "run", agent_models, main_cells(agent_models)[:2], run_id="run-lock",
                        bench=dict(FAST_BENCH, min_duration_s=5.0, max_runs=10 ** 8, cooldown_s=0.0))
    pid = int(run_agent(agent_pyz, "start", str(run_dir)).stdout)
    try:
        wait_for(lambda: agent_status(agent_pyz, run_dir).get("current_cell"), 30)
        second = run_agent(agent_pyz, "run", str(run_dir))
        assert second.returncode == 2 and "already running" in second.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    # SIGTERM is a clean stop: the agent itself records it.
    status = wait_for(lambda: (s := agent_status(agent_pyz, run_dir))["state"] != "running" and s, 10)
    assert status["state"] == "interrupted"


def test_start_takes_run_json_on_stdin_validates_and_writes_it(tmp_path: Path, agent_models: Models,
                                                               agent_pyz: Path) -> None:
    """Deploy sends run.json with `start` (one round trip): a bad config writes nothing, a running
    agent's run.json is never replaced, a good one lands whole and the run completes."""
    template = write_run(tmp_path / "template", agent_models, [tflite_cell(agent_models, "fp32", 1)],
                         run_id="run-stdin")
    config = json.loads((template / "run.json").read_text())
    run_dir = tmp_path / "runs" / "run-stdin"

    def start(text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(agent_pyz), "start", str(run_dir), "--config", "-"],
                              input=text, capture_output=True, text=True, timeout=120)

    for bad, says in (("{not json", "not valid JSON"), (json.dumps({**config, "cells": "x"}), "cells")):
        refused = start(bad)
        assert refused.returncode == 2 and says in refused.stderr and "Traceback" not in refused.stderr
        assert not run_dir.exists()

    started = start(json.dumps(config))
    assert started.returncode == 0, started.stderr
    assert json.loads((run_dir / "run.json").read_text()) == config
    assert not list(run_dir.glob("run.json.tmp*"))
    status = wait_for(lambda: (s := agent_status(agent_pyz, run_dir))["state"] == "done" and s, 60)
    assert status["cells_done"] == 1

    blocker = RunLock(str(run_dir))
    assert blocker.acquire()
    try:
        again = start(json.dumps({**config, "device": "someone-else"}))
        assert again.returncode == 2 and "already running" in again.stderr
        assert json.loads((run_dir / "run.json").read_text())["device"] == config["device"]
    finally:
        blocker.release()


def test_run_refuses_a_handed_down_lock_that_is_not_its_runs(tmp_path: Path, agent_models: Models,
                                                             agent_pyz: Path) -> None:
    run_dir = write_run(tmp_path / "run", agent_models, [tflite_cell(agent_models, "fp32", 1)], run_id="run-fd")
    proc = subprocess.run([sys.executable, str(agent_pyz), "run", str(run_dir), "--lock-fd", "0"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "--lock-fd 0 is not a held lock" in proc.stderr
    assert not (run_dir / "results.jsonl").exists()
