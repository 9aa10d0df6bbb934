"""Reports from a real agent run: md/html/csv/json/PNG, emulated labels, baseline regressions."""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from agent_fixtures import AgentRun
from markupsafe import escape
from PIL import Image
from rich.console import Console

from edgefleet.errors import ResultsError
from edgefleet.report import build_table, render_report, rich_table
from edgefleet.report.devices import build_devices
from edgefleet.report.plots import pareto_front
from edgefleet.report.tables import (EMULATED_NOTE, FLAG_GATE_FAILED, FLAG_HOT, FLAG_REGRESSION, FLAG_THROTTLED,
                                     FLAG_UNSTABLE, format_number)
from edgefleet.agent.efagent.stats import encode_samples
from edgefleet.report.regressions import NO_CHANGE, REGRESSED
from edgefleet.results import AccuracyRecord, ResultsDB, ingest_log, ingest_run_dir, ingest_status
from edgefleet.results.samples import decode_samples
from edgefleet.results.schema import MEASUREMENTS, OPTIONAL_MEASUREMENTS

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


def _slower_copy(agent_run: AgentRun, run_id: str, factor: float, *, samples: bool = True) -> bytes:
    """The main run's lines with every latency ``factor`` times longer: its statistics and its raw samples
    (``samples=False``: none stored, as an older agent wrote them)."""
    lines = []
    for raw in agent_run.lines:
        scaled = {k: v * factor for k, v in raw["latency_ms"].items()}
        line = dict(raw, run_id=run_id, latency_ms=scaled)
        line.pop("samples")
        if samples:
            line["samples"] = encode_samples(decode_samples(raw["samples"]) * factor / 1000.0)
        lines.append(json.dumps(line) + "\n")
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
        assert row.ratio == pytest.approx(2.0, rel=1e-6)
        assert (row.verdict, row.bucket) == (REGRESSED, "2× slower") and FLAG_REGRESSION in row.flags
        assert 1.10 < row.ci_low <= row.ratio <= row.ci_high
    paths = render_report(db, ["run-slow"], tmp_path / "report", baseline_run=agent_run.run_id)
    markdown = paths.markdown.read_text()
    assert markdown.count("| **regressed** | 2× slower |") == 4 and "2.00×" in markdown
    assert "regressed: 4 (2× slower: 4)" in markdown
    assert "<strong>regressed</strong>" in paths.html.read_text()
    with paths.csv.open() as handle:
        assert {row["verdict"] for row in csv.DictReader(handle)} == {REGRESSED}

    # The other way round the faster run improves on the slower one: nothing to flag.
    reverse = build_table(db, [agent_run.run_id], baseline_run="run-slow")
    assert not reverse.regressions
    assert all(row.ratio == pytest.approx(0.5, rel=1e-6) and row.bucket == "2× faster" for row in reverse.rows)
    # Within the threshold is not a regression either.
    ingest_log(db, agent_run.device, "run-same", _slower_copy(agent_run, "run-same", 1.05), tmp_path / "q")
    same = build_table(db, ["run-same"], baseline_run=agent_run.run_id, regression_threshold=0.10)
    assert not same.regressions and {row.verdict for row in same.rows} == {NO_CHANGE}


def test_results_without_samples_fall_back_to_the_p50_ratio(db: ResultsDB, agent_run: AgentRun,
                                                             tmp_path: Path) -> None:
    log = _slower_copy(agent_run, "run-old-agent", 2.0, samples=False)
    ingest_log(db, agent_run.device, "run-old-agent", log, tmp_path / "q")
    table = build_table(db, ["run-old-agent"], baseline_run=agent_run.run_id)
    assert len(table.regressions) == 4
    for row in table.rows:
        assert row.ci_low is None and row.ratio == pytest.approx(2.0) and row.verdict == REGRESSED
        assert "no samples" in row.no_interval
    markdown = render_report(db, ["run-old-agent"], tmp_path / "report", baseline_run=agent_run.run_id).markdown
    assert "without an interval (p50 ratio only): 4" in markdown.read_text()


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


