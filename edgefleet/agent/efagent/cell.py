"""One cell: its artifact checked, loaded, measured and evaluated, and the result line that says so.

A cell's own failure (no runtime, a bad artifact, a runtime error) is that cell's ``error`` or
``missing_runtime`` line, with every measurement null: the run goes on with the next cell.
"""
import gc
import os
import time
import traceback
from typing import Any, Dict, Mapping, Optional, Tuple

from . import AGENT_VERSION, SCHEMA, evaluate, runtimes
from .bench import measure
from .envprobe import dynamic_fingerprint, rss_kb, temperatures
from .errors import CellError
from .fileio import resolve_path, sha256_file
from .inputs import make_feeds
from .locks import ExclusiveBench, QuietHost
from .log import log, now_iso
from .runfile import cell_eval_spec

EMPTY_MEASUREMENT = {
    "load_ms": None, "first_inference_ms": None, "warmup_runs": None, "runs": None, "duration_s": None,
    "stopped_by": None, "latency_ms": None, "cv": None, "unstable": None, "delegate_coverage": None,
    "runtime_info": None, "inputs": None, "outputs": None,
    "warmup_min_runs": None, "warmup_max_runs": None, "warmup_stopped_by": None, "robust_cv": None,
    "p99_over_p50": None, "drift": None, "unstable_reasons": None, "device_state": None, "samples": None,
    "throttled": None, "throttle_reasons": None, "hot": None,
}


def bench_cell(run, cell, workdir, env, run_dir, quiet=None):
    # type: (Mapping[str, Any], Mapping[str, Any], str, Mapping[str, Any], str, Optional[QuietHost]) -> Dict[str, Any]
    """Measure one cell; never raises for a cell-level failure (the line says what went wrong)."""
    record = _new_record(run, cell, env)
    try:
        _measure_cell(record, run, cell, workdir, run_dir, quiet)
    except runtimes.RuntimeMissing as exc:
        _fail(record, "missing_runtime", str(exc))
        record["runtime_info"] = getattr(exc, "info", None)  # what the runtime learnt before it gave up
    except CellError as exc:
        _fail(record, "error", str(exc))
        record["runtime_info"] = getattr(exc, "info", None)
    except Exception as exc:  # a runtime's own failure must not end the run
        _fail(record, "error", "{}: {}".format(type(exc).__name__, exc))
        record["traceback"] = traceback.format_exc()[-4000:]
    gc.collect()  # the session is gone with _measure_cell's frame: free the model before the next loads
    record["peak_rss_kb"] = rss_kb()
    record["thermal"]["after"] = temperatures()
    record["finished"] = now_iso()
    return record


def _new_record(run, cell, env):
    # type: (Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]) -> Dict[str, Any]
    record = {
        "schema": SCHEMA, "agent_version": AGENT_VERSION, "run_id": run["run_id"], "device": run["device"],
        "cell": cell["cell"], "variant": cell["variant"], "runtime": cell["runtime"], "threads": cell["threads"],
        "delegate": cell.get("delegate"), "params": cell.get("params") or {}, "artifact": cell["artifact"],
        "artifact_sha256": cell.get("artifact_sha256"), "artifact_valid": cell.get("artifact_valid", True),
        "artifact_invalid_reasons": list(cell.get("artifact_invalid_reasons") or []),
        "emulated": run["emulated"], "status": "ok", "reason": None, "started": now_iso(),
        "rss_before_kb": rss_kb(), "thermal": {"before": temperatures()},
    }  # type: Dict[str, Any]
    record.update(EMPTY_MEASUREMENT)
    record["env"] = dict(env)
    record["env"].update(dynamic_fingerprint())
    return record


def _measure_cell(record, run, cell, workdir, run_dir, quiet):
    # type: (Dict[str, Any], Mapping[str, Any], Mapping[str, Any], str, str, Optional[QuietHost]) -> None
    runtime = runtimes.get_runtime(cell["runtime"])
    record["env"]["runtime"] = runtime.version()
    path = _checked_artifact(record, cell, workdir)
    with ExclusiveBench(run["bench"].get("exclusive_lock")) as exclusive:
        if quiet is not None:
            record["deploy_wait_ms"], record["deploys_not_waited_for"] = quiet.wait()
        record["timed_start"] = now_iso()
        session, measured = _timed_section(record, run, cell, runtime, path, workdir, run_dir)
        record["timed_end"] = now_iso()
    record["exclusive_wait_ms"] = exclusive.waited_ms if exclusive.path else None
    record["outputs"] = measured.pop("outputs_seen")
    record.update(measured)
    record["delegate_coverage"] = session.delegate_coverage()
    record["runtime_info"] = session.info
    record["env"]["delegate"] = _delegate_facts(cell.get("delegate"), session.info)


