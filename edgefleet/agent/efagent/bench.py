"""The timed loop: first inference, adaptive warm-up, then timed invokes under MLPerf's stopping rule,
with the device's state sampled while it runs.

Only the runtime's invoke() is timed (``time.perf_counter``): setting inputs and reading outputs
are outside the timer. The loop stops once BOTH ``min_runs`` and ``min_duration_s`` are reached,
or at ``max_runs``. The warm-up runs at least ``warmup_runs`` and goes on until the latency stops
trending (``warmup_max_runs`` at most), so the timed loop does not measure the end of the warm-up.
"""
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .envprobe import board_state, board_throttled
from .sampler import DEFAULT_INTERVAL_S, Sampler, frequency_dipped
from .stats import drift, encode_samples, latency_stats, robust_cv, tail_ratio, unstable_reasons

WARMUP_WINDOW = 5  # runs per window: the warm-up is over when two windows' medians agree
WARMUP_TOLERANCE = 0.05  # ... within 5%
WARMUP_MAX_FACTOR = 10  # default cap: max(10 * warmup_runs, 200) runs
WARMUP_MAX_FLOOR = 200
WARMUP_MIN_BUDGET_S = 1.0  # a warm-up may last min_duration_s, and never less than this
NOISE_FLOOR_CALLS = 1000


class _NoOp(object):
    def invoke(self):
        # type: () -> None
        pass


def _set_inputs(session, feed):
    # type: (Any, Sequence[np.ndarray]) -> None
    for index, array in enumerate(feed):
        session.set_input(index, array)


def _timed_invoke(session):
    # type: (Any) -> float
    start = time.perf_counter()
    session.invoke()
    return time.perf_counter() - start


def noise_floor(calls=NOISE_FLOOR_CALLS):
    # type: (int) -> Dict[str, Any]
    """The timer's own noise on this device: an empty invoke() timed exactly as a model's is, in ms."""
    noop = _NoOp()
    ms = np.asarray([_timed_invoke(noop) for _ in range(calls)], dtype=np.float64) * 1000.0
    p25, p50, p75 = np.percentile(ms, [25, 50, 75])
    return {"calls": calls, "timer": "perf_counter", "p50_ms": float(p50), "iqr_ms": float(max(p75 - p25, 0.0)),
            "mad_ms": float(np.median(np.abs(ms - p50))), "tick_ms": _tick_ms(ms),
            "resolution_s": time.get_clock_info("perf_counter").resolution}


def _tick_ms(ms):
    # type: (np.ndarray) -> Optional[float]
    """The smallest step between the timings seen: a coarse clock source's tick, where the IQR may be 0."""
    values = np.unique(ms)
    steps = np.diff(values)
    steps = steps[steps > 0]
    if steps.size:
        return float(steps.min())
    return float(values[0]) if values[0] > 0 else None


def warmup_cap(bench):
    # type: (Mapping[str, Any]) -> int
    configured = bench.get("warmup_max_runs")
    cap = configured if configured is not None else max(WARMUP_MAX_FACTOR * bench["warmup_runs"], WARMUP_MAX_FLOOR)
    return max(cap, bench["warmup_runs"])


def _settled(latencies):
    # type: (List[float]) -> bool
    if len(latencies) < 2 * WARMUP_WINDOW:
        return False
    previous = float(np.median(latencies[-2 * WARMUP_WINDOW:-WARMUP_WINDOW]))
    last = float(np.median(latencies[-WARMUP_WINDOW:]))
    return previous > 0 and abs(last / previous - 1.0) <= WARMUP_TOLERANCE


