"""TF <-> ONNX: Keras/SavedModel/TFLite -> ONNX with tf2onnx, ONNX -> SavedModel + TFLite with onnx2tf."""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.convert.preprocess import InputSpec, Layout, fit_images
from edgefleet.convert.tflite import load_keras, source_kind
from edgefleet.errors import BuildError, SourceError

DEFAULT_OPSET = 13

Log = Callable[[str], None]


# --- tf2onnx -------------------------------------------------------------------------------------

def tf_to_onnx(source: Path, out: Path, spec: InputSpec, *, opset: int = DEFAULT_OPSET,
               input_layout: Layout | None = None, log: Log = print) -> None:
    """Write ``source`` (.keras or SavedModel dir) as ONNX to ``out``.

    tf2onnx 1.17's ``from_keras`` does not understand Keras 3 models, so the
    model is wrapped in a ``tf.function`` with a fixed input signature and
    converted with ``from_function``. The ONNX input keeps the model's layout
    (NHWC stays NHWC) unless ``input_layout`` asks for NCHW, which tf2onnx
    implements by transposing the graph input (``inputs_as_nchw``).
    """
    nchw = _wants_nchw(spec, input_layout)
    import tensorflow as tf
    import tf2onnx

    fn = _serving_function(source)
    signature = [tf.TensorSpec(spec.shape, tf.float32, name=spec.name)]
    log(f"tf2onnx {tf2onnx.__version__}: {source.name} -> ONNX opset {opset}"
        f"{' with an NCHW input' if nchw else ''}")

    @tf.function(input_signature=signature)
    def serve(x: Any) -> Any:
        return fn(x)

    with _forward_logs("tf2onnx", log):
        try:
            tf2onnx.convert.from_function(serve, input_signature=signature, opset=opset,
                                          inputs_as_nchw=[spec.name] if nchw else None, output_path=str(out))
        except Exception as exc:  # tf2onnx raises plain ValueError/KeyError/... from deep in its rewriters
            raise BuildError(f"tf2onnx conversion of {source.name!r} failed: {type(exc).__name__}: {exc}") from None


def tflite_to_onnx(source: Path, out: Path, spec: InputSpec, *, opset: int = DEFAULT_OPSET,
                   input_layout: Layout | None = None, log: Log = print) -> None:
    """Write the .tflite ``source`` as ONNX to ``out`` with tf2onnx's TFLite reader.

    ``input_layout="NCHW"`` transposes the NHWC graph input as tf_to_onnx does. That is what onnx2tf
    wants downstream: it turns an NCHW input back into NHWC with no TRANSPOSE, while from an NHWC one
    it makes a [1,H,C,W] input and a TRANSPOSE (measured on BlazeFace).
    """
    from edgefleet.analysis.tflite_report import describe_tflite

    nchw = _wants_nchw(spec, input_layout)
    inputs = describe_tflite(source)["inputs"]
    if len(inputs) != 1:
        raise BuildError(f"{source.name!r} has {len(inputs)} inputs; edgefleet handles one image input")
    # tf2onnx names the input by the TFLite tensor, whatever the recipe calls it.
    name, shape = inputs[0]["name"], inputs[0]["shape"]
    if tuple(shape) != tuple(spec.shape):
        raise BuildError(f"{source.name!r} has input {name!r} {shape}; the recipe says {list(spec.shape)}")
    import tf2onnx

    log(f"tf2onnx {tf2onnx.__version__}: {source.name} (TFLite) -> ONNX opset {opset}"
        f"{' with an NCHW input' if nchw else ''}")
    with _forward_logs("tf2onnx", log):
        try:
            tf2onnx.convert.from_tflite(str(source), opset=opset, inputs_as_nchw=[name] if nchw else None,
                                        output_path=str(out))
        except Exception as exc:  # tf2onnx raises plain ValueError/KeyError/... from its TFLite handlers
            raise BuildError(f"tf2onnx conversion of {source.name!r} failed: {type(exc).__name__}: {exc}") from None


def _wants_nchw(spec: InputSpec, input_layout: Layout | None) -> bool:
    """Whether to transpose the model's NHWC input into NCHW; tf2onnx cannot go the other way."""
    if input_layout == "NHWC" and spec.layout == "NCHW":
        raise BuildError("tf2onnx can turn an NHWC model input into NCHW, not the reverse")
    return input_layout == "NCHW" and spec.layout == "NHWC"


def _serving_function(source: Path) -> Callable[[Any], Any]:
    if source_kind(source) == "keras":
        model = load_keras(source)
        return lambda x: model(x, training=False)
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(source))
        signature = loaded.signatures["serving_default"]
    except Exception as exc:
        raise SourceError(f"cannot load SavedModel {source.name!r} (serving_default): {exc}") from None
    input_keys = list(signature.structured_input_signature[1])
    if len(input_keys) != 1:
        raise BuildError(f"SavedModel {source.name!r} has inputs {input_keys}; edgefleet handles one image input")
    input_key = input_keys[0]

    def call(x: Any) -> Any:
        _ = loaded  # keep the object owning the variables alive as long as the function
        return signature(**{input_key: x})
    return call