RPI3_DIFFERS = ("CPU speed (qemu-arm translates every instruction: latencies are not a Pi's), the Pi's kernel, "
                "firmware and vcgencmd")
QEMU_RPI3 = {"kind": "qemu-user", "emulator": "qemu-arm 7.2.22", "host_arch": "x86_64",
             "emulated_os": "Debian 12 (bookworm) armhf userland under qemu-arm",
             "board_os": "Raspberry Pi OS (32-bit) Bookworm", "differs": RPI3_DIFFERS, "runtime_standin": [],
             "rootfs": "bookworm-armhf"}
HOST_CPU = {"kind": "host-cpu", "emulator": None, "host_arch": "x86_64",
            "note": "this host's CPU, OS and Python stand in for the board"}
QEMU_CORAL = dict(QEMU_RPI3, emulator="qemu-aarch64 7.2.22", board_os="Mendel Linux 5.3",
                  differs="Mendel Linux 5.3 is Debian 10; there is no Edge TPU",
                  runtime_standin=["tflite-runtime==2.14.0"])
DEBIAN = "Debian GNU/Linux 12 (bookworm)"
OS_NUMPY = "/usr/lib/python3/dist-packages/numpy"
TFLITE_RUNTIME = {"module": "tflite_runtime.interpreter", "version": "2.14.0"}
NOT_MEASURED = dict.fromkeys(MEASUREMENTS + OPTIONAL_MEASUREMENTS + ("delegate_coverage", "runtime_info"))


def _device_log(agent_run: AgentRun, run_id: str, device: str, env: dict, *, emulated: bool = True,
                failed: bool = False) -> bytes:
    """The main run's real lines, as another device with its own environment would have written them."""
    lines = []
    for raw in agent_run.lines:
        line = dict(raw, run_id=run_id, device=device, emulated=emulated, env=dict(raw["env"], **env),
                    runtime_info=TFLITE_RUNTIME)
        if failed:
            line.update(NOT_MEASURED, status="error", reason="RuntimeError: the model does not load")
        lines.append(json.dumps(line) + "\n")
    return "".join(lines).encode()


def _ingest_fleet(db: ResultsDB, agent_run: AgentRun, quarantine: Path) -> None:
    devices = {
        "rpi3": dict(env={"uname": {"machine": "armv7l"}, "os": DEBIAN, "python": "3.11.2", "numpy": "1.24.2",
                          "numpy_path": OS_NUMPY, "emulated": True, "emulation": QEMU_RPI3}),
        "host": dict(env={"uname": {"machine": "x86_64"}, "os": DEBIAN, "python": "3.11.7", "numpy": "2.4.6",
                          "numpy_path": "/opt/venv/lib/python3.11/site-packages/numpy", "emulated": True,
                          "emulation": HOST_CPU}),
        "jetson": dict(emulated=False, env={"uname": {"machine": "aarch64"}, "os": "Ubuntu 18.04.6 LTS",
                                            "python": "3.6.9", "numpy": "1.13.3", "numpy_path": OS_NUMPY,
                                            "emulated": False, "emulation": None}),
        "coral": dict(failed=True, env={"uname": {"machine": "aarch64"}, "os": DEBIAN, "python": "3.11.2",
                                        "numpy": "1.24.2", "numpy_path": OS_NUMPY, "emulated": True,
                                        "emulation": QEMU_CORAL}),
    }
    for device, spec in devices.items():
        summary = ingest_log(db, device, "run-fleet", _device_log(agent_run, "run-fleet", device, **spec), quarantine)
        assert summary.quarantined == 0, summary
        ingest_status(db, device, "run-fleet", {"state": "done", "cells_done": 4, "cells_total": 4})


