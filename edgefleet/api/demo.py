"""`invoke demo`: the whole flow on the bundled model and the emulated fleet, start to report."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgefleet.api.build import BuildOptions, build
from edgefleet.api.collect import CollectOptions, CollectOutcome, collect_benchmarks
from edgefleet.api.context import Env
from edgefleet.api.deploy import DeployOptions, deploy
from edgefleet.api.fleet import FleetDownOptions, FleetUpOptions, down, up
from edgefleet.fleet.devices import DEFAULT_DEVICES
from edgefleet.profiles.load import profile_paths

# Short runs so the demo ends in minutes; real profiles keep MLPerf-style durations. A qemu-user fleet
# chooses its own (slower CPU) settings, so these apply to the host-CPU fleet only.
QUICK_BENCH = (("warmup_runs", 3), ("min_runs", 20), ("min_duration_s", 0.3), ("cooldown_s", 0.1))


@dataclass(frozen=True)
class DemoOptions:
    devices: tuple[str, ...] = DEFAULT_DEVICES
    keep_fleet: bool = False
    emulate: str = "qemu"        # see FleetUpOptions.emulate
    evaluate: bool = True        # on-device accuracy beside latency
    labgrid: bool = False        # publish the fleet in a labgrid lab here; every deploy and collect reserves its place
    workspace: Path | None = None


def demo(options: DemoOptions, env: Env | None = None) -> CollectOutcome:
    env = env or Env()
    ws = env.workspace(options.workspace)
    say = env.console.rule
    for target in profile_paths(ws.targets_dir):
        model = ws.settings.demo_models.get(target, ws.settings.default_model)
        say(f"build: {model} for {target}")
        build(BuildOptions(target=target, model=model, workspace=ws.root), env)
    isolation = "netns" if os.geteuid() == 0 else "loopback"
    lab = ", in a labgrid lab" if options.labgrid else ""
    say(f"emulated fleet ({isolation}, {options.emulate}{lab}): {', '.join(options.devices)}")
    up(FleetUpOptions(devices=options.devices, isolation=isolation, emulate=options.emulate, labgrid=options.labgrid,
                      workspace=ws.root), env)
    bench = QUICK_BENCH if options.emulate == "host" else ()
    try:
        run_ids = []
        # One device at a time: emulated devices share this host's cores, so parallel runs would
        # measure each other.
        for device in options.devices:
            say(f"deploy and benchmark: {device}")
            outcome = deploy(DeployOptions(target=device, model=ws.settings.demo_models.get(device), wait=True,
                                           bench_overrides=bench, eval=options.evaluate, workspace=ws.root), env)
            run_ids.append(outcome.run_id)
        say("collect")
        return collect_benchmarks(CollectOptions(runs=tuple(run_ids), workspace=ws.root), env)
    finally:
        if not options.keep_fleet:
            down(FleetDownOptions(workspace=ws.root), env)
