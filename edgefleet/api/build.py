"""`invoke build`: plan the matrix for one target and build what is not cached."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from edgefleet.api.context import Env
from edgefleet.backends.registry import open_backend
from edgefleet.deploy.plan import identical_variants
from edgefleet.deploy.variants import built_variants
from edgefleet.errors import BuildError, ConfigError
from edgefleet.execute import BuildSummary, execute_plan
from edgefleet.plan.model import Plan
from edgefleet.plan.workspace import load_plan
from edgefleet.store import ArtifactStore


@dataclass(frozen=True)
class BuildOptions:
    target: str
    model: str | None = None         # default: the workspace's default_model
    dry_run: bool = False
    jobs: int | None = None          # default: the workspace's jobs
    backend: str | None = None       # default: the workspace's backend
    strict: bool = False             # also fail when a step cannot run on this machine
    docker_hosts: tuple[str, ...] = ()  # default: the workspace's docker_host (docker backend only)
    workspace: Path | None = None


def plan_table(plan: Plan, store: ArtifactStore) -> Table:
    table = Table(title=f"plan: {plan.model} for {plan.target}")
    for column in ("step", "kind", "builder", "inputs", "variant", "key", "state"):
        table.add_column(column)
    for step in plan.steps:
        state = "cached" if store.has(step.key) else "to build"
        table.add_row(step.id, step.kind, step.builder, step.describe_inputs(), step.variant or "",
                      step.key[:12], state)
    return table


def summary_table(summary: BuildSummary) -> Table:
    table = Table(title=f"built: {summary.plan.model} for {summary.plan.target}")
    for column in ("step", "status", "variant", "size", "valid", "note"):
        table.add_column(column)
    for o in summary.outcomes:
        size = o.manifest.get("size_bytes")
        valid = {True: "[green]valid[/]", False: "[red bold]INVALID[/]", None: ""}[o.valid]
        reasons = "; ".join(o.manifest.get("invalid_reasons", []))
        note = reasons or (o.message.splitlines()[0] if o.message else "")
        status = {"cached": "cached", "built": "[green]built[/]", "failed": "[red]FAILED[/]",
                  "unavailable": "[yellow]not built here[/]", "skipped": "[yellow]skipped[/]"}[o.status]
        table.add_row(o.step.id, status, o.step.variant or "",
                      f"{size / 1e6:.2f} MB" if size else "", valid, note[:100])
    return table


def build(options: BuildOptions, env: Env | None = None) -> BuildSummary | Plan:
    env = env or Env()
    ws = env.workspace(options.workspace).with_docker_hosts(options.docker_hosts)
    backend_name = options.backend or ws.settings.backend
    if options.docker_hosts and backend_name != "docker":
        raise ConfigError(f"--docker-host runs steps on Docker engines, but the backend is {backend_name!r}: "
                          "add --backend docker (or set backend: docker in edgefleet.yaml)")
    plan = load_plan(ws, options.target, options.model)
    store = ArtifactStore(ws.artifacts_dir)
    if options.dry_run:
        env.console.print(plan_table(plan, store))
        for note in plan.notes:
            env.console.print(f"note: {note}")
        env.console.print("dry run: nothing was built")
        return plan
    backend = open_backend(backend_name, ws, env.environ)
    summary = execute_plan(plan, store, backend, jobs=options.jobs or ws.settings.jobs,
                           timeout_s=ws.settings.step_timeout_s, console=env.console)
    env.console.print(summary_table(summary))
    for note in plan.notes:
        env.console.print(f"note: {note}")
    for name, other in identical_variants(built_variants(plan, store, lambda _: None)).items():
        env.console.print(f"note: {name} is byte for byte {other} (the step that made it changed nothing): "
                          f"deploy measures it once, as {other}")
    for o in summary.unavailable:
        env.console.print(f"[yellow]not built here:[/] {o.step.id}: {o.message}")
    if summary.invalid:
        names = ", ".join(o.step.id for o in summary.invalid)
        env.console.print("[red bold]INVALID artifacts (failed a build check: fidelity gate or runtime "
                          f"compatibility; never shipped): {names}[/]")
    if summary.failed:
        first = summary.failed[0]
        raise BuildError(f"{len(summary.failed)} step(s) failed; first: {first.step.id}\n{first.message}")
    if options.strict and summary.unavailable:
        raise BuildError(f"{len(summary.unavailable)} step(s) could not run on this machine (--strict)")
    cached = summary.count("cached")
    env.console.print(f"{summary.count('built')} built, {cached} cached, "
                      f"{len(summary.unavailable)} not built here, {len(summary.plan.steps)} steps")
    return summary
