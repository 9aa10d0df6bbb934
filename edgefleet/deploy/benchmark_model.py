"""Deploy where no agent can run (a runtime spec with ``agent=False``: TFLite's benchmark_model on Android).

Plan (pure, shown by ``--dry-run`` without a device): the binary, the ``.tflite`` variants, and one
benchmark_model command per cell. Apply: connect, read the device's facts, push the binary and the models with
the same verified uploads as the agent's path (temp name, sha256 computed on the device, rename), run each cell
in turn, and write the agent's result lines (edgefleet/android/output.py) into the run folder on the device and
on this host, so ``invoke collect-benchmarks`` ingests them like an agent's.
"""
from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.markup import escape

from edgefleet.android.commands import benchmark_argv
from edgefleet.android.facts import THERMAL_SCRIPT, device_facts, parse_cpuinfo, parse_getprop, parse_thermal
from edgefleet.android.output import parse_output, result_line
from edgefleet.deploy.devices import DeviceAddress
from edgefleet.deploy.plan import (DeployPlan, DeployRequest, LocalFile, Upload, artifact_remote, remote_paths,
                                   shipped)
from edgefleet.deploy.upload import upload_verified
from edgefleet.deploy.variants import local_file
from edgefleet.digest import sha256_file
from edgefleet.errors import DeployError
from edgefleet.plan.workspace import plan_for
from edgefleet.recipes.load import load_recipe
from edgefleet.runs import RunRecord, save_run
from edgefleet.runtimes import runtime_for_profile
from edgefleet.runtimes.benchmark_model import ABI_FOR_ARCH, BINARY, MODEL_SUFFIX, built_name
from edgefleet.store import ArtifactStore
from edgefleet.transport.base import Transport
from edgefleet.transport.registry import open_transport
from edgefleet.workspace import Workspace

Say = Callable[..., None]  # a console's print


@dataclass(frozen=True)
class Binary:
    local: LocalFile | None
    origin: str          # where it comes from, or why there is none


@dataclass(frozen=True)
class BenchCell:
    cell: Mapping[str, Any]   # the agent's cell fields (edgefleet/agent/efagent/__init__.py), for the result line
    argv: tuple[str, ...]

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class BenchmarkModelPlan:
    device: str
    run_id: str
    run_dir: str
    binary: Binary
    binary_remote: str
    uploads: tuple[Upload, ...]
    cells: tuple[BenchCell, ...]
    warnings: tuple[str, ...] = ()

    def deploy_plan(self) -> DeployPlan:
        """The shape every deploy returns: what is sent, and how many cells."""
        return DeployPlan(self.device, self.run_id, self.uploads, self.warnings, cells=len(self.cells))


# -- the binary ---------------------------------------------------------------------------------------------

def find_binary(ws: Workspace, request: DeployRequest, model: str) -> Binary:
    """The profile's runtime.benchmark_binary, else the one the Android builder made for the device's arch."""
    runtime, arch = request.profile.runtime, request.profile.device.arch
    if runtime.benchmark_binary:
        return Binary(local_file(Path(runtime.benchmark_binary)), "runtime.benchmark_binary")
    name = built_name(arch)
    store = ArtifactStore(ws.artifacts_dir)
    plan = plan_for(ws, request.profile, load_recipe(ws.models_dir, model))
    for step in plan.steps:
        if name and store.has(step.key) and (store.path(step.key) / name).is_file():
            return Binary(local_file(store.path(step.key) / name), f"built by {step.id} ({step.key[:12]})")
    return Binary(None, f"{BINARY}: not built here, give runtime.benchmark_binary in targets/{request.profile.name}"
                        f".yaml or build it (`invoke build --target {request.profile.name}` on a machine with Bazel "
                        f"and network: the android.aar step builds {name or 'it'})")


# -- planning (pure) ----------------------------------------------------------------------------------------

