"""Deploy planning: a pure function from (profile, built variants, device facts) to actions.

Nothing here touches a device, so ``--dry-run`` prints exactly what apply would do,
and tests pin plans as tables.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.deploy.evalspec import EvalRequest, eval_config, images_remote
from edgefleet.deploy.facts import DeviceFacts
from edgefleet.errors import DeployError
from edgefleet.profiles.model import Profile
from edgefleet.runtimes import get_runtime

# Free space deploy insists on beyond the payload, for logs, the venv and the filesystem's own reserve.
DISK_MARGIN_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class LocalFile:
    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Variant:
    name: str             # e.g. "tflite-fp16"
    runtime: str          # the agent runtime that runs it
    artifact_key: str
    file: LocalFile
    valid: bool = True
    # Files the primary one needs beside it (OpenVINO's model.bin next to model.xml).
    companions: tuple[LocalFile, ...] = ()


@dataclass(frozen=True)
class Upload:
    local: Path
    remote: str
    sha256: str
    size: int
    what: str


@dataclass(frozen=True)
class Skip:
    remote: str
    size: int
    what: str


@dataclass(frozen=True)
class ProvisionRuntime:
    wheelhouse: str       # remote folder with the wheels
    requirements: tuple[str, ...]
    digest: str           # what is provisioned; a device with the same digest is left alone
    # The venv sees the OS's site-packages: modules PyPI has no wheel for come from the OS (runtime.os_packages).
    system_site_packages: bool = False


@dataclass(frozen=True)
class WriteRunConfig:
    remote: str
    config: Mapping[str, Any]


@dataclass(frozen=True)
class StartAgent:
    agent: str
    run_dir: str


Action = Upload | Skip | ProvisionRuntime | WriteRunConfig | StartAgent


@dataclass(frozen=True)
class DeployRequest:
    device: str
    profile: Profile
    workdir: str
    run_id: str
    variants: Sequence[Variant]
    agent: LocalFile
    samples: LocalFile | None
    samples_normalization: Mapping[str, Any] | None
    wheelhouse: Sequence[LocalFile] = ()
    runtime_requirements: tuple[str, ...] = ()
    emulated_inventory: bool = False   # the fleet's inventory lists this device: it is emulated
    host_cpu_standin: bool = False     # ... by this host's own CPU and OS (`--emulate host`), not the board's
    emulation: Mapping[str, Any] | None = None  # how it is emulated; run.json carries it into every result
    exclusive_lock: str | None = None  # host-wide lock path around runs (devices sharing hardware)
    host_deploy_locks: tuple[str, ...] = ()  # deploy lock folders of those devices: timing waits for them
    eval: EvalRequest | None = None    # --eval: the packed evaluation split and how to decode
    accuracy_gate: Mapping[str, Any] | None = None  # written to run.json for collect


@dataclass(frozen=True)
class DeployPlan:
    device: str
    run_id: str
    actions: tuple[Action, ...]
    warnings: tuple[str, ...] = ()
    cells: int = 0
    facts: DeviceFacts | None = field(default=None, compare=False)

    @property
    def bytes_to_send(self) -> int:
        return sum(a.size for a in self.actions if isinstance(a, Upload))

    @property
    def uploads(self) -> list[Upload]:
        return [a for a in self.actions if isinstance(a, Upload)]


def remote_paths(workdir: str) -> dict[str, str]:
    return {"artifacts": f"{workdir}/artifacts", "agent": f"{workdir}/agent", "runs": f"{workdir}/runs",
            "data": f"{workdir}/data", "wheelhouse": f"{workdir}/wheelhouse", "runtime": f"{workdir}/runtime"}


def artifact_remote(workdir: str, variant: Variant) -> str:
    return f"{remote_paths(workdir)['artifacts']}/{variant.artifact_key}/{variant.file.path.name}"


def variant_files(workdir: str, variant: Variant) -> list[tuple[str, LocalFile]]:
    """Remote path and local file of everything a variant needs on the device, the primary first."""
    folder = f"{remote_paths(workdir)['artifacts']}/{variant.artifact_key}"
    return [(artifact_remote(workdir, variant), variant.file)] + \
        [(f"{folder}/{c.path.name}", c) for c in variant.companions]


def identical_variants(variants: Sequence[Variant]) -> dict[str, str]:
    """Variant -> the earlier one it equals byte for byte (same runtime, same files): a rewrite that changed
    nothing makes no new variant, so it is measured once, under the first name."""
    first: dict[tuple[str, str, tuple[str, ...]], str] = {}
    same: dict[str, str] = {}
    for v in (v for v in variants if v.valid):
        key = (v.runtime, v.file.sha256, tuple(sorted(c.sha256 for c in v.companions)))
        if key in first:
            same[v.name] = first[key]
        else:
            first[key] = v.name
    return same


def shipped(request: DeployRequest) -> list[Variant]:
    """The variants deploy sends: valid ones, each distinct artifact once."""
    same = identical_variants(request.variants)
    return [v for v in request.variants if v.valid and v.name not in same]


def expected_files(request: DeployRequest) -> dict[str, str]:
    """Remote path -> sha256 of everything the deploy ships; the facts probe reports which exist."""
    paths = remote_paths(request.workdir)
    files = {remote: local.sha256 for v in shipped(request) for remote, local in variant_files(request.workdir, v)}
    files[f"{paths['agent']}/{request.agent.sha256[:16]}-{request.agent.path.name}"] = request.agent.sha256
    if request.samples is not None:
        files[f"{paths['data']}/{request.samples.sha256[:16]}.npy"] = request.samples.sha256
    if request.eval is not None:
        files[images_remote(paths["data"], request.eval)] = request.eval.images_sha256
    for wheel in request.wheelhouse:
        files[f"{paths['wheelhouse']}/{wheel.path.name}"] = wheel.sha256
    return files


def check_device(request: DeployRequest, facts: DeviceFacts) -> list[str]:
    """Errors for a device that cannot take this deploy; warnings for what is merely recorded."""
    warnings = []
    want = request.profile.device.arch
    if facts.arch != want:
        # A host-CPU stand-in says so in the fleet's inventory, or in its own identity file when a profile
        # points at it directly.
        if not (request.host_cpu_standin or facts.host_cpu_standin):
            raise DeployError(f"{request.device}: the device reports arch {facts.arch!r} but profile "
                              f"{request.profile.name!r} says {want!r}; deploying would ship the wrong binaries. "
                              "Fix device.arch in the profile or point the target at the right host.")
        warnings.append(f"{request.device} is emulated by this host's CPU: it stands in for a {want} board on a "
                        f"{facts.arch} host, with this host's runtime; its latencies are this host's, "
                        "labelled emulated")
    _check_os_modules(request, facts)
    major_minor = tuple(int(x) for x in facts.python.split("."))
    if major_minor < (3, 6):
        raise DeployError(f"{request.device}: Python {facts.python} is too old; the agent needs >= 3.6")
    return warnings


def os_modules(request: DeployRequest) -> tuple[str, ...]:
    """Python modules the profile expects from the device's OS; a host-CPU stand-in uses its own wheels."""
    return () if request.host_cpu_standin else tuple(sorted(request.profile.runtime.os_packages))


