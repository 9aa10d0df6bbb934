"""P4: the agent's median latency against a bare `interpreter.invoke()` loop, on a model of >= 1 ms.

The model is the yolov5s-shaped ONNX (edgefleet.testing.yolo_onnx) built to TFLite fp32 by `build()`
(onnx2tf), in a throwaway workspace. Both sides run in a fresh process of the same Python, with the same
interpreter module, thread count and random input: the agent as `python edgefleet-agent.pyz run RUN_DIR`
(one cell, warm-up then a fixed number of timed runs), the baseline as a loop that times only
`interpreter.invoke()` with `time.perf_counter`. They alternate, 15 processes each by default; each
agent process is compared with the bare process run next to it (order alternating). Target: the median of those
pairwise ratios within 3 % of 1.

    .venv/bin/python bench/p4_agent_overhead.py [--runs 15] [--iterations 200] [--image-size 320] [--threads 1]
        [--json out.json]

Takes ~3 min (one onnx2tf conversion, then the timing).
"""
from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

from _common import PYTHON, Report, Series, arguments, check_runs, console, interleaved, quiet_env, \
    throwaway_workspace

TOLERANCE = 0.03
TARGET = "p4dev"

BARE_LOOP = """\
import json, sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
path, threads, warmup, iterations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
interpreter = Interpreter(model_path=path, num_threads=threads)
interpreter.allocate_tensors()
rng = np.random.RandomState(0)
for detail in interpreter.get_input_details():
    interpreter.set_tensor(detail["index"], rng.uniform(-1, 1, detail["shape"]).astype(detail["dtype"]))
interpreter.invoke()
for _ in range(warmup):
    interpreter.invoke()
latencies = []
for _ in range(iterations):
    start = time.perf_counter()
    interpreter.invoke()
    latencies.append(time.perf_counter() - start)
print(json.dumps({"p50_ms": float(np.percentile(np.array(latencies) * 1000.0, 50))}))
"""
PROFILE = """\
device: {board: this host, arch: x86_64, os: linux, python: "3.11"}
runtime: {name: ai-edge-litert, provided_by: device}
formats: {tflite: {quantizations: [fp32]}}
workdir: /var/tmp/edgefleet-p4
"""


def build_model(root: Path, image_size: int) -> Path:
    """The yolov5s-shaped detector (no real weights here) converted by onnx2tf through the pipeline."""
    from edgefleet.api.build import BuildOptions, build
    from edgefleet.store import ArtifactStore
    from edgefleet.testing.yolo_onnx import make_yolov5s_like_onnx

    recipe = root / "models" / "yolov5s" / "recipe.yaml"
    make_yolov5s_like_onnx(recipe.parent / "yolov5s-like.onnx", image_size=image_size)
    text = recipe.read_text()
    url = next(line for line in text.splitlines() if line.strip().startswith("url:"))
    text = text.replace(url, "  path: yolov5s-like.onnx")
    recipe.write_text(text.replace("shape: [1, 3, 640, 640]", f"shape: [1, 3, {image_size}, {image_size}]"))
    (root / "targets" / f"{TARGET}.yaml").write_text(PROFILE)
    summary = build(BuildOptions(target=TARGET, model="yolov5s", workspace=root), quiet_env(root))
    outcome = next(o for o in summary.outcomes if o.step.id == "tflite/fp32")
    if outcome.status not in ("built", "cached"):
        raise SystemExit(f"tflite/fp32 was not built: {outcome.message}")
    return ArtifactStore(root / ".edgefleet" / "artifacts").primary_file(outcome.step.key)


def run_json(run_id: str, model: Path, threads: int, warmup: int, iterations: int) -> dict:
    return {"schema": 1, "run_id": run_id, "device": "host", "emulated": False,
            "bench": {"warmup_runs": warmup, "min_runs": iterations, "min_duration_s": 0.0,
                      "max_runs": iterations, "cooldown_s": 0.0, "cv_threshold": 0.15},
            "cells": [{"cell": "p4", "variant": "tflite-fp32", "artifact": str(model), "artifact_sha256": None,
                       "runtime": "tflite", "threads": threads, "delegate": None, "input": None}]}


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], runs=15)
    parser.add_argument("--iterations", type=int, default=200, help="timed invokes per process")
    parser.add_argument("--image-size", type=int, default=320, help="the model's input side (multiple of 32)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    runs = check_runs(args.runs)
    from edgefleet.agent.bundle import build_agent_bundle

    report = Report("P4", "agent median latency vs a bare invoke() loop")
    with throwaway_workspace("p4", models=["yolov5s"]) as root:
        console.print("building the yolov5s-shaped model to TFLite fp32 (onnx2tf), untimed")
        model = build_model(root, args.image_size)
        agent = build_agent_bundle(root / "agent").path
        counter = iter(range(10_000))
        agent_records: list[dict] = []

        def agent_p50() -> float:
            run_dir = root / "runs" / f"run-{next(counter)}"
            run_dir.mkdir(parents=True)
            (run_dir / "run.json").write_text(json.dumps(run_json(run_dir.name, model, args.threads, args.warmup,
                                                                  args.iterations)))
            subprocess.run([PYTHON, str(agent), "run", str(run_dir)], check=True, capture_output=True,
                           timeout=600)
            record = json.loads((run_dir / "results.jsonl").read_text().splitlines()[-1])
            if record["status"] != "ok":
                raise SystemExit(f"the agent's cell failed: {record['reason']}")
            agent_records.append(record)
            return float(record["latency_ms"]["p50"])

        def bare_p50() -> float:
            out = subprocess.run([PYTHON, "-c", BARE_LOOP, str(model), str(args.threads), str(args.warmup),
                                  str(args.iterations)], check=True, capture_output=True, text=True, timeout=600)
            return float(json.loads(out.stdout.strip().splitlines()[-1])["p50_ms"])

        samples = interleaved({"bare": bare_p50, "agent": agent_p50}, runs=runs, alternate=True)
        bare = report.add(Series("bare invoke() loop, p50 per process", samples["bare"], "ms"))
        agent_series = report.add(Series("agent `run`, p50 per process", samples["agent"], "ms"))
        # Each agent process is compared with the bare process next to it: load on this shared
        # host drifts over seconds, and a pair sees the same load. The median pair is the verdict.
        paired = report.add(Series("agent ÷ bare, pairwise", tuple(
            a / b for a, b in zip(samples["agent"], samples["bare"], strict=True)), "ratio"))
        report.ratios["agent ÷ bare (medians)"] = agent_series.median / bare.median
        report.ratios["agent ÷ bare (median of pairs)"] = paired.median
        last = agent_records[-1]
        report.facts["model"] = f"{model.name}, {model.stat().st_size / 1e6:.1f} MB, " \
                                f"{last['runtime_info'].get('module')} {last['runtime_info'].get('version')}"
        report.facts["threads / timed runs per process"] = f"{args.threads} / {args.iterations}"
        report.facts["agent cv (median)"] = f"{statistics.median(r['cv'] for r in agent_records):.3f}"
        report.check(f"model median >= 1 ms ({bare.median:.2f} ms)", bare.median >= 1.0)
        report.check(f"agent within {TOLERANCE:.0%} of the bare loop (median of pairs)",
                     abs(paired.median - 1.0) <= TOLERANCE)
        report.print(baseline=bare)
        report.write(args.json)


if __name__ == "__main__":
    main()
