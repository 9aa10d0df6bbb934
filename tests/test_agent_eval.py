"""The agent's eval mode, run as a device runs it (the zipapp in a child process) on real runtimes.

YOLOv5: an ONNX graph whose output is a constructed YOLOv5 head (whatever the input), run by
onnxruntime: the boxes that come back prove the NCHW feed, the objectness gate, NMS and the
letterbox undo. Classification: the tiny softmax TFLite model of agent_fixtures, scored top-k.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from agent_fixtures import FAST_BENCH, Models, run_agent, tflite_cell, write_run

from edgefleet.evaluation.score_run import score_classification

pytest_plugins = ["agent_fixtures"]

QUICK = dict(FAST_BENCH, min_runs=2, min_duration_s=0.0, cooldown_s=0.0)
YOLO_SIZE = 64
# [cx, cy, w, h] in model-input pixels, objectness, class 0, class 1.
YOLO_HEAD = np.array([[[32, 32, 32, 16, 0.9, 0.1, 0.8],     # kept: class 1 (id 2), score 0.72
                       [34, 32, 32, 16, 0.8, 0.1, 0.7],     # same class, IoU ~0.88: suppressed by NMS
                       [10, 10, 8, 8, 0.1, 0.9, 0.1]]],     # objectness below the threshold
                     dtype=np.float32)


def _yolo_onnx(path: Path) -> Path:
    """output0 = YOLO_HEAD + 0 * mean(images): a real graph whose answer we know."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
         helper.make_node("Mul", ["m", "zero"], ["z"]),
         helper.make_node("Add", ["head", "z"], ["output0"])],
        "yolo-head", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, YOLO_SIZE, YOLO_SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(YOLO_HEAD.shape))],
        initializer=[numpy_helper.from_array(YOLO_HEAD, "head"),
                     numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _lines(run_dir: Path) -> dict[str, dict]:
    return {line["cell"]: line for line in map(json.loads, (run_dir / "results.jsonl").read_text().splitlines())}


def test_yolov5_eval_letterboxed_nchw_on_onnxruntime(tmp_path: Path, agent_pyz: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    _yolo_onnx(work / "yolo.onnx")
    # One 128x64 image, letterboxed by the host into 64x64: scale 0.5, 16 px of padding top and bottom.
    np.save(work / "eval.npy", np.full((1, YOLO_SIZE, YOLO_SIZE, 3), 114, np.uint8))
    spec = {"images": "eval.npy", "image_ids": [42], "image_sizes": [[128, 64]],
            "postprocess": {"kind": "yolov5", "params": {"score_threshold": 0.25, "iou_threshold": 0.45,
                                                         "max_detections": 300, "num_classes": 2}},
            "resize": "letterbox", "layout": "NCHW", "normalization": {"mean": [0.0], "std": [255.0]}}
    cell = {"cell": "yolo/cpu/t1", "variant": "onnx", "artifact": "yolo.onnx", "artifact_sha256": None,
            "runtime": "onnxruntime", "threads": 1, "delegate": None, "input": None, "eval": True}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = {"schema": 1, "run_id": "run-yolo", "device": "emu", "emulated": True, "workdir": str(work),
           "bench": QUICK, "cells": [cell], "eval": spec}
    (run_dir / "run.json").write_text(json.dumps(run))

    proc = run_agent(agent_pyz, "run", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    line = _lines(run_dir)["yolo/cpu/t1"]
    assert line["status"] == "ok", line["reason"]
    evaluation = line["eval"]
    assert evaluation["status"] == "ok", evaluation
    assert evaluation["layout"] == "NCHW" and evaluation["images"] == 1 and evaluation["predictions"] == 1
    for key in ("latency_ms", "latency_with_postprocess_ms"):
        assert evaluation[key]["p50"] > 0
    assert evaluation["latency_with_postprocess_ms"]["mean"] >= evaluation["latency_ms"]["mean"]

    (detection,) = json.loads((run_dir / evaluation["file"]).read_text())
    assert detection["image_id"] == 42 and detection["category_id"] == 2
    assert detection["score"] == pytest.approx(0.72, abs=1e-5)
    # Model pixels x 16..48, y 24..40 -> original: minus the padding, divided by the 0.5 scale.
    assert detection["bbox"] == pytest.approx([32.0, 16.0, 64.0, 32.0], abs=1e-3)


def test_argmax_eval_writes_top_k_that_scores(tmp_path: Path, agent_models: Models, agent_pyz: Path) -> None:
    images = np.load(agent_models.samples)[:4]
    eval_npy = agent_models.root / "eval-cls.npy"
    np.save(eval_npy, images)
    spec = {"images": eval_npy.name, "image_ids": [1, 2, 3, 4], "image_sizes": [[24, 24]] * 4,
            "postprocess": {"kind": "argmax", "params": {"top_k": 3}}, "resize": "stretch", "layout": "NHWC"}
    cells = [tflite_cell(agent_models, "fp32", 1, eval=True), tflite_cell(agent_models, "fp32", 2),
             tflite_cell(agent_models, "int8", 1, eval=True)]
    run_dir = write_run(tmp_path / "run", agent_models, cells, run_id="run-cls", bench=QUICK)
    run = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps(dict(run, eval=spec)))

    proc = run_agent(agent_pyz, "run", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    lines = _lines(run_dir)
    assert "eval" not in lines["fp32-t2"]  # evaluated once per artifact, not per thread count
    files = {}
    for key in ("fp32-t1", "int8-t1"):
        evaluation = lines[key]["eval"]
        assert evaluation["status"] == "ok", evaluation
        files[key] = json.loads((run_dir / evaluation["file"]).read_text())
        assert [p["image_id"] for p in files[key]] == [1, 2, 3, 4]
        for prediction in files[key]:
            scores = [entry["score"] for entry in prediction["top_k"]]
            assert len(scores) == 3 and scores == sorted(scores, reverse=True)
            assert {entry["category_id"] for entry in prediction["top_k"]} <= {1, 2, 3, 4}
    # The uint8-output int8 model was dequantized: its scores are probabilities like fp32's.
    assert all(0.0 <= e["score"] <= 1.0 for p in files["int8-t1"] for e in p["top_k"])

    # Labels = the fp32 model's own top-1: fp32 scores 1.0, and top-3 contains top-1.
    labels = {"images": [{"id": i, "file_name": f"{i}.png"} for i in (1, 2, 3, 4)],
              "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3, 4)],
              "annotations": [{"image_id": p["image_id"], "category_id": p["top_k"][0]["category_id"]}
                              for p in files["fp32-t1"]]}
    gt = tmp_path / "labels.json"
    gt.write_text(json.dumps(labels))
    scored = score_classification(gt, files["fp32-t1"])
    assert scored["top1"] == 1.0 and scored["top5"] == 1.0 and scored["num_images"] == 4


def test_eval_problems_leave_the_latency_and_bad_specs_are_refused(
        tmp_path: Path, agent_models: Models, agent_pyz: Path) -> None:
    np.save(agent_models.root / "eval-short.npy", np.load(agent_models.samples)[:2])
    spec = {"images": "eval-short.npy", "image_ids": [1, 2, 3], "image_sizes": [[24, 24]] * 3,
            "postprocess": {"kind": "argmax", "params": {}}}
    run_dir = write_run(tmp_path / "run", agent_models, [tflite_cell(agent_models, "fp32", 1, eval=spec)],
                        run_id="run-short", bench=QUICK)
    proc = run_agent(agent_pyz, "run", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    line = _lines(run_dir)["fp32-t1"]
    assert line["status"] == "ok" and line["latency_ms"]["p50"] > 0
    assert line["eval"]["status"] == "error" and "2 images for 3 image_ids" in line["eval"]["reason"]

    bad = write_run(tmp_path / "bad", agent_models,
                    [tflite_cell(agent_models, "fp32", 1, eval=dict(spec, postprocess={"kind": "nms"}))],
                    run_id="run-bad", bench=QUICK)
    proc = run_agent(agent_pyz, "run", str(bad))
    assert proc.returncode == 2
    assert "cells[0].eval" in proc.stderr and "postprocess.kind" in proc.stderr
    assert "Traceback" not in proc.stderr

    orphan = write_run(tmp_path / "orphan", agent_models, [tflite_cell(agent_models, "fp32", 1, eval=True)],
                       run_id="run-orphan", bench=QUICK)
    proc = run_agent(agent_pyz, "run", str(orphan))
    assert proc.returncode == 2 and "has no 'eval' spec" in proc.stderr
