"""Reports from a real agent run: md/html/csv/json/PNG, emulated labels, baseline regressions."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from agent_fixtures import AgentRun
from markupsafe import escape
from PIL import Image
from rich.console import Console

from edgefleet.errors import ResultsError
from edgefleet.report import build_table, render_report, rich_table
from edgefleet.report.plots import pareto_front
from edgefleet.report.tables import EMULATED_NOTE, FLAG_GATE_FAILED, FLAG_REGRESSION, format_number
from edgefleet.results import AccuracyRecord, ResultsDB, ingest_log, ingest_run_dir, ingest_status

pytest_plugins = ["agent_fixtures"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def db(agent_run: AgentRun, tmp_path: Path) -> ResultsDB:
    assert agent_run.returncode == 0, agent_run.stderr
    database = ResultsDB(tmp_path / "results.sqlite")
    ingest_run_dir(database, agent_run.run_dir, tmp_path / "quarantine")
    return database


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000, path
    with Image.open(path) as image:
        assert image.width >= 400 and image.height >= 300
        # A blank canvas has one colour; a plot has many.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10


def _slower_copy(agent_run: AgentRun, run_id: str, factor: float) -> bytes:
    lines = []
    for raw in agent_run.lines:
        scaled = {k: v * factor for k, v in raw["latency_ms"].items()}
        lines.append(json.dumps(dict(raw, run_id=run_id, latency_ms=scaled)) + "\n")
    return "".join(lines).encode()


def test_report_renders_every_format_from_the_db(db: ResultsDB, agent_run: AgentRun, tmp_path: Path) -> None:
    paths = render_report(db, [agent_run.run_id], tmp_path / "report")
    for path in (paths.markdown, paths.html, paths.csv, paths.json):
        assert path.exists() and path.stat().st_size > 500
    assert [p.name for p in paths.plots] == [f"latency-{agent_run.device}.png"]  # no accuracy: no Pareto plot
    _assert_png(paths.plots[0])

    html = paths.html.read_text()
    markdown = paths.markdown.read_text()
    assert "<strong>emulated: true</strong>" in html and str(escape(EMULATED_NOTE)) in html
    assert "emulated: true" in markdown and EMULATED_NOTE in markdown
    cells = db.cells([agent_run.run_id])
    for cell in cells:
        for value in (cell.p50_ms, cell.p90_ms, cell.first_inference_ms):
            assert format_number(value) in html and format_number(value) in markdown
    assert 'src="plots/latency-emu-rpi4.png"' in html

    with paths.csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(cells)
    assert all(row["emulated"] == "True" for row in rows)
    assert sorted(float(r["p50_ms"]) for r in rows) == sorted(c.p50_ms for c in cells)

    data = json.loads(paths.json.read_text())
    assert len(data["rows"]) == len(cells) and data["runs"][0]["state"] == "done"
    assert all(row["emulated"] is True for row in data["rows"])


def test_every_row_shows_the_emulated_flag(db: ResultsDB, agent_run: AgentRun, tmp_path: Path) -> None:
    table = build_table(db, [agent_run.run_id])
    markdown = render_report(db, [agent_run.run_id], tmp_path / "r").markdown.read_text()
    rows = [line for line in markdown.splitlines() if line.startswith(f"| {agent_run.run_id} | {agent_run.device} |")]
    # The runs table has one line per run, the cells table one per cell: all say emulated true.
    assert len(rows) == 1 + len(table.rows)
    assert all("| true |" in row for row in rows)


def test_accuracy_rows_add_the_pareto_plot_and_gate_flags(db: ResultsDB, agent_run: AgentRun, tmp_path: Path) -> None:
    db.add_accuracy(AccuracyRecord(agent_run.run_id, "fp32", "mAP", 0.42, "coco"))
    db.add_accuracy(AccuracyRecord(agent_run.run_id, "int8", "mAP", 0.40, "coco"))
    db.add_accuracy(AccuracyRecord(agent_run.run_id, "int8", "accuracy_gate", 0.0, "fidelity"))
    table = build_table(db, [agent_run.run_id])
    assert table.accuracy_metric == "mAP"
    for row in table.rows:
        assert row.accuracy == (0.42 if row.variant == "fp32" else 0.40)
        assert (FLAG_GATE_FAILED in row.flags) == (row.variant == "int8")
    paths = render_report(db, [agent_run.run_id], tmp_path / "report")
    pareto = [p for p in paths.plots if p.name == f"latency-vs-accuracy-{agent_run.device}.png"]
    assert pareto, paths.plots
    _assert_png(pareto[0])
    assert "accuracy gate failed" in paths.html.read_text()


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (2.0, 0.4), (4.0, 0.9), (1.0, 0.3)]
    assert pareto_front(points) == [0, 1, 4]


def test_a_slower_run_is_flagged_against_its_baseline(db: ResultsDB, agent_run: AgentRun, tmp_path: Path) -> None:
    ingest_log(db, agent_run.device, "run-slow", _slower_copy(agent_run, "run-slow", 2.0), tmp_path / "q")
    table = build_table(db, ["run-slow"], baseline_run=agent_run.run_id, regression_threshold=0.10)
    assert len(table.rows) == 4 and len(table.regressions) == 4
    for row in table.rows:
        assert row.ratio == pytest.approx(2.0)
        assert FLAG_REGRESSION in row.flags
    paths = render_report(db, ["run-slow"], tmp_path / "report", baseline_run=agent_run.run_id)
    markdown = paths.markdown.read_text()
    assert markdown.count("**regression**") == 4 and "2.00×" in markdown
    assert "regression" in paths.html.read_text()

    # The other way round the faster run improves on the slower one: nothing to flag.
    reverse = build_table(db, [agent_run.run_id], baseline_run="run-slow")
    assert not reverse.regressions
    assert all(row.ratio == pytest.approx(0.5) for row in reverse.rows)
    # Within the threshold is not a regression either.
    ingest_log(db, agent_run.device, "run-same", _slower_copy(agent_run, "run-same", 1.05), tmp_path / "q")
    assert not build_table(db, ["run-same"], baseline_run=agent_run.run_id, regression_threshold=0.10).regressions


def test_unfinished_runs_are_shown_as_such(db: ResultsDB, agent_run: AgentRun, tmp_path: Path) -> None:
    ingest_status(db, agent_run.device, agent_run.run_id,
                  {"state": "interrupted", "pid": 1, "cells_done": 4, "cells_total": 6,
                   "reason": "agent process 1 is gone"})
    markdown = render_report(db, [agent_run.run_id], tmp_path / "r").markdown.read_text()
    assert "is **interrupted**" in markdown and "| interrupted (agent process 1 is gone) |" in markdown


def test_the_terminal_table_uses_the_same_rows(db: ResultsDB, agent_run: AgentRun) -> None:
    table = build_table(db, [agent_run.run_id])
    console = Console(record=True, width=400)
    console.print(rich_table(table))
    text = console.export_text()
    assert "emulated: true" in text
    for row in table.rows:
        assert table.text(row, "p50_ms") in text


def test_unknown_runs_and_baselines_are_errors(db: ResultsDB, agent_run: AgentRun, tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="no results for run"):
        render_report(db, ["nope"], tmp_path)
    with pytest.raises(ResultsError, match="baseline"):
        build_table(db, [agent_run.run_id], baseline_run="nope")