def _warm_up(session, feeds, bench):
    # type: (Any, List[List[np.ndarray]], Mapping[str, Any]) -> Dict[str, Any]
    """At least ``warmup_runs``; then until two windows agree, the cap is reached or the budget spent."""
    minimum, cap = bench["warmup_runs"], warmup_cap(bench)
    budget_s = max(bench["min_duration_s"], WARMUP_MIN_BUDGET_S)
    latencies = []  # type: List[float]
    stopped_by = "warmup_max_runs"
    start = time.perf_counter()
    while len(latencies) < cap:
        _set_inputs(session, feeds[len(latencies) % len(feeds)])
        latencies.append(_timed_invoke(session))
        if len(latencies) < minimum:
            continue
        if _settled(latencies):
            stopped_by = "settled"
            break
        if time.perf_counter() - start >= budget_s:
            stopped_by = "duration"
            break
    return {"warmup_runs": len(latencies), "warmup_min_runs": minimum, "warmup_max_runs": cap,
            "warmup_stopped_by": stopped_by}


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


def _device_verdict(state, board_before, board_after, max_temp_c):
    # type: (Dict[str, Any], Dict[str, Any], Dict[str, Any], Optional[float]) -> Dict[str, Any]
    """``throttled`` and ``hot`` from what was sampled during the loop and what the board reported."""
    dipped = frequency_dipped(state)
    reasons = (["frequency"] if dipped else []) + board_throttled(board_before, board_after)
    temp = state.get("temp_c")
    if max_temp_c is None:
        hot = False  # no limit set: nothing is too hot
    else:
        hot = None if temp is None else temp["max"] > max_temp_c  # a limit, but nothing to read
    return {"throttled": bool(reasons), "throttle_reasons": reasons, "hot": hot, "frequency_dipped": dipped}


def _timed_with_state(session, feeds, bench, sysfs_root, interval_s):
    # type: (Any, List[List[np.ndarray]], Mapping[str, Any], str, float) -> Tuple[List[float], str, float, Dict[str, Any]]
    """The timed loop with the sampler around it, and the board's own tools asked before and after
    (they start processes: never while the timer runs)."""
    board_before = board_state(sysfs_root)
    with Sampler(sysfs_root, interval_s) as sampler:
        latencies, stopped_by, duration = _timed_loop(session, feeds, bench)
    state = sampler.summary()
    state["board"] = {"before": board_before, "after": board_state(sysfs_root)}
    return latencies, stopped_by, duration, state


def measure(session, feeds, bench, noise=None, sysfs_root="/", interval_s=DEFAULT_INTERVAL_S):
    # type: (Any, List[List[np.ndarray]], Mapping[str, Any], Optional[Mapping[str, Any]], str, float) -> Dict[str, Any]
    """First inference, warm-up, then the timed loop, on a loaded runtimes.Session.

    ``noise``: the run's noise_floor(), which a spread must exceed to make the cell unstable;
    ``sysfs_root`` and ``interval_s``: where and how often the sampler reads the device's state.
    """
    _set_inputs(session, feeds[0])
    first = _timed_invoke(session)
    outputs = session.get_outputs()
    warmup = _warm_up(session, feeds, bench)
    latencies, stopped_by, duration, state = _timed_with_state(session, feeds, bench, sysfs_root, interval_s)
    stats = latency_stats(latencies)
    verdict = _device_verdict(state, state["board"]["before"], state["board"]["after"], bench.get("max_temp_c"))
    drifted = drift(latencies)
    reasons = unstable_reasons(stats, bench["cv_threshold"], noise, drifted["drifting"], verdict.pop("frequency_dipped"))
    measured = {
        "first_inference_ms": first * 1000.0, "runs": len(latencies), "duration_s": duration,
        "stopped_by": stopped_by, "latency_ms": stats,
        "cv": stats["std"] / stats["mean"] if stats["mean"] > 0 else None,
        "robust_cv": robust_cv(stats), "p99_over_p50": tail_ratio(stats), "drift": drifted,
        "unstable": bool(reasons), "unstable_reasons": reasons, "device_state": state,
        "samples": encode_samples(latencies),
        "outputs_seen": [{"shape": list(o.shape), "dtype": str(o.dtype)} for o in outputs],
    }  # type: Dict[str, Any]
    measured.update(warmup)
    measured.update(verdict)
    return measured
