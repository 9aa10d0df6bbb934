"""The edgefleet benchmark agent: runs ON THE DEVICE and measures each cell of a run.

Python 3.6+, stdlib + numpy + the runtime only (Jetson Nano ships 3.6). Shipped
as one zipapp, ``edgefleet-agent.pyz`` (built by ``edgefleet.agent.bundle``)::

    python3 edgefleet-agent.pyz run RUN_DIR [--workdir DIR]    # in the foreground
    python3 edgefleet-agent.pyz start RUN_DIR [--workdir DIR]  # detached; prints the pid
    python3 edgefleet-agent.pyz status RUN_DIR                 # prints status.json, as JSON
    python3 edgefleet-agent.pyz version                        # agent, Python, numpy, runtimes found

Exit codes: 0 done (cells may still have failed: see their status), 1 the run
failed, 2 bad input (run.json, arguments, RUN_DIR busy), 130 interrupted.

Input contract: ``RUN_DIR/run.json`` (schema 1)
-----------------------------------------------
::

    {"schema": 1, "run_id": str, "device": str, "emulated": bool,
     "workdir": str (optional; relative artifact/sample paths resolve against it,
                     else against --workdir, else the current directory),
     "bench": {"warmup_runs": int >= 0, "min_runs": int >= 1, "min_duration_s": float >= 0,
               "max_runs": int >= min_runs, "cooldown_s": float >= 0, "cv_threshold": float > 0},
     "cells": [{"cell": str (unique key), "variant": str,
                "artifact": str (relative to the workdir, or absolute),
                "artifact_sha256": str or null (checked before loading; a mismatch is an error),
                "runtime": "tflite" | "onnxruntime" | "openvino" | ...,
                "threads": int >= 1,
                "delegate": null | {"name": str, "library": str or null, "options": {}},
                "params": {} (optional, runtime-specific, e.g. {"precision": "f16"} for OpenVINO),
                "artifact_valid": bool (optional, default true: the build's fidelity verdict,
                                        passed through to the results),
                "artifact_invalid_reasons": [str] (optional),
                "input": {"samples": str or null (a .npy of raw images, (N, *input_shape[1:])),
                          "normalization": null | {"mean": float or [float], "std": float or [float]}}
                         (optional; null means random inputs),
                "eval": false | true | {eval spec} (optional: true evaluates with the run's spec)}],
     "eval": null | {"images": str (.npy, uint8 (N, H, W, 3) already at the model's input size),
                     "image_ids": [int], "image_sizes": [[width, height]] (original sizes),
                     "postprocess": {"kind": "ssd_anchors" | "yolov5" | "argmax", "params": {}},
                     "resize": "stretch" | "letterbox", "layout": "NHWC" | "NCHW",
                     "normalization": null | {"mean", "std"} (default: the cell's input normalization)}
             (optional; keys the agent does not read, e.g. the host's ground-truth digest, pass through)}

The host also writes keys the agent ignores (``accuracy_gate``, ``eval.ground_truth``...):
collect reads them back from the same run.json.

Inputs: with ``samples`` every image is ``(x - mean) / std`` (when normalization is
given), then quantized with the input tensor's scale/zero-point for an int8/uint8
input. Without normalization, samples whose dtype already matches the input are
fed as they are (a uint8-input model takes the raw image). Samples serve
single-input models only and must match the input's shape; anything else is an
``error`` for that cell. Without samples, inputs are seeded random data within
the input dtype's range (floats in [-1, 1]).

Measurement per cell: load (``load_ms``), the first inference alone
(``first_inference_ms``), ``warmup_runs`` untimed runs, then timed runs until BOTH
``min_runs`` and ``min_duration_s`` are reached, capped by ``max_runs`` (MLPerf's
stopping rule). Latencies time the runtime's invoke() with ``time.perf_counter``;
setting inputs and reading outputs are outside the timer.

Output contract: ``RUN_DIR/results.jsonl``, one JSON object per line, appended and
fsynced as each cell finishes::

    {"schema": 1, "agent_version": str, "run_id", "device", "cell", "variant", "runtime",
     "threads", "delegate", "params", "artifact", "status": "ok" | "error" | "missing_runtime",
     "reason": str or null, "emulated": bool, "started", "finished" (ISO 8601 UTC),
     "artifact_sha256": str or null, "artifact_valid": bool, "artifact_invalid_reasons": [str],
     "load_ms", "first_inference_ms", "warmup_runs", "runs", "duration_s", "stopped_by",
     "latency_ms": {"mean", "std", "min", "max", "p50", "p90", "p99"}, "cv", "unstable",
     "rss_before_kb", "peak_rss_kb" (getrusage's per-process high-water mark, read after the cell),
     "artifact_bytes": int (the artifact's size on the device; absent when it was not found),
     "eval" (cells that evaluate only): {"status": "ok" | "error", "reason", "file" (relative to
             RUN_DIR: eval/<cell>.json), "images", "predictions", "kind", "layout", "input_size",
             "resize", "latency_ms": {"mean", "p50", "min", "max"} (invoke alone, per image),
             "latency_with_postprocess_ms": {...} (invoke + outputs + dequantize + decode), "duration_s"},
     "delegate_coverage": {"delegate_nodes", "total_nodes", ...} or null,
     "runtime_info": {...}, "inputs": {"source": "samples" | "random", "details": [...]},
     "outputs": [...], "thermal": {"before": [...], "after": [...]}, "env": {...},
     "traceback": str (errors only)}

Measurement fields are null unless status is ``ok``: a cell that did not run never
reports a zero latency. ``RUN_DIR/status.json`` is replaced atomically::

    {"state": "running" | "done" | "failed" | "interrupted", "pid", "cells_done",
     "cells_total", "started", "updated", "current_cell", "error" (failed only)}

Evaluation (cells with ``eval``): after the latency loop, inside the same exclusive
section and with the same loaded session, every eval image is fed through the
artifact (normalized, then quantized with the input tensor's scale/zero point),
the outputs are dequantized and decoded here with postprocess.py, and the
predictions are written to ``RUN_DIR/eval/<cell>.json`` (see evaluate.py). A
failed evaluation leaves the cell ``ok`` with ``eval.status: error``.

Running ``run`` again on the same RUN_DIR resumes: cells that already have an
``ok`` line are skipped; the others run again and their new line supersedes the
old one. ``status`` reports ``interrupted`` for a run whose agent died (SIGKILL,
power loss) while status.json still says running.
"""
import argparse
import datetime
import errno
import fcntl
import gc
import glob
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from typing import IO, Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

