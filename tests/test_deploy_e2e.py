"""Deploy -> detached benchmark -> collect, end to end, against real sshd devices in network namespaces.

Two emulated devices run their benchmarks at the same time; a re-deploy sends no file bytes; a held lock
names its holder; collecting twice leaves the results DB byte-identical; the report renders with plots.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from collections import Counter
from pathlib import Path

import pytest

from edgefleet.api.collect import CollectOptions, collect_benchmarks, results_db_path
from edgefleet.api.context import Env
from edgefleet.api.deploy import DeployOptions, deploy, follow_run
from edgefleet.console import make_console
from edgefleet.deploy.devices import fleet_dir
from edgefleet.deploy.lock import DeviceLock
from edgefleet.errors import DeviceBusyError
from edgefleet.fleet import DeviceSpec, EmulatedFleet
from edgefleet.profiles.load import load_profile
from edgefleet.recipes.load import load_recipe
from edgefleet.transport.registry import open_transport
from edgefleet.transport.ssh import SshTransport
from edgefleet.workspace import open_workspace
from fleet_fixtures import require_fleet_tools

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.ssh, pytest.mark.convert, pytest.mark.slow]

DEVICE_PROFILE = """\
description: an x86_64 test board
device: {{board: test board {name}, arch: x86_64, os: test, python: "3.11"}}
runtime: {{name: ai-edge-litert, provided_by: device}}
formats:
  tflite: {{quantizations: [fp32, full-int8]}}
bench: {{threads: [1, 2], warmup_runs: 2, min_runs: 10, min_duration_s: 0.2, cooldown_s: 0.0}}
transport: {{kind: ssh, host: {name}.invalid}}
workdir: /opt/edgefleet-{name}
"""
# The host wheelhouse without the optional onnxruntime keeps the push small.
LOCAL_PROFILE = """\
extends: builtin:local
runtime:
  name: ai-edge-litert
  packages: ["ai-edge-litert==2.3.0", "numpy>=1.24,<3"]
  optional_packages: []
  platform_tags: [manylinux_2_17_x86_64, manylinux2014_x86_64, manylinux_2_28_x86_64, manylinux_2_27_x86_64]
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    require_fleet_tools()
    root = tmp_path_factory.mktemp("ws")
    for name in ("targets", "templates", "builders", "models"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, root / name)
    (root / "edgefleet.yaml").write_text("backend: local\njobs: 2\n")
    for name in ("dev-a", "dev-b"):
        (root / "targets" / f"{name}.yaml").write_text(DEVICE_PROFILE.format(name=name))
    (root / "targets" / "local.yaml").write_text(LOCAL_PROFILE)
    devices = [DeviceSpec(name=n, stands_in_for=f"test board {n}", arch="x86_64") for n in ("dev-a", "dev-b")]
    with EmulatedFleet(fleet_dir(root / ".edgefleet"), devices) as fleet:
        yield root, fleet


def env() -> Env:
    return Env(console=make_console(quiet=True))


def test_deploy_bench_collect_on_two_devices_at_once(ws):
    root, fleet = ws
    first = deploy(DeployOptions(target="dev-a", workspace=root), env())
    second = deploy(DeployOptions(target="dev-b", workspace=root), env())
    assert first.applied and first.applied.provisioned and first.applied.sent_bytes > 0
    assert first.plan.cells == 4  # 2 variants x 2 thread counts on the cpu delegate
    for outcome in (first, second):
        device = fleet.device(outcome.device)
        with open_transport(device.connection, name=outcome.device) as transport:
            run_dir = f"{device.workdir}/runs/{outcome.run_id}"
            python = f"{device.workdir}/runtime/venv/bin/python"
            agent = next(a.agent for a in outcome.plan.actions if hasattr(a, "agent"))
            status = follow_run(transport, python, agent, run_dir, lambda _: None, poll_s=0.5, timeout_s=300)
            assert status["state"] == "done", status

    collected = collect_benchmarks(CollectOptions(workspace=root), env())
    assert sorted(collected.run_ids) == sorted([first.run_id, second.run_id])
    db_path = results_db_path(open_workspace(root))
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT device, variant, threads, status, p50_ms FROM cells").fetchall()
        states = dict(db.execute("SELECT device, state FROM runs").fetchall())
        emulated = {r[0] for r in db.execute("SELECT emulated FROM runs").fetchall()}
    assert len(rows) == 8 and all(r[3] == "ok" and r[4] > 0 for r in rows)
    assert {r[1] for r in rows} == {"tflite-fp32", "tflite-full-int8"}
    assert states == {"dev-a": "done", "dev-b": "done"}
    assert emulated == {1}

    # Both devices are this host: their timed sections took turns on the shared lock, never overlapping.
    with sqlite3.connect(db_path) as db:
        spans = sorted((json.loads(raw)["timed_start"], json.loads(raw)["timed_end"], device)
                       for device, raw in db.execute("SELECT device, raw FROM cells"))
    assert {d for _, _, d in spans} == {"dev-a", "dev-b"}
    for (_, end, _), (start, _, _) in zip(spans, spans[1:]):
        assert end <= start, spans

    report = collected.report
    assert report is not None
    html = report.html.read_text()
    assert "emulated" in html and "tflite-full-int8" in html
    assert report.plots and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in report.plots)

    before = _dump(db_path)
    collect_benchmarks(CollectOptions(workspace=root), env())
    assert _dump(db_path) == before  # collecting again changes nothing


