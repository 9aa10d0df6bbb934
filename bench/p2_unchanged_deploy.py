"""P2: `deploy` of unchanged artifacts to one emulated device.

Baseline, in the same run: a first deploy (the device's workdir wiped before each one, so everything
is sent and the runtime venv provisioned). Connection setup is measured on its own (open the SSH
connection and run one command). Targets: 0 payload bytes sent on an unchanged deploy, and at most
0.5 s per device beyond connection setup (the in-process `deploy()` call; the CLI row adds the
interpreter start and imports, which P1 covers).

    .venv/bin/python bench/p2_unchanged_deploy.py [--runs 5] [--json out.json]

Takes ~3 min (a cold build of the fp32 variant and the host wheelhouse, then the first deploys).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from _common import (INVOKE, Report, Series, add_device_profiles, arguments, check_runs, console, emulated_fleet,
                     interleaved, quiet_env, run_command, throwaway_workspace, wait_for_newest_run,
                     wait_for_run)

DEVICE = "p2dev"
LIMIT_S = 0.5


def wipe_device(workdir: Path) -> None:
    """Back to a fresh board: everything but the fleet's identity file goes."""
    for entry in workdir.iterdir():
        if entry.name == "device.json":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def main() -> None:
    args = arguments(__doc__.splitlines()[0]).parse_args()
    runs = check_runs(args.runs)
    from edgefleet.api.deploy import DeployOptions, deploy
    from edgefleet.transport.registry import open_transport

    report = Report("P2", "deploy of unchanged artifacts to one emulated device")
    with throwaway_workspace("p2", models=["shapes"]) as root, emulated_fleet(root, [DEVICE]) as fleet:
        add_device_profiles(root, [DEVICE])
        device = fleet.device(DEVICE)
        workdir = Path(device.workdir)
        outcomes = []

        def deploy_once() -> float:
            start = time.perf_counter()
            outcome = deploy(DeployOptions(target=DEVICE, workspace=root), quiet_env(root))
            elapsed = time.perf_counter() - start
            outcomes.append(outcome)
            status = wait_for_run(device, outcome)  # untimed: the benchmark must not load the next deploy
            if status.get("state") != "done":
                raise SystemExit(f"the run on {DEVICE} ended {status}")
            return elapsed

        console.print("warm-up deploy (untimed): builds the fp32 variant and the host wheelhouse")
        deploy_once()

        def first() -> float:
            wipe_device(workdir)
            return deploy_once()

        def unchanged() -> float:
            return deploy_once()

        def connection() -> float:
            start = time.perf_counter()
            with open_transport(device.connection, name=DEVICE) as transport:
                transport.run(["true"])
            return time.perf_counter() - start

        def cli_unchanged() -> float:
            elapsed = run_command([INVOKE, "deploy", "--target", DEVICE], cwd=root,
                                  env={**os.environ, "COLUMNS": "200"}, expect=": 0 bytes sent")
            wait_for_newest_run(root, device)  # untimed
            return elapsed

        outcomes.clear()
        firsts = interleaved({"first deploy": first}, runs=runs, warmup=0)["first deploy"]
        first_outcomes = list(outcomes)
        outcomes.clear()
        samples = interleaved({"connection setup": connection, "unchanged deploy": unchanged}, runs=runs,
                              warmup=0)
        unchanged_outcomes = list(outcomes)
        cli = interleaved({"cli": cli_unchanged}, runs=runs, warmup=0)["cli"]

        base = report.add(Series("first deploy (deploy())", firsts))
        conn = report.add(Series("connection setup (connect + one command)", samples["connection setup"]))
        again = report.add(Series("unchanged deploy (deploy())", samples["unchanged deploy"]))
        beyond = report.add(Series("unchanged deploy - median connection setup",
                                   tuple(s - conn.median for s in again.samples)))
        report.add(Series("`invoke deploy` unchanged, whole process", cli))
        report.ratios["unchanged ÷ first"] = again.median / base.median
        sent_first = [o.applied.sent_bytes for o in first_outcomes if o.applied]
        sent_again = [o.applied.sent_bytes for o in unchanged_outcomes if o.applied]
        planned_again = [o.plan.bytes_to_send for o in unchanged_outcomes]
        report.facts["bytes sent, first deploys"] = sent_first
        report.facts["bytes sent, unchanged deploys"] = sent_again
        report.facts["files skipped, unchanged deploys"] = [len(o.applied.skipped) for o in unchanged_outcomes
                                                           if o.applied]
        report.facts["provisioned, unchanged deploys"] = [o.applied.provisioned for o in unchanged_outcomes
                                                         if o.applied]
        report.check("unchanged deploys send 0 payload bytes",
                     len(sent_again) == runs and set(sent_again) == {0} and set(planned_again) == {0})
        report.check(f"unchanged deploy <= {LIMIT_S} s beyond connection setup (median {beyond.median:.3f} s)",
                     beyond.median <= LIMIT_S)
        report.print(baseline=base)
        report.write(args.json)


if __name__ == "__main__":
    main()
