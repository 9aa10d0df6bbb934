"""Keras / SavedModel -> TFLite with the TF converter, one quantization per call.

``TFLiteConverter.from_keras_model`` works with Keras 3 on TF 2.21: it
exports the model to a temporary SavedModel and converts that, which keeps
the Keras output names as the TFLite signature's output names. Converting a
``tf.function`` concrete function instead leaves the weights as resource
variables in the flatbuffer, so that route is not used. The output is
byte-identical for identical inputs (measured across processes), including
the calibrated integer variants, because the representative dataset is fed in
a fixed order.
"""
from __future__ import annotations

import contextlib
import io
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import BuildError, SourceError

QUANTIZATIONS = ("fp32", "fp16", "dynamic", "int8", "full-int8", "full-int8-int8io")
# The representative dataset's size: more samples barely move the ranges but cost time.
MAX_REPRESENTATIVE_SAMPLES = 100
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class Recipe:
    """How one quantization maps onto converter settings."""

    optimize: bool
    float16: bool = False
    calibrated: bool = False
    int8_only: bool = False
    io_dtype: str | None = None     # "uint8"/"int8" for integer I/O, None keeps float32 I/O


RECIPES: dict[str, Recipe] = {
    "fp32": Recipe(optimize=False),
    "fp16": Recipe(optimize=True, float16=True),
    "dynamic": Recipe(optimize=True),
    "int8": Recipe(optimize=True, calibrated=True, int8_only=True),
    "full-int8": Recipe(optimize=True, calibrated=True, int8_only=True, io_dtype="uint8"),
    "full-int8-int8io": Recipe(optimize=True, calibrated=True, int8_only=True, io_dtype="int8"),
}


def source_kind(path: Path) -> str:
    """"keras" for a .keras/.h5 file, "savedmodel" for a SavedModel directory."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise SourceError(f"directory {path.name!r} is not a SavedModel (no saved_model.pb)")
    if not path.is_file():
        raise SourceError(f"model {path.name!r} does not exist")
    suffix = path.suffix.lower()
    # Check the container before importing TF, so a bad file fails in milliseconds.
    if suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise SourceError(f"cannot load Keras model {path.name!r}: a .keras file is a zip archive; this is not")
        return "keras"
    if suffix == ".h5":
        with path.open("rb") as f:
            if f.read(8) != _HDF5_SIGNATURE:
                raise SourceError(f"cannot load Keras model {path.name!r}: not an HDF5 file")
        return "keras"
    raise SourceError(f"cannot convert {path.name!r} to TFLite: expected a .keras file or a SavedModel directory")


def load_keras(path: Path) -> Any:
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # keras raises ValueError, OSError, BadZipFile... for a bad file
        raise SourceError(f"cannot load Keras model {path.name!r}: {type(exc).__name__}: {exc}") from None


def convert_to_tflite(source: Path, quantization: str,
                      representative: np.ndarray | None = None, *, log: Callable[[str], None] = print) -> bytes:
    """The .tflite bytes of ``source`` at ``quantization``.

    ``representative``: float model inputs (N, ...) in the model's layout,
    required for the calibrated quantizations.
    """
    try:
        recipe = RECIPES[quantization]
    except KeyError:
        raise BuildError(f"unknown TFLite quantization {quantization!r}; known: {', '.join(QUANTIZATIONS)}") from None
    samples = None if representative is None else representative[:MAX_REPRESENTATIVE_SAMPLES]
    if recipe.calibrated and (samples is None or len(samples) == 0):
        raise BuildError(f"quantization {quantization!r} needs calibration samples")

    kind = source_kind(source)
    import tensorflow as tf

    if kind == "keras":
        converter = tf.lite.TFLiteConverter.from_keras_model(load_keras(source))
    else:
        try:
            converter = tf.lite.TFLiteConverter.from_saved_model(str(source))
        except Exception as exc:
            raise SourceError(f"cannot load SavedModel {source.name!r}: {type(exc).__name__}: {exc}") from None

    if recipe.optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if recipe.float16:
        converter.target_spec.supported_types = [tf.float16]
    if recipe.calibrated and samples is not None:
        log(f"calibrating with {len(samples)} representative samples")
        converter.representative_dataset = _dataset(samples)
    if recipe.int8_only:
        # Fail the conversion instead of silently leaving float ops in an "int8" model.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if recipe.io_dtype:
        io_type = {"uint8": tf.uint8, "int8": tf.int8}[recipe.io_dtype]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type

    log(f"converting {source.name} ({kind}) to TFLite {quantization}")
    printed = io.StringIO()
    try:
        # from_keras_model exports a temporary SavedModel and prints its endpoints to stdout;
        # the converter warns about expected things (e.g. no input statistics for integer I/O).
        with contextlib.redirect_stdout(printed), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = bytes(converter.convert())
        for warning in caught:
            printed.write(f"warning: {warning.message}\n")
    except Exception as exc:  # the converter raises ConverterError, RuntimeError, ValueError...
        message = str(exc).strip().splitlines()
        raise BuildError(f"TFLite conversion ({quantization}) of {source.name!r} failed: "
                         f"{type(exc).__name__}: {message[0] if message else ''}",
                         log=printed.getvalue().splitlines() + message) from None
    for line in printed.getvalue().splitlines():
        log(line)
    return result


def _dataset(samples: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    def generate() -> Iterator[list[np.ndarray]]:
        for i in range(len(samples)):
            yield [samples[i:i + 1].astype(np.float32)]
    return generate