def _check_os_modules(request: DeployRequest, facts: DeviceFacts) -> None:
    missing = [m for m in os_modules(request) if m in facts.missing_modules]
    if not missing:
        return
    packages = " ".join(sorted({request.profile.runtime.os_packages[m] for m in missing}))
    raise DeployError(
        f"{request.device}: the device's Python ({facts.python_path}) cannot import {', '.join(missing)}, which "
        f"profile {request.profile.name!r} takes from the OS package {packages} (PyPI has no wheel for "
        f"{request.profile.device.arch}). Install it on the device: `sudo apt install {packages}`, then deploy "
        "again. Nothing was sent.")


def measured_threads(request: DeployRequest, facts: DeviceFacts) -> tuple[tuple[int, ...], str | None]:
    """The profile's thread counts, less those an emulated device would time on shared cores, and why.

    An emulated board runs on this host's CPUs: more threads than those measure the host's contention, not
    the board's cores, and would only be flagged unstable. Under qemu-user one CPU fewer: it emulates the
    thread pool's handoffs too, and with as many busy threads as CPUs its runs split between two speeds
    (docs/flags.md, "unstable"). A real board measures what the profile asks."""
    threads = tuple(request.profile.bench.threads)
    cpus = facts.cpus
    if not (facts.emulated or request.emulated_inventory) or not cpus:
        return threads, None
    usable = cpus if facts.host_cpu_standin else max(1, cpus - 1)
    if max(threads) <= usable:
        return threads, None
    kept = tuple(t for t in threads if t <= usable) or (min(threads),)
    dropped = ", ".join(str(t) for t in threads if t not in kept)
    plural = "s" if cpus > 1 else ""
    if facts.host_cpu_standin:
        return kept, (f"{request.device} is emulated on this host's {cpus} CPU{plural}: threads {dropped} not "
                      "measured (they would time the host's contention, not the board's cores)")
    return kept, (f"{request.device} is emulated by qemu-user on this host's {cpus} CPU{plural}: threads {dropped} "
                  "not measured (qemu-user needs a CPU besides the board's threads; with none to spare, its runs "
                  "split between two speeds)")


