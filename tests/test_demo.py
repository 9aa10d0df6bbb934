"""`invoke demo --emulate host --labgrid`, whole, through its Python twin: every target built, the fleet published as
places of a real labgrid coordinator and exporter on this host, each deploy and the collect holding its device's
place, and a report with accuracy beside latency and a summary at the top."""
from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from edgefleet.api.context import Env
from edgefleet.api.demo import DemoOptions, demo
from edgefleet.deploy.devices import fleet_dir
from edgefleet.fleet.labgrid_lab import lab_pids
from fleet_fixtures import require_fleet_tools

REPO = Path(__file__).resolve().parents[1]
DEVICES = ("rpi3", "jetson-nano", "coral")

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


def test_the_demo_goes_through_labgrid_and_reports_accuracy_beside_latency(tmp_path: Path) -> None:
    require_fleet_tools("loopback")
    for name in ("targets", "templates", "builders", "models"):
        shutil.copytree(REPO / name, tmp_path / name)
    shutil.copy(REPO / "edgefleet.yaml", tmp_path / "edgefleet.yaml")
    env = Env(console=Console(file=io.StringIO(), width=200))

    outcome = demo(DemoOptions(devices=DEVICES, emulate="host", labgrid=True, workspace=tmp_path), env)

    said = env.console.file.getvalue()  # type: ignore[attr-defined]
    for device in DEVICES:
        # deploy --wait, then collect: each holds the place and gives it back.
        assert len(re.findall(rf"acquired labgrid place {device} \(", said)) == 2, device
        assert len(re.findall(rf"released labgrid place {device}\b", said)) == 2, device
    for tool in ("labgrid-coordinator", "labgrid-exporter"):
        assert not lab_pids(fleet_dir(tmp_path / ".edgefleet"), tool), f"the demo's {tool} went with its fleet"
    assert outcome.report is not None and not outcome.errors
    folder = outcome.report.out_dir
    markdown = outcome.report.markdown.read_text()
    assert markdown.index("## Summary") < markdown.index("## Runs"), "the summary opens the report"
    for device in DEVICES:
        assert f"### {device} (emulated)" in markdown and "Fastest within the accuracy gate" in markdown

    variants = json.loads((folder / "variants.json").read_text())["rows"]
    # Every variant that ran has its accuracy; the rest (TF-TRT; TensorFlow on a host-CPU stand-in) say why not.
    measured = [row for row in variants if any(v is not None for v in row["p50_ms"].values())]
    assert {row["device"] for row in measured} == set(DEVICES)
    for row in measured:
        assert row["metrics"].get("map_50_95") is not None and row["gate"] == "passed", row
    cells = json.loads((folder / "results.json").read_text())["rows"]
    assert cells and all(cell["emulated"] for cell in cells)
    for cell in cells:
        if "unstable" in cell["flags"]:
            assert cell["unstable_reasons"], cell   # each flagged cell says why
