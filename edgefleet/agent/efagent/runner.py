"""One run: RUN_DIR locked, the host's bench lock held, the cells in order, one fsynced line each.

Resumable: cells that already have an ``ok`` line are skipped; the others run again and their new
line supersedes the old one.
"""
import os
import signal
import traceback
from typing import Any, Dict, List, Mapping, Optional

from . import AGENT_VERSION
from .bench import noise_floor
from .cell import bench_cell
from .envprobe import static_fingerprint
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, AgentError, Interrupted
from .fileio import append_jsonl, read_jsonl
from .locks import ExclusiveBench, QuietHost, RunLock
from .log import log
from .runfile import DEFAULT_QUIET_WAIT_S, load_run
from .sampler import wait_until_cool
from .status import RESULTS_FILE, StatusWriter


def run_command(run_dir, workdir, lock_fd=None):
    # type: (str, Optional[str], Optional[int]) -> int
    """``lock_fd``: the run's lock, taken by `start` and handed down; else it is taken here."""
    run = load_run(run_dir)
    workdir = run.get("workdir") or workdir or os.getcwd()
    lock = RunLock(run_dir)
    if lock_fd is not None:
        if not lock.adopt(lock_fd):
            raise AgentError("--lock-fd {} is not a held lock on {}".format(lock_fd, lock.path))
    elif not lock.acquire():
        raise AgentError("another agent is already running on {}".format(run_dir))
    try:
        return _run_locked(run, run_dir, workdir)
    finally:
        lock.release()


def _raise_interrupted(signum, frame):
    # type: (int, Any) -> None
    raise Interrupted("signal {}".format(signum))


def _previous_statuses(results_path):
    # type: (str) -> Dict[str, List[str]]
    """{cell: [status, ...]} of the lines already there, a killed agent's partial last line cut away."""
    records, dropped = read_jsonl(results_path, repair=True)
    if dropped:
        log("dropped a partial last line of {} bytes from {}".format(dropped, RESULTS_FILE))
    statuses = {}  # type: Dict[str, List[str]]
    for record in records:
        if "cell" in record and "status" in record:
            statuses.setdefault(str(record["cell"]), []).append(str(record["status"]))
    return statuses


def _quiet_host(bench):
    # type: (Mapping[str, Any]) -> Optional[QuietHost]
    if not bench.get("host_deploy_locks"):
        return None
    return QuietHost(bench["host_deploy_locks"], bench.get("quiet_wait_s", DEFAULT_QUIET_WAIT_S))


def _run_locked(run, run_dir, workdir):
    # type: (Dict[str, Any], str, str) -> int
    previous = _previous_statuses(os.path.join(run_dir, RESULTS_FILE))
    status = StatusWriter(run_dir, len(run["cells"]))
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    log("agent {} (pid {}) run {} on {}: {} cells, workdir {}".format(
        AGENT_VERSION, os.getpid(), run["run_id"], run["device"], len(run["cells"]), workdir))
    try:
        return _run_on_host(run, run_dir, workdir, previous, status)
    except (Interrupted, KeyboardInterrupt) as exc:
        status.write("interrupted", status.done, error=str(exc) or "interrupted")
        log("interrupted ({})".format(exc or "SIGINT"))
        return EXIT_INTERRUPTED
    except Exception as exc:
        status.write("failed", status.done, error="{}: {}".format(type(exc).__name__, exc))
        log("failed: {}".format(traceback.format_exc()))
        return EXIT_FAILED


def _run_on_host(run, run_dir, workdir, previous, status):
    # type: (Dict[str, Any], str, str, Dict[str, List[str]], StatusWriter) -> int
    """The whole run inside the host's bench lock: imports and model loads use the cores too."""
    bench = run["bench"]
    quiet = _quiet_host(bench)
    status.write("running", 0, "waiting for the host's bench lock" if bench.get("exclusive_lock") else None)
    with ExclusiveBench(bench.get("exclusive_lock")) as host:
        if host.fd is not None:
            log("holding the host's bench lock {} (waited {:.0f} ms)".format(bench["exclusive_lock"],
                                                                             host.waited_ms))
        if quiet is not None:
            # Leave the cores to deploys in progress before the first import and load, too.
            waited_ms, _ = quiet.wait()
            log("waited {:.0f} ms for deploys in progress on this host".format(waited_ms))
        return _run_cells(run, run_dir, workdir, previous, status, quiet, host.waited_ms)