def test_redeploy_sends_no_file_bytes_in_four_round_trips(ws, monkeypatch):
    root, fleet = ws
    deploy(DeployOptions(target="dev-a", workspace=root, wait=True), env())
    commands: list[list[str]] = []
    real_run = SshTransport.run

    def counted(self, argv, **kwargs):  # the real command runs; the test only writes down what it was
        commands.append(list(argv))
        return real_run(self, argv, **kwargs)

    monkeypatch.setattr(SshTransport, "run", counted)
    again = deploy(DeployOptions(target="dev-a", workspace=root), env())
    monkeypatch.undo()
    assert again.applied is not None
    assert again.applied.sent_bytes == 0 and again.applied.uploaded == []
    assert not again.applied.provisioned
    assert again.plan.bytes_to_send == 0
    # Each remote command is a round trip and a process start on the device: facts probe, take the lock,
    # write run.json and start the agent, release the lock.
    assert len(commands) == 4, commands
    assert commands[2][2:5] == ["start", again.plan.actions[-1].run_dir, "--config"]
    device = fleet.device("dev-a")
    with open_transport(device.connection, name="dev-a") as transport:
        start = again.plan.actions[-1]
        status = follow_run(transport, f"{device.workdir}/runtime/venv/bin/python", start.agent, start.run_dir,
                            lambda _: None, poll_s=0.2, timeout_s=300)
    assert status["state"] == "done"
    assert not (Path(device.workdir) / ".lock").exists()


def test_dry_run_sends_nothing_and_lists_skips(ws):
    root, fleet = ws
    dry = deploy(DeployOptions(target="dev-b", workspace=root, dry_run=True), env())
    assert dry.applied is None
    device = fleet.device("dev-b")
    with open_transport(device.connection, name="dev-b") as transport:
        listing = transport.run(["ls", f"{device.workdir}/runs"]).stdout.split()
    assert dry.run_id not in listing


def test_busy_device_names_the_holder(ws):
    root, fleet = ws
    device = fleet.device("dev-b")
    with open_transport(device.connection, name="dev-b") as transport:
        with DeviceLock(transport, device.workdir, "run-that-holds-it"):
            with pytest.raises(DeviceBusyError, match="busy: held by run run-that-holds-it since"):
                deploy(DeployOptions(target="dev-b", workspace=root), env())


def _dump(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return "\n".join(db.iterdump())



def test_a_deploy_loads_its_profile_and_recipe_once(ws, monkeypatch):
    """Validate once at load, then pass typed values inward: one deploy, one load of each."""
    root, _ = ws
    loads: Counter[tuple[str, str]] = Counter()
    for original, what in ((load_profile, "profile"), (load_recipe, "recipe")):
        def counting(*args, _original=original, _what=what, **kwargs):
            loaded = _original(*args, **kwargs)
            loads[(_what, loaded.profile.name if _what == "profile" else loaded.recipe.name)] += 1
            return loaded
        for module in list(sys.modules.values()):  # every module that imported the loader by name
            if getattr(module, original.__name__, None) is original:
                monkeypatch.setattr(module, original.__name__, counting)
    outcome = deploy(DeployOptions(target="dev-a", wait=True, workspace=root), env())
    assert outcome.final_status and outcome.final_status["state"] == "done"
    assert loads[("profile", "dev-a")] == 1 and loads[("recipe", "shapes")] == 1, loads
    # The host-CPU stand-in's wheels come from this host's profile: a different target, loaded once too.
    assert loads[("profile", "local")] == 1, loads
