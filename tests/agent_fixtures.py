"""Session fixtures for the agent, ingest and report tests: a tiny real TFLite model
(fp32 and full-int8 with uint8 I/O), the built agent zipapp, and one real agent
run shared by the test files. Loaded with ``pytest_plugins``.

Everything is cached under the session's base temp directory, so the model is
built (TensorFlow is the slow part) and the main run measured once per session.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.bundle import build_agent_bundle

INPUT_SHAPE = (1, 24, 24, 3)
SAMPLE_COUNT = 6
FAST_BENCH = {"warmup_runs": 3, "min_runs": 5, "min_duration_s": 0.2, "max_runs": 100000,
              "cooldown_s": 0.05, "cv_threshold": 0.5}
MAIN_RUN_ID = "run-main"
DEVICE = "emu-rpi4"
# The fp32 model takes images normalised to [-1, 1]; the int8 one was calibrated on the same.
NORMALIZATION = {"mean": [127.5, 127.5, 127.5], "std": [127.5, 127.5, 127.5]}


@dataclass(frozen=True)
class Models:
    root: Path
    fp32: Path
    int8: Path
    onnx: Path
    samples: Path

    def sha256(self, path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class AgentRun:
    run_dir: Path
    run_id: str
    device: str
    returncode: int
    stderr: str

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.run_dir / "results.jsonl").read_text().splitlines()]

    @property
    def results_bytes(self) -> bytes:
        return (self.run_dir / "results.jsonl").read_bytes()


def _build_tflite(root: Path) -> tuple[Path, Path]:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input(INPUT_SHAPE[1:], batch_size=1, name="image")
    x = tf.keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    x = tf.keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(4, activation="softmax")(x)
    model = tf.keras.Model(inputs, outputs)

    fp32 = root / "tiny-fp32.tflite"
    fp32.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())

    rng = np.random.default_rng(0)

    def representative() -> Iterable[list[np.ndarray]]:
        for _ in range(16):
            yield [rng.uniform(-1.0, 1.0, INPUT_SHAPE).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    int8 = root / "tiny-int8-uint8io.tflite"
    int8.write_bytes(converter.convert())
    return fp32, int8


def _build_onnx(root: Path) -> Path:
    """A one-conv ONNX graph made with onnx.helper: enough to drive the onnxruntime plug-in."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(1).normal(size=(8, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 24, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 22, 22])],
        initializer=[numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = root / "tiny.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def agent_models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.getbasetemp() / "agent-models"
    models = Models(root, root / "tiny-fp32.tflite", root / "tiny-int8-uint8io.tflite", root / "tiny.onnx",
                    root / "samples.npy")
    if not models.samples.exists():
        root.mkdir(parents=True, exist_ok=True)
        _build_tflite(root)
        _build_onnx(root)
        images = np.random.default_rng(2).integers(0, 256, (SAMPLE_COUNT,) + INPUT_SHAPE[1:], dtype=np.uint8)
        np.save(models.samples, images)
    return models


@pytest.fixture(scope="session")
def agent_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.getbasetemp() / "agent-bundle" / "edgefleet-agent.pyz"
    if not target.exists():
        build_agent_bundle(target)
    return target


def tflite_cell(models: Models, variant: str, threads: int, **extra: Any) -> dict[str, Any]:
    path = models.fp32 if variant == "fp32" else models.int8
    cell = {"cell": f"{variant}-t{threads}", "variant": variant, "artifact": path.name,
            "artifact_sha256": models.sha256(path), "runtime": "tflite", "threads": threads, "delegate": None,
            "input": {"samples": models.samples.name, "normalization": NORMALIZATION}}
    cell.update(extra)
    return cell


def write_run(run_dir: Path, models: Models, cells: Sequence[Mapping[str, Any]], *, run_id: str,
              device: str = DEVICE, emulated: bool = True, bench: Mapping[str, Any] | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    run = {"schema": 1, "run_id": run_id, "device": device, "emulated": emulated,
           "workdir": str(models.root), "bench": dict(bench or FAST_BENCH), "cells": list(cells)}
    (run_dir / "run.json").write_text(json.dumps(run, indent=1))
    return run_dir


def run_agent(pyz: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The agent as a device runs it: the zipapp under a plain interpreter, in a child process."""
    return subprocess.run([sys.executable, str(pyz), *args], capture_output=True, text=True, timeout=timeout)


def agent_status(pyz: Path, run_dir: Path) -> dict[str, Any]:
    proc = run_agent(pyz, "status", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def main_cells(models: Models) -> list[dict[str, Any]]:
    return [tflite_cell(models, variant, threads) for variant in ("fp32", "int8") for threads in (1, 2)]


@pytest.fixture(scope="session")
def agent_run(tmp_path_factory: pytest.TempPathFactory, agent_models: Models, agent_pyz: Path) -> AgentRun:
    """The main run: 2 models x threads [1, 2], real samples, on an emulated device."""
    run_dir = tmp_path_factory.getbasetemp() / "agent-run-main"
    marker = run_dir / "agent.stderr"
    if not marker.exists():
        write_run(run_dir, agent_models, main_cells(agent_models), run_id=MAIN_RUN_ID)
        proc = run_agent(agent_pyz, "run", str(run_dir))
        marker.write_text(f"{proc.returncode}\n{proc.stderr}")
    returncode, _, stderr = marker.read_text().partition("\n")
    return AgentRun(run_dir, MAIN_RUN_ID, DEVICE, int(returncode), stderr)
