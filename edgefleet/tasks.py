"""The Invoke collection. Each task parses its arguments into an options dataclass and calls the API.

API modules are imported inside the task bodies so ``invoke --list`` and a cached
build stay fast.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke import Collection, Exit, task

from edgefleet.errors import EdgefleetError

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """Turn an edgefleet error into a clean message and its exit code; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EdgefleetError as exc:
            raise Exit(f"error: {exc}", code=exc.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None

    return wrapper  # type: ignore[return-value]


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


@task(name="build", help={
    "target": "target profile name (see `invoke targets`)",
    "model": "model recipe under models/ (default: the workspace's default_model)",
    "dry-run": "print the plan and build nothing",
    "jobs": "steps to run at once",
    "backend": "local or docker (default: edgefleet.yaml)",
    "strict": "fail when a step cannot run on this machine (no compiler, no network)",
})
@reports_errors
def build_task(c, target, model=None, dry_run=False, jobs=None, backend=None, strict=False):
    """Build every variant a target asks for; cached steps are not rebuilt."""
    from edgefleet.api.build import BuildOptions, build
    build(BuildOptions(target=target, model=model, dry_run=dry_run,
                       jobs=int(jobs) if jobs else None, backend=backend, strict=strict))


@task(name="clean", help={"all": "also remove downloads, wheelhouses, fleet state and results"})
@reports_errors
def clean_task(c, all=False):  # noqa: A002  (the flag reads --all)
    """Remove built artifacts."""
    from edgefleet.api.clean import CleanOptions, clean
    clean(CleanOptions(all_state=all))


def make_collection() -> Collection:
    return Collection(targets_task, schema_task, build_task, clean_task)


namespace = make_collection()
