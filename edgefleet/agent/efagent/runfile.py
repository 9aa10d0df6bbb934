"""run.json: read and checked whole before anything runs, so bad input is one line and exit code 2,
not a traceback in a detached agent's log nobody reads. The contract is in the package docstring."""
import json
import os
from typing import Any, Dict, Mapping, Optional, Set

from . import SCHEMA
from .errors import AgentError
from .evaluate import spec_problems

RUN_FILE = "run.json"  # in RUN_DIR
DEFAULT_QUIET_WAIT_S = 60.0  # bench.quiet_wait_s: how long a timed section waits for deploys on the host
BENCH_FIELDS = (
    ("warmup_runs", int, 0), ("min_runs", int, 1), ("min_duration_s", float, 0.0),
    ("max_runs", int, 1), ("cooldown_s", float, 0.0), ("cv_threshold", float, 0.0),
)


def _is_number(value, kind):
    # type: (Any, type) -> bool
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind is int else isinstance(value, (int, float))


def _require(condition, where, message):
    # type: (bool, str, str) -> None
    if not condition:
        raise AgentError("{}: {}: {}".format(RUN_FILE, where, message))


def _check_eval(spec, where):
    # type: (Any, str) -> None
    problems = spec_problems(spec)
    _require(not problems, where, "; ".join(problems))


def _check_header(run):
    # type: (Mapping[str, Any]) -> None
    _require(run.get("schema") == SCHEMA, "schema", "this agent reads schema {}, got {!r}".format(SCHEMA, run.get("schema")))
    for key in ("run_id", "device"):
        _require(isinstance(run.get(key), str) and run[key] != "", key, "must be a non-empty string")
    _require(isinstance(run.get("emulated"), bool), "emulated", "must be true or false")
    _require(run.get("workdir") is None or isinstance(run.get("workdir"), str), "workdir", "must be a path")
    _require(run.get("emulation") is None or isinstance(run.get("emulation"), dict), "emulation",
             "must be null or an object")


def _check_bench(bench):
    # type: (Any) -> None
    _require(isinstance(bench, dict), "bench", "must be an object")
    for key, kind, minimum in BENCH_FIELDS:
        value = bench.get(key)
        _require(_is_number(value, kind) and value >= minimum, "bench." + key,
                 "must be a{} >= {} (got {!r})".format("n integer" if kind is int else " number", minimum, value))
    _require(bench["max_runs"] >= bench["min_runs"], "bench.max_runs", "must be >= min_runs")
    _require(bench["cv_threshold"] > 0, "bench.cv_threshold", "must be > 0")
    _require(bench.get("exclusive_lock") is None or isinstance(bench.get("exclusive_lock"), str),
             "bench.exclusive_lock", "must be null or a path")
    locks = bench.get("host_deploy_locks")
    _require(locks is None or (isinstance(locks, list) and all(isinstance(p, str) and p for p in locks)),
             "bench.host_deploy_locks", "must be null or a list of paths")
    wait = bench.get("quiet_wait_s")
    _require(wait is None or (_is_number(wait, float) and wait >= 0), "bench.quiet_wait_s", "must be a number >= 0")


def _check_runtime_keys(cell, where):
    # type: (Mapping[str, Any], str) -> None
    threads = cell.get("threads")
    _require(_is_number(threads, int) and threads >= 1, where, "'threads' must be an integer >= 1")
    sha = cell.get("artifact_sha256")
    _require(sha is None or isinstance(sha, str), where, "'artifact_sha256' must be a string or null")
    delegate = cell.get("delegate")
    _require(delegate is None or (isinstance(delegate, dict) and isinstance(delegate.get("name"), str)),
             where, "'delegate' must be null or an object with a 'name'")
    if delegate is not None:
        _require(isinstance(delegate.get("options", {}), dict), where, "'delegate.options' must be an object")
    _require(isinstance(cell.get("params", {}), dict), where, "'params' must be an object")
    _require(isinstance(cell.get("artifact_valid", True), bool), where, "'artifact_valid' must be a boolean")
    companions = cell.get("companions", [])
    _require(isinstance(companions, list) and all(isinstance(c, str) and c for c in companions), where,
             "'companions' must be a list of paths")


def _check_input(spec, where):
    # type: (Any, str) -> None
    _require(spec is None or isinstance(spec, dict), where, "'input' must be null or an object")
    if spec:
        samples = spec.get("samples")
        _require(samples is None or isinstance(samples, str), where, "'input.samples' must be a path or null")
        norm = spec.get("normalization")
        _require(norm is None or (isinstance(norm, dict) and "mean" in norm and "std" in norm),
                 where, "'input.normalization' must be null or have 'mean' and 'std'")


def _check_cell(cell, where, seen, run_has_eval):
    # type: (Any, str, Set[str], bool) -> None
    _require(isinstance(cell, dict), where, "must be an object")
    for key in ("cell", "variant", "artifact", "runtime"):
        _require(isinstance(cell.get(key), str) and cell[key] != "", where, "{!r} must be a non-empty string".format(key))
    _require(cell["cell"] not in seen, where, "duplicate cell key {!r}".format(cell["cell"]))
    seen.add(cell["cell"])
    _check_runtime_keys(cell, where)
    _check_input(cell.get("input"), where)
    evaluation = cell.get("eval", False)
    _require(isinstance(evaluation, (bool, dict)), where, "'eval' must be true, false or an eval spec")
    if isinstance(evaluation, dict):
        _check_eval(evaluation, where + ".eval")
    _require(evaluation is not True or run_has_eval, where + ".eval", "is true but run.json has no 'eval' spec")


def validate_run(run):
    # type: (Any) -> Dict[str, Any]
    _require(isinstance(run, dict), "top level", "must be an object")
    _check_header(run)
    _check_bench(run.get("bench"))
    if run.get("eval") is not None:
        _check_eval(run["eval"], "eval")
    cells = run.get("cells")
    _require(isinstance(cells, list), "cells", "must be a list")
    seen = set()  # type: Set[str]
    for index, cell in enumerate(cells):
        _check_cell(cell, "cells[{}]".format(index), seen, run.get("eval") is not None)
    return run


def parse_run(text, source):
    # type: (str, str) -> Dict[str, Any]
    try:
        run = json.loads(text)
    except ValueError as exc:
        raise AgentError("{} is not valid JSON: {}".format(source, exc))
    return validate_run(run)


def load_run(run_dir):
    # type: (str) -> Dict[str, Any]
    path = os.path.join(run_dir, RUN_FILE)
    try:
        with open(path) as handle:
            text = handle.read()
    except (IOError, OSError) as exc:
        raise AgentError("cannot read {}: {}".format(path, exc))
    return parse_run(text, path)


def cell_eval_spec(run, cell):
    # type: (Mapping[str, Any], Mapping[str, Any]) -> Optional[Dict[str, Any]]
    """The eval spec a cell runs with (its own, or the run's for ``eval: true``), None for no evaluation.

    Its normalization defaults to the cell's input normalization: eval images are fed as samples are."""
    evaluation = cell.get("eval", False)
    spec = evaluation if isinstance(evaluation, dict) else run.get("eval") if evaluation is True else None
    if spec is None or "normalization" in spec:
        return spec
    return dict(spec, normalization=(cell.get("input") or {}).get("normalization"))
