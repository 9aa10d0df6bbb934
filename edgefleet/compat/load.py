"""Load a .tflite in the pinned runtime's venv and turn the runtime's error text into reasons."""
from __future__ import annotations

import json
import platform
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from edgefleet.compat.venv import RuntimeVenv
from edgefleet.errors import BuildError

LOAD_TIMEOUT_S = 300.0
# Runs in the runtime's venv (no edgefleet there). The JSON line is the verdict; the runtime's own logging
# goes to stderr. An import failure is told apart: it is a broken venv, not a model the runtime rejects.
_LOAD = r"""
import importlib, json, sys
try:
    module = importlib.import_module(sys.argv[2])
except Exception as exc:
    print(json.dumps({"import_error": "%s: %s" % (type(exc).__name__, exc)}))
    sys.exit(0)
try:
    module.Interpreter(model_path=sys.argv[1]).allocate_tensors()
except Exception as exc:
    print(json.dumps({"loaded": False, "error": "%s: %s" % (type(exc).__name__, exc)}))
else:
    print(json.dumps({"loaded": True}))
"""
_ProblemText = Callable[[re.Match[str]], str]
# What TFLite's op resolver says when a model needs an op it lacks (tensorflow/lite/core/api/op_resolver.cc,
# interpreter_builder.cc), each as the reason edgefleet gives.
_PROBLEMS: tuple[tuple[re.Pattern[str], _ProblemText], ...] = (
    (re.compile(r"Didn't find op for builtin opcode '(?P<op>[^']*)' version '(?P<version>\d+)'"),
     lambda m: f"builtin op {m['op'] or '(unnamed)'} version {m['version']} is unknown to it"),
    (re.compile(r"Op builtin_code out of range: (?P<code>-?\d+)"),
     lambda m: f"builtin op code {m['code']} is newer than every op it knows"),
    (re.compile(r"Didn't find custom op for name '(?P<op>[^']*)' with version (?P<version>\d+)"),
     lambda m: f"custom op {m['op']} version {m['version']} is unknown to it"),
    (re.compile(r"Encountered unresolved custom op: (?P<op>\S+?)\.?(?:\s|$)"),
     lambda m: f"custom op {m['op']} is not built into it"),
)
_MAX_ERROR_CHARS = 2000


class LoadCheck(BaseModel):
    """The verdict of loading one artifact in one runtime version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    distribution: str
    version: str
    python: str                       # the venv's Python (this host's), e.g. "3.11.7"
    machine: str
    loaded: bool
    problems: tuple[str, ...] = ()    # one per op (or other cause) the runtime could not load
    error: str | None = None          # the runtime's own words, trimmed
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.distribution} {self.version}"

    @property
    def reasons(self) -> list[str]:
        return [f"{self.label} cannot load this model: {problem}" for problem in self.problems]

    def report(self) -> dict[str, Any]:
        return {"checked_against": self.label, "passed": self.loaded, "reasons": self.reasons,
                **self.model_dump(mode="json")}


def parse_problems(text: str) -> list[str]:
    """Every op the runtime said it lacks, in the order it said so; else the error's first line."""
    found: list[tuple[int, str]] = []
    for pattern, describe in _PROBLEMS:
        found.extend((m.start(), describe(m)) for m in pattern.finditer(text))
    problems = list(dict.fromkeys(problem for _, problem in sorted(found)))
    if problems:
        return problems
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return [f"it failed: {first[:300]}" if first else "it failed without saying why"]


def check_load(venv: RuntimeVenv, artifact: Path, *, timeout_s: float = LOAD_TIMEOUT_S) -> LoadCheck:
    """``Interpreter(model_path=artifact).allocate_tensors()`` in a subprocess of the venv's python."""
    command = [str(venv.python), "-I", "-c", _LOAD, str(artifact.resolve()), venv.pin.runtime.module]
    started = time.monotonic()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BuildError(f"loading {artifact.name} in {venv.pin.label} did not finish in {timeout_s:g} s",
                         command=command) from None
    seconds = round(time.monotonic() - started, 3)
    verdict = _verdict(proc.stdout)
    if "import_error" in verdict:
        raise BuildError(f"the {venv.pin.label} venv in {venv.path} is broken: {verdict['import_error']}; "
                         "delete that folder and build again", command=command)
    base = {"distribution": venv.pin.distribution, "version": venv.pin.version,
            "python": venv.python_version or platform.python_version(), "machine": platform.machine(),
            "seconds": seconds}
    if verdict.get("loaded") is True:
        return LoadCheck(**base, loaded=True)
    error = "\n".join(part for part in (verdict.get("error", ""), proc.stderr.strip()) if part)
    if not verdict:  # no verdict line: the runtime took the process down (a crash in its C++ loader)
        problems = [f"its interpreter process died ({_exit_text(proc.returncode)}) while loading the model"]
    else:
        problems = parse_problems(error)
    return LoadCheck(**base, loaded=False, problems=tuple(problems), error=error[-_MAX_ERROR_CHARS:] or None)


def _verdict(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                return dict(json.loads(line))
            except ValueError:
                break
    return {}


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"