@contextmanager
def _forward_logs(logger_name: str, log: Log) -> Iterator[None]:
    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log(f"{logger_name}: {record.getMessage()}")

    logger = logging.getLogger(logger_name)
    handler = Forward(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


# --- onnx2tf -------------------------------------------------------------------------------------

ONNX2TF_OUTPUTS = {
    "fp32": "model_float32.tflite",
    "fp16": "model_float16.tflite",
    "dynamic": "model_dynamic_range_quant.tflite",
    "int8": "model_integer_quant.tflite",
    "full-int8": "model_full_integer_quant.tflite",
    "full-int8-int8io": "model_full_integer_quant.tflite",
}
# onnx2tf validates its conversion on this sample set and downloads it from the
# internet unless a file of exactly this name is in its working directory.
_ONNX2TF_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
_ONNX2TF_SAMPLE_SHAPE = (20, 128, 128)
_SAVED_MODEL_PARTS = ("saved_model.pb", "fingerprint.pb", "variables", "assets")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAX_CALIBRATION = 100


@dataclass(frozen=True)
class Onnx2tfResult:
    tflite: Path
    saved_model: Path
    keep_nhwc_input: bool
    command: list[str]


def onnx_to_tf(source: Path, out_dir: Path, spec: InputSpec, calibration: np.ndarray, quantization: str, *,
               tflite_name: str, timeout_s: float = 3600.0, log: Log = print) -> Onnx2tfResult:
    """Run onnx2tf on ``source``: ``out_dir/saved_model/`` and ``out_dir/<tflite_name>``.

    onnx2tf rewrites its input file (onnxsim) and drops files in its working
    directory, so it works on a copy inside a scratch directory that is removed
    afterwards. It runs as a child process: it calls ``sys.exit`` on errors and
    switches the process to legacy Keras at import.
    """
    from edgefleet.analysis.onnx_report import load_onnx

    if quantization not in ONNX2TF_OUTPUTS:
        raise BuildError(f"onnx2tf makes no {quantization!r} TFLite; known: {', '.join(ONNX2TF_OUTPUTS)}")
    graph = load_onnx(source).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise BuildError(f"{source.name!r} has {len(inputs)} inputs; edgefleet handles one image input")
    onnx_input = inputs[0].name
    onnx_shape = [d.dim_value if d.HasField("dim_value") else -1 for d in inputs[0].type.tensor_type.shape.dim]
    # An NHWC ONNX input would get a TRANSPOSE in front; keeping its shape keeps it NHWC with none.
    keep_nhwc = spec.layout_of(onnx_shape) == "NHWC"

    work = out_dir / ".onnx2tf-work"
    saved_model = out_dir / "saved_model"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        shutil.copyfile(source, work / "model.onnx")
        mean, std = _write_calibration(work, spec, calibration)
        command = [sys.executable, "-m", "onnx2tf", "-i", "model.onnx", "-o", str(saved_model.resolve()),
                   "-cind", onnx_input, "calibration.npy", mean, std, "-v", "info"]
        if keep_nhwc:
            command += ["-kat", onnx_input]
        if quantization == "dynamic":
            command += ["-odrqt"]
        elif quantization != "fp32" and quantization != "fp16":
            io = "int8" if quantization == "full-int8-int8io" else "uint8"
            command += ["-oiqt", "-qt", "per-channel", "-iqd", io, "-oqd", io]
        lines = _run(command, work, timeout_s, log)
        produced = saved_model / ONNX2TF_OUTPUTS[quantization]
        # onnx2tf logs some failures (e.g. of the quantized variants) and still exits 0.
        if not produced.is_file() or not (saved_model / "saved_model.pb").is_file():
            raise BuildError(f"onnx2tf finished without writing {produced.name} and a SavedModel",
                             command=command, log=lines)
        tflite = out_dir / tflite_name
        shutil.move(produced, tflite)
        for extra in saved_model.iterdir():
            if extra.name not in _SAVED_MODEL_PARTS:
                shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Onnx2tfResult(tflite, saved_model, keep_nhwc, command)


def _write_calibration(work: Path, spec: InputSpec, calibration: np.ndarray) -> tuple[str, str]:
    """Our images for onnx2tf's calibration and self-check; returns its -cind mean and std."""
    from PIL import Image

    # onnx2tf computes (data - mean) / std on NHWC data that its docs want in 0..1.
    fitted = fit_images(calibration[:_MAX_CALIBRATION], spec).astype(np.float32) / 255.0
    np.save(work / "calibration.npy", fitted)
    n, h, w = _ONNX2TF_SAMPLE_SHAPE
    small = np.stack([np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))
                      for img in calibration[:n]])
    small = np.resize(small, (n, h, w, 3)).astype(np.float32) / 255.0  # repeats images when we have fewer
    np.save(work / _ONNX2TF_SAMPLE_FILE, small)

    def as_literal(values: tuple[float, ...]) -> str:
        per_channel = np.broadcast_to(np.asarray(values, np.float64) / 255.0, (spec.channels,))
        return "[[[[" + ", ".join(repr(float(v)) for v in per_channel) + "]]]]"
    return as_literal(spec.normalization.mean), as_literal(spec.normalization.std)


def _run(command: list[str], cwd: Path, timeout_s: float, log: Log) -> list[str]:
    """Run onnx2tf, streaming its output to ``log``; returns the output lines."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "onnxsim").exists():
        raise BuildError(f"onnx2tf needs the onnxsim command next to {sys.executable}; install onnxsim there")
    env = dict(os.environ)
    # onnx2tf runs onnxsim by name; the shell's PATH may not hold this environment's bin dir.
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    lines: list[str] = []
    log("running: " + " ".join(command))
    with subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            proc.kill()

        watchdog = threading.Timer(timeout_s, kill)
        watchdog.start()
        try:
            for raw in proc.stdout or ():
                line = _ANSI.sub("", raw.rstrip())
                lines.append(line)
                log(f"onnx2tf: {line}")
            returncode = proc.wait()
        finally:
            watchdog.cancel()
    if expired.is_set():
        raise BuildError(f"onnx2tf did not finish in {timeout_s:.0f} s", command=command, log=lines)
    if returncode != 0:
        raise BuildError("onnx2tf failed", command=command, returncode=returncode, log=lines)
    return lines
