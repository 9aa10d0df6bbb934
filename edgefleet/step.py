"""Run one build step: ``python -m edgefleet.step SPEC.json``.

This is the single entry point both backends use, so the code that runs in a
builder container is the code that runs on the host. The spec is JSON:
``{"kind": str, "inputs": {name: path}, "params": {...}, "out_dir": path}``.
Log lines go to stdout; on success the result is written to
``<out_dir>/.step-result.json`` and the exit code is 0.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

RESULT_FILE = ".step-result.json"
ERROR_FILE = ".step-error.json"
# Exit codes a backend reads back: 1 a failed step, 3 a step that needs what this machine lacks.
EXIT_FAILED = 1
EXIT_UNAVAILABLE = 3


def read_step_error(out_dir: Path) -> str | None:
    """The message a failed step left for its backend, if any."""
    try:
        return str(json.loads((out_dir / ERROR_FILE).read_text())["message"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m edgefleet.step SPEC.json", file=sys.stderr)
        return 2
    from edgefleet.errors import EdgefleetError, ToolUnavailableError
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
        unavailable = isinstance(exc, ToolUnavailableError)
        (out_dir / ERROR_FILE).write_text(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
        return EXIT_UNAVAILABLE if unavailable else EXIT_FAILED
    (out_dir / RESULT_FILE).write_text(json.dumps(dataclasses.asdict(result), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
