"""The Invoke collection. Each task parses its arguments into an options dataclass and calls the API.

API modules are imported inside the task bodies so ``invoke --list`` and a cached
build stay fast.
"""
from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke import Collection, Exit, task

from edgefleet.errors import DEBUG_ENV, EXIT_INTERRUPTED, EdgefleetError

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """Turn an edgefleet error into a clean message and its exit code (``edgefleet/errors.py``).

    With EDGEFLEET_DEBUG=1 the whole exception chain is printed instead, for a bug report;
    the exit code stays the error's own.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EdgefleetError as exc:
            if debugging():
                print_chain(exc)
                raise Exit(code=exc.exit_code) from None
            raise Exit(f"error: {exc}", code=exc.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV) == "1"


def print_chain(exc: BaseException) -> None:
    """The traceback of ``exc`` and every exception behind it, to stderr.

    Edgefleet errors are often raised ``from None`` so users get one paragraph; a bug report
    wants what was hidden, so the suppressed context is shown too.
    """
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__suppress_context__ = False
        link = link.__cause__ or link.__context__
    traceback.print_exception(exc, file=sys.stderr)


@task(name="targets")
@reports_errors
def targets_task(c):
    """List and validate every target profile."""
    from edgefleet.api.targets import TargetsOptions, list_targets
    list_targets(TargetsOptions())


@task(name="schema", help={"out": "folder for the JSON Schemas (default: schema/)"})
@reports_errors
def schema_task(c, out=None):
    """Write the JSON Schemas of profiles and recipes, for editors."""
    from edgefleet.api.schema import SchemaOptions, write_schemas
    write_schemas(SchemaOptions(out_dir=Path(out) if out else None))


@task(name="build", iterable=["docker_host"], help={
    "target": "target profile name (see `invoke targets`)",
    "model": "model recipe under models/ (default: the workspace's default_model)",
    "dry-run": "print the plan and build nothing",
    "jobs": "steps to run at once",
    "backend": "local or docker (default: edgefleet.yaml)",
    "strict": "fail when a step cannot run on this machine (no compiler, no network)",
    "docker-host": "Docker engine to build on, e.g. ssh://user@buildhost (repeatable; default: edgefleet.yaml)",
})
@reports_errors
def build_task(c, target, model=None, dry_run=False, jobs=None, backend=None, strict=False, docker_host=None):
    """Build every variant a target asks for; cached steps are not rebuilt."""
    from edgefleet.api.build import BuildOptions, build
    build(BuildOptions(target=target, model=model, dry_run=dry_run, jobs=int(jobs) if jobs else None,
                       backend=backend, strict=strict, docker_hosts=tuple(docker_host or ())))


@task(name="clean", help={"all": "also remove downloads, wheelhouses, fleet state and results",
                          "images": "also remove builder images but the newest of each builder (Docker engine)"})
@reports_errors
def clean_task(c, all=False, images=False):  # noqa: A002  (the flag reads --all)
    """Remove built artifacts."""
    from edgefleet.api.clean import CleanOptions, clean
    clean(CleanOptions(all_state=all, images=images))


@task(name="deploy", help={
    "target": "target profile name",
    "model": "model recipe (default: the workspace's default_model)",
    "device": "emulated-fleet device to use (default: the target's name)",
    "dry-run": "gather facts and print the deploy plan; send nothing",
    "wait": "follow the benchmark run to its end",
    "eval": "also run the accuracy evaluation on the device",
    "lock-wait": "seconds to wait for a busy device before failing",
    "lab-wait": "seconds to wait in a labgrid lab's queue for the board's place (default 300)",
    "backend": "build backend for anything not yet built",
})
@reports_errors
def deploy_task(c, target, model=None, device=None, dry_run=False, wait=False, eval=False,  # noqa: A002
                lock_wait=0.0, lab_wait=None, backend=None):
    """Ship a target's built variants to its device and start the benchmark run detached."""
    from edgefleet.api.deploy import DeployOptions, deploy
    from edgefleet.deploy.devices import DEFAULT_LAB_WAIT_S
    deploy(DeployOptions(target=target, model=model, device=device, dry_run=dry_run, wait=wait, eval=eval,
                         lock_wait_s=float(lock_wait), backend=backend,
                         lab_wait_s=float(lab_wait) if lab_wait is not None else DEFAULT_LAB_WAIT_S))


@task(name="collect-benchmarks", iterable=["run"], help={
    "run": "run id to collect (repeatable; default: the newest run on every device)",
    "baseline": "earlier run id to compare against",
    "threshold": "regression threshold as a fraction of p50 (default 0.10)",
    "lab-wait": "seconds to wait in a labgrid lab's queue for a board's place (default 300)",
})
@reports_errors
def collect_task(c, run=None, baseline=None, threshold=0.10, lab_wait=None):
    """Pull benchmark logs from every device, ingest them, and write the report."""
    from edgefleet.api.collect import CollectOptions, collect_benchmarks
    from edgefleet.deploy.devices import DEFAULT_LAB_WAIT_S
    collect_benchmarks(CollectOptions(runs=tuple(run or ()), baseline=baseline,
                                      regression_threshold=float(threshold),
                                      lab_wait_s=float(lab_wait) if lab_wait is not None else DEFAULT_LAB_WAIT_S))