def build_cells(request: DeployRequest, samples_remote: str | None,
                threads: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
    """One cell per variant, delegate and thread count (``threads``: default, the profile's)."""
    cells = []
    bench = request.profile.bench
    evaluated: set[tuple[str, str]] = set()  # accuracy depends on artifact and delegate, not on threads
    for variant in shipped(request):
        runtime = get_runtime(variant.runtime)
        # The agent counts these in the variant's size: the files the device needs, by deploy's own rule.
        companions = [remote for remote, _ in variant_files(request.workdir, variant)[1:]]
        for delegate_name in bench.delegates:
            spec = runtime.delegate(delegate_name, variant.name)
            if spec is None:  # this runtime has no such delegate, or it makes no sense for this variant
                continue
            for count in threads or bench.threads:
                cells.append({
                    "cell": f"{variant.name}/{delegate_name}/t{count}",
                    "variant": variant.name,
                    "artifact": artifact_remote(request.workdir, variant),
                    "artifact_sha256": variant.file.sha256,
                    "companions": companions,
                    "runtime": variant.runtime,
                    "threads": count,
                    "delegate": dict(spec.payload) if spec.payload else None,
                    "delegate_name": delegate_name,
                    "input": {"samples": samples_remote, "normalization": request.samples_normalization},
                })
                if request.eval is not None and (variant.name, delegate_name) not in evaluated:
                    evaluated.add((variant.name, delegate_name))
                    cells[-1]["eval"] = True
    return cells


def run_config(request: DeployRequest, facts: DeviceFacts, cells: list[dict[str, Any]], eval_remote: str | None,
               same: Mapping[str, str]) -> dict[str, Any]:
    """run.json: what the agent measures, with what settings, and what every result will say about it."""
    bench = request.profile.bench
    config: dict[str, Any] = {
        "schema": 1, "run_id": request.run_id, "device": request.device, "target": request.profile.name,
        "emulated": facts.emulated or request.emulated_inventory,
        "bench": {"warmup_runs": bench.warmup_runs, "min_runs": bench.min_runs,
                  "min_duration_s": bench.min_duration_s, "max_runs": bench.max_runs,
                  "cooldown_s": bench.cooldown_s, "cv_threshold": bench.cv_threshold,
                  "warmup_max_runs": bench.warmup_max_runs, "max_temp_c": bench.max_temp_c,
                  "exclusive_lock": request.exclusive_lock, "host_deploy_locks": list(request.host_deploy_locks)},
        "cells": cells,
    }
    if request.eval is not None and eval_remote is not None:
        config["eval"] = eval_config(request.eval, eval_remote)
    if request.accuracy_gate is not None:
        config["accuracy_gate"] = dict(request.accuracy_gate)
    if same:
        config["same_as"] = dict(same)  # collect and the report say which names were measured as which
    if request.emulation:
        config["emulation"] = dict(request.emulation)
    return config


def plan_deploy(request: DeployRequest, facts: DeviceFacts) -> DeployPlan:
    warnings = check_device(request, facts)
    invalid = [v.name for v in request.variants if not v.valid]
    if invalid:
        warnings.append(f"not shipped (invalid: failed the fidelity gate or a build check): {', '.join(invalid)}")
    same = identical_variants(request.variants)
    warnings.extend(f"{name} is byte for byte {other} (its build changed nothing): measured once, as {other}"
                    for name, other in same.items())
    paths = remote_paths(request.workdir)
    actions: list[Action] = []
    wanted = expected_files(request)
    labels: dict[str, str] = {}
    local_by_remote: dict[str, LocalFile] = {}
    for v in shipped(request):
        for remote, local in variant_files(request.workdir, v):
            labels[remote] = f"artifact {v.name}" + ("" if local is v.file else f" ({local.path.name})")
            local_by_remote[remote] = local
    agent_remote = f"{paths['agent']}/{request.agent.sha256[:16]}-{request.agent.path.name}"
    local_by_remote[agent_remote] = request.agent
    labels[agent_remote] = "agent"
    samples_remote = None
    if request.samples is not None:
        samples_remote = f"{paths['data']}/{request.samples.sha256[:16]}.npy"
        local_by_remote[samples_remote] = request.samples
        labels[samples_remote] = "input samples"
    eval_remote = None
    if request.eval is not None:
        eval_remote = images_remote(paths["data"], request.eval)
        local_by_remote[eval_remote] = LocalFile(request.eval.images_path, request.eval.images_sha256,
                                                 request.eval.images_size)
        labels[eval_remote] = f"eval images ({len(request.eval.image_ids)})"
    for wheel in request.wheelhouse:
        remote = f"{paths['wheelhouse']}/{wheel.path.name}"
        local_by_remote[remote] = wheel
        labels[remote] = f"wheel {wheel.path.name}"
    for remote, sha in wanted.items():
        local = local_by_remote[remote]
        if facts.present.get(remote):
            actions.append(Skip(remote, local.size, labels[remote]))
        else:
            actions.append(Upload(local.path, remote, sha, local.size, labels[remote]))

    need = sum(a.size for a in actions if isinstance(a, Upload))
    if need and need + DISK_MARGIN_BYTES > facts.free_bytes:
        raise DeployError(f"{request.device}: not enough disk space in {facts.free_path}: this deploy needs "
                          f"{need:,} bytes (+{DISK_MARGIN_BYTES:,} margin) but only {facts.free_bytes:,} are free. "
                          "Free space on the device or choose fewer variants; nothing was sent.")

    if request.wheelhouse:
        system = bool(os_modules(request))
        digest = hashlib.sha256(("".join(sorted(w.sha256 for w in request.wheelhouse)) +
                                 ("+system-site-packages" if system else "")).encode()).hexdigest()
        if not facts.runtime or facts.runtime.get("digest") != digest:
            actions.append(ProvisionRuntime(paths["wheelhouse"], request.runtime_requirements, digest, system))

    threads, skipped = measured_threads(request, facts)
    if skipped:
        warnings.append(skipped)
    cells = build_cells(request, samples_remote, threads)
    if not cells:
        raise DeployError(f"{request.device}: nothing to benchmark: no valid variant fits the profile's "
                          f"delegates {list(request.profile.bench.delegates)}")
    run_dir = f"{paths['runs']}/{request.run_id}"
    config = run_config(request, facts, cells, eval_remote, same)
    actions.append(WriteRunConfig(f"{run_dir}/run.json", config))
    actions.append(StartAgent(agent_remote, run_dir))
    return DeployPlan(request.device, request.run_id, tuple(actions), tuple(warnings), len(cells), facts)
