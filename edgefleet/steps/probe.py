"""``probe.env``: what a step process sees (Python, platform, uid, packages, its inputs' mounts).

A probe of the environment a backend gives its steps, not a build step: no plan uses it.
The Docker backend's tests run it in builder containers (every builder installs edgefleet,
so it runs in any of them) to prove the runner venv, the user and the read-only input
mounts. With ``params.convert`` it also converts a tiny TensorFlow function to TFLite
and runs it, proving the converter and the interpreter work where the step runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from edgefleet.errors import BuildError
from edgefleet.steps.base import StepContext, StepResult

ENV_FILE = "env.json"
MODEL_FILE = "probe.tflite"
PACKAGES = ("edgefleet", "numpy", "tensorflow-cpu", "tensorflow", "tf_keras", "ai-edge-litert", "tflite-runtime",
            "onnx", "onnxruntime", "openvino", "onnx2tf", "tf2onnx")
# A float32 model reproduces TensorFlow's result to rounding; anything larger is a broken runtime.
MAX_ABS_DIFF = 1e-5


def probe_env(ctx: StepContext) -> StepResult:
    convert = ctx.params.get("convert", False)
    if not isinstance(convert, bool):
        raise BuildError(f"probe.env: params.convert must be true or false, got {convert!r}")
    sleep_s = ctx.params.get("sleep_s", 0)
    if not isinstance(sleep_s, (int, float)) or isinstance(sleep_s, bool) or not 0 <= sleep_s <= 3600:
        raise BuildError(f"probe.env: params.sleep_s must be a number of seconds from 0 to 3600, got {sleep_s!r}")
    if sleep_s:
        ctx.log(f"probe.env: sleeping {sleep_s:g} s")
        time.sleep(sleep_s)
    env = _environment()
    # Whether inputs arrive whole, and read-only: what a backend's inputs look like from inside.
    env["inputs"] = {name: {"bytes": _size(path), "writable": os.access(path, os.W_OK), "sha256": _digest(path)}
                     for name, path in ctx.inputs.items()}
    ctx.log(f"python {env['python']} on {env['machine']}, glibc {env['glibc']}, in container: {env['in_container']}")
    files = [ENV_FILE]
    valid, reasons = True, []
    if convert:
        env["conversion"] = _tiny_conversion(ctx.out_dir / MODEL_FILE, ctx.log)
        files.append(MODEL_FILE)
        if env["conversion"]["max_abs_diff"] > MAX_ABS_DIFF:
            valid = False
            reasons.append(f"TFLite output differs from TensorFlow by {env['conversion']['max_abs_diff']:.3g}")
    (ctx.out_dir / ENV_FILE).write_text(json.dumps(env, indent=2, sort_keys=True))
    versions = {k: v for k, v in env["packages"].items() if v is not None}
    return StepResult(files=files, report=env, tool_versions={"python": env["python"], **versions},
                      valid=valid, invalid_reasons=reasons)


def _environment() -> dict[str, Any]:
    libc, libc_version = platform.libc_ver()
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "executable": sys.executable,
        "machine": platform.machine(),
        "system": platform.system(),
        "glibc": libc_version if libc == "glibc" else None,
        "uid": os.getuid(),
        "gid": os.getgid(),
        "in_container": Path("/.dockerenv").exists(),
        "packages": {name: _version(name) for name in PACKAGES},
    }


def _digest(path: Path) -> str:
    """A file's sha256; for a folder, of its files' relative paths and contents in order."""
    h = hashlib.sha256()
    for item in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if item.is_file():
            h.update(item.relative_to(path).as_posix().encode() + b"\0" if path.is_dir() else b"")
            h.update(item.read_bytes())
    return h.hexdigest()


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _tiny_conversion(path: Path, log: Any) -> dict[str, Any]:
    """Convert y = relu(x @ w + b) to TFLite, run it, and compare with TensorFlow."""
    try:
        import numpy as np
        import tensorflow as tf
    except ImportError as exc:
        raise BuildError(f"probe.env: convert=true needs TensorFlow here: {exc}") from None

    rng = np.random.default_rng(0)
    w = tf.constant(rng.standard_normal((8, 4)), dtype=tf.float32)
    b = tf.constant(rng.standard_normal(4), dtype=tf.float32)

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
        def __call__(self, x: Any) -> Any:
            return tf.nn.relu(tf.matmul(x, w) + b)

    module = Tiny()
    concrete = module.__call__.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    path.write_bytes(converter.convert())
    x = rng.standard_normal((1, 8)).astype(np.float32)
    expected = module(tf.constant(x)).numpy()
    interpreter, runtime = _interpreter(str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    diff = float(np.max(np.abs(got - expected)))
    log(f"converted a tiny model to {path.name} ({path.stat().st_size} bytes); {runtime} max |diff| {diff:.3g}")
    return {"tensorflow": tf.__version__, "runtime": runtime, "bytes": path.stat().st_size, "max_abs_diff": diff}


def _interpreter(model_path: str) -> tuple[Any, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter(model_path=model_path), "ai-edge-litert"
    except ImportError:
        import tensorflow as tf
        return tf.lite.Interpreter(model_path=model_path), "tf.lite"
