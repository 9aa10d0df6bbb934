"""Run a model of any format edgefleet handles on the host: the reference and the artifact alike.

A runner takes one float32 image batch in the layout its input has and returns
float outputs by name. Quantized I/O is hidden inside the runner (inputs are
quantized with the input tensor's scale/zero point, outputs dequantized), so
the gate always compares real-valued tensors.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgefleet.errors import BuildError, SourceError


class Runner(Protocol):
    kind: str
    input_shape: tuple[int, ...]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """``x``: float32, batch 1, in the layout of ``input_shape``. Returns float outputs by name."""
        ...

    def describe(self) -> dict[str, Any]:
        """What a reader of the report needs to know about how the model was run."""
        ...


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class KerasRunner:
    kind = "keras"

    def __init__(self, path: Path) -> None:
        import keras

        try:
            self._model = keras.models.load_model(path, compile=False)
        except Exception as exc:  # keras raises ValueError, OSError, zipfile errors... for a bad file
            raise SourceError(f"cannot load Keras model {path.name!r}: {type(exc).__name__}: {exc}") from None
        self.input_shape = tuple(self._model.inputs[0].shape)
        output = self._model.output
        self._names = list(output) if isinstance(output, dict) else list(self._model.output_names)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        out = self._model(x, training=False)
        if isinstance(out, dict):
            return {k: np.asarray(v) for k, v in out.items()}
        if not isinstance(out, (list, tuple)):
            out = [out]
        return {name: np.asarray(v) for name, v in zip(self._names, out, strict=True)}

    def describe(self) -> dict[str, Any]:
        return {"runner": self.kind}


class SavedModelRunner:
    kind = "savedmodel"
    signature = "serving_default"

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:
            raise SourceError(f"cannot load SavedModel {path.name!r}: {type(exc).__name__}: {exc}") from None
        if self.signature not in loaded.signatures:
            raise SourceError(f"SavedModel {path.name!r} has no {self.signature!r} signature "
                              f"(it has {sorted(loaded.signatures)})")
        self._loaded = loaded  # the signature holds weak references to the loaded object's variables
        self._fn = loaded.signatures[self.signature]
        specs = self._fn.structured_input_signature[1]
        if len(specs) != 1:
            raise BuildError(f"SavedModel {path.name!r} has {len(specs)} inputs; edgefleet handles one image input")
        (self._input, spec), = specs.items()
        self.input_shape = tuple(-1 if d is None else d for d in spec.shape)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import tensorflow as tf

        return {k: v.numpy() for k, v in self._fn(**{self._input: tf.constant(x)}).items()}

    def describe(self) -> dict[str, Any]:
        return {"runner": self.kind, "signature": self.signature}


class OnnxRunner:
    kind = "onnxruntime"

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads()
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
            raise SourceError(f"onnxruntime cannot load {path.name!r}: {exc}") from None
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise BuildError(f"{path.name!r} has {len(inputs)} inputs; edgefleet handles one image input")
        self._input = inputs[0].name
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in inputs[0].shape)
        self._outputs = [o.name for o in self._session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, {self._input: x}), strict=True))

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"runner": self.kind, "providers": self._session.get_providers(), "version": ort.__version__}


class TFLiteRunner:
    kind = "tflite"

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._it = Interpreter(model_path=str(path), num_threads=_threads())
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise SourceError(f"the TFLite interpreter cannot load {path.name!r}: {exc}") from None
        inputs = self._it.get_input_details()
        if len(inputs) != 1:
            raise BuildError(f"{path.name!r} has {len(inputs)} inputs; edgefleet handles one image input")
        self._in = inputs[0]
        self.input_shape = tuple(int(d) for d in self._in["shape"])
        self._outs = self._it.get_output_details()
        # Signature names are the source model's output names; tensor names are converter noise.
        self._names = {d["index"]: d["name"] for d in self._outs}
        signatures = self._it.get_signature_list()
        if len(signatures) == 1:
            runner = self._it.get_signature_runner(next(iter(signatures)))
            for name, detail in runner.get_output_details().items():
                self._names[detail["index"]] = name

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self._it.set_tensor(self._in["index"], _quantize(x, self._in))
        self._it.invoke()
        return {self._names[d["index"]]: _dequantize(self._it.get_tensor(d["index"]), d) for d in self._outs}

    def describe(self) -> dict[str, Any]:
        return {"runner": self.kind, "threads": _threads(), "input_dtype": np.dtype(self._in["dtype"]).name,
                "output_dtypes": [np.dtype(d["dtype"]).name for d in self._outs]}


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero_point = detail["quantization"]
    if not scale:
        raise BuildError(f"input {detail['name']!r} is {dtype.name} without quantization parameters")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind == "f" or not scale:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


class OpenVINORunner:
    kind = "openvino"

    def __init__(self, path: Path, precision_hint: str = "f32") -> None:
        import openvino as ov

        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except RuntimeError as exc:
            raise SourceError(f"OpenVINO cannot read {path.name!r}: {exc}") from None
        # The CPU plugin infers in bf16 by default where the CPU has it; set the
        # hint explicitly so a fidelity number means the precision we claim.
        self._compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision_hint})
        if len(self._compiled.inputs) != 1:
            raise BuildError(f"{path.name!r} has {len(self._compiled.inputs)} inputs; "
                             "edgefleet handles one image input")
        self.input_shape = tuple(d.get_length() if d.is_static else -1
                                 for d in self._compiled.inputs[0].get_partial_shape())
        self._names = [_port_name(o, i) for i, o in enumerate(self._compiled.outputs)]
        self._info = {
            "runner": self.kind,
            "version": ov.__version__,
            "device": core.get_property("CPU", "FULL_DEVICE_NAME"),
            "cpu_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
            "precision_hint_requested": precision_hint,
            "precision_hint_used": _type_name(self._compiled.get_property("INFERENCE_PRECISION_HINT")),
        }

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        result = self._compiled([x])
        return {name: np.asarray(result[port]) for name, port in zip(self._names, self._compiled.outputs,
                                                                      strict=True)}

    def describe(self) -> dict[str, Any]:
        return dict(self._info)


def _type_name(value: Any) -> str:
    """OpenVINO element types print as "<Type: 'float32'>"; the short name ("f32") is the hint's spelling."""
    return str(value.get_type_name()) if hasattr(value, "get_type_name") else str(value)


def _port_name(port: Any, index: int) -> str:
    try:
        return str(port.get_any_name())
    except RuntimeError:  # an output without tensor names
        return f"output_{index}"


def open_runner(path: Path, *, openvino_precision_hint: str = "f32") -> Runner:
    """The runner for ``path`` by its format: .keras/.h5, SavedModel dir, .onnx, .tflite, .xml."""
    if not path.exists():
        raise SourceError(f"model {path.name!r} does not exist")
    factories: dict[str, Callable[[Path], Runner]] = {
        ".keras": KerasRunner, ".h5": KerasRunner, ".onnx": OnnxRunner, ".tflite": TFLiteRunner,
        ".xml": lambda p: OpenVINORunner(p, openvino_precision_hint),
    }
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise SourceError(f"directory {path.name!r} is not a SavedModel (no saved_model.pb)")
        return SavedModelRunner(path)
    try:
        return factories[path.suffix.lower()](path)
    except KeyError:
        raise SourceError(f"cannot run {path.name!r}: unknown model format {path.suffix!r}") from None
