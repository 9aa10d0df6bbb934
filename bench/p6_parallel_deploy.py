"""P6: deploying to 8 emulated devices at once against deploying to 1.

Eight threads call `edgefleet.api.deploy.deploy(..., wait=False)`, one per device, and the wall time
until all have returned is compared with one device's deploy, alternating, >= 5 rounds each. Two
scenarios: new artifacts (each device's artifacts, agent and samples removed before the round, so
they are sent again; the runtime venv stays) and unchanged artifacts. With --with-provisioning also
fresh devices (the runtime venv built by pip on each device: CPU work, and every emulated device's CPU
is this host's two cores).

The benchmarks themselves run after deploy returns, detached. Emulated devices share this host, so
deploy names one host-wide lock (run.json `bench.exclusive_lock`) around each agent's timed section;
after every round the script waits for all runs and checks from the agents' `timed_start`/`timed_end`
in results.jsonl that no two timed sections overlapped. Target: 8 devices <= 1.5x one device's wall time.

    .venv/bin/python bench/p6_parallel_deploy.py [--runs 5] [--devices 8] [--with-provisioning] [--rtt-ms 10]
        [--json out.json]

--rtt-ms adds a network round trip to every device's SSH link (bench/_delay_proxy.py, a user-space proxy:
this kernel has no netem). Emulated devices otherwise answer at loopback speed, so a deploy is pure CPU
and eight of them on two cores cannot overlap; a real fleet's deploys spend much of their time waiting
on the network.

Takes ~4 min (~10 min with --with-provisioning).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import (Report, Series, add_device_profiles, arguments, check_runs, console, emulated_fleet,
                     interleaved, quiet_env, read_results, throwaway_workspace, wait_for_run)

LIMIT = 1.5


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--with-provisioning", action="store_true",
                        help="also measure fresh devices, runtime venv built on each")
    parser.add_argument("--rtt-ms", type=float, default=0.0,
                        help="give every device's SSH link this round-trip time (a delaying proxy; no netem here)")
    args = parser.parse_args()
    runs = check_runs(args.runs)
    from edgefleet.api.deploy import DeployOptions, deploy

    names = [f"p6dev{i}" for i in range(args.devices)]
    report = Report("P6", f"deploy to {args.devices} emulated devices in parallel vs 1"
                    + (f", {args.rtt_ms:g} ms round trip" if args.rtt_ms else ""))
    with throwaway_workspace("p6", models=["shapes"]) as root, emulated_fleet(root, names) as fleet, \
            delayed_links(fleet, args.rtt_ms):
        # Short timed sections (one cell, 50 runs) keep the queue on the shared lock short.
        add_device_profiles(root, names, warmup=5, min_runs=50, max_runs=50)
        devices = {n: fleet.device(n) for n in names}
        rounds: list[list[tuple[Any, Any]]] = []   # (device, outcome) of every deploy
        records: list[tuple[str, dict]] = []        # (device, results.jsonl line) of every run, for the overlap check
        usage: dict[int, list[tuple[float, float]]] = {}  # devices -> (host cores busy, orchestrator CPU s)

        def deploy_to(group: list[str]) -> float:
            host_before, own_before = host_cpu(), own_cpu()
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=len(group)) as pool:
                outcomes = list(pool.map(
                    lambda n: deploy(DeployOptions(target=n, workspace=root, wait=False), quiet_env(root)), group))
            elapsed = time.perf_counter() - start
            busy, total = (a - b for a, b in zip(host_cpu(), host_before, strict=True))
            usage.setdefault(len(group), []).append((busy / total * (os.cpu_count() or 1), own_cpu() - own_before))
            done = [(devices[o.device], o) for o in outcomes]
            for device, outcome in done:  # untimed: the runs finish before the next round starts
                status = wait_for_run(device, outcome)
                if status.get("state") != "done":
                    raise SystemExit(f"the run on {outcome.device} ended {status}")
                # Read now: a later round may wipe the device's runs/.
                records.extend((device.name, r) for r in read_results(device, outcome))
            rounds.append(done)
            return elapsed

        def wipe(group: list[str], keep: tuple[str, ...]) -> None:
            for n in group:
                for entry in Path(devices[n].workdir).iterdir():
                    if entry.name in keep:
                        continue
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

        console.print(f"warm-up (untimed): build, then one deploy per device provisions its runtime")
        for n in names:
            deploy_to([n])

        scenarios = {
            "new artifacts": ("device.json", "runtime", "wheelhouse", "runs"),
            "unchanged": None,
        }
        if args.with_provisioning:
            scenarios = {"fresh devices (runtime provisioned)": ("device.json",), **scenarios}
        for scenario, keep in scenarios.items():
            def one(keep: tuple[str, ...] | None = keep) -> float:
                if keep is not None:
                    wipe(names[:1], keep)
                return deploy_to(names[:1])

            def many(keep: tuple[str, ...] | None = keep) -> float:
                if keep is not None:
                    wipe(names, keep)
                return deploy_to(names)

            first_round = len(rounds)
            usage.clear()
            samples = interleaved({"1": one, "n": many}, runs=runs, warmup=0)
            single = report.add(Series(f"{scenario}: 1 device", samples["1"]))
            parallel = report.add(Series(f"{scenario}: {args.devices} devices in parallel", samples["n"]))
            report.ratios[f"{scenario}: {args.devices} ÷ 1"] = parallel.median / single.median
            for count, values in sorted(usage.items()):
                cores = statistics.median(v[0] for v in values)
                own = statistics.median(v[1] for v in values) / count
                report.facts[f"{scenario}, {count} device(s): host cores busy / orchestrator CPU per deploy"] = \
                    f"{cores:.2f} of {os.cpu_count()} / {own:.3f} s"
            # Every emulated device computes on this host: N deploys need N times one deploy's CPU time
            # (orchestrator, sshd, the device-side Pythons), and two cores give at most two seconds of it
            # per second. (Host-wide: another job's load counts too, so this errs high.)
            one_deploy = statistics.median(v[0] for v in usage[1]) * single.median
            bound = args.devices * one_deploy / (os.cpu_count() or 1)
            report.facts[f"{scenario}: CPU of one deploy, all processes / {args.devices} devices' lower bound"] = \
                f"{one_deploy:.2f} core-s / {bound:.2f} s = {bound / single.median:.1f}x one device"
            sent = [o.applied.sent_bytes for group in rounds[first_round:] for _, o in group if o.applied]
            report.facts[f"{scenario}: bytes sent per device deploy (min..max)"] = f"{min(sent):,}..{max(sent):,}"
            if keep is None or "runtime" in keep:
                report.check(f"{scenario}: {args.devices} devices <= {LIMIT}x one device's wall time",
                             parallel.median <= LIMIT * single.median)

        overlaps, sections, waited, deploy_waits = timed_sections(records)
        report.facts["timed sections checked / overlapping pairs"] = f"{sections} / {overlaps}"
        report.facts["runs that waited for the host lock"] = waited
        report.facts["timed sections that waited for a deploy on the host"] = deploy_waits
        report.facts["exclusive lock"] = lock_of(rounds)
        if args.rtt_ms:
            report.facts["link"] = (f"{args.rtt_ms:g} ms round trip added by bench/_delay_proxy.py (latency only: "
                                    "no bandwidth or TCP window limit)")
        report.check("no two timed sections on this host overlapped", overlaps == 0 and sections > 0)
        report.print()
        report.write(args.json)


def host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host: every emulated device runs on these cores."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


@contextmanager
def delayed_links(fleet: Any, rtt_ms: float) -> Iterator[None]:
    """Route deploys to every device through a proxy that adds ``rtt_ms`` per round trip.

    The inventory (what deploy reads) points at the proxy while this lasts, with the devices' host keys
    recorded for the proxy's addresses; the fleet's own objects keep the direct links (untimed waits)."""
    if not rtt_ms:
        yield
        return
    from edgefleet.deploy.inventory import INVENTORY_FILE, load_inventory, save_inventory
    from edgefleet.transport.hostkeys import host_key_name

    state_dir = Path(fleet.state_dir)
    inventory_file = state_dir / INVENTORY_FILE
    saved_inventory = inventory_file.read_bytes()
    inventory = load_inventory(state_dir)
    known_hosts = Path(next(iter(inventory.devices.values())).connection.known_hosts)
    saved_known = known_hosts.read_bytes()
    targets = [f"{n}={d.connection.host}:{d.connection.port or 22}" for n, d in inventory.devices.items()]
    proxy = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_delay_proxy.py")),
                              "--one-way-ms", str(rtt_ms / 2), *targets], stdout=subprocess.PIPE, text=True)
    try:
        ports = json.loads(proxy.stdout.readline() or "{}")  # type: ignore[union-attr]
        if set(ports) != set(inventory.devices):
            raise SystemExit(f"the delay proxy did not start (exit {proxy.poll()})")
        keys = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in saved_known.decode().splitlines() if line}
        lines = []
        devices = {}
        for name, device in inventory.devices.items():
            c = device.connection
            key = keys[host_key_name(c.host, c.port or 22)]
            lines.append(f"{host_key_name('127.0.0.1', ports[name])} {key}")
            devices[name] = device.model_copy(update={"connection": c.model_copy(
                update={"host": "127.0.0.1", "port": ports[name]})})
        known_hosts.write_bytes(saved_known + ("\n".join(lines) + "\n").encode())
        save_inventory(inventory.model_copy(update={"devices": devices}), state_dir)
        yield
    finally:
        inventory_file.write_bytes(saved_inventory)
        known_hosts.write_bytes(saved_known)
        proxy.kill()
        proxy.wait()


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def timed_sections(records: list[tuple[str, dict]]) -> tuple[int, int, str, str]:
    """Overlapping neighbours among every cell's [timed_start, timed_end] (all devices share this host).
    Sorted by start, any overlap at all shows up between neighbours, so 0 means none."""
    spans = []
    waited = 0
    deploy_waits = 0
    for device, record in records:
        if record.get("status") != "ok":
            raise SystemExit(f"{device}: cell {record['cell']} {record['status']}: {record['reason']}")
        if "timed_start" not in record:
            raise SystemExit("the agent does not record timed_start/timed_end: no proof possible")
        spans.append((datetime.fromisoformat(record["timed_start"]), datetime.fromisoformat(record["timed_end"]),
                      device))
        waited += 1 if (record.get("exclusive_wait_ms") or 0) > 1.0 else 0
        deploy_waits += 1 if (record.get("deploy_wait_ms") or 0) > 1.0 else 0
    spans.sort()
    overlaps = sum(1 for a, b in zip(spans, spans[1:]) if b[0] < a[1])
    return overlaps, len(spans), f"{waited} of {len(spans)} cells", f"{deploy_waits} of {len(spans)}"


def lock_of(rounds: list[list[tuple[Any, Any]]]) -> str:
    from edgefleet.deploy.plan import WriteRunConfig

    locks = {json.dumps(a.config["bench"].get("exclusive_lock")) for group in rounds for _, o in group
             for a in o.plan.actions if isinstance(a, WriteRunConfig)}
    return ", ".join(sorted(locks))


if __name__ == "__main__":
    main()
