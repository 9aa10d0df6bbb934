"""Run one build step: ``python -m edgefleet.steps.process SPEC.json``.

This is the single entry point both backends use, so the code that runs in a
builder container is the code that runs on the host. The spec is JSON:
``{"kind": str, "inputs": {name: path}, "params": {...}, "out_dir": path}``.
Log lines go to stdout; on success the result is written to
``<out_dir>/.step-result.json`` and the exit code is 0. A step that raises an
edgefleet error exits with that error's code (``edgefleet/errors.py``), and the
backends read it back with the same constants: ``EXIT_TOOL_UNAVAILABLE`` is a
step that needs what this machine lacks, any other code a failed step.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from edgefleet.errors import EXIT_CONFIG, EXIT_OK, EdgefleetError

# What the backends run: ``python -m`` this module (a constant, so both build the same command).
STEP_MODULE = "edgefleet.steps.process"
RESULT_FILE = ".step-result.json"
ERROR_FILE = ".step-error.json"
USAGE = f"usage: python -m {STEP_MODULE} SPEC.json"


def read_step_error(out_dir: Path) -> str | None:
    """The message a failed step left for its backend, if any."""
    try:
        return str(json.loads((out_dir / ERROR_FILE).read_text())["message"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(USAGE, file=sys.stderr)
        return EXIT_CONFIG
    # Imported here, not at the top: the backends import this module for its names only.
    from edgefleet.steps.base import StepContext
    from edgefleet.steps.registry import resolve_step

    spec = json.loads(Path(args[0]).read_text())
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = StepContext(
        kind=spec["kind"],
        inputs={k: Path(v) for k, v in spec["inputs"].items()},
        params=spec["params"],
        out_dir=out_dir,
        log=lambda line: print(line, flush=True),
    )
    try:
        result = resolve_step(spec["kind"])(ctx)
    except EdgefleetError as exc:
        print(f"error: {exc}", flush=True)
        (out_dir / ERROR_FILE).write_text(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
        return exc.exit_code
    (out_dir / RESULT_FILE).write_text(json.dumps(dataclasses.asdict(result), indent=2, sort_keys=True))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