try:
    from . import runtimes  # inside the edgefleet package, on the host
except (ImportError, SystemError):
    import runtimes  # type: ignore  # a top-level module inside the zipapp

SCHEMA = 1
AGENT_VERSION = "1"
RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"
STATUS_FILE = "status.json"
LOG_FILE = "agent.log"
LOCK_FILE = "agent.lock"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

# vcgencmd get_throttled bits (Raspberry Pi firmware documentation).
THROTTLE_BITS = {
    0: "under_voltage", 1: "arm_frequency_capped", 2: "throttled", 3: "soft_temperature_limit",
    16: "under_voltage_occurred", 17: "arm_frequency_capped_occurred", 18: "throttled_occurred",
    19: "soft_temperature_limit_occurred",
}


class AgentError(Exception):
    """Bad input (run.json, arguments): reported as one line, exit code 2."""


class CellError(Exception):
    """This cell cannot run (shape mismatch, missing artifact...): an ``error`` line, the run goes on."""


class Interrupted(BaseException):
    """SIGTERM/SIGHUP: a BaseException so a cell's ``except Exception`` does not swallow it."""


def now_iso():
    # type: () -> str
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def log(message):
    # type: (str) -> None
    sys.stderr.write("{} {}\n".format(now_iso(), message))
    sys.stderr.flush()


# ---------------------------------------------------------------- run.json

DEFAULT_QUIET_WAIT_S = 60.0  # how long a timed section waits for deploys on the same host to finish
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


def _check_cell(cell, index, seen):
    # type: (Any, int, Set[str]) -> None
    where = "cells[{}]".format(index)
    _require(isinstance(cell, dict), where, "must be an object")
    for key in ("cell", "variant", "artifact", "runtime"):
        _require(isinstance(cell.get(key), str) and cell[key] != "", where, "{!r} must be a non-empty string".format(key))
    _require(cell["cell"] not in seen, where, "duplicate cell key {!r}".format(cell["cell"]))
    seen.add(cell["cell"])
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
    spec = cell.get("input")
    _require(spec is None or isinstance(spec, dict), where, "'input' must be null or an object")
    if spec:
        samples = spec.get("samples")
        _require(samples is None or isinstance(samples, str), where, "'input.samples' must be a path or null")
        norm = spec.get("normalization")
        _require(norm is None or (isinstance(norm, dict) and "mean" in norm and "std" in norm),
                 where, "'input.normalization' must be null or have 'mean' and 'std'")
    evaluation = cell.get("eval", False)
    _require(isinstance(evaluation, (bool, dict)), where, "'eval' must be true, false or an eval spec")
    if isinstance(evaluation, dict):
        _check_eval(evaluation, where + ".eval")


def _evaluate_module():
    # type: () -> Any
    try:
        from . import evaluate  # inside the edgefleet package, on the host
    except (ImportError, SystemError):
        import evaluate  # type: ignore  # a top-level module inside the zipapp
    return evaluate


def _check_eval(spec, where):
    # type: (Any, str) -> None
    try:
        problems = _evaluate_module().spec_problems(spec)
    except ImportError as exc:
        raise AgentError("{}: {}: this agent was built without evaluation support ({})".format(RUN_FILE, where, exc))
    _require(not problems, where, "; ".join(problems))


def validate_run(run):
    # type: (Any) -> Dict[str, Any]
    _require(isinstance(run, dict), "top level", "must be an object")
    _require(run.get("schema") == SCHEMA, "schema", "this agent reads schema {}, got {!r}".format(SCHEMA, run.get("schema")))
    for key in ("run_id", "device"):
        _require(isinstance(run.get(key), str) and run[key] != "", key, "must be a non-empty string")
    _require(isinstance(run.get("emulated"), bool), "emulated", "must be true or false")
    _require(run.get("workdir") is None or isinstance(run.get("workdir"), str), "workdir", "must be a path")
    _require(run.get("emulation") is None or isinstance(run.get("emulation"), dict), "emulation",
             "must be null or an object")
    bench = run.get("bench")
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
    _require(bench.get("quiet_wait_s") is None or (_is_number(bench["quiet_wait_s"], float)
                                                   and bench["quiet_wait_s"] >= 0),
             "bench.quiet_wait_s", "must be a number >= 0")
    if run.get("eval") is not None:
        _check_eval(run["eval"], "eval")
    cells = run.get("cells")
    _require(isinstance(cells, list), "cells", "must be a list")
    seen = set()  # type: Set[str]
    for index, cell in enumerate(cells):
        _check_cell(cell, index, seen)
        _require(cell.get("eval") is not True or run.get("eval") is not None, "cells[{}].eval".format(index),
                 "is true but run.json has no 'eval' spec")
    return run