def plan_benchmark_model(request: DeployRequest, binary: Binary) -> BenchmarkModelPlan:
    """Uploads and one benchmark_model command per (variant, delegate, threads) cell; touches no device."""
    if request.eval is not None:
        raise DeployError(f"{request.device}: --eval needs the edgefleet agent, and runtime "
                          f"{request.profile.runtime.name!r} measures with a device binary; deploy without --eval")
    paths = remote_paths(request.workdir)
    binary_remote = f"{request.workdir}/bin/" + (f"{binary.local.sha256[:16]}-{BINARY}" if binary.local else BINARY)
    models = [v for v in shipped(request) if v.file.path.suffix == MODEL_SUFFIX]
    warnings = [f"not run: {v.name} ({v.file.path.name}) is not a {MODEL_SUFFIX} model"
                for v in shipped(request) if v not in models]
    warnings += [f"not shipped (invalid: failed the fidelity gate or a build check): {v.name}"
                 for v in request.variants if not v.valid]
    uploads = [Upload(v.file.path, artifact_remote(request.workdir, v), v.file.sha256, v.file.size,
                      f"model {v.name}") for v in models]
    if binary.local is not None:
        uploads.insert(0, Upload(binary.local.path, binary_remote, binary.local.sha256, binary.local.size, BINARY))
    cells = tuple(_cells(request, models, binary_remote))
    return BenchmarkModelPlan(request.device, request.run_id, f"{paths['runs']}/{request.run_id}", binary,
                              binary_remote, tuple(uploads), cells, tuple(warnings))


def _cells(request: DeployRequest, models: list, binary_remote: str):
    spec = runtime_for_profile(request.profile.runtime.name)
    bench = request.profile.bench
    for variant in models:
        for delegate_name in bench.delegates:
            delegate = spec.delegate(delegate_name, variant.name)
            if delegate is None:  # this runtime has no such delegate, or it makes no sense for this variant
                continue
            for threads in bench.threads:
                graph = artifact_remote(request.workdir, variant)
                argv = benchmark_argv(binary_remote, graph, threads, delegate.payload, bench,
                                      op_profiling=request.profile.runtime.op_profiling)
                yield BenchCell({
                    "cell": f"{variant.name}/{delegate_name}/t{threads}", "variant": variant.name, "artifact": graph,
                    "artifact_sha256": variant.file.sha256, "runtime": spec.name, "threads": threads,
                    "delegate": dict(delegate.payload) if delegate.payload else None,
                    "delegate_name": delegate_name, "command": shlex.join(argv)}, tuple(argv))


def show_plan(plan: BenchmarkModelPlan, say: Say) -> None:
    say(f"deploy plan: run {escape(plan.run_id)} on {escape(plan.device)} (benchmark_model, no agent)")
    if plan.binary.local is None:
        say(escape(plan.binary.origin))
    else:
        say(f"binary: {escape(str(plan.binary.local.path))} ({escape(plan.binary.origin)}, "
            f"{plan.binary.local.size:,} bytes) -> {escape(plan.binary_remote)}")
    models = [u for u in plan.uploads if u.what != BINARY]
    say(f"models: {len(models)}" + ("" if models else " (none built here yet: `invoke build` makes them)"))
    for upload in models:
        say(f"  {escape(upload.what)}: {escape(str(upload.local))} ({upload.size:,} bytes) -> {escape(upload.remote)}")
    say(f"commands: {len(plan.cells)} cells, one benchmark_model run each")
    for cell in plan.cells:
        say(f"  {escape(cell.cell['cell'])}: {escape(cell.command)}", soft_wrap=True)  # one line: copy-pastable
    for warning in plan.warnings:
        say(f"[yellow]note:[/] {escape(warning)}")


# -- apply --------------------------------------------------------------------------------------------------

def deploy_benchmark_model(ws: Workspace, request: DeployRequest, address: DeviceAddress, model: str, *,
                           dry_run: bool, say: Say) -> BenchmarkModelPlan:
    """Plan; with a device, send, run every cell and write the result lines."""
    plan = plan_benchmark_model(request, find_binary(ws, request, model))
    show_plan(plan, say)
    if dry_run:
        say("dry run: nothing was sent; no device was contacted")
        return plan
    with open_transport(address.connection, name=address.name) as transport:
        facts = android_facts(transport)
        _check_device(request, facts)
        if plan.binary.local is None:
            raise DeployError(f"{request.device}: {plan.binary.origin}")
        _send(plan, transport, say)
        save_run(ws.state_dir, _run_record(request, address, model))
        lines = [_run_cell(cell, plan, transport, request, facts, say) for cell in plan.cells]
        _write_results(plan, request, lines, transport, ws.state_dir / "runs" / request.run_id)
    ok = sum(1 for line in lines if line["status"] == "ok")
    say(f"run {request.run_id} on {request.device}: {ok} of {len(lines)} cells measured; "
        f"`invoke collect-benchmarks` ingests them")
    return plan


