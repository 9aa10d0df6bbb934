"""Regressions with evidence: a cell is "regressed" or "improved" against its baseline only when a
confidence interval of the change lies wholly beyond the threshold; a point estimate alone says nothing
about the noise of two runs. Pure functions: the report (tables.py) feeds them decoded samples.

The interval is a percentile bootstrap of the ratio of medians (this run's over the baseline's): each
side resampled independently, ``RESAMPLES`` times, from a generator seeded with ``SEED``, so the same
two runs always get the same verdict. It resamples stretches of consecutive timed runs (a block
bootstrap), not single runs: a device's load, clock and cache state last for many runs, so runs next to
each other are not independent, and resampling them one by one gives an interval far narrower than the
run-to-run truth (measured: 0.5x "significant" changes between two runs of one unchanged model). Changes are bucketed as the large published scorecards do
(1.1x, 1.2x, 1.5x, 2x, 5x, 10x slower or faster), plus "started working" and "stopped working".
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RESAMPLES = 2000
SEED = 14
CONFIDENCE = 0.95
# Fewer timed runs than this on either side: the interval of a median would be a guess, so none is made.
MIN_SAMPLES = 10
# Stretches of consecutive runs a cell's samples are cut into for the block bootstrap.
BLOCKS = 20
BUCKET_EDGES = (1.1, 1.2, 1.5, 2.0, 5.0, 10.0)

REGRESSED = "regressed"
IMPROVED = "improved"
NO_CHANGE = "no significant change"
STARTED_WORKING = "started working"
STOPPED_WORKING = "stopped working"
VERDICTS = (REGRESSED, IMPROVED, NO_CHANGE)
OK = "ok"

# What a run's setup is compared on: these change latencies without any change to the model.
BENCH_SETTINGS = ("warmup_runs", "warmup_max_runs", "min_runs", "min_duration_s", "max_runs", "cooldown_s",
                  "cv_threshold", "max_temp_c", "exclusive_lock")


@dataclass(frozen=True)
class Side:
    """One cell of one run as the comparison needs it; ``samples`` in ms, None where there are none."""

    status: str
    p50_ms: float | None = None
    samples: np.ndarray | None = None
    # Why the samples are missing when they are (an older agent, a corrupt field); None: not missing.
    no_samples: str | None = None


@dataclass(frozen=True)
class Change:
    verdict: str
    bucket: str | None = None
    ratio: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    # Why the verdict has no interval (None: it has one, or it needs none: started/stopped working).
    no_interval: str | None = None


def bootstrap_medians(samples: np.ndarray, rng: np.random.Generator, resamples: int = RESAMPLES,
                      blocks: int = BLOCKS) -> np.ndarray:
    """``resamples`` medians of block resamples of ``samples`` (in the order they ran).

    A resample is ``blocks`` stretches of consecutive runs drawn with replacement from the run's ``blocks``
    stretches: its median is the weighted median of all runs, each weighing as often as its stretch was
    drawn. Found by bisection on the cumulative counts, so a cell of 100,000 runs costs no more than
    2,000 x 17 small dot products, never 2,000 copies of the runs.
    """
    values = np.asarray(samples, dtype=np.float64)
    n = len(values)
    k = min(blocks, n)
    sizes = np.array([len(part) for part in np.array_split(np.arange(n), k)])
    order = np.argsort(values, kind="stable")
    owner = np.repeat(np.arange(k), sizes)[order]  # the stretch of each run, in sorted order
    below = np.zeros((n + 1, k), dtype=np.int64)  # below[i, j]: runs of stretch j among the i smallest
    below[1:] = np.cumsum(np.eye(k, dtype=np.int64)[owner], axis=0)
    picks = rng.integers(0, k, (resamples, k))
    weights = np.stack([(picks == j).sum(axis=1) for j in range(k)], axis=1)
    target = (weights @ sizes + 1) // 2  # rank of the (lower) median of each resample
    low, high = np.zeros(resamples, dtype=np.int64), np.full(resamples, n - 1)
    while np.any(low < high):
        mid = (low + high) // 2
        reached = (below[mid + 1] * weights).sum(axis=1) >= target
        high, low = np.where(reached, mid, high), np.where(reached, low, mid + 1)
    return values[order][low]


def median_ratio_interval(this: np.ndarray, base: np.ndarray, *, resamples: int = RESAMPLES, seed: int = SEED,
                          confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile bootstrap interval of median(this) / median(base)."""
    rng = np.random.default_rng(seed)
    ratios = bootstrap_medians(this, rng, resamples) / bootstrap_medians(base, rng, resamples)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    return float(low), float(high)


def bucket(ratio: float, verdict: str) -> str | None:
    """The scorecard bucket of a change: the largest edge the ratio reaches, slower or faster."""
    if verdict not in (REGRESSED, IMPROVED):
        return None
    factor = ratio if verdict == REGRESSED else 1.0 / ratio
    direction = "slower" if verdict == REGRESSED else "faster"
    reached = [edge for edge in BUCKET_EDGES if factor >= edge]
    # A threshold below 10% can call a smaller change significant: it gets a bucket of its own.
    return f"{reached[-1]:g}× {direction}" if reached else f"<{BUCKET_EDGES[0]:g}× {direction}"


def judge(low: float, high: float, threshold: float) -> str:
    """Regressed or improved only when the whole interval is beyond the threshold, either way."""
    if low > 1.0 + threshold:
        return REGRESSED
    # Symmetric on a log scale: 10% slower is ratio 1.1, 10% faster is ratio 1/1.1.
    if high < 1.0 / (1.0 + threshold):
        return IMPROVED
    return NO_CHANGE