def test_the_devices_section_says_what_each_device_was(db: ResultsDB, agent_run: AgentRun, tmp_path: Path) -> None:
    _ingest_fleet(db, agent_run, tmp_path / "q")
    paths = render_report(db, ["run-fleet", agent_run.run_id], tmp_path / "report")
    markdown = paths.markdown.read_text()
    assert markdown.index("## Runs") < markdown.index("## Devices") < markdown.index("## Cells")
    section = markdown[markdown.index("## Devices"):markdown.index("\n## ", markdown.index("## Devices"))]
    rows = {line.split(" | ")[0][2:]: line for line in section.splitlines() if line.startswith("| ")}
    assert rows["coral"] == (f"| coral | run-fleet | aarch64 | {DEBIAN} | 3.11.2 | — | 1.24.2 (OS package) | "
                             "qemu-aarch64 7.2.22 | Mendel Linux 5.3 |")
    assert rows["host"] == (f"| host | run-fleet | x86_64 | {DEBIAN} | 3.11.7 | tflite_runtime.interpreter 2.14.0 | "
                            "2.4.6 (wheel) | this host's CPU | — |")
    assert rows["jetson"] == ("| jetson | run-fleet | aarch64 | Ubuntu 18.04.6 LTS | 3.6.9 | "
                              "tflite_runtime.interpreter 2.14.0 | 1.13.3 (OS package) | — (real board) | — |")
    assert rows["rpi3"] == (f"| rpi3 | run-fleet | armv7l | {DEBIAN} | 3.11.2 | tflite_runtime.interpreter 2.14.0 | "
                            "1.24.2 (OS package) | qemu-arm 7.2.22 | Raspberry Pi OS (32-bit) Bookworm |")
    # The main run's lines predate the emulation record: an emulated device was then always this host's CPU.
    assert rows[agent_run.device].split(" | ")[7] == "this host's CPU"
    # What differs is a list below the table, not a column; a real board has nothing to list.
    assert f"- **rpi3**: {RPI3_DIFFERS}" in section
    assert "- **host**: this host's CPU, OS and Python stand in for the board" in section
    assert "- **coral**: Mendel Linux 5.3 is Debian 10; there is no Edge TPU" in section
    assert "**jetson**" not in section

    html = paths.html.read_text()
    assert html.index("<h2>Runs</h2>") < html.index("<h2>Devices</h2>") < html.index("<h2>Cells</h2>")
    assert f"<li><strong>rpi3</strong>: {escape(RPI3_DIFFERS)}</li>" in html
    assert "<td>qemu-arm 7.2.22</td>" in html and f"<td>{escape('— (real board)')}</td>" in html

    devices = {d["device"]: d for d in json.loads(paths.json.read_text())["devices"]}
    assert devices["rpi3"] == {
        "run_id": "run-fleet", "device": "rpi3", "machine": "armv7l", "os": DEBIAN, "python": "3.11.2",
        "runtimes": ["tflite_runtime.interpreter 2.14.0"], "numpy": "1.24.2", "numpy_source": "OS package",
        "emulated": True, "emulated_by": "qemu-arm 7.2.22", "emulation_kind": "qemu-user", "host_arch": "x86_64",
        "board_os": "Raspberry Pi OS (32-bit) Bookworm", "differs": RPI3_DIFFERS, "runtime_standin": []}
    assert devices["coral"]["runtimes"] == [] and devices["coral"]["runtime_standin"] == ["tflite-runtime==2.14.0"]
    assert devices["host"]["emulation_kind"] == "host-cpu" and devices["host"]["numpy_source"] == "wheel"
    assert devices["jetson"]["emulated"] is False and devices["jetson"]["emulated_by"] == "— (real board)"
    assert devices[agent_run.device]["emulation_kind"] is None


def test_the_emulated_note_is_true_of_qemu_devices_too() -> None:
    assert "qemu-user" in EMULATED_NOTE and "host's CPU" in EMULATED_NOTE and "CPU is the host's" not in EMULATED_NOTE


def test_a_device_lists_every_runtime_its_cells_loaded(db: ResultsDB, agent_run: AgentRun) -> None:
    cells = db.cells([agent_run.run_id])
    onnx = dict(cells[-1].raw_json, runtime_info={"module": "onnxruntime", "version": "1.17.1"})
    cells[-1] = replace(cells[-1], raw=json.dumps(onnx))
    (row,) = build_devices(db.runs([agent_run.run_id]), cells)
    assert row.text("runtimes") == "ai_edge_litert.interpreter 2.3.0, onnxruntime 1.17.1"


