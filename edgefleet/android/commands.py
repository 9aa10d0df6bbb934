"""The commands run on an Android device, built as argv lists (adb's shell gets them ``shlex.join``-ed)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgefleet.profiles.model import Bench

def flag(name: str, value: Any) -> str:
    """``--name=value`` the way benchmark_model's flag parser reads it (booleans as true/false)."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"--{name}={value}"


def delegate_flags(payload: Mapping[str, Any] | None) -> list[str]:
    """The flags a delegate sets, from its payload in edgefleet/runtimes/benchmark_model.py (CPU: none)."""
    return [flag(name, value) for name, value in (payload or {}).items()]


def bench_flags(bench: Bench) -> list[str]:
    """The profile's bench settings as benchmark_model flags.

    benchmark_model times runs until BOTH --num_runs and --min_secs are reached (the agent's rule);
    --warmup_min_secs=0 makes the warm-up exactly warmup_runs runs, as in the agent. It has no max_runs:
    its own --max_secs (150 s by default) caps a cell instead.
    """
    return [flag("warmup_runs", bench.warmup_runs), flag("warmup_min_secs", 0),
            flag("num_runs", bench.min_runs), flag("min_secs", bench.min_duration_s)]


def benchmark_argv(binary: str, graph: str, threads: int, payload: Mapping[str, Any] | None, bench: Bench,
                   *, op_profiling: bool = False) -> list[str]:
    """One cell: one benchmark_model run of one model, thread count and delegate."""
    argv = [binary, flag("graph", graph), flag("num_threads", threads), *delegate_flags(payload), *bench_flags(bench)]
    if op_profiling:
        argv.append(flag("enable_op_profiling", True))
    return argv
