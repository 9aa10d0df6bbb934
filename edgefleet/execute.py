"""Execute a sealed plan: cached steps are skipped, the rest run on a backend, ``jobs`` at a time."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from edgefleet import __version__
from edgefleet.backends.base import Backend, StepRequest
from edgefleet.errors import BuildError, ToolUnavailableError
from edgefleet.plan.model import Plan, SourceInput, Step, StepInput
from edgefleet.steps.process import RESULT_FILE
from edgefleet.store import ArtifactStore

Status = Literal["cached", "built", "failed", "unavailable", "skipped"]


@dataclass
class StepOutcome:
    step: Step
    status: Status
    duration_s: float = 0.0
    message: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool | None:
        return self.manifest.get("valid") if self.manifest else None


@dataclass
class BuildSummary:
    plan: Plan
    outcomes: list[StepOutcome]

    def count(self, status: Status) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> list[StepOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def unavailable(self) -> list[StepOutcome]:
        return [o for o in self.outcomes if o.status in ("unavailable", "skipped")]

    @property
    def invalid(self) -> list[StepOutcome]:
        return [o for o in self.outcomes if o.valid is False]


def resolve_inputs(step: Step, plan: Plan, store: ArtifactStore) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for name, item in step.inputs.items():
        if isinstance(item, SourceInput):
            paths[name] = item.path
        elif isinstance(item, StepInput):
            key = plan.step(item.step_id).key
            paths[name] = store.path(key) / item.file if item.file else store.primary_file(key)
    return paths


def _run_one(step: Step, plan: Plan, store: ArtifactStore, backend: Backend, timeout_s: float,
             on_line: Callable[[str], None]) -> StepOutcome:
    started = time.monotonic()
    with store.staging(step.key) as staging, staging.log_path.open("w") as log_file:
        def log(line: str) -> None:
            log_file.write(line + "\n")
            log_file.flush()
            on_line(line)

        request = StepRequest(step.kind, step.builder, resolve_inputs(step, plan, store), step.params,
                              staging.out_dir, timeout_s)
        backend.run_step(request, log)
        result_path = staging.out_dir / RESULT_FILE
        try:
            result = json.loads(result_path.read_text())
        except (OSError, ValueError) as exc:
            raise BuildError(f"step {step.id} finished without a readable {RESULT_FILE}: {exc}") from None
        result_path.unlink()
        manifest = {
            "key": step.key, "step": step.id, "kind": step.kind, "builder": step.builder,
            "backend": backend.name, "model": plan.model, "variant": step.variant, "runtime": step.runtime,
            "inputs": {name: (item.digest if isinstance(item, SourceInput) else plan.step(item.step_id).key)
                       for name, item in step.inputs.items()},
            "params": step.params, "tool_versions": result.get("tool_versions", {}),
            "report": result.get("report", {}), "valid": bool(result.get("valid", True)),
            "invalid_reasons": result.get("invalid_reasons", []),
            "duration_s": round(time.monotonic() - started, 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "edgefleet_version": __version__, "primary_files": result.get("files", []),
            "device_files": result.get("device_files", []),
        }
        store.commit(staging, manifest)
    return StepOutcome(step, "built", time.monotonic() - started, manifest=store.manifest(step.key))


def step_description(step_id: str, line: str) -> str:
    """A running step's progress line: its id and the tail of its latest log line, shown as written
    (progress descriptions are rich markup, and a log line's "[...]" would vanish or raise)."""
    return escape(f"  {step_id}: {line[-70:]}")


def execute_plan(plan: Plan, store: ArtifactStore, backend: Backend, *, jobs: int = 1,
                 timeout_s: float = 3600.0, console: Console | None = None) -> BuildSummary:
    console = console or Console(quiet=True)
    jobs = max(1, backend.set_jobs(max(1, jobs)))
    outcomes: dict[str, StepOutcome] = {}
    pending = [s for s in plan.steps]
    for step in plan.steps:
        if store.has(step.key):
            outcomes[step.id] = StepOutcome(step, "cached", manifest=store.manifest(step.key))
    pending = [s for s in plan.steps if s.id not in outcomes]

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn(
        "{task.completed}/{task.total}"), TimeElapsedColumn(), console=console, transient=False)
    with progress, ThreadPoolExecutor(max_workers=jobs) as pool:
        overall = progress.add_task(escape(f"build {plan.model} for {plan.target}"), total=len(plan.steps),
                                    completed=len(outcomes))
        running: dict[Future[StepOutcome], tuple[Step, int]] = {}

        def blocked_by(step: Step) -> str | None:
            for dep in plan.dependencies(step):
                done = outcomes.get(dep)
                if done is not None and done.status in ("failed", "unavailable", "skipped"):
                    return dep
            return None

        while pending or running:
            for step in list(pending):
                dep = blocked_by(step)
                if dep is not None:
                    pending.remove(step)
                    outcomes[step.id] = StepOutcome(step, "skipped", message=f"needs {dep}, which was not built")
                    progress.advance(overall)
                    continue
                ready = all(outcomes.get(d) is not None and outcomes[d].status in ("cached", "built")
                            for d in plan.dependencies(step))
                if ready and len(running) < jobs:
                    pending.remove(step)
                    task = progress.add_task(f"  {step.id}", total=None)

                    def on_line(line: str, task: int = task, step: Step = step) -> None:
                        if line.startswith("+ "):
                            progress.console.print(line, markup=False, style="dim")
                        elif line.startswith("warning: "):   # e.g. a build host skipped: it must stay on screen
                            progress.console.print(line, markup=False, style="yellow")
                        progress.update(task, description=step_description(step.id, line))

                    future = pool.submit(_run_one, step, plan, store, backend, timeout_s, on_line)
                    running[future] = (step, task)
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                step, task = running.pop(future)
                progress.remove_task(task)
                progress.advance(overall)
                try:
                    outcome = future.result()
                except ToolUnavailableError as exc:
                    outcome = StepOutcome(step, "unavailable", message=str(exc))
                except BuildError as exc:
                    outcome = StepOutcome(step, "failed", message=str(exc))
                outcomes[step.id] = outcome
                mark = {"built": "[green]built[/]", "failed": "[red]FAILED[/]",
                        "unavailable": "[yellow]not built here[/]"}[outcome.status]
                progress.console.print(f"{mark} {step.id} ({outcome.duration_s:.1f} s)")
    return BuildSummary(plan, [outcomes[s.id] for s in plan.steps])
