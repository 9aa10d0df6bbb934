"""Shared helpers for the bench/ scripts: timing, tables, throwaway workspaces and fleets.

Every script measures its target and its baseline in the same run, on the same
machine state, and reports the ratio: the host is shared and noisy, so ratios hold
where absolute times do not. These are benchmarks, not tests (pytest never collects
bench/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
INVOKE = str(Path(sys.executable).with_name("invoke"))
MIN_RUNS = 5
console = Console(highlight=False, width=160)


# -- timing ---------------------------------------------------------------------

@dataclass(frozen=True)
class Series:
    """Repeated measurements of one thing. ``unit`` is what the samples are in (s, ms, MB/s...)."""

    name: str
    samples: tuple[float, ...]
    unit: str = "s"
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "median": self.median, "min": self.min, "max": self.max}


def time_call(fn: Callable[[], object], *, runs: int = MIN_RUNS, warmup: int = 0) -> tuple[float, ...]:
    """Wall-clock seconds of ``fn()``, ``runs`` times after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return tuple(samples)


def run_command(argv: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
                timeout: float = 3600.0, expect: str | None = None) -> float:
    """Run a command to completion (it must succeed, and print ``expect`` if given); its wall-clock seconds."""
    start = time.perf_counter()
    result = subprocess.run(list(argv), cwd=cwd, env=dict(env) if env is not None else None,
                            capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                         f"{result.stderr[-3000:]}")
    if expect is not None and expect not in result.stdout:
        raise SystemExit(f"{' '.join(argv)} did not print {expect!r}:\n{result.stdout[-3000:]}")
    return elapsed


def interleaved(commands: Mapping[str, Callable[[], float]], *, runs: int = MIN_RUNS,
                warmup: int = 1, alternate: bool = False) -> dict[str, tuple[float, ...]]:
    """Run each measurement in turn, ``runs`` rounds: drift in the machine's load hits all of them alike.
    ``alternate`` reverses the order every other round (ABBA), so neither always goes first."""
    for _ in range(warmup):
        for measure in commands.values():
            measure()
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(runs):
        order = list(commands.items())
        if alternate and round_ % 2:
            order.reverse()
        for name, measure in order:
            samples[name].append(measure())
    return {name: tuple(values) for name, values in samples.items()}


def ratio(target: Series, baseline: Series) -> float:
    return target.median / baseline.median


# -- reporting ------------------------------------------------------------------

