"""The timed loop: first inference, warm-up, then timed invokes under MLPerf's stopping rule.

Only the runtime's invoke() is timed (``time.perf_counter``): setting inputs and reading outputs
are outside the timer. The loop stops once BOTH ``min_runs`` and ``min_duration_s`` are reached,
or at ``max_runs``.
"""
import time
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np


def latency_stats(latencies_s):
    # type: (Sequence[float]) -> Dict[str, float]
    """Milliseconds: mean, std, min, max, p50, p90, p99."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    # Old numpy interpolates without guarding rounding; keep the percentiles ordered and in range.
    p50, p90, p99 = np.clip(np.maximum.accumulate(np.percentile(ms, [50, 90, 99])), ms.min(), ms.max())
    return {"mean": float(ms.mean()), "std": float(ms.std()), "min": float(ms.min()), "max": float(ms.max()),
            "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def _set_inputs(session, feed):
    # type: (Any, Sequence[np.ndarray]) -> None
    for index, array in enumerate(feed):
        session.set_input(index, array)


def _timed_invoke(session):
    # type: (Any) -> float
    start = time.perf_counter()
    session.invoke()
    return time.perf_counter() - start


def _timed_loop(session, feeds, bench):
    # type: (Any, List[List[np.ndarray]], Mapping[str, Any]) -> Tuple[List[float], str, float]
    """The timed invokes' seconds, which bound stopped the loop, and the loop's own seconds."""
    latencies = []  # type: List[float]
    loop_start = time.perf_counter()
    while True:
        _set_inputs(session, feeds[len(latencies) % len(feeds)])
        latencies.append(_timed_invoke(session))
        session.get_outputs()  # as a real caller would; outside the timer
        elapsed = time.perf_counter() - loop_start
        if len(latencies) >= bench["max_runs"]:
            return latencies, "max_runs", elapsed
        if len(latencies) >= bench["min_runs"] and elapsed >= bench["min_duration_s"]:
            return latencies, "min_runs_and_duration", elapsed


def measure(session, feeds, bench):
    # type: (Any, List[List[np.ndarray]], Mapping[str, Any]) -> Dict[str, Any]
    """First inference, warm-up, then the timed loop, on a loaded runtimes.Session."""
    _set_inputs(session, feeds[0])
    first = _timed_invoke(session)
    outputs = session.get_outputs()
    for i in range(bench["warmup_runs"]):
        _set_inputs(session, feeds[i % len(feeds)])
        session.invoke()
    latencies, stopped_by, duration = _timed_loop(session, feeds, bench)
    stats = latency_stats(latencies)
    cv = stats["std"] / stats["mean"] if stats["mean"] > 0 else None
    return {
        "first_inference_ms": first * 1000.0, "warmup_runs": bench["warmup_runs"], "runs": len(latencies),
        "duration_s": duration, "stopped_by": stopped_by, "latency_ms": stats, "cv": cv,
        "unstable": cv is None or cv > bench["cv_threshold"],
        "outputs_seen": [{"shape": list(o.shape), "dtype": str(o.dtype)} for o in outputs],
    }
