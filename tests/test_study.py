"""`invoke study` on this host: every format built, benchmarked and evaluated; table and three plots."""
from __future__ import annotations

import json

import pytest

from edgefleet.api.context import Env
from edgefleet.api.study import StudyOptions, study
from edgefleet.console import make_console

pytestmark = [pytest.mark.convert, pytest.mark.slow]

PNG = b"\x89PNG\r\n\x1a\n"


def test_study_measures_every_format(workspace_copy, tmp_path):
    ws = workspace_copy
    # This host is the device; a private workdir keeps the test away from a user's own runs.
    (ws / "targets" / "local.yaml").write_text(
        f"extends: builtin:local\nworkdir: {tmp_path / 'device'}\n"
        "bench: {threads: [1, 2], warmup_runs: 2, min_runs: 10, min_duration_s: 0.2, cooldown_s: 0.0}\n")
    paths = study(StudyOptions(workspace=ws), Env(console=make_console(quiet=True)))
    table = paths.table.read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| variant")}
    for variant in ("tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "tflite-full-int8", "onnx",
                    "openvino-fp32"):
        assert variant in rows, table
        cells = [c.strip() for c in rows[variant].split("|")[1:-1]]
        assert cells[-1] == "ok", rows[variant]
        assert float(cells[2]) > 0 and float(cells[3]) > 0          # p50 at 1 and 2 threads
        assert float(cells[5]) > 0.9                                 # mAP@.5 from the agent's eval mode
    for plot in (paths.latency_plot, paths.accuracy_plot, paths.pareto_plot):
        assert plot is not None and plot.read_bytes()[:8] == PNG
    # OpenVINO's size is its .xml and the .bin of weights beside it, as deploy shipped them to the device.
    (xml,) = (tmp_path / "device" / "artifacts").glob("*/*.xml")
    shipped = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    variants = json.loads((paths.table.parent / "variants.json").read_text())["rows"]
    (openvino,) = [r for r in variants if r["variant"] == "openvino-fp32"]
    assert openvino["size_mb"] == pytest.approx(shipped / 1e6) and shipped > 2 * xml.stat().st_size
