"""benchmark_model's log, parsed, and the agent's result line made from it.

benchmark_model (tensorflow/lite/tools/benchmark) prints one ``count=... first=... curr=... min=... max=...
avg=... std=...`` line (microseconds) after the warm-up and one after the timed runs, then ``Inference timings
in us: Init: ..., First inference: ..., Warmup (avg): ..., Inference (avg): ...`` and, where the OS reports
it, the memory footprint. Whether a delegate took the graph is one line of its own ("Explicitly applied GPU
delegate, and the model graph will be completely executed by the delegate."). Lines may carry an ``INFO:``
prefix (newer builds) or logcat's prefix (the benchmark app); both are stripped.

It prints no percentiles, so ``latency_ms`` carries mean, std, min and max, and p50/p90/p99 as null: never
numbers it did not measure.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA = 1  # the agent's result-line schema (edgefleet/agent/efagent/__init__.py, CONTRACT)
MEASURED_BY = "benchmark_model"

_LOGCAT = re.compile(r"^\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+ [VDIWEF] [\w.-]+\s*: ?")
_LEVEL = re.compile(r"^(INFO|WARN|WARNING|ERROR|VERBOSE): ")
_NUM = r"(-?[\d.]+(?:e[+-]?\d+)?|nan|-nan)"
_STAT = re.compile(r"count=(\d+)(?: first=(\d+))?(?: curr=(\d+))?(?:\(all same\))?"
                   r"(?: min=(\d+) max=(\d+) avg=" + _NUM + r" std=(\d+))?")
_TIMINGS = re.compile(r"Inference timings in us: Init: " + _NUM + r", First inference: " + _NUM
                      + r", Warmup \(avg\): " + _NUM + r", Inference \(avg\): " + _NUM)
_MEMORY = re.compile(r"Memory footprint delta from the start of the tool \(MB\): init=" + _NUM + r" overall=" + _NUM)
_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: " + _NUM)
_FULL = re.compile(r"Explicitly applied (\S+) delegate, and the model graph will be completely executed")
_PARTIAL = re.compile(r"Explicitly applied (\S+) delegate, and the model graph will be partially executed "
                      r"by the delegate w/ (\d+) delegate kernels")
_NONE = re.compile(r"Though (\S+) delegate is explicitly applied, the model graph will not be executed")
_FAILED = re.compile(r"Failed to apply (\S+) delegate")
_REPLACING = re.compile(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \((\w+)\) node")
_NODES = re.compile(r"Number of nodes executed: (\d+)")
_DELEGATE_NODE = re.compile(r"^(DELEGATE|TfLite\w*Delegate\w*)$")


@dataclass(frozen=True)
class Stat:
    """One of benchmark_model's ``count=...`` lines, in microseconds."""

    count: int
    first_us: int
    curr_us: int
    min_us: int
    max_us: int
    avg_us: float
    std_us: float


@dataclass(frozen=True)
class Delegation:
    """What the log says about the delegate: applied "complete", "partial", "none" or "failed"."""

    name: str
    applied: str
    kernels: int | None = None


@dataclass
class BenchmarkOutput:
    stats: list[Stat] = field(default_factory=list)   # the warm-up's, then the timed runs'
    init_us: float | None = None
    first_inference_us: float | None = None
    timings_line: bool = False                         # "Inference timings in us": the run finished
    memory_mb: dict[str, float] = field(default_factory=dict)
    delegation: Delegation | None = None
    replaced: tuple[int, int, str] | None = None       # (nodes, of total, delegate kernel) at ModifyGraph
    nodes_executed: int | None = None                  # op profiling
    node_types: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    last_line: str = ""

    @property
    def warmup(self) -> Stat | None:
        return self.stats[0] if len(self.stats) >= 2 else None

    @property
    def timed(self) -> Stat | None:
        return self.stats[1] if len(self.stats) >= 2 else None


def clean_line(line: str) -> str:
    return _LEVEL.sub("", _LOGCAT.sub("", line.rstrip())).strip()


def _number(text: str) -> float | None:
    value = float(text)
    return None if value != value else value  # nan: benchmark_model's average of no runs


def _stat(match: re.Match[str]) -> Stat:
    count, first, curr, low, high, avg, std = match.groups()
    curr_us = int(curr or 0)  # "count=0": no runs (--warmup_runs=0)
    if low is None:  # "count=N curr=X": every run took the same time (or there was one)
        return Stat(int(count), int(first or curr), curr_us, curr_us, curr_us, float(curr_us), 0.0)
    return Stat(int(count), int(first), curr_us, int(low), int(high), float(avg), float(std))


