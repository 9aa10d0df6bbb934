"""The edgefleet benchmark agent: runs ON THE DEVICE and measures each cell of a run.

Python 3.6+, stdlib + numpy + the runtime only (Jetson Nano ships 3.6). Shipped as one zipapp,
``edgefleet-agent.pyz`` (built by ``edgefleet.agent.bundle``): this package plus the archive's
``__main__`` (edgefleet/agent/launcher.py). Each module is the one place for its concept:

    cli          the command line: start, run, status, version
    detach       `start`: the run detached from the SSH session, its lock handed down
    errors       the failures and the exit code each one ends with
    runfile      run.json: read and checked whole before anything runs
    runner       one run: its locks, the cells in order, resuming
    cell         one cell: load, measure, evaluate, its result line
    bench        the timed loop, its stopping rule, latency statistics
    inputs       what is fed: samples normalized and quantized, or seeded random data
    evaluate     accuracy evaluation with the timed session; the eval spec's checks
    postprocess  decoding of the outputs (anchors, boxes, NMS) into COCO detections
    runtimes     the inference runtimes behind one plug-in interface
    envprobe     the device's environment and thermal fingerprint
    locks        the run folder's lock, the host's bench lock, waiting for deploys
    status       status.json and results.jsonl, as the host reads them
    fileio       writes that survive a kill whole, and the reads that go with them
    log          timestamps and log lines

CONTRACT
========

The host (deploy, collect) depends on everything below; changing it needs a new ``schema``.

Command line::

    python3 edgefleet-agent.pyz run RUN_DIR [--workdir DIR]    # in the foreground
    python3 edgefleet-agent.pyz start RUN_DIR [--workdir DIR] [--config -]
                                                               # detached; prints the pid
    python3 edgefleet-agent.pyz status RUN_DIR                 # prints status.json, as JSON
    python3 edgefleet-agent.pyz version                        # agent, Python, numpy, runtimes found

``start --config -`` reads run.json on stdin, validates it and writes it into RUN_DIR first.
Exit codes: 0 done (cells may still have failed: see their status), 1 the run
failed, 2 bad input (run.json, arguments, RUN_DIR busy), 130 interrupted.

Input contract: ``RUN_DIR/run.json`` (schema 1)
-----------------------------------------------
::

    {"schema": 1, "run_id": str, "device": str, "emulated": bool,
     "workdir": str (optional; relative artifact/sample paths resolve against it,
                     else against --workdir, else the current directory),
     "bench": {"warmup_runs": int >= 0, "min_runs": int >= 1, "min_duration_s": float >= 0,
               "max_runs": int >= min_runs, "cooldown_s": float >= 0, "cv_threshold": float > 0},
     "cells": [{"cell": str (unique key), "variant": str,
                "artifact": str (relative to the workdir, or absolute),
                "artifact_sha256": str or null (checked before loading; a mismatch is an error),
                "companions": [str] (optional: files the artifact needs beside it, e.g. OpenVINO's .bin;
                                     counted in artifact_bytes, a missing one is an error),
                "runtime": "tflite" | "onnxruntime" | "openvino" | ...,
                "threads": int >= 1,
                "delegate": null | {"name": str, "library": str or null, "options": {}},
                "params": {} (optional, runtime-specific, e.g. {"precision": "f16"} for OpenVINO),
                "artifact_valid": bool (optional, default true: the build's fidelity verdict,
                                        passed through to the results),
                "artifact_invalid_reasons": [str] (optional),
                "input": {"samples": str or null (a .npy of raw images, (N, *input_shape[1:])),
                          "normalization": null | {"mean": float or [float], "std": float or [float]}}
                         (optional; null means random inputs),
                "eval": false | true | {eval spec} (optional: true evaluates with the run's spec)}],
     "eval": null | {"images": str (.npy, uint8 (N, H, W, 3) already at the model's input size),
                     "image_ids": [int], "image_sizes": [[width, height]] (original sizes),
                     "postprocess": {"kind": "ssd_anchors" | "yolov5" | "argmax", "params": {}},
                     "resize": "stretch" | "letterbox", "layout": "NHWC" | "NCHW",
                     "normalization": null | {"mean", "std"} (default: the cell's input normalization)}
             (optional; keys the agent does not read, e.g. the host's ground-truth digest, pass through)}

``bench`` may also hold ``exclusive_lock`` (a lock file shared by the devices of one physical
host: their runs take turns), ``host_deploy_locks`` (deploy lock folders a timed section waits
for) and ``quiet_wait_s`` (how long it waits for them, default 60). The host also writes keys the
agent ignores (``accuracy_gate``, ``eval.ground_truth``...): collect reads them back from the same
run.json.

Inputs: with ``samples`` every image is ``(x - mean) / std`` (when normalization is
given), then quantized with the input tensor's scale/zero-point for an int8/uint8
input. Without normalization, samples whose dtype already matches the input are
fed as they are (a uint8-input model takes the raw image). Samples serve
single-input models only and must match the input's shape; anything else is an
``error`` for that cell. Without samples, inputs are seeded random data within
the input dtype's range (floats in [-1, 1]).

Measurement per cell: load (``load_ms``), the first inference alone
(``first_inference_ms``), ``warmup_runs`` untimed runs, then timed runs until BOTH
``min_runs`` and ``min_duration_s`` are reached, capped by ``max_runs`` (MLPerf's
stopping rule). Latencies time the runtime's invoke() with ``time.perf_counter``;
setting inputs and reading outputs are outside the timer.

Output contract: ``RUN_DIR/results.jsonl``, one JSON object per line, appended and
fsynced as each cell finishes::

    {"schema": 1, "agent_version": str, "run_id", "device", "cell", "variant", "runtime",
     "threads", "delegate", "params", "artifact", "status": "ok" | "error" | "missing_runtime",
     "reason": str or null, "emulated": bool, "started", "finished" (ISO 8601 UTC),
     "artifact_sha256": str or null, "artifact_valid": bool, "artifact_invalid_reasons": [str],
     "load_ms", "first_inference_ms", "warmup_runs", "runs", "duration_s", "stopped_by",
     "latency_ms": {"mean", "std", "min", "max", "p50", "p90", "p99"}, "cv", "unstable",
     "rss_before_kb", "peak_rss_kb" (getrusage's per-process high-water mark, read after the cell),
     "artifact_bytes": int (the variant's size on the device: the artifact plus its ``companions``; absent
                       when it was not found),
     "eval" (cells that evaluate only): {"status": "ok" | "error", "reason", "file" (relative to
             RUN_DIR: eval/<cell>.json), "images", "predictions", "kind", "layout", "input_size",
             "resize", "latency_ms": {"mean", "p50", "min", "max"} (invoke alone, per image),
             "latency_with_postprocess_ms": {...} (invoke + outputs + dequantize + decode), "duration_s"},
     "delegate_coverage": {"delegate_nodes", "total_nodes", ...} or null,
     "runtime_info": {...}, "inputs": {"source": "samples" | "random", "details": [...]},
     "outputs": [...], "thermal": {"before": [...], "after": [...]}, "env": {...},
     "traceback": str (errors only)}

Measurement fields are null unless status is ``ok``: a cell that did not run never
reports a zero latency. ``RUN_DIR/status.json`` is replaced atomically::

    {"state": "running" | "done" | "failed" | "interrupted", "pid", "cells_done",
     "cells_total", "started", "updated", "current_cell", "error" (failed only)}

Evaluation (cells with ``eval``): after the latency loop, inside the same exclusive
section and with the same loaded session, every eval image is fed through the
artifact (normalized, then quantized with the input tensor's scale/zero point),
the outputs are dequantized and decoded here (postprocess), and the predictions
are written to ``RUN_DIR/eval/<cell>.json`` (see evaluate). A failed evaluation
leaves the cell ``ok`` with ``eval.status: error``.

Running ``run`` again on the same RUN_DIR resumes: cells that already have an
``ok`` line are skipped; the others run again and their new line supersedes the
old one. ``status`` reports ``interrupted`` for a run whose agent died (SIGKILL,
power loss) while status.json still says running.
"""

SCHEMA = 1  # of run.json and of each results.jsonl line
AGENT_VERSION = "1"