@task(name="up", help={"devices": "comma-separated target names (default: rpi3,jetson-nano,coral)",
                       "isolation": "auto, netns or loopback",
                       "emulate": "qemu (default): each board's own CPU architecture and OS under qemu-user; "
                                  "host: this host's CPU stands in (fast, labelled)",
                       "labgrid": "also run a labgrid coordinator and exporter here that hand out each device as a "
                                  "place; deploy and collect then reserve it (docs/labs.md)"})
@reports_errors
def fleet_up_task(c, devices=None, isolation="auto", emulate="qemu", labgrid=False):
    """Start the emulated fleet: a network namespace with its own sshd per device."""
    from edgefleet.api.fleet import DEFAULT_DEVICES, FleetUpOptions, up
    names = tuple(d.strip() for d in devices.split(",") if d.strip()) if devices else DEFAULT_DEVICES
    up(FleetUpOptions(devices=names, isolation=isolation, emulate=emulate, labgrid=labgrid))


@task(name="down")
@reports_errors
def fleet_down_task(c):
    """Stop the emulated fleet and remove its namespaces, sshd processes and state."""
    from edgefleet.api.fleet import FleetDownOptions, down
    down(FleetDownOptions())


@task(name="study", help={"model": "model recipe (default: the workspace's default_model)",
                          "target": "the device to study on (default: local, this host)"})
@reports_errors
def study_task(c, model=None, target="local"):
    """Build, benchmark and evaluate every format on one device: the "fastest runtime on my CPU" study."""
    from edgefleet.api.study import StudyOptions, study
    study(StudyOptions(model=model, target=target))


@task(name="resume", help={"run": "the interrupted run's id (see `invoke collect-benchmarks`)",
                           "wait": "follow the run to its end",
                           "lock-wait": "seconds to wait for a busy device before failing"})
@reports_errors
def resume_task(c, run, wait=False, lock_wait=0.0):
    """Restart an interrupted benchmark run on its device; only its unfinished cells run."""
    from edgefleet.api.resume import ResumeOptions, resume
    resume(ResumeOptions(run=run, wait=wait, lock_wait_s=float(lock_wait)))


@task(name="doctor", iterable=["target"], help={
    "target": "device to check (repeatable; default: the emulated fleet and every ssh profile)",
    "no-devices": "check this machine only",
    "connect-timeout": "seconds to wait for each device to answer (default 3)",
})
@reports_errors
def doctor_task(c, target=None, no_devices=False, connect_timeout=3.0):
    """Check this machine and every device; print what is wrong and how to fix it."""
    from edgefleet.api.doctor import DoctorOptions, doctor
    report = doctor(DoctorOptions(targets=tuple(target or ()), devices=not no_devices,
                                  connect_timeout_s=float(connect_timeout)))
    report.raise_for_failures()


@task(name="demo", help={"keep-fleet": "leave the emulated fleet running afterwards",
                         "emulate": "qemu (default): boards' own architectures under qemu-user; host: this CPU",
                         "labgrid": "publish the fleet in a labgrid lab on this machine and go through its "
                                    "reservations (docs/labs.md)"})
@reports_errors
def demo_task(c, keep_fleet=False, emulate="qemu", labgrid=False):
    """Build the bundled model for every target, deploy it to the emulated fleet, benchmark, report."""
    from edgefleet.api.demo import DemoOptions, demo
    demo(DemoOptions(keep_fleet=keep_fleet, emulate=emulate, labgrid=labgrid))


@task(name="up", help={"name": "the build host's name (default buildhost)",
                       "ssh-config": "add it to ~/.ssh/config and ~/.ssh/known_hosts so ssh://edgefleet-NAME works"})
@reports_errors
def buildhost_up_task(c, name="buildhost", ssh_config=False):
    """Start an emulated build host: a second Docker engine behind its own sshd, in a network namespace."""
    from edgefleet.api.buildhost import BuildHostUpOptions, up
    up(BuildHostUpOptions(name=name, ssh_config=ssh_config))


@task(name="down", help={"name": "the build host's name (default buildhost)"})
@reports_errors
def buildhost_down_task(c, name="buildhost"):
    """Stop the emulated build host (its engine's images stay for the next up)."""
    from edgefleet.api.buildhost import BuildHostDownOptions, down
    down(BuildHostDownOptions(name=name))


def make_collection() -> Collection:
    fleet = Collection("fleet", fleet_up_task, fleet_down_task)
    buildhosts = Collection("buildhost", buildhost_up_task, buildhost_down_task)
    return Collection(targets_task, schema_task, build_task, clean_task, deploy_task, collect_task,
                      demo_task, study_task, resume_task, doctor_task, fleet, buildhosts)


namespace = make_collection()
