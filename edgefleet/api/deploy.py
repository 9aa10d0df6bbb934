"""`invoke deploy`: build what is missing, then facts -> plan -> apply on one device, and start the run."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from edgefleet.agent.bundle import build_agent_bundle
from edgefleet.api.context import Env
from edgefleet.backends.registry import open_backend
from edgefleet.deploy.apply import ApplyResult, apply_plan, runtime_python
from edgefleet.deploy.benchmark_model import deploy_benchmark_model
from edgefleet.deploy.devices import DEFAULT_LAB_WAIT_S, DeviceAddress, lab_connection, resolve_device
from edgefleet.deploy.evalspec import eval_request, gate_config
from edgefleet.deploy.facts import gather_facts
from edgefleet.deploy.follow import FINAL_STATES, agent_status, follow_run  # noqa: F401  (the API's follow helpers)
from edgefleet.deploy.plan import (DeployPlan, DeployRequest, LocalFile, ProvisionRuntime, Skip, StartAgent,
                                   Upload, Variant, WriteRunConfig, expected_files, os_modules, plan_deploy)
from edgefleet.deploy.variants import built_variants, local_file
from edgefleet.errors import DeployError
from edgefleet.evaluation.kinds import for_recipe
from edgefleet.execute import execute_plan
from edgefleet.plan.model import Plan
from edgefleet.plan.workspace import plan_for
from edgefleet.profiles.load import load_profile
from edgefleet.profiles.model import Formats, Profile
from edgefleet.recipes.load import LoadedRecipe, load_recipe
from edgefleet.recipes.photos import calibration_data
from edgefleet.runs import RunRecord, new_run_id, save_run
from edgefleet.runtimes import runtime_for_profile, ships_wheels
from edgefleet.store import ArtifactStore
from edgefleet.transport.base import Transport
from edgefleet.transport.registry import open_transport
from edgefleet.workspace import Workspace

HOST_TARGET = "local"  # a host-CPU stand-in runs this host's CPU, so it gets this host's runtime wheels


@dataclass(frozen=True)
class DeployOptions:
    target: str
    model: str | None = None
    device: str | None = None        # an emulated-fleet device name; default: the target's name
    dry_run: bool = False
    wait: bool = False
    eval: bool = False
    lock_wait_s: float = 0.0
    lab_wait_s: float = DEFAULT_LAB_WAIT_S   # a board in a labgrid place: how long to wait in the lab's queue
    backend: str | None = None
    # Replaces fields of the profile's bench block for this run (the demo's short runs); recorded in run.json.
    bench_overrides: tuple[tuple[str, float], ...] = ()
    workspace: Path | None = None


@dataclass
class DeployOutcome:
    run_id: str
    device: str
    plan: DeployPlan
    applied: ApplyResult | None
    final_status: dict | None = None


def host_runtime_plan(ws: Workspace, recipe: LoadedRecipe) -> tuple[Profile, Plan]:
    """This host's profile and a plan of its runtime wheelhouse alone: its formats need not even plan from the
    recipe (a SavedModel source has no savedmodel step), and the wheelhouse's key does not depend on them."""
    host = load_profile(ws.targets_dir, HOST_TARGET).profile
    return host, plan_for(ws, host.model_copy(update={"formats": Formats.model_construct()}), recipe)


def wheelhouse_files(ws: Workspace, profile: Profile, plan: Plan, recipe: LoadedRecipe, address: DeviceAddress,
                     env: Env, backend_name: str | None) -> tuple[list[LocalFile], tuple[str, ...], str]:
    """The runtime wheels for the device's real CPU, built (or cached) now."""
    # A host-CPU stand-in (`--emulate host`) is this host with nothing installed: it gets this host's runtime
    # wheels. A qemu-user device runs the board's own architecture and gets the board's wheels.
    source_profile = profile
    if address.host_cpu:
        source_profile, plan = host_runtime_plan(ws, recipe)
    runtime = source_profile.runtime
    if not ships_wheels(runtime):
        return [], (), f"provided by the device: {runtime.note or runtime.name}"
    step = plan.step("runtime/wheelhouse")
    store = ArtifactStore(ws.artifacts_dir)
    if not store.has(step.key):
        backend = open_backend(backend_name or ws.settings.backend, ws, env.environ)
        single = Plan(plan.target, plan.model, (step,))
        summary = execute_plan(single, store, backend, console=env.console)
        if summary.failed or summary.unavailable:
            raise DeployError(f"cannot make the runtime wheelhouse for {source_profile.name}: "
                              f"{(summary.failed or summary.unavailable)[0].message}")
    folder = store.path(step.key)
    wheels = [local_file(p) for p in sorted(folder.rglob("*.whl"))]
    present = {p.path.name.split("-")[0].lower().replace("_", "-") for p in wheels}
    requirements = list(runtime.packages)
    for optional in runtime.optional_packages:
        name = optional.split("=")[0].split("<")[0].split(">")[0].strip().lower().replace("_", "-")
        if name in present:
            requirements.append(optional)
    return wheels, tuple(requirements), f"wheels for {source_profile.name} ({len(wheels)} files)"