def _delegation(line: str) -> Delegation | None:
    for pattern, applied in ((_FULL, "complete"), (_PARTIAL, "partial"), (_NONE, "none"), (_FAILED, "failed")):
        found = pattern.search(line)
        if found:
            kernels = int(found.group(2)) if applied == "partial" else None
            return Delegation(found.group(1), applied, kernels)
    return None


def _node_type_row(line: str, out: BenchmarkOutput, in_summary: bool) -> None:
    # "Summary by node type" rows: [node type] [count] [avg ms] ...; the first summary is the timed runs'.
    parts = line.split()
    if in_summary and len(parts) >= 2 and parts[1].isdigit() and not line.startswith("["):
        out.node_types.setdefault(parts[0], int(parts[1]))


def parse_output(text: str) -> BenchmarkOutput:
    """Everything the tool said that a result line needs, from its whole stdout and stderr."""
    out = BenchmarkOutput()
    in_summary = False
    for raw in text.splitlines():
        line = clean_line(raw)
        if not line:
            continue
        out.last_line = line
        if "Summary by node type" in line:
            in_summary = not out.node_types  # only the first table (the timed runs come first)
            continue
        if line.startswith("===") or line.startswith("Timings (microseconds)"):
            in_summary = False
        _parse_line(line, raw, out, in_summary)
    return out


def _parse_line(line: str, raw: str, out: BenchmarkOutput, in_summary: bool) -> None:
    if (stat := _STAT.search(line)) and line.startswith("count="):
        out.stats.append(_stat(stat))
    elif timings := _TIMINGS.search(line):
        out.timings_line = True
        out.init_us, out.first_inference_us = _number(timings.group(1)), _number(timings.group(2))
    elif memory := _MEMORY.search(line):
        out.memory_mb.update(init=float(memory.group(1)), overall=float(memory.group(2)))
    elif peak := _PEAK.search(line):
        out.memory_mb["peak"] = float(peak.group(1))
    elif delegation := _delegation(line):
        out.delegation = delegation
    elif replaced := _REPLACING.search(line):
        out.replaced = (int(replaced.group(1)), int(replaced.group(2)), replaced.group(3))
    elif nodes := _NODES.search(line):
        if out.nodes_executed is None:
            out.nodes_executed = int(nodes.group(1))
    else:
        _node_type_row(line, out, in_summary)
    if re.match(r"^(ERROR: |E/)", raw.strip()) or " E tflite" in raw or line.startswith(
            ("Segmentation fault", "Aborted", "Benchmarking failed")):
        out.errors.append(line)


# -- the result line ---------------------------------------------------------------------------------------

def failure_reason(out: BenchmarkOutput, *, returncode: int | None, wants_delegate: bool) -> str | None:
    """Why this log cannot be a measurement, or None when it is one."""
    said = out.delegation
    if wants_delegate and said is not None and said.applied in ("none", "failed"):
        # Its timings would be the CPU's under the delegate's name: never report them.
        return (f"the {said.name} delegate was not applied ({'it failed' if said.applied == 'failed' else 'no node'}"
                f" ran on it): benchmark_model fell back to the CPU, so its timings are not this delegate's")
    if returncode not in (0, None):
        return f"benchmark_model exited with code {returncode}{_last_error(out)}"
    if not out.timings_line or out.timed is None:
        return (f"truncated output: benchmark_model stopped before its 'Inference timings' line; last line: "
                f"{out.last_line[:200]!r}{_last_error(out)}")
    if wants_delegate and said is None:
        return ("benchmark_model did not say whether the delegate took the graph (no 'Explicitly applied ... "
                "delegate' line): the timings could be the CPU's")
    return None


def _last_error(out: BenchmarkOutput) -> str:
    return f"; error: {out.errors[-1][:300]}" if out.errors else ""


def latency_ms(stat: Stat) -> dict[str, float | None]:
    """benchmark_model's statistics in milliseconds; it reports no percentiles, so they stay null."""
    return {"mean": stat.avg_us / 1000.0, "std": stat.std_us / 1000.0, "min": stat.min_us / 1000.0,
            "max": stat.max_us / 1000.0, "p50": None, "p90": None, "p99": None}