def _run_cells(run, run_dir, workdir, previous, status, quiet, host_wait_ms):
    # type: (Dict[str, Any], str, str, Dict[str, List[str]], StatusWriter, Optional[QuietHost], float) -> int
    env = static_fingerprint(run["emulated"], run.get("emulation"))
    # Once per run, inside the host's bench lock: what the timer alone spreads on this device.
    env["noise_floor"] = noise_floor()
    log("timer noise floor: p50 {:.6f} ms, IQR {:.6f} ms".format(env["noise_floor"]["p50_ms"],
                                                                env["noise_floor"]["iqr_ms"]))
    status.write("running", 0)
    last = None  # type: Optional[Dict[str, Any]]
    for cell in run["cells"]:
        if "ok" in previous.get(cell["cell"], []):
            log("skip cell {}: already ok".format(cell["cell"]))
            status.done += 1
            continue
        cooldown = _cooldown(run["bench"], last, cell, status)
        record = _run_cell(run, cell, run_dir, workdir, env, status, quiet)
        record["cooldown"] = cooldown
        if record.get("exclusive_wait_ms") is not None:
            # The run waited for the host's lock once, before its first cell: that cell reports it.
            record["exclusive_wait_ms"] += host_wait_ms
            host_wait_ms = 0.0
        append_jsonl(os.path.join(run_dir, RESULTS_FILE), record)
        last = record
        status.done += 1
        log("cell {}: {}{}".format(cell["cell"], record["status"], _summary(record)))
    status.write("done", status.done)
    log("run {} done: {} cells".format(run["run_id"], status.done))
    return EXIT_OK


def _cooldown(bench, last, cell, status):
    # type: (Mapping[str, Any], Optional[Mapping[str, Any]], Mapping[str, Any], StatusWriter) -> Optional[Dict[str, Any]]
    """The pause after a measured cell: until the board is back near the temperature that cell started
    at (or under the profile's limit), ``cooldown_s`` at most; a fixed ``cooldown_s`` without thermal zones."""
    if last is None or bench["cooldown_s"] <= 0:
        return None
    status.write("running", status.done, "cooldown before " + cell["cell"])
    before = [zone["temp_c"] for zone in (last.get("thermal") or {}).get("before") or []]
    waited = wait_until_cool(bench["cooldown_s"], max(before) if before else None, bench.get("max_temp_c"))
    if waited["mode"] == "thermal":
        log("cooldown before {}: {:.1f} s to {} C (target {:.1f} C)".format(
            cell["cell"], waited["waited_s"], waited["temp_c"], waited["target_c"]))
    return waited


def _run_cell(run, cell, run_dir, workdir, env, status, quiet):
    # type: (Dict[str, Any], Mapping[str, Any], str, str, Mapping[str, Any], StatusWriter, Optional[QuietHost]) -> Dict[str, Any]
    status.write("running", status.done, cell["cell"])
    log("cell {}: {} threads={} runtime={} delegate={}".format(
        cell["cell"], cell["variant"], cell["threads"], cell["runtime"], (cell.get("delegate") or {}).get("name")))
    return bench_cell(run, cell, workdir, env, run_dir, quiet)


def _summary(record):
    # type: (Mapping[str, Any]) -> str
    if record["status"] != "ok":
        return " ({})".format(record["reason"])
    flags = ["UNSTABLE ({})".format(", ".join(record["unstable_reasons"]))] if record["unstable"] else []
    flags += [name.upper() for name in ("throttled", "hot") if record.get(name)]
    return " p50={:.3f} ms p90={:.3f} ms runs={} warm-up={} robust cv={:.3f}{}".format(
        record["latency_ms"]["p50"], record["latency_ms"]["p90"], record["runs"], record["warmup_runs"],
        record["robust_cv"] or 0.0, "".join(" " + flag for flag in flags))