def with_bench(profile: Profile, overrides: dict[str, float]) -> Profile:
    """The profile with the fleet's bench settings for its device, then the caller's, over its own."""
    if not overrides:
        return profile
    bench = type(profile.bench).model_validate({**profile.bench.model_dump(), **overrides})
    return profile.model_copy(update={"bench": bench})


def emulation_config(address: DeviceAddress, options: DeployOptions) -> dict | None:
    """What run.json (and so every result) says about the emulation, including whose bench settings ran."""
    if not address.emulated:
        return None
    return {**address.emulation, "bench_from_fleet": dict(address.bench),
            "bench_from_caller": dict(options.bench_overrides)}


def plan_table(plan: DeployPlan) -> Table:
    table = Table(title=f"deploy plan: run {plan.run_id} on {plan.device}")
    table.add_column("action")
    table.add_column("what")
    table.add_column("where")
    table.add_column("bytes", justify="right")
    for action in plan.actions:
        if isinstance(action, Upload):
            table.add_row("upload", escape(action.what), escape(action.remote), f"{action.size:,}")
        elif isinstance(action, Skip):
            table.add_row("[dim]skip (same sha256 on device)[/]", escape(action.what), escape(action.remote), "0")
        elif isinstance(action, ProvisionRuntime):
            table.add_row("provision runtime", escape(" ".join(action.requirements)), escape(action.wheelhouse), "")
        elif isinstance(action, WriteRunConfig):
            table.add_row("write run config", f"{len(action.config['cells'])} cells", escape(action.remote), "")
        elif isinstance(action, StartAgent):
            table.add_row("start agent (detached)", escape(action.agent), escape(action.run_dir), "")
    return table


@dataclass(frozen=True)
class PreparedDeploy:
    """Everything a deploy sends, made on this host: the first of deploy's two phases."""

    request: DeployRequest
    address: DeviceAddress
    model: str
    runtime_note: str
    state_dir: Path


def prepare_deploy(options: DeployOptions, env: Env) -> PreparedDeploy:
    """Load the profile and recipe once, plan, build what is missing, and make the wheelhouse, the agent
    bundle and the evaluation pack. Nothing here touches the device."""
    say = env.console.print
    ws = env.workspace(options.workspace)
    profile = load_profile(ws.targets_dir, options.target).profile
    if profile.device.python is None and runtime_for_profile(profile.runtime.name).agent:
        raise DeployError(f"target {profile.name!r} has no Python on the device, and its runtime "
                          f"{profile.runtime.name!r} runs in the edgefleet agent, which needs it: set device.python "
                          "or choose a runtime measured by a device binary (tflite-benchmark-model)")
    recipe = load_recipe(ws.models_dir, options.model or ws.settings.default_model)
    address = resolve_device(profile, ws.state_dir, options.device)  # a wrong --device fails before any build
    plan = plan_for(ws, profile, recipe)
    store = ArtifactStore(ws.artifacts_dir)
    if not options.dry_run:
        backend = open_backend(options.backend or ws.settings.backend, ws, env.environ)
        execute_plan(plan, store, backend, jobs=ws.settings.jobs, timeout_s=ws.settings.step_timeout_s,
                     console=env.console)
    wheels, requirements, runtime_note = wheelhouse_files(ws, profile, plan, recipe, address, env, options.backend) \
        if not options.dry_run else ([], (), "not resolved in a dry run")
    request = _request(ws, options, with_bench(profile, {**address.bench, **dict(options.bench_overrides)}),
                       recipe, address, built_variants(plan, store, say), wheels, requirements)
    return PreparedDeploy(request, address, recipe.recipe.name, runtime_note, ws.state_dir)


