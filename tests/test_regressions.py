"""Regressions with evidence: the statistics on synthetic samples, then real agent runs compared through the
report (unchanged artifacts, a heavier artifact, different bench settings, cells that start or stop working)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_fixtures import DEVICE, FAST_BENCH, Models, run_agent, tflite_cell, write_run
from rich.console import Console

from edgefleet.api.collect import bench_settings, print_comparison
from edgefleet.api.context import Env
from edgefleet.report import build_table, render_table
from edgefleet.report.regressions import (IMPROVED, NO_CHANGE, REGRESSED, STARTED_WORKING, STOPPED_WORKING, Change,
                                          Side, bootstrap_medians, bucket, compare, compare_samples,
                                          median_ratio_interval, setup_of, setup_warnings, summary)
from edgefleet.report.tables import FLAG_REGRESSION
from edgefleet.results import AccuracyRecord, ResultsDB, ingest_log, ingest_run_dir

pytest_plugins = ["agent_fixtures"]
THRESHOLD = 0.10


def _latencies(seed: int, n: int, sigma: float = 0.25, scale: float = 1.0) -> np.ndarray:
    """Right-skewed like real timings: lognormal around 5 ms."""
    return scale * 5.0 * np.random.default_rng(seed).lognormal(0.0, sigma, n)


# ---- the statistics, as tables ----

@pytest.mark.parametrize(("name", "this", "base", "verdict", "expected_bucket"), [
    ("same distribution", _latencies(2, 2000), _latencies(1, 2000), NO_CHANGE, None),
    ("1.6x slower", _latencies(2, 2000, scale=1.6), _latencies(1, 2000), REGRESSED, "1.5× slower"),
    ("2.5x faster", _latencies(2, 2000, scale=1 / 2.5), _latencies(1, 2000), IMPROVED, "2× faster"),
    ("12x slower", _latencies(2, 500, scale=12), _latencies(1, 500), REGRESSED, "10× slower"),
    ("noisy, 5% slower", _latencies(2, 300, sigma=0.8, scale=1.05), _latencies(1, 300, sigma=0.8), NO_CHANGE, None),
])
def test_verdicts_on_synthetic_samples(name: str, this: np.ndarray, base: np.ndarray, verdict: str,
                                       expected_bucket: str | None) -> None:
    change = compare_samples(this, base, THRESHOLD)
    assert (change.verdict, change.bucket) == (verdict, expected_bucket), (name, change)
    assert change.ci_low <= change.ratio <= change.ci_high
    assert change.ratio == pytest.approx(np.median(this) / np.median(base))


def test_a_point_estimate_beyond_the_threshold_is_not_enough() -> None:
    # 30 very noisy runs a side: the medians differ by more than 10%, the interval says it may be chance.
    this, base = _latencies(4, 30, sigma=1.0, scale=1.15), _latencies(3, 30, sigma=1.0)
    change = compare_samples(this, base, THRESHOLD)
    assert change.ratio > 1 + THRESHOLD and change.verdict == NO_CHANGE
    assert change.ci_low < 1 + THRESHOLD < change.ci_high


def test_a_drift_within_a_run_widens_the_interval() -> None:
    # The run slowed down as it went (another process took more and more of the core): its runs are not
    # independent, and the block bootstrap's interval says how uncertain its median is.
    steady = _latencies(5, 2000, sigma=0.05)
    drifting = _latencies(6, 2000, sigma=0.05) * np.linspace(1.0, 1.4, 2000)
    change = compare_samples(drifting, steady, THRESHOLD)
    # The same runs shuffled, independent by construction: same median, an interval a fraction as wide.
    shuffled = compare_samples(np.random.default_rng(8).permutation(drifting), steady, THRESHOLD)
    assert shuffled.ratio == change.ratio
    assert shuffled.ci_high - shuffled.ci_low < (change.ci_high - change.ci_low) / 3


def test_the_bootstrap_is_the_block_resampling_it_claims_and_is_seeded() -> None:
    samples = _latencies(9, 203, sigma=0.4)
    blocks = np.array_split(samples, 20)
    picks = np.random.default_rng(11).integers(0, 20, (300, 20))
    brute = [np.sort(np.concatenate([blocks[j] for j in p]))[(sum(len(blocks[j]) for j in p) + 1) // 2 - 1]
             for p in picks]
    assert np.array_equal(bootstrap_medians(samples, np.random.default_rng(11), 300), brute)
    this, base = _latencies(2, 500), _latencies(1, 500)
    assert median_ratio_interval(this, base) == median_ratio_interval(this, base)


@pytest.mark.parametrize(("ratio", "verdict", "expected"), [
    (1.05, REGRESSED, "<1.1× slower"), (1.1, REGRESSED, "1.1× slower"), (1.3, REGRESSED, "1.2× slower"),
    (1.99, REGRESSED, "1.5× slower"), (2.0, REGRESSED, "2× slower"), (7.0, REGRESSED, "5× slower"),
    (40.0, REGRESSED, "10× slower"), (1 / 1.25, IMPROVED, "1.2× faster"), (0.5, IMPROVED, "2× faster"),
    (1.5, NO_CHANGE, None),
])
def test_buckets(ratio: float, verdict: str, expected: str | None) -> None:
    assert bucket(ratio, verdict) == expected


@pytest.mark.parametrize(("this", "base", "verdict", "expected_bucket"), [
    (Side("ok", 5.0, _latencies(1, 100)), Side("error"), IMPROVED, STARTED_WORKING),
    (Side("ok", 5.0, _latencies(1, 100)), Side("missing_runtime"), IMPROVED, STARTED_WORKING),
    (Side("error"), Side("ok", 5.0, _latencies(1, 100)), REGRESSED, STOPPED_WORKING),
])
def test_started_and_stopped_working(this: Side, base: Side, verdict: str, expected_bucket: str) -> None:
    change = compare(this, base, THRESHOLD)
    assert change is not None and (change.verdict, change.bucket) == (verdict, expected_bucket)
    assert change.ratio is None and change.ci_low is None


def test_failed_in_both_is_not_compared() -> None:
    assert compare(Side("error"), Side("missing_runtime"), THRESHOLD) is None


def test_without_samples_the_p50_ratio_decides_and_says_so() -> None:
    change = compare(Side("ok", 6.0), Side("ok", 5.0, _latencies(1, 100)), THRESHOLD)
    assert change is not None and change.verdict == REGRESSED and change.bucket == "1.2× slower"
    assert change.ci_low is None and "this run" in change.no_interval and "no samples" in change.no_interval
    few = compare(Side("ok", 5.0, _latencies(2, 4)), Side("ok", 5.0, _latencies(1, 100)), THRESHOLD)
    assert few is not None and few.ci_low is None and "fewer than" in few.no_interval


def test_setup_differences_are_named() -> None:
    line = {"env": {"cpu_governor": ["ondemand"], "emulated": True, "emulation": {"kind": "qemu-user",
                                                                                  "emulator": "qemu-arm 7.2"}},
            "runtime_info": {"module": "tflite_runtime.interpreter", "version": "2.14.0"}, "warmup_min_runs": 3}
    other = {"env": {"cpu_governor": ["performance"], "emulated": True, "emulation": {"kind": "qemu-user",
                                                                                      "emulator": "qemu-arm 8.0"}},
             "runtime_info": {"module": "tflite_runtime.interpreter", "version": "2.16.1"}, "warmup_min_runs": 3}
    warnings = setup_warnings([("rpi3", setup_of(other, {"min_runs": 50}), setup_of(line, {"min_runs": 20}))],
                              "run-new", "run-old")
    assert warnings == (
        "rpi3: CPU governor differs: ondemand in run-old, performance in run-new",
        "rpi3: bench min_runs differs: 20 in run-old, 50 in run-new",
        "rpi3: emulator differs: qemu-arm 7.2 in run-old, qemu-arm 8.0 in run-new",
        "rpi3: runtime version differs: tflite_runtime.interpreter 2.14.0 in run-old, "
        "tflite_runtime.interpreter 2.16.1 in run-new")
    # A setting only one side records (an older agent) cannot be said to differ.
    assert setup_warnings([("rpi3", setup_of(line), setup_of({"env": {}}))], "a", "b") == ()


def test_the_summary_counts_verdicts_and_buckets() -> None:
    changes = [Change(REGRESSED, "2× slower", 2.1, 2.0, 2.2), Change(REGRESSED, STOPPED_WORKING),
               Change(REGRESSED, "2× slower", 2.3, 2.2, 2.4), Change(IMPROVED, "1.2× faster", 0.8, no_interval="x"),
               Change(NO_CHANGE, None, 1.0, 0.9, 1.1), None]
    assert summary(changes) == ("regressed: 3 (stopped working: 1, 2× slower: 2); improved: 1 (1.2× faster: 1); "
                                "no significant change: 1; without an interval (p50 ratio only): 1; not compared: 1")


# ---- real agent runs ----

# Convolutions at the fixture's 24x24x3 input, single-threaded: heavy enough (0.2-2 ms) that the median
# tracks the model and not the Python around invoke(), which on a busy 2-core host swings by 2x run to run.
CONV_MODELS = {"conv64x2": (64, 2), "conv32x3": (32, 3), "conv64x4": (64, 4)}
# Long enough to span the host's load phases, which the block bootstrap then sees.
STEADY_BENCH = dict(FAST_BENCH, min_duration_s=1.0)


@pytest.fixture(scope="session")
def conv_models(agent_models: Models) -> dict[str, Path]:
    """Beside the fixture's models, so that run.json's workdir finds them and their inputs."""
    paths = {name: agent_models.root / f"{name}.tflite" for name in CONV_MODELS}
    missing = {name: spec for name, spec in CONV_MODELS.items() if not paths[name].exists()}
    if missing:
        import tensorflow as tf

        for name, (width, layers) in missing.items():
            tf.keras.utils.set_random_seed(0)
            x = inputs = tf.keras.Input((24, 24, 3), batch_size=1, name="image")
            for _ in range(layers):
                x = tf.keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
            outputs = tf.keras.layers.Dense(4)(tf.keras.layers.GlobalAveragePooling2D()(x))
            model = tf.keras.Model(inputs, outputs)
            paths[name].write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return paths


def _conv_cell(models: Models, path: Path, cell: str, variant: str) -> dict[str, Any]:
    return dict(tflite_cell(models, "fp32", 1), cell=cell, variant=variant, artifact=path.name,
                artifact_sha256=models.sha256(path))


def _split(run_dir: Path, tag: str, run_id: str) -> bytes:
    """The lines of the cells tagged ``~tag``, as run ``run_id`` with their own cell names."""
    lines = []
    for raw in (run_dir / "results.jsonl").read_text().splitlines():
        line = json.loads(raw)
        name, _, mark = line["cell"].partition("~")
        if mark == tag:
            lines.append(json.dumps(dict(line, run_id=run_id, cell=name)) + "\n")
    return "".join(lines).encode()


ATTEMPTS = 5  # each ~10 s; only a host that keeps changing under the test exhausts them


def _measure(agent_models: Models, conv_models: dict[str, Path], agent_pyz: Path, root: Path) -> ResultsDB:
    a, b = conv_models["conv64x2"], conv_models["conv32x3"]
    cells = [_conv_cell(agent_models, a, "conv64x2-t1~base", "conv64x2"),
             _conv_cell(agent_models, a, "conv64x2-t1~same", "conv64x2"),
             _conv_cell(agent_models, a, "conv64x2-t1~control", "conv64x2"),
             _conv_cell(agent_models, b, "conv32x3-t1~control", "conv32x3"),
             _conv_cell(agent_models, b, "conv32x3-t1~same", "conv32x3"),
             _conv_cell(agent_models, b, "conv32x3-t1~base", "conv32x3"),
             _conv_cell(agent_models, a, "deep-t1~base", "deep"),
             _conv_cell(agent_models, conv_models["conv64x4"], "deep-t1~slow", "deep")]
    run_dir = write_run(root / "run", agent_models, cells, run_id="run-interleaved", bench=STEADY_BENCH)
    proc = run_agent(agent_pyz, "run", str(run_dir), timeout=300)
    assert proc.returncode == 0, proc.stderr
    db = ResultsDB(root / "results.sqlite")
    for tag in ("base", "same", "control", "slow"):
        summary = ingest_log(db, DEVICE, f"run-{tag}", _split(run_dir, tag, f"run-{tag}"), root / "quarantine")
        assert summary.quarantined == 0 and summary.ingested > 0, summary
    return db


@pytest.fixture(scope="module")
def interleaved(agent_models: Models, conv_models: dict[str, Path], agent_pyz: Path,
                tmp_path_factory: pytest.TempPathFactory) -> ResultsDB:
    """Runs measured in one agent process, cell by cell next to each other, so that the host's load falls on
    all of them alike: run-base and run-same time the same artifacts, run-control times the baseline's again
    on the far side of run-same (base, same, control; then control, same, base), run-slow times a convolution
    twice as deep under the variant name run-base gave the shallow one.

    Why not two agent processes one after the other: on this busy 2-core host the median of an unchanged model
    moved by up to 2x between them, for seconds at a time: a real difference in what was measured, which no
    interval of one run's samples can know about. Adjacent cells in one process mostly share the host's
    state; the control tells when they did not. A measurement whose baseline does not reproduce itself
    around run-same (control against base) says nothing about run-same and is taken again; the verdicts
    on run-same are never what decides that."""
    for attempt in range(ATTEMPTS):
        db = _measure(agent_models, conv_models, agent_pyz, tmp_path_factory.mktemp(f"interleaved{attempt}"))
        control = build_table(db, ["run-control"], baseline_run="run-base")
        if all(row.verdict == NO_CHANGE for row in control.rows):
            return db
    pytest.fail(f"the host never held still: in {ATTEMPTS} measurements the baseline's artifacts, timed twice "
                f"around the others, did not agree with themselves ({control.comparison_summary})")


@pytest.mark.slow
def test_unchanged_artifacts_show_no_significant_change(interleaved: ResultsDB, tmp_path: Path) -> None:
    table = build_table(interleaved, ["run-same"], baseline_run="run-base")
    assert {row.variant for row in table.rows} == {"conv64x2", "conv32x3"} and len(table.rows) == 2
    for row in table.rows:
        assert row.status == "ok" and row.verdict == NO_CHANGE, row
        # The evidence: the interval reaches inside the threshold, whatever the point estimate.
        assert row.ci_low <= 1 + THRESHOLD and row.ci_high >= 1 / (1 + THRESHOLD)
        assert row.bucket is None and FLAG_REGRESSION not in row.flags
    assert not table.regressions and not table.baseline_warnings
    assert table.comparison_summary == "no significant change: 2"
    markdown = render_table(table, tmp_path / "report").markdown.read_text()
    start = markdown.index("## Compared with run-base")
    section = markdown[start:markdown.index("\n## ", start)]
    assert section.count("| no significant change |") == 2 and "| **regressed** |" not in section


@pytest.mark.slow
def test_a_heavier_artifact_is_regressed_in_its_bucket(interleaved: ResultsDB, tmp_path: Path) -> None:
    table = build_table(interleaved, ["run-slow"], baseline_run="run-base")
    (row,) = table.rows
    # Twice the 64-channel layers of the baseline's artifact: about 3x the work, a [2x, 5x) slowdown.
    assert row.verdict == REGRESSED and row.bucket == "2× slower", row
    assert 2.0 <= row.ci_low <= row.ratio <= row.ci_high < 5.0
    assert table.regressions == (row,) and FLAG_REGRESSION in row.flags
    paths = render_table(table, tmp_path / "report")
    markdown = paths.markdown.read_text()
    assert "regressed: 1 (2× slower: 1)" in markdown
    assert f"| {DEVICE} | deep | 1 | — |" in markdown and "| **regressed** | 2× slower |" in markdown
    assert "<strong>regressed</strong>" in paths.html.read_text()
    data = json.loads(paths.json.read_text())["rows"][0]
    assert (data["verdict"], data["bucket"]) == (REGRESSED, "2× slower") and data["ci_low"] == row.ci_low
    console = Console(record=True, width=200)
    print_comparison(table, Env(console=console))
    text = console.export_text()
    assert "compared with run-base: regressed: 1 (2× slower: 1)" in text and "regressed emu-rpi4 / deep-t1" in text


@pytest.fixture
def two_benches(agent_models: Models, agent_pyz: Path, tmp_path: Path) -> tuple[ResultsDB, Path]:
    """Two quick real runs as collect leaves them (collected/RUN/DEVICE), with different bench settings; the
    int8 cell fails in the first (its artifact is not the one run.json names) and works in the second."""
    collected = tmp_path / "collected"
    db = ResultsDB(tmp_path / "results.sqlite")
    benches = {"run-old": FAST_BENCH, "run-new": dict(FAST_BENCH, warmup_runs=5, min_duration_s=0.3,
                                                      cv_threshold=0.4)}
    for run_id, bench in benches.items():
        broken = {"artifact_sha256": "0" * 64} if run_id == "run-old" else {}
        cells = [tflite_cell(agent_models, "fp32", 1), tflite_cell(agent_models, "int8", 1, **broken)]
        run_dir = write_run(collected / run_id / DEVICE, agent_models, cells, run_id=run_id, bench=bench)
        proc = run_agent(agent_pyz, "run", str(run_dir))
        assert proc.returncode == 0, proc.stderr
        ingest_run_dir(db, run_dir, tmp_path / "quarantine")
    return db, collected


def test_different_bench_settings_are_warned_about(two_benches: tuple[ResultsDB, Path], tmp_path: Path) -> None:
    db, collected = two_benches
    bench = bench_settings(collected, ["run-new", "run-old"])
    table = build_table(db, ["run-new"], baseline_run="run-old", bench=bench)
    assert table.baseline_warnings == (
        f"{DEVICE}: bench cv_threshold differs: 0.5 in run-old, 0.4 in run-new",
        f"{DEVICE}: bench min_duration_s differs: 0.2 in run-old, 0.3 in run-new",
        f"{DEVICE}: bench warmup_runs differs: 3 in run-old, 5 in run-new")
    # Without run.json the result lines still tell the warm-up apart.
    assert build_table(db, ["run-new"], baseline_run="run-old").baseline_warnings == (
        f"{DEVICE}: bench warmup_runs differs: 3 in run-old, 5 in run-new",)
    paths = render_table(table, tmp_path / "report")
    assert f"- **warning**: {DEVICE}: bench min_duration_s differs" in paths.markdown.read_text()
    assert "<strong>warning</strong>: " in paths.html.read_text()
    assert json.loads(paths.json.read_text())["baseline_warnings"] == list(table.baseline_warnings)
    console = Console(record=True, width=200)
    print_comparison(table, Env(console=console))
    assert "warning: emu-rpi4: bench cv_threshold differs" in console.export_text()


def test_cells_that_start_or_stop_working_and_the_accuracy_change(two_benches: tuple[ResultsDB, Path]) -> None:
    db, _ = two_benches
    for run_id, value in (("run-old", 0.42), ("run-new", 0.40)):
        db.add_accuracy(AccuracyRecord(run_id, "fp32", "map_50_95", value, "coco"))
    rows = {row.variant: row for row in build_table(db, ["run-new"], baseline_run="run-old").rows}
    assert (rows["int8"].verdict, rows["int8"].bucket) == (IMPROVED, STARTED_WORKING)
    assert rows["fp32"].map_delta == pytest.approx(0.40 - 0.42) and rows["int8"].map_delta is None
    back = {row.variant: row for row in build_table(db, ["run-old"], baseline_run="run-new").rows}
    assert (back["int8"].verdict, back["int8"].bucket) == (REGRESSED, STOPPED_WORKING)
    assert FLAG_REGRESSION in back["int8"].flags and back["fp32"].map_delta == pytest.approx(0.42 - 0.40)
