"""The local backend: the step runs as a child process of this host's Python."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from edgefleet.backends.base import LogSink, StepRequest
from edgefleet.errors import EXIT_TOOL_UNAVAILABLE, BuildError, ToolUnavailableError
from edgefleet.steps.process import STEP_MODULE, read_step_error


class LocalBackend:
    name = "local"

    def __init__(self, python: str = sys.executable, env: Mapping[str, str] | None = None) -> None:
        self.python = python
        self.env = dict(os.environ if env is None else env)
        # Converters that shell out (onnx2tf -> onnxsim) must find the venv's tools.
        bin_dir = str(Path(python).parent)
        self.env["PATH"] = bin_dir + os.pathsep + self.env.get("PATH", "")
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.env["PYTHONUNBUFFERED"] = "1"
        # tf2onnx orders nodes by set iteration: a fixed hash seed makes its output byte-identical.
        self.env["PYTHONHASHSEED"] = "0"

    def set_jobs(self, jobs: int) -> int:
        return jobs

    def command(self, spec_path: Path) -> list[str]:
        return [self.python, "-m", STEP_MODULE, str(spec_path)]

    def run_step(self, request: StepRequest, log: LogSink) -> None:
        spec = {
            "kind": request.kind,
            "inputs": {k: str(v) for k, v in request.inputs.items()},
            "params": dict(request.params),
            "out_dir": str(request.out_dir),
        }
        with tempfile.TemporaryDirectory(prefix="edgefleet-spec-") as tmp:
            spec_path = Path(tmp) / "spec.json"
            spec_path.write_text(json.dumps(spec, indent=2))
            argv = self.command(spec_path)
            log("+ " + " ".join(argv))
            tail: deque[str] = deque(maxlen=BuildError.tail_lines)
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=tmp, text=True, errors="replace", start_new_session=True)
            timed_out = threading.Event()

            def expire() -> None:
                timed_out.set()
                _kill_group(proc)

            timer = threading.Timer(request.timeout_s, expire)
            timer.start()
            try:
                for line in proc.stdout or ():
                    line = line.rstrip("\n")
                    tail.append(line)
                    log(line)
                returncode = proc.wait()
            finally:
                timer.cancel()
                # The step's own children (pip, onnxsim) too: they would outlive a killed step runner.
                _kill_group(proc)
                proc.wait()
            if returncode == EXIT_TOOL_UNAVAILABLE:
                raise ToolUnavailableError(read_step_error(request.out_dir) or f"step {request.kind} is unavailable here")
            if returncode != 0:
                reason = f"timed out after {request.timeout_s:g} s (step_timeout_s in edgefleet.yaml)" \
                    if timed_out.is_set() else "failed"
                raise BuildError(f"step {request.kind} {reason}", command=argv, returncode=returncode, log=list(tail))


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the step's process group (it was started in a new session, so the group is the step's own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the whole group has exited already
