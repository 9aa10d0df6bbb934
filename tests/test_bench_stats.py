"""The statistics behind a cell's verdict, on synthetic sample arrays; the adaptive warm-up on a fake
session; the raw samples packed and unpacked; the profile's new bench settings."""
from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import ValidationError

from edgefleet.agent.efagent.bench import _warm_up, noise_floor
from edgefleet.agent.efagent.stats import (drift, encode_samples, latency_stats, rank_z, robust_cv, spread_beyond,
                                           trimmed_mean, unstable_reasons)
from edgefleet.errors import ResultsError
from edgefleet.profiles.model import Bench
from edgefleet.results.samples import decode_samples

RNG = np.random.default_rng(14)


def _seconds(ms: np.ndarray) -> list[float]:
    return list(np.asarray(ms) / 1000.0)


def test_trimmed_mean_keeps_the_middle_80_percent() -> None:
    assert trimmed_mean(np.arange(1.0, 101.0)) == pytest.approx(50.5)  # the mean of 11..90
    # One preempted run moves the mean by a factor of 200; the trimmed mean not at all.
    spiky = np.r_[np.arange(1.0, 100.0), 1e6]
    assert spiky.mean() > 10_000 and trimmed_mean(spiky) == pytest.approx(50.5)
    assert trimmed_mean(np.array([2.0, 4.0])) == 3.0  # too few runs to trim any


def test_a_few_outliers_inflate_std_not_the_robust_spread() -> None:
    ms = RNG.normal(1.0, 0.01, 1000)
    ms[::50] = 50.0  # 2% of the runs preempted for 49 ms
    stats = latency_stats(_seconds(ms))
    assert stats["std"] / stats["mean"] > 1.0  # the old rule: unstable
    assert robust_cv(stats) < 0.02
    assert stats["p25"] <= stats["p50"] <= stats["p75"] and stats["iqr"] == pytest.approx(stats["p75"] - stats["p25"])
    assert stats["mad"] == pytest.approx(np.median(np.abs(ms - np.median(ms))))
    assert stats["p99"] / stats["p50"] > 40  # p99/p50 is what shows the tail
    assert not spread_beyond(stats, 0.15, None)


def test_robust_cv_matches_cv_on_normal_data() -> None:
    stats = latency_stats(_seconds(RNG.normal(10.0, 1.0, 20_000)))
    assert robust_cv(stats) == pytest.approx(stats["std"] / stats["mean"], rel=0.05)


def test_drift_catches_a_trend_and_ignores_flat_noise() -> None:
    runs = 600
    noise = RNG.lognormal(0.0, 0.3, runs)
    slowing = drift(_seconds(np.linspace(1.0, 1.4, runs) * noise))
    assert slowing["drifting"] is True and slowing["ratio"] > 1.1 and slowing["z"] > 3
    warming = drift(_seconds(np.linspace(1.4, 1.0, runs) * noise))
    assert warming["drifting"] is True and warming["ratio"] < 1 / 1.1 and warming["z"] < -3
    flat = drift(_seconds(noise))
    assert flat["drifting"] is False and abs(flat["ratio"] - 1) < 0.1
    # A 3% step is real (the rank test is sure of it) but within the 10% a cell may move.
    step = drift(_seconds(np.r_[np.full(300, 1.0), np.full(300, 1.03)] * RNG.normal(1, 0.001, runs)))
    assert step["z"] > 3 and step["drifting"] is False
    assert drift(_seconds(np.ones(10)))["drifting"] is None  # too few runs to split in thirds


def test_drift_needs_the_rank_test_too() -> None:
    # Medians of thirds 1 and 5 (ratio 5), but the thirds hold the same values: no evidence of a trend.
    ms = np.array([1, 5, 1, 5, 1] + [3] * 5 + [5, 1, 5, 1, 5], dtype=float)
    verdict = drift(_seconds(ms))
    assert verdict["ratio"] == 5.0 and abs(verdict["z"]) < 3 and verdict["drifting"] is False
    assert rank_z(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])) > 0


def test_the_noise_floor_explains_a_spread_the_timer_alone_makes() -> None:
    # A 1 µs operation whose IQR (0.4 µs) is a large share of it: robust cv 0.3 > 0.15.
    ms = np.tile([0.0006, 0.0008, 0.0010, 0.0012, 0.0014], 200)
    stats = latency_stats(_seconds(ms))
    assert robust_cv(stats) > 0.15
    coarse = {"p50_ms": 0.0005, "iqr_ms": 0.0002, "tick_ms": 0.0001}  # the timer itself spreads 0.2 µs
    fine = {"p50_ms": 0.00005, "iqr_ms": 0.00001, "tick_ms": 0.000001}
    assert spread_beyond(stats, 0.15, None)  # no floor measured: the relative rule alone
    assert not spread_beyond(stats, 0.15, coarse)  # within 3x the timer's spread: not the model's
    assert spread_beyond(stats, 0.15, fine)
    # BOTH rules: a spread beyond the floor but within the threshold is stable.
    assert not spread_beyond(stats, 0.5, fine)
    # A timer whose IQR is 0 but whose tick is coarse explains as much as its tick.
    assert not spread_beyond(stats, 0.15, {"p50_ms": 0.0, "iqr_ms": 0.0, "tick_ms": 0.001})