def _usable(side: Side) -> str | None:
    """Why this side's samples cannot give an interval; None when they can."""
    if side.samples is None:
        return side.no_samples or "no samples stored (an older agent)"
    if len(side.samples) < MIN_SAMPLES:
        return f"{len(side.samples)} samples, fewer than {MIN_SAMPLES}"
    if not np.all(np.isfinite(side.samples)) or np.median(side.samples) <= 0:
        return "samples are not positive finite latencies"
    return None


def compare_samples(this: np.ndarray, base: np.ndarray, threshold: float) -> Change:
    ratio = float(np.median(this) / np.median(base))
    low, high = median_ratio_interval(this, base)
    verdict = judge(low, high, threshold)
    return Change(verdict, bucket(ratio, verdict), ratio, low, high)


def compare_p50(this_p50: float, base_p50: float, threshold: float, why: str) -> Change:
    """The fallback for results without samples: the bare p50 ratio against the threshold, said to be so."""
    ratio = this_p50 / base_p50
    verdict = judge(ratio, ratio, threshold)
    return Change(verdict, bucket(ratio, verdict), ratio, no_interval=why)


def compare(this: Side, base: Side, threshold: float) -> Change | None:
    """The change from ``base`` to ``this``; None when there is nothing to compare (failed in both)."""
    if this.status == OK and base.status != OK:
        return Change(IMPROVED, STARTED_WORKING)
    if this.status != OK and base.status == OK:
        # Stopped working is the worst regression there is: counted as one.
        return Change(REGRESSED, STOPPED_WORKING)
    if this.status != OK:
        return None
    why = next((f"{name}: {reason}" for name, reason in (("this run", _usable(this)), ("baseline", _usable(base)))
                if reason), None)
    if why is None:
        return compare_samples(this.samples, base.samples, threshold)  # type: ignore[arg-type]
    if not this.p50_ms or not base.p50_ms:
        return None
    return compare_p50(this.p50_ms, base.p50_ms, threshold, why)


def is_regression(change: Change | None) -> bool:
    return change is not None and change.verdict == REGRESSED


def setup_of(line: Mapping[str, Any], bench: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a cell's latency depends on besides its model: runtime version, CPU governor, emulation and the
    bench settings. From its result line; ``bench`` is its run.json's, where the host still has it. A field
    the line does not carry (an older agent) is left out, so it cannot differ."""
    env = line.get("env") or {}
    setup: dict[str, Any] = {}
    runtime = line.get("runtime_info") or env.get("runtime")
    if isinstance(runtime, Mapping):
        setup["runtime version"] = f"{runtime.get('module')} {runtime.get('version')}"
    if "cpu_governor" in env:
        governor = env["cpu_governor"]
        setup["CPU governor"] = ", ".join(governor) if isinstance(governor, list) else governor
    if "emulated" in env:
        setup["emulated"] = env["emulated"]
    if "emulation" in env:
        emulation = env["emulation"] or {}
        setup["emulator"] = emulation.get("emulator") or emulation.get("kind")
    # A measured line records the configured warm-up itself (its warmup_max_runs is the cap the agent derived,
    # not a setting); run.json has the rest.
    if line.get("warmup_min_runs") is not None:
        setup["bench warmup_runs"] = line["warmup_min_runs"]
    for key in BENCH_SETTINGS:
        if bench is not None and key in bench and f"bench {key}" not in setup:
            setup[f"bench {key}"] = bench[key]
    return setup


def setup_differences(this: Mapping[str, Any], base: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(what, this run's value, the baseline's) for every setting both record and that differs."""
    return [(key, this[key], base[key]) for key in this if key in base and this[key] != base[key]]


def setup_warnings(pairs: Iterable[tuple[str, Mapping[str, Any], Mapping[str, Any]]], this_run: str,
                   baseline_run: str) -> tuple[str, ...]:
    """One warning per device and setting that differs, from (device, this setup, baseline setup) pairs."""
    found: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for device, this, base in pairs:
        for key, now, before in setup_differences(this, base):
            found.setdefault((device, key), set()).add((_text(before), _text(now)))
    warnings = []
    for (device, key), values in sorted(found.items()):
        changes = "; ".join(f"{before} in {baseline_run}, {now} in {this_run}" for before, now in sorted(values))
        warnings.append(f"{device}: {key} differs: {changes}")
    return tuple(warnings)


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def summary(changes: Sequence[Change | None]) -> str:
    """One line: how many cells fell in each verdict and bucket, and how many had no interval."""
    verdicts = Counter(c.verdict for c in changes if c is not None)
    buckets: dict[str, Counter[str]] = {}
    for change in changes:
        if change is not None and change.bucket:
            buckets.setdefault(change.verdict, Counter())[change.bucket] += 1
    parts = []
    for verdict in VERDICTS:
        if verdicts[verdict]:
            detail = ", ".join(f"{name}: {count}" for name, count in _by_size(buckets.get(verdict, Counter())))
            parts.append(f"{verdict}: {verdicts[verdict]}" + (f" ({detail})" if detail else ""))
    without = sum(1 for c in changes if c is not None and c.no_interval)
    if without:
        parts.append(f"without an interval (p50 ratio only): {without}")
    not_compared = sum(1 for c in changes if c is None)
    if not_compared:
        parts.append(f"not compared: {not_compared}")
    return "; ".join(parts) if parts else "no cell matches a baseline cell"


def _by_size(counts: Counter[str]) -> list[tuple[str, int]]:
    """Biggest change first: "stopped working", then 10x down to 1.1x."""
    def size(name: str) -> float:
        if name in (STOPPED_WORKING, STARTED_WORKING):
            return float("inf")
        head = name.split("×")[0]
        return 0.0 if head.startswith("<") else float(head)
    return sorted(counts.items(), key=lambda item: -size(item[0]))