def delegate_coverage(out: BenchmarkOutput) -> dict[str, Any] | None:
    """How many nodes ran on the delegate and how many on the CPU, from what the log says (op profiling's
    node summary first, then the ModifyGraphWithDelegate line, then the delegate's own statement)."""
    coverage: dict[str, Any] = {}
    if out.nodes_executed is not None:
        delegated = sum(n for kind, n in out.node_types.items() if _DELEGATE_NODE.match(kind))
        coverage = {"delegate_nodes": delegated, "total_nodes": out.nodes_executed,
                    "cpu_nodes": out.nodes_executed - delegated, "source": "benchmark_model op profiling"}
    elif out.replaced is not None:
        coverage = {"delegate_nodes": out.replaced[0], "total_nodes": out.replaced[1],
                    "cpu_nodes": out.replaced[1] - out.replaced[0], "source": f"{out.replaced[2]} partitioning"}
    if out.delegation is not None:
        coverage.update(applied=out.delegation.applied, delegate_kernels=out.delegation.kernels)
    return coverage or None


def result_line(cell: Mapping[str, Any], out: BenchmarkOutput, *, run: Mapping[str, Any], returncode: int | None,
                started: str | None = None, finished: str | None = None,
                env: Mapping[str, Any] | None = None, thermal: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The agent's result line for one cell (status "ok", or "error" with the reason and no numbers)."""
    record = _record(cell, run, started, finished, env, thermal)
    reason = failure_reason(out, returncode=returncode, wants_delegate=bool(cell.get("delegate")))
    if reason is None and out.timed is not None and out.warmup is not None:
        record.update(_measurement(out.timed, out.warmup, out, run["bench"]))
    else:
        record.update(status="error", reason=reason or "benchmark_model printed no timed runs")
        record["log_tail"] = out.errors[-5:]
    record["delegate_coverage"] = delegate_coverage(out)
    return record


def _record(cell: Mapping[str, Any], run: Mapping[str, Any], started: str | None, finished: str | None,
            env: Mapping[str, Any] | None, thermal: Mapping[str, Any] | None) -> dict[str, Any]:
    delegate = cell.get("delegate")
    return {
        "schema": SCHEMA, "agent_version": None, "measured_by": MEASURED_BY, "run_id": run["run_id"],
        "device": run["device"], "cell": cell["cell"], "variant": cell["variant"], "runtime": cell["runtime"],
        "threads": cell["threads"],
        "delegate": {"name": cell["delegate_name"], "library": None, "options": dict(delegate)} if delegate else None,
        "params": {}, "artifact": cell["artifact"], "artifact_sha256": cell.get("artifact_sha256"),
        "artifact_valid": cell.get("artifact_valid", True), "artifact_invalid_reasons": [],
        "emulated": bool(run.get("emulated", False)), "status": "ok", "reason": None, "started": started,
        "finished": finished, "load_ms": None, "first_inference_ms": None, "warmup_runs": None, "runs": None,
        "duration_s": None, "stopped_by": None, "latency_ms": None, "cv": None, "unstable": None,
        "runtime_info": None, "inputs": {"source": "random", "details": None}, "outputs": None,
        "command": cell.get("command"), "thermal": dict(thermal or {"before": [], "after": []}),
        "env": dict(env or {}),
    }


def _measurement(timed: Stat, warmup: Stat, out: BenchmarkOutput, bench: Mapping[str, Any]) -> dict[str, Any]:
    latency = latency_ms(timed)
    cv = latency["std"] / latency["mean"] if latency["mean"] else None
    first = out.first_inference_us if out.first_inference_us else float(warmup.first_us or timed.first_us)
    return {
        "load_ms": (out.init_us or 0.0) / 1000.0, "first_inference_ms": first / 1000.0,
        "warmup_runs": warmup.count, "runs": timed.count,
        # The timed runs' own sum: benchmark_model prints no wall time for the loop.
        "duration_s": timed.avg_us * timed.count / 1e6,
        "stopped_by": "min_runs_and_duration" if timed.count >= bench["min_runs"] else "max_secs",
        "latency_ms": latency, "cv": cv, "unstable": cv is None or cv > bench["cv_threshold"],
        "runtime_info": {"warmup_avg_ms": warmup.avg_us / 1000.0,
                         "memory_footprint_mb": dict(out.memory_mb) or None},
    }