def test_unstable_reasons_say_which_rule_fired() -> None:
    steady = latency_stats(_seconds(RNG.normal(5.0, 0.05, 500)))
    assert unstable_reasons(steady, 0.15, None, False, False) == []
    assert unstable_reasons(steady, 0.15, None, True, None) == ["drift"]
    assert unstable_reasons(steady, 0.15, None, None, True) == ["frequency"]
    wide = latency_stats(_seconds(RNG.uniform(1.0, 9.0, 500)))
    assert unstable_reasons(wide, 0.15, None, True, True) == ["cv", "drift", "frequency"]


def test_noise_floor_of_this_machine() -> None:
    floor = noise_floor(calls=1000)
    assert floor["calls"] == 1000 and floor["timer"] == "perf_counter"
    assert 0 <= floor["p50_ms"] < 1.0 and floor["iqr_ms"] >= 0 and floor["mad_ms"] >= 0
    assert floor["tick_ms"] is None or floor["tick_ms"] > 0


class DecayingSession:
    """Each invoke busy-waits base_ms plus a start-up cost that decays by ``decay`` per run."""

    def __init__(self, base_ms: float = 0.5, extra_ms: float = 2.0, decay: float = 0.8) -> None:
        self.invokes = 0
        self.base_ms, self.extra_ms, self.decay = base_ms, extra_ms, decay

    def set_input(self, index: int, array: np.ndarray) -> None:
        pass

    def invoke(self) -> None:
        ms = self.base_ms + self.extra_ms * self.decay ** self.invokes
        self.invokes += 1
        end = time.perf_counter() + ms / 1000.0
        while time.perf_counter() < end:
            pass


FEEDS = [[np.zeros(1, dtype=np.float32)]]
WARM = {"warmup_runs": 3, "min_duration_s": 2.0}


def test_warm_up_goes_on_until_the_latency_settles() -> None:
    session = DecayingSession()
    warmup = _warm_up(session, FEEDS, WARM)
    # 2 ms * 0.8**n changes two windows' medians by less than 5% of 0.5 ms from run ~20 on.
    assert warmup["warmup_stopped_by"] == "settled"
    assert 15 <= warmup["warmup_runs"] <= 60 and warmup["warmup_runs"] == session.invokes
    assert (warmup["warmup_min_runs"], warmup["warmup_max_runs"]) == (3, 200)  # max(10 * 3, 200)


def test_warm_up_respects_its_minimum_and_its_cap() -> None:
    flat = _warm_up(DecayingSession(extra_ms=0.0), FEEDS, dict(WARM, warmup_runs=40))
    assert 40 <= flat["warmup_runs"] < 200 and flat["warmup_stopped_by"] == "settled"
    capped = _warm_up(DecayingSession(), FEEDS, dict(WARM, warmup_max_runs=8))
    assert capped["warmup_runs"] == 8 and capped["warmup_stopped_by"] == "warmup_max_runs"
    assert _warm_up(DecayingSession(), FEEDS, dict(WARM, warmup_runs=0, warmup_max_runs=0))["warmup_runs"] == 0
    # A warm-up that never settles ends with its time budget, max(min_duration_s, 1 s).
    never = _warm_up(DecayingSession(extra_ms=200.0, decay=0.999), FEEDS, dict(WARM, min_duration_s=0.0))
    assert never["warmup_stopped_by"] == "duration" and never["warmup_runs"] < 200


def test_samples_round_trip_as_float32_microseconds() -> None:
    seconds = list(RNG.lognormal(-9, 0.5, 5000))  # ~0.1 ms runs
    packed = encode_samples(seconds)
    assert packed["encoding"] == "f32-us-gzip-b64" and packed["count"] == 5000
    assert encode_samples(seconds) == packed  # no timestamp in the gzip header: same runs, same bytes
    ms = decode_samples(packed)
    assert ms.dtype == np.float64 and len(ms) == 5000
    assert ms == pytest.approx(np.asarray(seconds) * 1000.0, rel=1e-6)

    with pytest.raises(ResultsError, match="count says 4999"):
        decode_samples(dict(packed, count=4999))
    with pytest.raises(ResultsError, match="reads f32-us-gzip-b64"):
        decode_samples(dict(packed, encoding="f64-ns"))
    with pytest.raises(ResultsError, match="not gzip in base64"):
        decode_samples(dict(packed, data="%%%"))


def test_the_profile_validates_the_new_bench_settings() -> None:
    assert Bench().max_temp_c is None and Bench().warmup_max_runs is None
    assert Bench(max_temp_c=75, warmup_runs=5, warmup_max_runs=50).max_temp_c == 75
    with pytest.raises(ValidationError, match="warmup_max_runs"):
        Bench(warmup_runs=10, warmup_max_runs=5)
    with pytest.raises(ValidationError, match="max_temp_c"):
        Bench(max_temp_c=-5)
