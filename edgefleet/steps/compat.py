"""``tflite.runtime_compat``: load a TFLite variant in the runtime version the device pins, before it ships.

Inputs: ``model`` (the converted .tflite) and ``build`` (that conversion's
manifest.json; optional). Param ``runtime``: ``{distribution, version}``, a
``RuntimePin``, so the version is part of the step's cache key.

The step carries the variant: it re-emits the model with the conversion's
report, tool versions and verdict, plus ``runtime_compat``. Its manifest's
``valid`` is what deploy reads, so a model the pinned runtime cannot load is kept
but marked invalid, like one that fails the fidelity gate, and never shipped.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.compat.load import LoadCheck, check_load
from edgefleet.compat.runtimes import RuntimePin
from edgefleet.compat.venv import CACHE_DIR, ensure_runtime_venv
from edgefleet.errors import BuildError, ConfigError
from edgefleet.steps.base import StepContext, StepResult
from edgefleet.workspace import open_workspace

COMPAT_FILE = "runtime_compat.json"
CACHE_ENV = "EDGEFLEET_COMPAT_CACHE"  # overrides the workspace cache, for a cache shared by workspaces


class CompatParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime: RuntimePin


class Conversion(BaseModel):
    """What this step carries forward from the conversion's manifest."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    report: dict[str, Any] = Field(default_factory=dict)
    tool_versions: dict[str, str] = Field(default_factory=dict)
    valid: bool = True
    invalid_reasons: list[str] = Field(default_factory=list)


def tflite_runtime_compat(ctx: StepContext) -> StepResult:
    params = _params(ctx)
    model = ctx.input("model")
    conversion = _conversion(ctx)
    with _cache_root(ctx) as cache_root:
        venv = ensure_runtime_venv(params.runtime, cache_root, ctx.log)
        check = check_load(venv, model)
    _log_verdict(ctx, model, check)
    _place(model, ctx.out_dir / model.name)
    record = {**check.report(), "runtime_packages": venv.installed}
    (ctx.out_dir / COMPAT_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    return StepResult(
        files=[model.name, COMPAT_FILE],
        report={**conversion.report, "runtime_compat": record},
        tool_versions=conversion.tool_versions,
        valid=conversion.valid and check.loaded,
        invalid_reasons=[*conversion.invalid_reasons, *check.reasons],
    )


def _params(ctx: StepContext) -> CompatParams:
    try:
        return CompatParams.model_validate(dict(ctx.params))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise BuildError(f"step {ctx.kind!r}: bad params: {first['msg']} at "
                         f"{'.'.join(str(p) for p in first['loc'])}") from None


def _conversion(ctx: StepContext) -> Conversion:
    path = ctx.inputs.get("build")
    if path is None:
        return Conversion()
    try:
        return Conversion.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise BuildError(f"step {ctx.kind!r}: cannot read the conversion's manifest {path}: {exc}") from None


@contextmanager
def _cache_root(ctx: StepContext) -> Iterator[Path]:
    """The workspace's runtime-compat cache; outside a workspace (a builder container), one for this step only."""
    found = _workspace_cache(ctx.out_dir)
    if found is not None:
        yield found
        return
    ctx.log("no edgefleet workspace around this step's output folder: the runtime venv is made for this check only")
    with tempfile.TemporaryDirectory(prefix="edgefleet-runtime-compat-") as tmp:
        yield Path(tmp)


def _workspace_cache(out_dir: Path) -> Path | None:
    # One cache for several workspaces when asked (the test suite makes dozens of throwaway workspaces).
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    # The store stages a step inside its workspace (.edgefleet/artifacts/.staging-*/out), so the
    # workspace found from there is the one being built.
    try:
        return open_workspace(out_dir).state_dir / CACHE_DIR
    except ConfigError:
        return None


def _log_verdict(ctx: StepContext, model: Path, check: LoadCheck) -> None:
    if check.loaded:
        ctx.log(f"runtime compat: {check.label} loads {model.name} (Python {check.python}, {check.seconds:.2f} s)")
    for reason in check.reasons:
        ctx.log(f"runtime compat FAILED: {reason}")


def _place(source: Path, dest: Path) -> None:
    # The same bytes as the conversion's entry: a hard link costs no space, and store entries are never
    # modified in place. Across file systems (a container's /out), a copy.
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)
