"""Session fixtures for the conversion tests: a tiny two-headed Keras detector, a
YOLOv5s-shaped ONNX, calibration images, and converted artifacts shared between
test files (converting is the slow part). Loaded with ``pytest_plugins`` so the
session fixtures exist once; the test modules also import its helpers, hence
PYTEST_DONT_REWRITE (it has no asserts to rewrite).
"""
from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.steps.base import StepContext, StepResult

KERAS_SPEC: dict[str, Any] = {
    "name": "image", "shape": [1, 32, 32, 3], "layout": "NHWC", "dtype": "float32",
    "normalization": {"mean": [127.5, 127.5, 127.5], "std": [127.5, 127.5, 127.5]},
}
YOLO_SPEC: dict[str, Any] = {
    "name": "images", "shape": [1, 3, 640, 640], "layout": "NCHW", "dtype": "float32",
    "normalization": {"mean": [0.0], "std": [255.0]},
}
NUM_CLASSES = 10


@dataclass(frozen=True)
class Built:
    """A step's outcome: where it wrote and what it returned."""

    out_dir: Path
    result: StepResult
    log: list[str]

    @property
    def primary(self) -> Path:
        return self.out_dir / self.result.files[0]

    @property
    def report(self) -> dict[str, Any]:
        return self.result.report


def run_step(func: Callable[[StepContext], StepResult], kind: str, out_dir: Path,
             inputs: dict[str, Path], params: dict[str, Any]) -> Built:
    """Call a step function in-process the way ``python -m edgefleet.steps.process`` does."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    ctx = StepContext(kind=kind, inputs=inputs, params=params, out_dir=out_dir, log=lines.append)
    return Built(out_dir, func(ctx), lines)


def build_tiny_detector(path: Path, seed: int = 0) -> Path:
    """An SSD-like toy: 32x32x3 input, a box head (1,64,4) and a class-score head (1,64,10).

    Big enough (~60k weights) that weights dominate the .tflite size, so the
    fp16/int8 size ratios are meaningful.
    """
    import keras

    keras.utils.set_random_seed(seed)

    def conv(filters: int, kernel: int, strides: int = 1, **kw: Any) -> Any:
        # He init keeps the untrained activations O(1) through the swish stack.
        return keras.layers.Conv2D(filters, kernel, strides=strides, padding="same",
                                   kernel_initializer="he_normal", **kw)

    inp = keras.Input((32, 32, 3), batch_size=1, name="image")
    x = conv(16, 3, activation="swish")(inp)
    x = conv(32, 3, 2, activation="swish")(x)
    x = conv(64, 3, 2, activation="swish")(x)
    x = conv(64, 3, activation="swish")(x)
    boxes = keras.layers.Reshape((64, 4), name="boxes")(conv(4, 1)(x))
    # Large logits give the untrained net a clear top class per anchor (mean top
    # probability ~0.55), like a trained detector; near-uniform scores would make
    # top-1 agreement a coin toss between near-ties.
    logits = keras.layers.Conv2D(NUM_CLASSES, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=4.0))(x)
    scores = keras.layers.Softmax(name="scores")(keras.layers.Reshape((64, NUM_CLASSES))(logits))
    keras.Model(inp, {"boxes": boxes, "scores": scores}, name="tiny_detector").save(path)
    return path


def conversion_params(spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"input_spec": spec, "fidelity": {}, "fidelity_samples": 8, **extra}


@pytest.fixture(scope="session")
def convert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="session")
def keras_model(convert_dir: Path) -> Path:
    return build_tiny_detector(convert_dir / "tiny_detector.keras")


@pytest.fixture(scope="session")
def calibration_npy(convert_dir: Path) -> Path:
    """24 procedural 96x96 photos-like images; the steps resize them to each model's input."""
    from edgefleet.datasets.shapes import generate

    images, _ = generate(24, seed=7)
    path = convert_dir / "calibration.npy"
    np.save(path, images)
    return path


@pytest.fixture(scope="session")
def yolo_onnx(convert_dir: Path) -> Path:
    from edgefleet.testing.yolo_onnx import make_yolov5s_like_onnx

    return make_yolov5s_like_onnx(convert_dir / "yolov5s_like.onnx", seed=0)


@pytest.fixture(scope="session")
def tflite_artifact(convert_dir: Path, keras_model: Path, calibration_npy: Path) -> Callable[[str], Built]:
    """``tflite_artifact(quantization)``: the tflite.convert step's outcome, converted once per session."""
    from edgefleet.steps.convert import tflite_convert

    @functools.cache
    def build(quantization: str) -> Built:
        return run_step(tflite_convert, "tflite.convert", convert_dir / f"tflite-{quantization}",
                        {"model": keras_model, "calibration": calibration_npy},
                        conversion_params(KERAS_SPEC, quantization=quantization))
    return build


@pytest.fixture(scope="session")
def onnx_from_keras(convert_dir: Path, keras_model: Path, calibration_npy: Path) -> Built:
    from edgefleet.steps.convert import onnx_from_tf

    return run_step(onnx_from_tf, "onnx.from_tf", convert_dir / "onnx-from-keras",
                    {"model": keras_model, "calibration": calibration_npy},
                    conversion_params(KERAS_SPEC, opset=13))


@pytest.fixture(scope="session")
def yolo_onnx2tf(convert_dir: Path, yolo_onnx: Path, calibration_npy: Path) -> Built:
    from edgefleet.steps.convert import onnx2tf_convert

    return run_step(onnx2tf_convert, "onnx2tf.convert", convert_dir / "yolo-onnx2tf",
                    {"model": yolo_onnx, "calibration": calibration_npy},
                    conversion_params(YOLO_SPEC, quantization="fp32"))


@pytest.fixture(scope="session")
def corrupt_files(convert_dir: Path) -> Iterator[dict[str, Path]]:
    """Files that look like models by name but are not."""
    out = convert_dir / "corrupt"
    out.mkdir(exist_ok=True)
    files = {
        "keras": out / "broken.keras",
        "keras_zip": out / "empty.keras",
        "onnx": out / "broken.onnx",
        "tflite": out / "broken.tflite",
    }
    files["keras"].write_bytes(b"PK\x03\x04 this is not a zip archive")
    with zipfile.ZipFile(files["keras_zip"], "w") as archive:  # a zip, but no Keras model inside
        archive.writestr("readme.txt", "nothing here")
    files["onnx"].write_bytes(b"\x08\x07\x12\x04junk" + bytes(range(256)) * 4)
    files["tflite"].write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\xff" * 64)
    yield files