def _checked_artifact(record, cell, workdir):
    # type: (Dict[str, Any], Mapping[str, Any], str) -> str
    """The artifact's path, once it is there and is the file run.json names (its sha256)."""
    path = resolve_path(cell["artifact"], workdir)
    if not os.path.isfile(path):
        raise CellError("artifact {} does not exist".format(path))
    if cell.get("artifact_sha256"):
        actual = sha256_file(path)
        if actual != cell["artifact_sha256"]:
            record["artifact_sha256_actual"] = actual
            raise CellError("artifact {} has sha256 {}, run.json expects {}".format(
                path, actual, cell["artifact_sha256"]))
    record["artifact_bytes"] = _variant_bytes(path, cell, workdir)
    return path


def _variant_bytes(path, cell, workdir):
    # type: (str, Mapping[str, Any], str) -> int
    """The artifact and the files deploy shipped beside it (OpenVINO's .bin): what the variant takes on the device."""
    total = os.path.getsize(path)
    for companion in cell.get("companions") or []:
        companion_path = resolve_path(companion, workdir)
        if not os.path.isfile(companion_path):  # the runtime would fail on it later, less clearly
            raise CellError("artifact {} needs {}, which does not exist".format(path, companion_path))
        total += os.path.getsize(companion_path)
    return total


def _timed_section(record, run, cell, runtime, path, workdir, run_dir):
    # type: (Dict[str, Any], Mapping[str, Any], Mapping[str, Any], runtimes.Runtime, str, str, str) -> Tuple[runtimes.Session, Dict[str, Any]]
    """Load, feed, measure, evaluate: everything that uses the cores, inside the host's bench lock."""
    start = time.perf_counter()
    session = runtime.load(path, cell["threads"], cell.get("delegate"), cell.get("params") or {})
    record["load_ms"] = (time.perf_counter() - start) * 1000.0
    feeds, record["inputs"] = make_feeds(session.input_details(), cell.get("input"), workdir)
    measured = measure(session, feeds, run["bench"], noise=record["env"].get("noise_floor"))
    spec = cell_eval_spec(run, cell)
    if spec is not None:  # eval latencies are timings too: inside the exclusive section
        record["eval"] = _evaluate(session, spec, cell["cell"], workdir, run_dir)
    return session, measured


def _evaluate(session, spec, key, workdir, run_dir):
    # type: (runtimes.Session, Mapping[str, Any], str, str, str) -> Dict[str, Any]
    """The cell's accuracy evaluation; its failure is reported in the line's ``eval``, the latency stands."""
    name = evaluate.output_name(key)
    summary = {"status": "error", "file": name}  # type: Dict[str, Any]
    start = time.perf_counter()
    try:
        summary.update(evaluate.evaluate(session, spec, resolve_path(spec["images"], workdir),
                                         os.path.join(run_dir, name)))
    except (evaluate.EvalError, CellError) as exc:
        summary["reason"] = str(exc)
    except Exception as exc:  # a runtime failing on one eval image must not lose the cell's latency
        summary["reason"] = "{}: {}".format(type(exc).__name__, exc)
        summary["traceback"] = traceback.format_exc()[-4000:]
    summary["duration_s"] = time.perf_counter() - start
    log("cell {}: eval {}{}".format(key, summary["status"],
                                    " ({})".format(summary.get("reason")) if summary.get("reason") else ""))
    return summary


def _delegate_facts(delegate, info):
    # type: (Optional[Mapping[str, Any]], Mapping[str, Any]) -> Optional[Dict[str, Any]]
    if not delegate:
        return None
    return {"name": delegate["name"], "library": delegate.get("library"),
            "loaded_from": info.get("delegate_library")}


def _fail(record, status, reason):
    # type: (Dict[str, Any], str, str) -> None
    record.update(EMPTY_MEASUREMENT)
    record["status"] = status
    record["reason"] = reason