def _request(ws: Workspace, options: DeployOptions, profile: Profile, recipe: LoadedRecipe,
             address: DeviceAddress, variants: list[Variant], wheels: list[LocalFile],
             requirements: tuple[str, ...]) -> DeployRequest:
    agent = build_agent_bundle(ws.state_dir / "agent")
    # plan_for packed the calibration images already: this only finds them in the cache.
    samples_path = calibration_data(recipe, ws.downloads_dir, log=lambda line: None).path
    evaluation = eval_request(recipe, ws.state_dir / "eval", ws.downloads_dir) if options.eval else None
    evaluation_kind = recipe.recipe.evaluation.kind if recipe.recipe.evaluation else None
    gate_kind = for_recipe(recipe.recipe.task.kind, evaluation_kind).name
    return DeployRequest(
        device=address.name, profile=profile, workdir=address.workdir, run_id=new_run_id(profile.name),
        variants=variants, agent=LocalFile(agent.path, agent.sha256, agent.path.stat().st_size),
        samples=local_file(samples_path) if samples_path.suffix == ".npy" else None,
        samples_normalization=recipe.recipe.input.normalization.model_dump(mode="json"),
        wheelhouse=wheels, runtime_requirements=requirements, emulated_inventory=address.emulated,
        host_cpu_standin=address.host_cpu, emulation=emulation_config(address, options),
        exclusive_lock=address.shared_host_lock, host_deploy_locks=address.host_deploy_locks,
        eval=evaluation,
        accuracy_gate=gate_config(profile.accuracy_gate, gate_kind,
                                  evaluation.source_metrics if evaluation else {}),
    )


def apply_deploy(prepared: PreparedDeploy, options: DeployOptions, env: Env) -> DeployOutcome:
    """The second phase: facts -> plan -> apply on the device, then (with --wait) follow the run. A board in a
    labgrid place is held for all of it, and its run records the address the place gave."""
    address = prepared.address
    with lab_connection(address.connection, address.lab, wait_s=options.lab_wait_s,
                        say=lambda line: env.console.print(escape(line))) as connection:
        return _apply_on_device(replace(prepared, address=replace(address, connection=connection)), options, env)


def _apply_on_device(prepared: PreparedDeploy, options: DeployOptions, env: Env) -> DeployOutcome:
    say = env.console.print
    request, address = prepared.request, prepared.address
    say(f"runtime: {escape(prepared.runtime_note)}")
    with open_transport(address.connection, name=address.name) as transport:
        facts = gather_facts(transport, address.workdir, expected_files(request), modules=os_modules(request))
        deploy_plan = plan_deploy(request, facts)
        _show_plan(deploy_plan, say)
        if options.dry_run:
            say("dry run: nothing was sent")
            return DeployOutcome(request.run_id, address.name, deploy_plan, None)
        applied = apply_plan(deploy_plan, transport, address.workdir, lock_wait_s=options.lock_wait_s,
                             say=say, has_runtime_venv=bool(facts.runtime))
        start = next(a for a in deploy_plan.actions if isinstance(a, StartAgent))
        python = runtime_python(address.workdir, applied.runtime_venv, "python3")
        _record_run(prepared, options, facts.emulated, start.agent, python)
        say(f"run {request.run_id} started on {address.name}: {applied.sent_bytes:,} bytes sent, "
            f"{len(applied.skipped)} files already there")
        outcome = DeployOutcome(request.run_id, address.name, deploy_plan, applied)
        if options.wait:
            outcome.final_status = follow_run(transport, python, start.agent, start.run_dir, say)
            if outcome.final_status.get("state") != "done":
                raise DeployError(f"run {request.run_id} on {address.name} ended "
                                  f"{outcome.final_status.get('state')}: {outcome.final_status.get('reason', '')}")
    return outcome


def _show_plan(deploy_plan: DeployPlan, say) -> None:
    say(plan_table(deploy_plan))
    for warning in deploy_plan.warnings:
        say(f"[yellow]note:[/] {escape(warning)}")
    say(f"{deploy_plan.bytes_to_send:,} bytes to send, {deploy_plan.cells} cells to measure")


def _record_run(prepared: PreparedDeploy, options: DeployOptions, emulated: bool, agent: str, python: str) -> None:
    request, address = prepared.request, prepared.address
    save_run(prepared.state_dir, RunRecord(
        run_id=request.run_id, target=request.profile.name, model=prepared.model, device=address.name,
        workdir=address.workdir, emulated=emulated or address.emulated,
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        connection=address.connection.model_dump(mode="json"), agent=agent, python=python, eval=options.eval))


def deploy(options: DeployOptions, env: Env | None = None) -> DeployOutcome:
    env = env or Env()
    prepared = prepare_deploy(options, env)
    if not runtime_for_profile(prepared.request.profile.runtime.name).agent:
        # No agent on the device: a binary of the runtime's measures each cell (edgefleet/deploy/benchmark_model.py).
        done = deploy_benchmark_model(env.workspace(options.workspace), prepared.request, prepared.address,
                                      prepared.model, dry_run=options.dry_run, say=env.console.print)
        return DeployOutcome(done.run_id, done.device, done.deploy_plan(), None)
    return apply_deploy(prepared, options, env)