def android_facts(transport: Transport) -> dict[str, Any]:
    props = parse_getprop(transport.run(["getprop"], check=False).stdout)
    cpu = parse_cpuinfo(transport.run(["cat", "/proc/cpuinfo"], check=False).stdout)
    return {**device_facts(props), **cpu, "measured_by": BINARY}


def thermal(transport: Transport) -> list[dict[str, Any]]:
    return parse_thermal(transport.run_shell(THERMAL_SCRIPT, check=False).stdout)


def _check_device(request: DeployRequest, facts: Mapping[str, Any]) -> None:
    want = ABI_FOR_ARCH.get(request.profile.device.arch)
    if facts.get("abi") and want and facts["abi"] != want:
        raise DeployError(f"{request.device}: the phone's ABI is {facts['abi']} (ro.product.cpu.abi) but profile "
                          f"{request.profile.name!r} says device.arch {request.profile.device.arch} ({want}); its "
                          "benchmark_model would not run there. Fix device.arch or attach the right phone.")


def _send(plan: BenchmarkModelPlan, transport: Transport, say: Say) -> None:
    for upload in plan.uploads:
        result = upload_verified(transport, upload.local, upload.remote, sha256=upload.sha256)
        say(f"{'same sha256 on device' if result.skipped else 'sent'}: {escape(upload.what)} -> "
            f"{escape(upload.remote)}")
    transport.run(["chmod", "755", plan.binary_remote])
    transport.run(["mkdir", "-p", plan.run_dir])


def _run_cell(cell: BenchCell, plan: BenchmarkModelPlan, transport: Transport, request: DeployRequest,
              facts: Mapping[str, Any], say: Say) -> dict[str, Any]:
    run = {"run_id": request.run_id, "device": request.device, "emulated": False,
           "bench": request.profile.bench.model_dump()}
    before, started = thermal(transport), _now()
    result = transport.run(list(cell.argv), check=False)
    finished, after = _now(), thermal(transport)
    line = result_line(cell.cell, parse_output(result.stdout + "\n" + result.stderr), run=run,
                       returncode=result.returncode, started=started, finished=finished, env=facts,
                       thermal={"before": before, "after": after})
    why = f" ({escape(line['reason'])})" if line["reason"] else ""
    say(f"cell {escape(cell.cell['cell'])}: {line['status']}{why}")
    return line


def _write_results(plan: BenchmarkModelPlan, request: DeployRequest, lines: list[dict[str, Any]],
                   transport: Transport, local_dir: Path) -> None:
    """results.jsonl, run.json and status.json where an agent's run leaves them: on the device (collect pulls
    from there) and on this host."""
    local_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "run.json": json.dumps({"schema": 1, "run_id": request.run_id, "device": request.device, "emulated": False,
                                "measured_by": BINARY, "bench": request.profile.bench.model_dump(),
                                "cells": [dict(c.cell) for c in plan.cells]}, sort_keys=True),
        "results.jsonl": "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines),
        "status.json": json.dumps({"state": "done", "cells_done": len(lines), "cells_total": len(plan.cells),
                                   "updated": _now()}),
    }
    for name, text in files.items():
        (local_dir / name).write_text(text)
        upload_verified(transport, local_dir / name, posixpath.join(plan.run_dir, name),
                        sha256=sha256_file(local_dir / name))


def _run_record(request: DeployRequest, address: DeviceAddress, model: str) -> RunRecord:
    # No agent: collect's `status` call runs `false` and fails quietly; the results are already final.
    return RunRecord(run_id=request.run_id, target=request.profile.name, model=model, device=address.name,
                     workdir=address.workdir, emulated=False, started=_now(),
                     connection=address.connection.model_dump(mode="json"), agent="", python="false")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