def load_run(run_dir):
    # type: (str) -> Dict[str, Any]
    path = os.path.join(run_dir, RUN_FILE)
    try:
        with open(path) as handle:
            run = json.load(handle)
    except (IOError, OSError) as exc:
        raise AgentError("cannot read {}: {}".format(path, exc))
    except ValueError as exc:
        raise AgentError("{} is not valid JSON: {}".format(path, exc))
    return validate_run(run)


def resolve_path(path, workdir):
    # type: (str, str) -> str
    return path if os.path.isabs(path) else os.path.join(workdir, path)


# ---------------------------------------------------------------- files

def fsync_dir(path):
    # type: (str) -> None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def write_json_atomic(path, data):
    # type: (str, Mapping[str, Any]) -> None
    tmp = "{}.tmp.{}".format(path, os.getpid())
    with open(tmp, "w") as handle:
        json.dump(data, handle, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def append_line(path, record):
    # type: (str, Mapping[str, Any]) -> None
    data = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    with open(path, "ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def read_results(path):
    # type: (str) -> Tuple[Dict[str, List[str]], int]
    """{cell: [status, ...]} from an existing results.jsonl, and the bytes of a partial last line dropped.

    A line cut by a kill mid-write has no newline; it is truncated away so the
    next append starts on a line of its own.
    """
    statuses = {}  # type: Dict[str, List[str]]
    if not os.path.exists(path):
        return statuses, 0
    with open(path, "rb") as handle:
        data = handle.read()
    complete = data[:data.rfind(b"\n") + 1]
    dropped = len(data) - len(complete)
    if dropped:
        with open(path, "r+b") as handle:
            handle.truncate(len(complete))
            os.fsync(handle.fileno())
    for raw in complete.splitlines():
        try:
            record = json.loads(raw.decode("utf-8"))
            statuses.setdefault(str(record["cell"]), []).append(str(record["status"]))
        except (ValueError, KeyError, TypeError):
            continue  # the host quarantines it at ingest; here it only means "not ok"
    return statuses, dropped


class ExclusiveBench(object):
    """A blocking flock shared by every device on one physical host.

    Emulated devices share this host's cores: a timed run while another device is timing would
    measure both. Deploy names the same lock file for all of them, so they take turns. `run` holds it
    for its whole run (imports, model loads and evaluation use the same cores), and each cell's
    timed section enters it again, which is then free. Re-entrant within one process: a second
    flock on a new descriptor of the same file would wait for the first.
    """

    _held = {}  # type: Dict[str, int]  # path -> descriptor, for this process

    def __init__(self, path):
        # type: (Optional[str]) -> None
        self.path = path
        self.fd = None  # type: Optional[int]
        self.waited_ms = 0.0

    def __enter__(self):
        # type: () -> ExclusiveBench
        if self.path and self.path not in ExclusiveBench._held:
            start = time.perf_counter()
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            ExclusiveBench._held[self.path] = self.fd
            self.waited_ms = (time.perf_counter() - start) * 1000.0
        return self

    def __exit__(self, *exc):
        # type: (Any) -> None
        if self.fd is not None:
            del ExclusiveBench._held[self.path]
            os.close(self.fd)  # closing releases the flock
            self.fd = None


class QuietHost(object):
    """Waits, before a timed section, until no deploy is in progress on any device of this host.

    Deploys to the other emulated devices (sshd, uploads, hashing, the probes) run on the cores a
    timed section is measuring. ``bench.host_deploy_locks`` lists those devices' deploy lock folders;
    one still there after ``bench.quiet_wait_s`` is taken for a crashed deploy's and not waited for
    again in this run (the cells say so)."""

    def __init__(self, paths, wait_s):
        # type: (Sequence[str], float) -> None
        self.paths = list(paths)
        self.wait_s = wait_s
        self.ignored = set()  # type: Set[str]

    def wait(self):
        # type: () -> Tuple[float, List[str]]
        """Milliseconds waited, and the lock folders still present (given up on)."""
        start = time.perf_counter()
        deadline = time.time() + self.wait_s
        while True:
            busy = [path for path in self.paths if path not in self.ignored and os.path.isdir(path)]
            if not busy or time.time() >= deadline:
                break
            time.sleep(0.05)
        if busy:
            log("deploy lock(s) {} still present after {:g} s: taken as stale, not waited for again".format(
                ", ".join(busy), self.wait_s))
            self.ignored.update(busy)
        return (time.perf_counter() - start) * 1000.0, sorted(self.ignored)


class RunLock(object):
    """flock on RUN_DIR/agent.lock: held by the running agent, released by the kernel when it dies."""

    def __init__(self, run_dir):
        # type: (str) -> None
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.fd = None  # type: Optional[int]

    def acquire(self, timeout_s=0.5):
        # type: (float) -> bool
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.time() + timeout_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except (IOError, OSError) as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                # A concurrent `status` probe holds it for an instant; an agent holds it for good.
                if time.time() >= deadline:
                    os.close(self.fd)
                    self.fd = None
                    return False
                time.sleep(0.05)

    def adopt(self, fd):
        # type: (int) -> bool
        """Take over the lock `start` acquired and handed down as an open descriptor."""
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            if same:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: succeeds at once
        except (IOError, OSError):
            return False
        if not same:
            return False
        os.set_inheritable(fd, False)
        self.fd = fd
        return True

    def release(self):
        # type: () -> None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock_is_held(run_dir):
    # type: (str) -> bool
    path = os.path.join(run_dir, LOCK_FILE)
    if not os.path.exists(path):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except (IOError, OSError):
        return True
    finally:
        os.close(fd)


# ---------------------------------------------------------------- environment

def _read(path):
    # type: (str) -> Optional[str]
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace").strip().strip("\x00")
    except (IOError, OSError):
        return None


def cpu_model():
    # type: () -> Optional[str]
    text = _read("/proc/cpuinfo") or ""
    fields = {}  # type: Dict[str, str]
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    for key in ("model name", "Model", "Hardware", "Processor", "cpu model"):
        if fields.get(key):
            return fields[key]
    return platform.processor() or None


def cpu_governors():
    # type: () -> Optional[List[str]]
    paths = glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor")
    values = sorted(set(v for v in (_read(p) for p in paths) if v))
    return values or None


def temperatures():
    # type: () -> List[Dict[str, Any]]
    zones = []
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        raw = _read(os.path.join(zone, "temp"))
        try:
            millideg = int(raw) if raw is not None else None
        except ValueError:
            millideg = None
        if millideg is None:
            continue
        zones.append({"zone": os.path.basename(zone), "type": _read(os.path.join(zone, "type")),
                      "temp_c": millideg / 1000.0})
    return zones


def throttle_state():
    # type: () -> Optional[Dict[str, Any]]
    """The Raspberry Pi firmware's throttle flags; None where vcgencmd does not exist."""
    if shutil.which("vcgencmd") is None:
        return None
    try:
        out = subprocess.check_output(["vcgencmd", "get_throttled"], stderr=subprocess.STDOUT,
                                      universal_newlines=True, timeout=5)
    except (subprocess.SubprocessError, OSError) as exc:
        return {"raw": None, "error": str(exc)}
    raw = out.strip().partition("=")[2]
    try:
        value = int(raw, 16)
    except ValueError:
        return {"raw": out.strip(), "error": "unparsed"}
    return {"raw": raw, "flags": [name for bit, name in sorted(THROTTLE_BITS.items()) if value & (1 << bit)]}


def static_fingerprint(emulated, emulation=None):
    # type: (bool, Optional[Mapping[str, Any]]) -> Dict[str, Any]
    """What does not change during a run: taken once. ``emulation`` is the host's account of how an
    emulated device is emulated (emulator, emulated and real OS), passed through from run.json."""
    uname = os.uname()
    return {
        "uname": {"sysname": uname.sysname, "nodename": uname.nodename, "release": uname.release,
                  "version": uname.version, "machine": uname.machine},
        "board": _read("/proc/device-tree/model"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "numpy_path": os.path.dirname(np.__file__),
        "emulated": emulated,
        "emulation": dict(emulation) if emulation else None,
        "os": os_release(),
    }


def os_release():
    # type: () -> Optional[str]
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except (IOError, OSError):
        pass
    return None


def dynamic_fingerprint():
    # type: () -> Dict[str, Any]
    """What may change between cells (governor switched, board throttling)."""
    return {"cpu_governor": cpu_governors(), "throttled": throttle_state()}


def rss_kb():
    # type: () -> int
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak // 1024) if sys.platform == "darwin" else int(peak)  # macOS reports bytes


# ---------------------------------------------------------------- inputs

def _batch(shape, default=1):
    # type: (Sequence[Optional[int]], int) -> int
    return int(shape[0]) if shape and shape[0] else default


def quantize(values, scale, zero_point, dtype):
    # type: (np.ndarray, float, int, Any) -> np.ndarray
    info = np.iinfo(dtype)
    q = np.round(np.asarray(values, dtype=np.float64) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def to_input(raw, detail, normalization):
    # type: (np.ndarray, Mapping[str, Any], Optional[Mapping[str, Any]]) -> np.ndarray
    """Raw samples -> the input tensor's dtype: normalize, then quantize for an integer input."""
    dtype = np.dtype(detail["dtype"])
    if normalization is None and raw.dtype == dtype:
        return np.ascontiguousarray(raw)
    values = raw.astype(np.float32)
    if normalization is not None:
        std = np.asarray(normalization["std"], dtype=np.float32)
        if np.any(std == 0):
            raise CellError("input.normalization.std must not be zero")
        values = (values - np.asarray(normalization["mean"], dtype=np.float32)) / std
    if dtype.kind in "iu":
        if detail.get("scale"):
            return quantize(values, detail["scale"], detail.get("zero_point", 0), dtype)
        info = np.iinfo(dtype)
        return np.clip(np.round(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def random_input(detail, rng):
    # type: (Mapping[str, Any], np.random.RandomState) -> np.ndarray
    shape = [d if d else 1 for d in detail["shape"]]  # a dynamic dimension runs at 1
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "b":
        return rng.randint(0, 2, size=shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        # Bounded to int32 so int64/uint64 inputs do not overflow randint's own range.
        low, high = max(int(info.min), -2 ** 31), min(int(info.max), 2 ** 31 - 1)
        return rng.randint(low, high + 1, size=shape, dtype=np.int64).astype(dtype)
    if dtype.kind == "f":
        return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    raise CellError("cannot make random data for input {!r} of dtype {}".format(detail["name"], dtype))


def make_feeds(details, spec, workdir):
    # type: (List[Dict[str, Any]], Optional[Mapping[str, Any]], str) -> Tuple[List[List[np.ndarray]], Dict[str, Any]]
    """A list of feeds (one array per input), cycled through by the timed loop."""
    spec = spec or {}
    described = {"details": details, "normalization": spec.get("normalization")}
    if not spec.get("samples"):
        rng = np.random.RandomState(0)
        described["source"] = "random"
        return [[random_input(d, rng) for d in details]], described
    if len(details) != 1:
        raise CellError("input.samples serves single-input models; this one has {} inputs".format(len(details)))
    path = resolve_path(spec["samples"], workdir)
    try:
        samples = np.load(path, allow_pickle=False)
    except (IOError, OSError, ValueError) as exc:
        raise CellError("cannot read samples {}: {}".format(path, exc))
    detail = details[0]
    expected = list(detail["shape"][1:])
    actual = list(samples.shape[1:])
    if len(expected) != len(actual) or any(e is not None and e != a for e, a in zip(expected, actual)):
        raise CellError("samples of shape {} do not match input {!r} of shape {} (one image is {})".format(
            list(samples.shape), detail["name"], detail["shape"], expected))
    batch = _batch(detail["shape"])
    if samples.shape[0] < batch:
        raise CellError("{} samples cannot fill one batch of {}".format(samples.shape[0], batch))
    feeds = []
    for start in range(0, samples.shape[0] - batch + 1, batch):
        feeds.append([to_input(samples[start:start + batch], detail, spec.get("normalization"))])
    described.update({"source": "samples", "samples": spec["samples"], "count": int(samples.shape[0]),
                      "fed_dtype": str(feeds[0][0].dtype)})
    return feeds, described


# ---------------------------------------------------------------- benchmark

def latency_stats(latencies_s):
    # type: (Sequence[float]) -> Dict[str, float]
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    # Old numpy interpolates without guarding rounding; keep the percentiles ordered and in range.
    p50, p90, p99 = np.clip(np.maximum.accumulate(np.percentile(ms, [50, 90, 99])), ms.min(), ms.max())
    return {"mean": float(ms.mean()), "std": float(ms.std()), "min": float(ms.min()), "max": float(ms.max()),
            "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def sha256_file(path):
    # type: (str) -> str
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _set_inputs(session, feed):
    # type: (runtimes.Session, Sequence[np.ndarray]) -> None
    for index, array in enumerate(feed):
        session.set_input(index, array)


def _timed_invoke(session):
    # type: (runtimes.Session) -> float
    start = time.perf_counter()
    session.invoke()
    return time.perf_counter() - start


def measure(session, feeds, bench):
    # type: (runtimes.Session, List[List[np.ndarray]], Mapping[str, Any]) -> Dict[str, Any]
    """First inference, warm-up, then the timed loop under the min_runs AND min_duration_s rule."""
    _set_inputs(session, feeds[0])
    first = _timed_invoke(session)
    outputs = session.get_outputs()
    for i in range(bench["warmup_runs"]):
        _set_inputs(session, feeds[i % len(feeds)])
        session.invoke()
    latencies = []  # type: List[float]
    loop_start = time.perf_counter()
    stopped_by = "min_runs_and_duration"
    while True:
        _set_inputs(session, feeds[len(latencies) % len(feeds)])
        latencies.append(_timed_invoke(session))
        session.get_outputs()
        if len(latencies) >= bench["max_runs"]:
            stopped_by = "max_runs"
            break
        if len(latencies) >= bench["min_runs"] and time.perf_counter() - loop_start >= bench["min_duration_s"]:
            break
    duration = time.perf_counter() - loop_start
    stats = latency_stats(latencies)
    cv = stats["std"] / stats["mean"] if stats["mean"] > 0 else None
    return {
        "first_inference_ms": first * 1000.0, "warmup_runs": bench["warmup_runs"], "runs": len(latencies),
        "duration_s": duration, "stopped_by": stopped_by, "latency_ms": stats, "cv": cv,
        "unstable": cv is None or cv > bench["cv_threshold"],
        "outputs_seen": [{"shape": list(o.shape), "dtype": str(o.dtype)} for o in outputs],
    }


EMPTY_MEASUREMENT = {
    "load_ms": None, "first_inference_ms": None, "warmup_runs": None, "runs": None, "duration_s": None,
    "stopped_by": None, "latency_ms": None, "cv": None, "unstable": None, "delegate_coverage": None,
    "runtime_info": None, "inputs": None, "outputs": None,
}


def bench_cell(run, cell, workdir, env, run_dir=None, quiet=None):
    # type: (Mapping[str, Any], Mapping[str, Any], str, Mapping[str, Any], Optional[str], Optional[QuietHost]) -> Dict[str, Any]
    """Measure one cell; never raises for a cell-level failure (the line says what went wrong)."""
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
    env_cell = dict(env)
    env_cell.update(dynamic_fingerprint())
    session = None
    try:
        runtime = runtimes.get_runtime(cell["runtime"])
        env_cell["runtime"] = runtime.version()
        path = resolve_path(cell["artifact"], workdir)
        if not os.path.isfile(path):
            raise CellError("artifact {} does not exist".format(path))
        if cell.get("artifact_sha256"):
            actual = sha256_file(path)
            if actual != cell["artifact_sha256"]:
                record["artifact_sha256_actual"] = actual
                raise CellError("artifact {} has sha256 {}, run.json expects {}".format(
                    path, actual, cell["artifact_sha256"]))
        record["artifact_bytes"] = os.path.getsize(path)
        with ExclusiveBench(run["bench"].get("exclusive_lock")) as exclusive:
            if quiet is not None:
                record["deploy_wait_ms"], record["deploys_not_waited_for"] = quiet.wait()
            record["timed_start"] = now_iso()
            start = time.perf_counter()
            session = runtime.load(path, cell["threads"], cell.get("delegate"), cell.get("params") or {})
            record["load_ms"] = (time.perf_counter() - start) * 1000.0
            feeds, record["inputs"] = make_feeds(session.input_details(), cell.get("input"), workdir)
            measured = measure(session, feeds, run["bench"])
            eval_spec = _eval_spec(run, cell)
            if eval_spec is not None:  # eval latencies are timings too: inside the exclusive section
                record["eval"] = run_eval(session, eval_spec, cell, workdir, run_dir)
            record["timed_end"] = now_iso()
        record["exclusive_wait_ms"] = exclusive.waited_ms if exclusive.path else None
        record["outputs"] = measured.pop("outputs_seen")
        record.update(measured)
        record["delegate_coverage"] = session.delegate_coverage()
        record["runtime_info"] = session.info
        env_cell["delegate"] = _delegate_facts(cell.get("delegate"), session.info)
    except runtimes.RuntimeMissing as exc:
        _fail(record, "missing_runtime", str(exc))
    except CellError as exc:
        _fail(record, "error", str(exc))
    except Exception as exc:  # a runtime's own failure must not end the run
        _fail(record, "error", "{}: {}".format(type(exc).__name__, exc))
        record["traceback"] = traceback.format_exc()[-4000:]
    finally:
        session = None
        gc.collect()
    record["peak_rss_kb"] = rss_kb()
    record["thermal"]["after"] = temperatures()
    record["finished"] = now_iso()
    record["env"] = env_cell
    return record


def _eval_spec(run, cell):
    # type: (Mapping[str, Any], Mapping[str, Any]) -> Optional[Mapping[str, Any]]
    evaluation = cell.get("eval", False)
    if isinstance(evaluation, dict):
        return evaluation
    return run.get("eval") if evaluation is True else None


def run_eval(session, spec, cell, workdir, run_dir):
    # type: (runtimes.Session, Mapping[str, Any], Mapping[str, Any], str, Optional[str]) -> Dict[str, Any]
    """The cell's accuracy evaluation; its failure is reported in the line's ``eval``, the latency stands."""
    evaluate = _evaluate_module()
    name = evaluate.output_name(cell["cell"])
    summary = {"status": "error", "file": name}  # type: Dict[str, Any]
    normalization = spec["normalization"] if "normalization" in spec else (cell.get("input") or {}).get("normalization")
    spec = dict(spec, normalization=normalization)
    start = time.perf_counter()
    try:
        if run_dir is None:
            raise evaluate.EvalError("no run directory to write the evaluation into")
        summary.update(evaluate.evaluate(session, spec, resolve_path(spec["images"], workdir),
                                         os.path.join(run_dir, name), to_input))
    except (evaluate.EvalError, CellError) as exc:
        summary["reason"] = str(exc)
    except Exception as exc:  # a runtime failing on one eval image must not lose the cell's latency
        summary["reason"] = "{}: {}".format(type(exc).__name__, exc)
        summary["traceback"] = traceback.format_exc()[-4000:]
    summary["duration_s"] = time.perf_counter() - start
    log("cell {}: eval {}{}".format(cell["cell"], summary["status"],
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


# ---------------------------------------------------------------- commands

class StatusWriter(object):
    def __init__(self, run_dir, cells_total):
        # type: (str, int) -> None
        self.path = os.path.join(run_dir, STATUS_FILE)
        self.cells_total = cells_total
        self.started = now_iso()
        self.done = 0  # cells finished (or skipped as already ok), for the final state after a failure

    def write(self, state, cells_done, current_cell=None, error=None):
        # type: (str, int, Optional[str], Optional[str]) -> None
        data = {"state": state, "pid": os.getpid(), "cells_done": cells_done, "cells_total": self.cells_total,
                "started": self.started, "updated": now_iso(), "current_cell": current_cell}
        if error is not None:
            data["error"] = error
        write_json_atomic(self.path, data)


def _raise_interrupted(signum, frame):
    # type: (int, Any) -> None
    raise Interrupted("signal {}".format(signum))


def run_command(run_dir, workdir, lock_fd=None):
    # type: (str, Optional[str], Optional[int]) -> int
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


def _run_locked(run, run_dir, workdir):
    # type: (Dict[str, Any], str, str) -> int
    results_path = os.path.join(run_dir, RESULTS_FILE)
    previous, dropped = read_results(results_path)
    if dropped:
        log("dropped a partial last line of {} bytes from {}".format(dropped, RESULTS_FILE))
    cells = run["cells"]
    status = StatusWriter(run_dir, len(cells))
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    log("agent {} (pid {}) run {} on {}: {} cells, workdir {}".format(
        AGENT_VERSION, os.getpid(), run["run_id"], run["device"], len(cells), workdir))
    bench = run["bench"]
    quiet = QuietHost(bench["host_deploy_locks"], bench.get("quiet_wait_s", DEFAULT_QUIET_WAIT_S)) \
        if bench.get("host_deploy_locks") else None
    try:
        status.write("running", 0, "waiting for the host's bench lock" if bench.get("exclusive_lock") else None)
        with ExclusiveBench(bench.get("exclusive_lock")) as host:
            if host.fd is not None:
                log("holding the host's bench lock {} (waited {:.0f} ms)".format(bench["exclusive_lock"],
                                                                                 host.waited_ms))
            if quiet is not None:
                # Imports and model loads are heavy too: leave the cores to deploys in progress first.
                waited_ms, _ = quiet.wait()
                log("waited {:.0f} ms for deploys in progress on this host".format(waited_ms))
            return _run_cells(run, run_dir, workdir, previous, status, quiet, host.waited_ms)
    except (Interrupted, KeyboardInterrupt) as exc:
        status.write("interrupted", status.done, error=str(exc) or "interrupted")
        log("interrupted ({})".format(exc or "SIGINT"))
        return EXIT_INTERRUPTED
    except Exception as exc:
        status.write("failed", status.done, error="{}: {}".format(type(exc).__name__, exc))
        log("failed: {}".format(traceback.format_exc()))
        return EXIT_FAILED


def _run_cells(run, run_dir, workdir, previous, status, quiet, host_wait_ms):
    # type: (Dict[str, Any], str, str, Dict[str, List[str]], StatusWriter, Optional[QuietHost], float) -> int
    results_path = os.path.join(run_dir, RESULTS_FILE)
    env = static_fingerprint(run["emulated"], run.get("emulation"))
    status.write("running", 0)
    measured_any = False
    for cell in run["cells"]:
        key = cell["cell"]
        if "ok" in previous.get(key, []):
            log("skip cell {}: already ok".format(key))
            status.done += 1
            continue
        if measured_any and run["bench"]["cooldown_s"] > 0:
            status.write("running", status.done, "cooldown before " + key)
            time.sleep(run["bench"]["cooldown_s"])
        status.write("running", status.done, key)
        log("cell {}: {} threads={} runtime={} delegate={}".format(
            key, cell["variant"], cell["threads"], cell["runtime"], (cell.get("delegate") or {}).get("name")))
        record = bench_cell(run, cell, workdir, env, run_dir, quiet)
        if record.get("exclusive_wait_ms") is not None:
            # The run waited for the host's lock once, before its first cell: that cell reports it.
            record["exclusive_wait_ms"] += host_wait_ms
            host_wait_ms = 0.0
        append_line(results_path, record)
        measured_any = True
        status.done += 1
        log("cell {}: {}{}".format(key, record["status"], _summary(record)))
    status.write("done", status.done)
    log("run {} done: {} cells".format(run["run_id"], status.done))
    return EXIT_OK


def _summary(record):
    # type: (Mapping[str, Any]) -> str
    if record["status"] != "ok":
        return " ({})".format(record["reason"])
    return " p50={:.3f} ms p90={:.3f} ms runs={} cv={:.3f}{}".format(
        record["latency_ms"]["p50"], record["latency_ms"]["p90"], record["runs"], record["cv"] or 0.0,
        " UNSTABLE" if record["unstable"] else "")


def pid_alive(pid):
    # type: (Any) -> bool
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return False
    stat = _read("/proc/{}/stat".format(pid))
    # A zombie nobody reaped (PID 1 of a container often does not) is dead too.
    return not (stat and stat.rpartition(")")[2].split()[:1] == ["Z"])


def status_command(run_dir):
    # type: (str) -> Dict[str, Any]
    path = os.path.join(run_dir, STATUS_FILE)
    if not os.path.exists(path):
        return {"state": "not_started", "run_dir": run_dir}
    try:
        with open(path) as handle:
            status = json.load(handle)
    except (IOError, OSError, ValueError) as exc:
        raise AgentError("cannot read {}: {}".format(path, exc))
    if status.get("state") == "running" and not lock_is_held(run_dir) and not pid_alive(status.get("pid")):
        status["state"] = "interrupted"
        status["reason"] = "agent process {} is gone while the run was in progress".format(status.get("pid"))
        # A kill between appending a cell's line and rewriting status.json leaves cells_done one short.
        status["cells_done"] = max(status.get("cells_done") or 0, finished_cells(run_dir))
    return status


def finished_cells(run_dir):
    # type: (str) -> int
    """How many cells have a complete line in results.jsonl. Read only: a partial last line is left alone."""
    try:
        with open(os.path.join(run_dir, RESULTS_FILE), "rb") as handle:
            data = handle.read()
    except (IOError, OSError):
        return 0
    cells = set()  # type: Set[str]
    for raw in data[:data.rfind(b"\n") + 1].splitlines():
        try:
            cells.add(str(json.loads(raw.decode("utf-8"))["cell"]))
        except (ValueError, KeyError, TypeError):
            continue
    return len(cells)


LAUNCHER = None  # type: Optional[List[str]]  # set by the zipapp's __main__: how to start it again


def _self_command():
    # type: () -> List[str]
    """How to start this agent again: the zipapp it was loaded from, or agent.py run as a script."""
    if LAUNCHER:
        return list(LAUNCHER)
    here = os.path.abspath(__file__)
    # Inside a zipapp __file__ is ARCHIVE/agent.py, which is not a file of its own.
    return [sys.executable, here if os.path.isfile(here) else os.path.dirname(here)]


def read_config(source):
    # type: (IO[str]) -> Dict[str, Any]
    try:
        return validate_run(json.load(source))
    except ValueError as exc:
        raise AgentError("the run config on stdin is not valid JSON: {}".format(exc))


def start_command(run_dir, workdir, config=None):
    # type: (str, Optional[str], Optional[Dict[str, Any]]) -> int
    """Start `run` detached (double fork + setsid) so it survives the SSH session; print its pid.

    With ``config`` (deploy sends run.json on stdin: one round trip instead of two) it is validated,
    then written atomically as the run's run.json, unless an agent is already running there.
    `start` takes the run's lock itself and hands it down to `run`, so it can return at once: `status`
    never sees the run unlocked between the two (it would read a resumed run's stale status.json, its
    killed agent's pid and "running", as interrupted), and deploy does not wait for `run` to start up."""
    if config is not None and not os.path.isdir(run_dir):
        os.makedirs(run_dir)
    if config is None:
        load_run(run_dir)  # bad input is reported now, not in a log nobody reads
    lock = RunLock(run_dir)
    if not lock.acquire():
        raise AgentError("another agent is already running on {}".format(run_dir))
    if config is not None:
        write_json_atomic(os.path.join(run_dir, RUN_FILE), config)
    run = load_run(run_dir)
    run_dir = os.path.abspath(run_dir)
    workdir = os.path.abspath(run.get("workdir") or workdir or os.getcwd())
    argv = _self_command() + ["run", run_dir, "--workdir", workdir, "--lock-fd", str(lock.fd)]
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        try:
            os.setsid()
            grandchild = os.fork()
            if grandchild:
                os.write(write_end, str(grandchild).encode())
                os._exit(0)
            os.close(write_end)
            _detach_stdio(os.path.join(run_dir, LOG_FILE))
            os.set_inheritable(lock.fd, True)  # type: ignore[arg-type]  # `run` holds the lock from here
            os.execv(argv[0], argv)
        except BaseException:
            traceback.print_exc()
        os._exit(127)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as pipe:
        pid = int(pipe.read().decode() or 0)
    lock.release()  # our copy only: the detached agent holds the same lock
    if not pid:
        raise AgentError("the detached agent did not start")
    sys.stdout.write("{}\n".format(pid))
    return EXIT_OK


def _detach_stdio(log_path):
    # type: (str) -> None
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)


def parse_args(argv):
    # type: (Optional[Sequence[str]]) -> argparse.Namespace
    parser = argparse.ArgumentParser(prog="edgefleet-agent", description="edgefleet on-device benchmark agent")
    sub = parser.add_subparsers(dest="command")
    for name, text in (("run", "run the cells in the foreground"),
                       ("start", "start `run` detached; print its pid"),
                       ("status", "print the run's status as JSON")):
        command = sub.add_parser(name, help=text)
        command.add_argument("run_dir")
        if name != "status":
            command.add_argument("--workdir", default=None,
                                 help="where relative artifact paths resolve (default: run.json's, else cwd)")
        if name == "start":
            command.add_argument("--config", choices=["-"], default=None,
                                 help="'-': read run.json from stdin, validate it and write it into RUN_DIR first")
        if name == "run":
            command.add_argument("--lock-fd", type=int, default=None, help=argparse.SUPPRESS)  # from `start`
    sub.add_parser("version", help="print the agent and runtime versions as JSON")
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("a command is required")
    return args


def versions():
    # type: () -> Dict[str, Any]
    found = {}  # type: Dict[str, Any]
    for name, runtime in sorted(runtimes.REGISTRY.items()):
        try:
            found[name] = runtime.version()
        except runtimes.RuntimeMissing as exc:
            found[name] = {"missing": str(exc)}
    return {"agent": AGENT_VERSION, "schema": SCHEMA, "python": platform.python_version(),
            "numpy": np.__version__, "runtimes": found}


def main(argv=None):
    # type: (Optional[Sequence[str]]) -> int
    args = parse_args(argv)
    try:
        if args.command == "run":
            return run_command(args.run_dir, args.workdir, args.lock_fd)
        if args.command == "start":
            config = read_config(sys.stdin) if args.config == "-" else None
            return start_command(args.run_dir, args.workdir, config)
        if args.command == "status":
            print(json.dumps(status_command(args.run_dir), sort_keys=True))
            return EXIT_OK
        print(json.dumps(versions(), sort_keys=True))
        return EXIT_OK
    except AgentError as exc:
        sys.stderr.write("edgefleet-agent: {}\n".format(exc))
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