@dataclass
class Report:
    """What a script prints at the end, and optionally writes as JSON (``--json``)."""

    id: str
    title: str
    series: list[Series] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, series: Series) -> Series:
        self.series.append(series)
        return series

    def check(self, name: str, passed: bool) -> bool:
        self.checks[name] = passed
        return passed

    def print(self, baseline: Series | None = None) -> None:
        table = Table(title=f"{self.id}: {self.title}")
        for column in ("what", "n", "median", "min", "max", "unit", f"÷ {baseline.name}" if baseline else "ratio"):
            table.add_column(column, justify="left" if column == "what" else "right")
        for s in self.series:
            rel = f"{s.median / baseline.median:.3f}" if baseline and baseline.unit == s.unit else ""
            table.add_row(s.name + (f" ({s.note})" if s.note else ""), str(len(s.samples)),
                          _fmt(s.median), _fmt(s.min), _fmt(s.max), s.unit, rel)
        console.print(table)
        for name, value in self.ratios.items():
            console.print(f"ratio  {name}: {value:.3f}")
        for name, value in self.facts.items():
            console.print(f"fact   {name}: {value}")
        for name, passed in self.checks.items():
            console.print(f"{'[green]PASS[/]' if passed else '[red bold]MISS[/]'}   {name}")
        console.print(f"machine: {machine_description()}")

    def write(self, path: Path | None) -> None:
        if path is None:
            return
        data = {"id": self.id, "title": self.title, "series": [s.as_dict() for s in self.series],
                "ratios": self.ratios, "checks": self.checks, "facts": self.facts,
                "machine": machine_description(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python " \
           f"{platform.python_version()}, load average {load}"


def arguments(description: str, *, runs: int = MIN_RUNS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=runs, help=f"timed runs per measurement (>= {MIN_RUNS})")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser


def check_runs(runs: int) -> int:
    if runs < MIN_RUNS:
        raise SystemExit(f"--runs must be at least {MIN_RUNS}: a median of fewer means little here")
    return runs


# -- throwaway workspaces and fleets ---------------------------------------------

WORKSPACE_PARTS = ("targets", "builders", "templates", "models")


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"edgefleet-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def throwaway_workspace(prefix: str, *, settings: str = "backend: local\njobs: 2\n",
                        models: Sequence[str] | None = None) -> Iterator[Path]:
    """A copy of the repository's targets, builders, templates and models, with no cache at all."""
    with scratch_dir(prefix) as tmp:
        root = tmp / "ws"
        root.mkdir()
        for name in WORKSPACE_PARTS:
            source = REPO / name
            if name == "models" and models is not None:
                for model in models:
                    shutil.copytree(source / model, root / name / model)
            elif source.exists():
                shutil.copytree(source, root / name)
        shutil.copy(REPO / "tasks.py", root / "tasks.py")
        (root / "edgefleet.yaml").write_text(settings)
        yield root


# An x86_64 board whose runtime the device provides: the emulated device gets this host's wheelhouse.
DEVICE_PROFILE = """\
description: an emulated bench board
device: {{board: bench board {name}, arch: x86_64, os: bench, python: "3.11"}}
runtime: {{name: ai-edge-litert, provided_by: device}}
formats:
  tflite: {{quantizations: [{quantizations}]}}
bench: {{threads: [{threads}], warmup_runs: {warmup}, min_runs: {min_runs}, min_duration_s: {min_duration},
        max_runs: {max_runs}, cooldown_s: 0.0}}
transport: {{kind: ssh, host: {name}.invalid}}
workdir: /opt/edgefleet-{name}
"""
# The host wheelhouse without the optional onnxruntime keeps the first push small.
LOCAL_PROFILE = """\
extends: builtin:local
runtime:
  name: ai-edge-litert
  packages: ["ai-edge-litert==2.3.0", "numpy>=1.24,<3"]
  optional_packages: []
  platform_tags: [manylinux_2_17_x86_64, manylinux2014_x86_64, manylinux_2_28_x86_64, manylinux_2_27_x86_64]
"""


def add_device_profiles(root: Path, names: Sequence[str], *, quantizations: str = "fp32", threads: str = "1",
                        warmup: int = 1, min_runs: int = 5, min_duration: float = 0.0, max_runs: int = 5) -> None:
    for name in names:
        (root / "targets" / f"{name}.yaml").write_text(DEVICE_PROFILE.format(
            name=name, quantizations=quantizations, threads=threads, warmup=warmup, min_runs=min_runs,
            min_duration=min_duration, max_runs=max_runs))
    (root / "targets" / "local.yaml").write_text(LOCAL_PROFILE)


@contextmanager
def emulated_fleet(root: Path, names: Sequence[str]) -> Iterator[Any]:
    """Real sshd devices (network namespaces as root), registered in the workspace's inventory."""
    from edgefleet.deploy.devices import fleet_dir
    from edgefleet.fleet import DeviceSpec, EmulatedFleet

    specs = [DeviceSpec(name=n, stands_in_for=f"bench board {n}", arch="x86_64") for n in names]
    with EmulatedFleet(fleet_dir(root / ".edgefleet"), specs) as fleet:
        yield fleet


def quiet_env(root: Path) -> Any:
    from edgefleet.api.context import Env
    from edgefleet.console import make_console

    return Env(console=make_console(quiet=True), cwd=root)


def wait_for_run(device: Any, outcome: Any, timeout_s: float = 600.0) -> dict[str, Any]:
    """Follow a detached run started by ``deploy()`` to its end (outside any timed section)."""
    from edgefleet.deploy.plan import StartAgent

    start = next(a for a in outcome.plan.actions if isinstance(a, StartAgent))
    return follow(device, start.agent, start.run_dir, timeout_s)


def wait_for_newest_run(root: Path, device: Any, timeout_s: float = 600.0) -> dict[str, Any]:
    """Follow the newest run recorded for ``device`` (one started from the CLI) to its end."""
    from edgefleet.runs import load_runs

    records = [r for r in load_runs(root / ".edgefleet") if r.device == device.name]
    newest = max(records, key=lambda r: (r.started, r.run_id))
    return follow(device, newest.agent, f"{newest.workdir}/runs/{newest.run_id}", timeout_s)


def follow(device: Any, agent: str, run_dir: str, timeout_s: float) -> dict[str, Any]:
    from edgefleet.api.deploy import follow_run
    from edgefleet.transport.registry import open_transport

    python = f"{device.workdir}/runtime/venv/bin/python"
    with open_transport(device.connection, name=device.name) as transport:
        status: dict[str, Any] = follow_run(transport, python, agent, run_dir, lambda _: None,
                                            poll_s=0.2, timeout_s=timeout_s)
    return status


def read_results(device: Any, outcome: Any) -> list[dict[str, Any]]:
    """The agent's results.jsonl lines for a run (the namespaces share this host's filesystem)."""
    path = Path(device.workdir) / "runs" / outcome.run_id / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
