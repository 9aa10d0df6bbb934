"""P1: `invoke build` of every target for the bundled model, everything cached, whole process from the shell.

Baselines, in the same run: `python -c pass` (interpreter start) and `invoke --list` (invoke and the
task collection). Target: each cached build <= 1.5 s, and no TensorFlow or converter imported by the
build process or by any step child process it starts (steps that cannot run here, e.g. the Edge TPU
compiler, are retried on every build because they leave no artifact).

    .venv/bin/python bench/p1_cached_build.py [--runs 5] [--json out.json]

Takes ~4 min of cold builds to fill the cache (untimed), then ~1 min of timing.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from _common import (INVOKE, PYTHON, Report, Series, arguments, check_runs, console, interleaved, run_command,
                     scratch_dir, throwaway_workspace)

TARGETS = ("rpi3", "jetson-nano", "android-arm64", "coral", "local")
LIMIT_S = 1.5
# What "a converter" means here: anything that would cost seconds to import.
HEAVY = ("tensorflow", "keras", "tf_keras", "tf2onnx", "onnx", "onnx2tf", "onnxruntime", "openvino",
         "ai_edge_litert", "torch", "jax")
# Loaded through PYTHONPATH into the build process and every step child it starts: at exit each
# process writes which heavy modules it imported.
PROBE = """\
import atexit, json, os, sys

def _edgefleet_bench_report():
    heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
    path = os.path.join({out!r}, "imports-%d.json" % os.getpid())
    with open(path, "w") as fh:
        json.dump({{"argv": sys.argv, "heavy": heavy}}, fh)

atexit.register(_edgefleet_bench_report)
"""


def cold_build(root: Path) -> None:
    for target in TARGETS:
        console.print(f"cold build (untimed, fills the cache): {target}")
        run_command([INVOKE, "build", "--target", target], cwd=root, env=cli_env())
    for target in TARGETS:
        # A second pass settles anything whose inputs changed during the first (e.g. an edited profile).
        run_command([INVOKE, "build", "--target", target], cwd=root, env=cli_env())


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", **extra}


def cached_build_statuses(root: Path, target: str) -> str:
    import subprocess

    out = subprocess.run([INVOKE, "build", "--target", target], cwd=root, env=cli_env(), capture_output=True,
                         text=True, timeout=300)
    line = next((ln for ln in reversed(out.stdout.splitlines()) if re.search(r"\d+ built, \d+ cached", ln)), "")
    return line.strip()


def imports_during_build(root: Path, target: str) -> list[dict]:
    with scratch_dir("p1-probe") as probe:
        (probe / "sitecustomize.py").write_text(PROBE.format(HEAVY=HEAVY, out=str(probe)))
        run_command([INVOKE, "build", "--target", target], cwd=root, env=cli_env(PYTHONPATH=str(probe)))
        return [json.loads(p.read_text()) for p in sorted(probe.glob("imports-*.json"))]


def main() -> None:
    args = arguments(__doc__.splitlines()[0]).parse_args()
    runs = check_runs(args.runs)
    report = Report("P1", "cached `invoke build` per target, whole process")
    with throwaway_workspace("p1") as root:
        cold_build(root)
        commands = {
            "python -c pass": lambda: run_command([PYTHON, "-c", "pass"], cwd=root),
            "invoke --list": lambda: run_command([INVOKE, "--list"], cwd=root, env=cli_env()),
        }
        for target in TARGETS:
            commands[f"invoke build --target {target}"] = \
                lambda t=target: run_command([INVOKE, "build", "--target", t], cwd=root, env=cli_env(),
                                             expect="\n0 built, ")
        samples = interleaved(commands, runs=runs)
        series = {name: report.add(Series(name, values)) for name, values in samples.items()}
        base = series["python -c pass"]
        listing = series["invoke --list"]
        for target in TARGETS:
            s = series[f"invoke build --target {target}"]
            report.ratios[f"{target} ÷ invoke --list"] = s.median / listing.median
            report.ratios[f"{target} - invoke --list (s)"] = s.median - listing.median
            report.check(f"{target}: median {s.median:.2f} s <= {LIMIT_S} s", s.median <= LIMIT_S)
            report.facts[f"{target} summary"] = cached_build_statuses(root, target)
            # Every timed run was checked to print "0 built" too.
            report.check(f"{target}: nothing built (all cached or not buildable here)",
                         report.facts[f"{target} summary"].startswith("0 built"))
            processes = imports_during_build(root, target)
            heavy = sorted({m for p in processes for m in p["heavy"]})
            report.facts[f"{target} processes / heavy imports"] = f"{len(processes)} / {heavy or 'none'}"
            report.check(f"{target}: no TensorFlow or converter imported in {len(processes)} process(es)",
                         not heavy and len(processes) >= 1)
        report.print(baseline=base)
        report.write(args.json)


if __name__ == "__main__":
    main()