def test_variants_measured_under_another_name_are_listed(agent_run: AgentRun, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(agent_run.run_dir, run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    run["same_as"] = {"tftrt-fp16-relu6-replaced-nms-cpu": "tftrt-fp16-relu6-nms-cpu"}
    (run_dir / "run.json").write_text(json.dumps(run))
    database = ResultsDB(tmp_path / "results.sqlite")
    ingest_run_dir(database, run_dir, tmp_path / "quarantine")
    ingest_run_dir(database, run_dir, tmp_path / "quarantine")  # re-ingesting adds nothing

    assert database.same_as() == [(agent_run.run_id, agent_run.device, "tftrt-fp16-relu6-replaced-nms-cpu",
                                   "tftrt-fp16-relu6-nms-cpu")]
    paths = render_report(database, [agent_run.run_id], tmp_path / "report")
    for text in (paths.markdown.read_text(), paths.html.read_text()):
        assert "measured under another name" in text and "tftrt-fp16-relu6-replaced-nms-cpu" in text


def test_unstable_throttled_and_hot_are_flagged_with_their_reasons(db: ResultsDB, agent_run: AgentRun,
                                                                   tmp_path: Path) -> None:
    first, second, *rest = agent_run.lines
    flagged = [dict(first, run_id="run-flags", unstable=True, unstable_reasons=["drift", "frequency"],
                    throttled=True, throttle_reasons=["frequency"], hot=True),
               dict(second, run_id="run-flags", unstable=False, unstable_reasons=[], throttled=False, hot=False)]
    log = "".join(json.dumps(raw) + "\n" for raw in flagged + [dict(r, run_id="run-flags") for r in rest]).encode()
    assert ingest_log(db, agent_run.device, "run-flags", log, tmp_path / "q").quarantined == 0
    table = build_table(db, ["run-flags"])
    rows = {row.cell: row for row in table.rows}
    hot = rows[first["cell"]]
    assert hot.flags[:3] == (FLAG_UNSTABLE, FLAG_THROTTLED, FLAG_HOT)
    assert hot.unstable_reasons == ("drift", "frequency")
    assert table.text(hot, "flags") == "unstable (drift, frequency), throttled, hot"
    assert not {FLAG_UNSTABLE, FLAG_THROTTLED, FLAG_HOT} & set(rows[second["cell"]].flags)
    # The robust statistics are columns of every table.
    assert table.text(hot, "p99_over_p50").endswith("×") and hot.trimmed_mean_ms == first["latency_ms"]["trimmed_mean"]
    assert hot.robust_cv == first["robust_cv"] and hot.iqr_ms == first["latency_ms"]["iqr"]

    paths = render_report(db, ["run-flags"], tmp_path / "report")
    markdown, html = paths.markdown.read_text(), paths.html.read_text()
    line = f"- {agent_run.device} / {first['cell']}: unstable (drift, frequency), throttled, hot"
    assert "### Flagged cells" in markdown and line in markdown
    assert "<h3>Flagged cells</h3>" in html and "unstable (drift, frequency), throttled, hot" in html
    for text in (markdown, html):
        assert "trimmed mean ms" in text and "IQR ms" in text and "p99/p50" in text and "robust cv" in text
    with paths.csv.open() as handle:
        csv_rows = {row["cell"]: row for row in csv.DictReader(handle)}
    assert csv_rows[first["cell"]]["unstable_reasons"] == "drift;frequency"
    assert csv_rows[first["cell"]]["flags"].startswith("unstable;throttled;hot")
    data = {row["cell"]: row for row in json.loads(paths.json.read_text())["rows"]}
    assert data[first["cell"]]["unstable_reasons"] == ["drift", "frequency"]
    console = Console(record=True, width=400)
    console.print(rich_table(table))
    assert "unstable (drift, frequency), throttled, hot" in console.export_text()
