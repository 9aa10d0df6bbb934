"""What a cell's timed runs say: latency statistics, a spread that outliers do not dominate, drift
between the start and the end of the loop, the verdict ``unstable`` with its reasons, and the raw
samples packed into the result line so the host can recompute any of it.
"""
import base64
import gzip
import io
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

SAMPLES_ENCODING = "f32-us-gzip-b64"  # little-endian float32 microseconds, gzip, base64
TRIM_FRACTION = 0.1  # trimmed mean: the middle 80%
# IQR / 1.349 estimates a normal distribution's std: robust_cv is comparable with std/mean (and with
# cv_threshold, which predates it), while a few preempted runs cannot inflate it.
IQR_PER_STD = 1.349
DRIFT_RATIO = 1.1  # last third's median against the first third's, either way
DRIFT_Z = 3.0  # and a rank test this sure that the thirds differ at all
DRIFT_MIN_RUNS = 15  # below this the thirds are too small to say anything
# A spread within this many times the timer's own noise is the timer's, not the model's.
NOISE_FLOOR_FACTOR = 3.0
REASON_CV = "cv"
REASON_DRIFT = "drift"
REASON_FREQUENCY = "frequency"


def _ms(latencies_s):
    # type: (Sequence[float]) -> np.ndarray
    return np.asarray(latencies_s, dtype=np.float64) * 1000.0


def _ordered_percentiles(ms, qs):
    # type: (np.ndarray, Sequence[float]) -> List[float]
    # Old numpy interpolates without guarding rounding; keep the percentiles ordered and in range.
    values = np.clip(np.maximum.accumulate(np.percentile(ms, qs)), ms.min(), ms.max())
    return [float(v) for v in values]


def trimmed_mean(ms, fraction=TRIM_FRACTION):
    # type: (np.ndarray, float) -> float
    """The mean of the middle (1 - 2 * fraction) of the values."""
    ordered = np.sort(ms)
    cut = int(math.floor(len(ordered) * fraction))
    return float(ordered[cut:len(ordered) - cut].mean())


def latency_stats(latencies_s):
    # type: (Sequence[float]) -> Dict[str, float]
    """Milliseconds: mean, std, min, max, p50, p90, p99, and the robust ones: trimmed_mean, p25, p75,
    iqr, mad (median absolute deviation)."""
    ms = _ms(latencies_s)
    p25, p50, p75, p90, p99 = _ordered_percentiles(ms, [25, 50, 75, 90, 99])
    return {"mean": float(ms.mean()), "std": float(ms.std()), "min": float(ms.min()), "max": float(ms.max()),
            "p50": p50, "p90": p90, "p99": p99, "trimmed_mean": trimmed_mean(ms), "p25": p25, "p75": p75,
            "iqr": p75 - p25, "mad": float(np.median(np.abs(ms - np.median(ms))))}


def robust_cv(stats):
    # type: (Mapping[str, float]) -> Optional[float]
    return stats["iqr"] / (IQR_PER_STD * stats["p50"]) if stats["p50"] > 0 else None


def tail_ratio(stats):
    # type: (Mapping[str, float]) -> Optional[float]
    return stats["p99"] / stats["p50"] if stats["p50"] > 0 else None


def _average_ranks(values):
    # type: (np.ndarray) -> np.ndarray
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]  # ties share their mean rank


def rank_z(first, last):
    # type: (np.ndarray, np.ndarray) -> float
    """Mann-Whitney U of ``last`` against ``first`` as a z score: > 0 when ``last`` is slower."""
    n1, n2 = len(first), len(last)
    ranks = _average_ranks(np.concatenate([first, last]))
    u = ranks[n1:].sum() - n2 * (n2 + 1) / 2.0
    sd = math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12.0)
    return float((u - n1 * n2 / 2.0) / sd) if sd > 0 else 0.0


def drift(latencies_s, ratio_threshold=DRIFT_RATIO, z_threshold=DRIFT_Z):
    # type: (Sequence[float], float, float) -> Dict[str, Any]
    """First third of the timed runs against the last third: a loop that slows down (throttling) or
    speeds up (warm-up not over) measured a moving target. ``drifting`` needs both a ratio of medians
    beyond ``ratio_threshold`` (either way) and a rank test that is sure of it."""
    ms = _ms(latencies_s)
    third = len(ms) // 3
    verdict = {"ratio": None, "z": None, "threshold": ratio_threshold, "drifting": None}  # type: Dict[str, Any]
    if len(ms) < DRIFT_MIN_RUNS:
        return verdict
    first, last = ms[:third], ms[-third:]
    base = float(np.median(first))
    if base <= 0:
        return verdict
    ratio = float(np.median(last)) / base
    z = rank_z(first, last)
    beyond = ratio > ratio_threshold or ratio < 1.0 / ratio_threshold
    verdict.update(ratio=ratio, z=z, drifting=bool(beyond and abs(z) >= z_threshold))
    return verdict


def floor_spread_ms(floor):
    # type: (Optional[Mapping[str, Any]]) -> Optional[float]
    """The timer's own spread: its no-op timings' IQR, or its tick when that is coarser."""
    if not floor:
        return None
    return max(floor.get("iqr_ms") or 0.0, floor.get("tick_ms") or 0.0)


def spread_beyond(stats, cv_threshold, floor):
    # type: (Mapping[str, float], float, Optional[Mapping[str, Any]]) -> bool
    """The cell's spread is beyond BOTH the relative threshold and what the timer's noise explains."""
    relative = robust_cv(stats)
    if relative is None:
        return True  # a zero median is no measurement at all
    floor_ms = floor_spread_ms(floor)
    explained = floor_ms is not None and stats["iqr"] <= NOISE_FLOOR_FACTOR * floor_ms
    return relative > cv_threshold and not explained


def unstable_reasons(stats, cv_threshold, floor, drifted, frequency_dipped):
    # type: (Mapping[str, float], float, Optional[Mapping[str, Any]], Optional[bool], Optional[bool]) -> List[str]
    reasons = []
    if spread_beyond(stats, cv_threshold, floor):
        reasons.append(REASON_CV)
    if drifted:
        reasons.append(REASON_DRIFT)
    if frequency_dipped:
        reasons.append(REASON_FREQUENCY)
    return reasons


def encode_samples(latencies_s):
    # type: (Sequence[float]) -> Dict[str, Any]
    """The timed runs as they were measured: float32 µs (4 bytes a run before gzip, ~7 significant digits)."""
    raw = (np.asarray(latencies_s, dtype=np.float64) * 1e6).astype("<f4").tobytes()
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0) as handle:  # mtime=0: same runs, same bytes
        handle.write(raw)
    return {"encoding": SAMPLES_ENCODING, "count": len(latencies_s),
            "data": base64.b64encode(packed.getvalue()).decode("ascii")}
