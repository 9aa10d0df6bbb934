"""Inference runtimes behind one small plug-in interface, for the on-device agent.

Runs ON THE DEVICE: Python 3.6+, stdlib + numpy + the runtime itself, nothing
from edgefleet's host code. Every runtime library is imported inside a method, so a
device that lacks one still loads this module and reports ``missing_runtime`` for its cells.

A plug-in is a :class:`Runtime` registered under its name. ``load`` returns a
:class:`Session`; the benchmark loop only ever talks to these two interfaces and
never branches on a runtime's name.
"""
import collections
import ctypes.util
import importlib
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np


class RuntimeMissing(Exception):
    """The runtime (or the delegate it was asked for) is not installed on this device."""


class Session(object):
    """One loaded model. ``info`` holds facts learnt while loading (module used, precision...)."""

    def __init__(self):
        # type: () -> None
        self.info = {}  # type: Dict[str, Any]

    def input_details(self):
        # type: () -> List[Dict[str, Any]]
        """[{"name", "shape", "dtype" (numpy name), "scale", "zero_point"}] in input order.

        ``scale`` is 0.0 for an input that is not quantized; dynamic dimensions are None.
        """
        raise NotImplementedError

    def output_details(self):
        # type: () -> List[Dict[str, Any]]
        raise NotImplementedError

    def set_input(self, index, array):
        # type: (int, np.ndarray) -> None
        raise NotImplementedError

    def invoke(self):
        # type: () -> None
        raise NotImplementedError

    def get_outputs(self):
        # type: () -> List[np.ndarray]
        raise NotImplementedError

    def delegate_coverage(self):
        # type: () -> Optional[Dict[str, Any]]
        """{"delegate_nodes", "total_nodes", ...}, or None when the runtime does not expose it."""
        return None


class Runtime(object):
    name = ""

    def load(self, path, threads, delegate, params):
        # type: (str, int, Optional[Mapping[str, Any]], Mapping[str, Any]) -> Session
        """Raise RuntimeMissing when the library or the delegate is not installed here."""
        raise NotImplementedError

    def version(self):
        # type: () -> Dict[str, Any]
        """{"module": ..., "version": ...} of the library a load would use; RuntimeMissing if none."""
        raise NotImplementedError


REGISTRY = {}  # type: Dict[str, Runtime]


def register(runtime):
    # type: (Runtime) -> Runtime
    REGISTRY[runtime.name] = runtime
    return runtime


def get_runtime(name):
    # type: (str) -> Runtime
    try:
        return REGISTRY[name]
    except KeyError:
        raise RuntimeMissing("this agent has no plug-in for runtime {!r} (it has: {})".format(
            name, ", ".join(sorted(REGISTRY))))


def distribution_version(*names):
    # type: (*str) -> Optional[str]
    """The installed version of the first distribution found, on any Python from 3.6."""
    try:
        from importlib import metadata  # novermin (3.8+, guarded: pkg_resources below is the fallback)
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None
    except ImportError:
        pass
    try:
        import pkg_resources
    except ImportError:
        return None
    for name in names:
        try:
            return pkg_resources.get_distribution(name).version
        except Exception:  # pkg_resources raises several unrelated types
            continue
    return None


def loaded_library_path(library):
    # type: (str) -> Optional[str]
    """The file a dlopen()ed library resolved to, read from /proc/self/maps (its name carries the version)."""
    stem = os.path.basename(library).split(".so")[0]
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(None, 5)[-1]
                if os.path.basename(path).startswith(stem + ".so"):
                    return path
    except (IOError, OSError):
        pass
    return ctypes.util.find_library(stem[3:] if stem.startswith("lib") else stem)


def _numpy_dtype_name(dtype):
    # type: (Any) -> str
    return np.dtype(dtype).name


# ---------------------------------------------------------------- TensorFlow Lite

# Tried in order: the LiteRT wheel, the old standalone wheel, then full TensorFlow.
_TFLITE_MODULES = (
    ("ai_edge_litert.interpreter", ("ai-edge-litert",)),
    ("tflite_runtime.interpreter", ("tflite-runtime", "tflite_runtime")),
    ("tensorflow.lite", ("tensorflow", "tensorflow-cpu", "tensorflow-aarch64")),
)


class TFLiteSession(Session):
    def __init__(self, interpreter, info, explicit_delegate):
        # type: (Any, Dict[str, Any], bool) -> None
        Session.__init__(self)
        self.interpreter = interpreter
        self._explicit = explicit_delegate
        self.info.update(info)
        self._inputs = interpreter.get_input_details()
        self._outputs = interpreter.get_output_details()

    @staticmethod
    def _describe(detail):
        # type: (Mapping[str, Any]) -> Dict[str, Any]
        scale, zero_point = detail.get("quantization", (0.0, 0))
        return {"name": detail["name"], "shape": [int(d) for d in detail["shape"]],
                "dtype": _numpy_dtype_name(detail["dtype"]),
                "scale": float(scale), "zero_point": int(zero_point)}

    def input_details(self):
        # type: () -> List[Dict[str, Any]]
        return [self._describe(d) for d in self._inputs]

    def output_details(self):
        # type: () -> List[Dict[str, Any]]
        return [self._describe(d) for d in self._outputs]

    def set_input(self, index, array):
        # type: (int, np.ndarray) -> None
        self.interpreter.set_tensor(self._inputs[index]["index"], array)

    def invoke(self):
        # type: () -> None
        self.interpreter.invoke()

    def get_outputs(self):
        # type: () -> List[np.ndarray]
        return [self.interpreter.get_tensor(d["index"]) for d in self._outputs]

    def delegate_coverage(self):
        # type: () -> Optional[Dict[str, Any]]
        # A private API, absent from some builds: coverage is then unknown, not zero.
        ops_details = getattr(self.interpreter, "_get_ops_details", None)
        if ops_details is None:
            return None
        try:
            ops = ops_details()
        except Exception:
            return None
        names = [op.get("op_name") for op in ops]
        delegated = sum(1 for n in names if n == "DELEGATE")
        return {"delegate_nodes": delegated, "total_nodes": len(names), "source": "tflite _get_ops_details",
                # Without an explicit delegate these are TFLite's own default (XNNPACK) partitions.
                "explicit_delegate": self._explicit}


# What one of the interpreter modules provides, whichever was found.
TFLiteLibrary = collections.namedtuple("TFLiteLibrary", "module version Interpreter load_delegate")


class TFLiteRuntime(Runtime):
    name = "tflite"

    def _library(self):
        # type: () -> TFLiteLibrary
        errors = []
        for module_name, dists in _TFLITE_MODULES:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                errors.append("{}: {}".format(module_name, exc))
                continue
            load_delegate = self._attribute(module, "load_delegate")
            version = distribution_version(*dists) or getattr(module, "__version__", None)
            return TFLiteLibrary(module_name, version, self._attribute(module, "Interpreter"), load_delegate)
        raise RuntimeMissing("no TFLite interpreter installed ({})".format("; ".join(errors)))

    def version(self):
        # type: () -> Dict[str, Any]
        library = self._library()
        return {"module": library.module, "version": library.version}

    def load(self, path, threads, delegate, params):
        # type: (str, int, Optional[Mapping[str, Any]], Mapping[str, Any]) -> Session
        """A payload with "default_delegates" is TFLite's own CPU path (no library to load): False asks for
        XNNPACK off, so the cpu and xnnpack cells time different things. Any other payload is a delegate."""
        library = self._library()
        delegates = []
        info = {"module": library.module, "version": library.version}  # type: Dict[str, Any]
        cpu_path = not delegate or "default_delegates" in delegate
        if not cpu_path:
            name = delegate.get("library") or delegate["name"]
            try:
                delegates.append(library.load_delegate(name, dict(delegate.get("options") or {})))
            except (OSError, ValueError) as exc:
                raise RuntimeMissing("delegate {!r} could not be loaded from {!r}: {}".format(
                    delegate["name"], name, exc))
            info["delegate_library"] = loaded_library_path(name)
        kwargs = {}  # type: Dict[str, Any]
        defaults_off = bool(delegate) and cpu_path and not delegate["default_delegates"]
        resolver = self._without_default_delegates(importlib.import_module(library.module)) if defaults_off else None
        if resolver is not None:
            kwargs["experimental_op_resolver_type"] = resolver
        interpreter = library.Interpreter(model_path=path, num_threads=threads,
                                          experimental_delegates=delegates or None, **kwargs)
        interpreter.allocate_tensors()
        session = TFLiteSession(interpreter, info, bool(delegates))
        if cpu_path:
            session.info.update(self._xnnpack_facts(session, resolver is not None, defaults_off))
        return session

    @staticmethod
    def _attribute(module, name):
        # type: (Any, str) -> Any
        """``name`` from an interpreter module, or None. tf.lite keeps load_delegate and OpResolverType under
        experimental, and importing "tensorflow.lite" before tensorflow itself gives TF's source package, which
        has none of them: tensorflow.lite.python.interpreter defines Interpreter, load_delegate and the enum."""
        found = getattr(module, name, None) or getattr(getattr(module, "experimental", None), name, None)
        if found is None and module.__name__.startswith("tensorflow"):
            found = getattr(importlib.import_module("tensorflow.lite.python.interpreter"), name, None)
        return found

    @classmethod
    def _without_default_delegates(cls, module):
        # type: (Any) -> Any
        """OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES where this interpreter module has it (LiteRT, and
        TensorFlow/tflite-runtime since about 2.5), else None."""
        return getattr(cls._attribute(module, "OpResolverType"), "BUILTIN_WITHOUT_DEFAULT_DELEGATES", None)

    @staticmethod
    def _xnnpack_facts(session, turned_off, asked_off):
        # type: (TFLiteSession, bool, bool) -> Dict[str, Any]
        """Whether XNNPACK ran, for the cpu and xnnpack cells: what tells them apart."""
        if turned_off:
            return {"default_delegates": "off", "xnnpack": False}
        coverage = session.delegate_coverage()
        # With no explicit delegate, DELEGATE nodes are XNNPACK's partitions; none seen may mean off or unused.
        xnnpack = True if coverage and coverage["delegate_nodes"] else None
        facts = {"default_delegates": "on", "xnnpack": xnnpack}  # type: Dict[str, Any]
        if asked_off:
            facts["xnnpack_note"] = ("this interpreter cannot turn off its default delegates (no OpResolverType."
                                     "BUILTIN_WITHOUT_DEFAULT_DELEGATES): this cpu cell ran with them (XNNPACK) on, "
                                     "like the xnnpack cell, so the two time the same thing")
        elif xnnpack is None:
            facts["xnnpack_note"] = "no op was delegated: XNNPACK is off in this build or took no op of this model"
        return facts


# ---------------------------------------------------------------- ONNX Runtime

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16",
    "tensor(uint16)": "uint16", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _static_dims(shape):
    # type: (Sequence[Any]) -> List[Optional[int]]
    return [int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None for d in shape]


class OnnxSession(Session):
    def __init__(self, session, info):
        # type: (Any, Dict[str, Any]) -> None
        Session.__init__(self)
        self.session = session
        self.info.update(info)
        self._inputs = session.get_inputs()
        self._outputs = session.get_outputs()
        self._feeds = {}  # type: Dict[str, np.ndarray]
        self._results = []  # type: List[np.ndarray]

    @staticmethod
    def _describe(arg):
        # type: (Any) -> Dict[str, Any]
        return {"name": arg.name, "shape": _static_dims(arg.shape),
                "dtype": _ORT_TYPES.get(arg.type, arg.type), "scale": 0.0, "zero_point": 0}

    def input_details(self):
        # type: () -> List[Dict[str, Any]]
        return [self._describe(a) for a in self._inputs]

    def output_details(self):
        # type: () -> List[Dict[str, Any]]
        return [self._describe(a) for a in self._outputs]

    def set_input(self, index, array):
        # type: (int, np.ndarray) -> None
        self._feeds[self._inputs[index].name] = array

    def invoke(self):
        # type: () -> None
        self._results = self.session.run(None, self._feeds)

    def get_outputs(self):
        # type: () -> List[np.ndarray]
        return list(self._results)


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def _module(self):
        # type: () -> Any
        try:
            import onnxruntime
        except ImportError as exc:
            raise RuntimeMissing("onnxruntime is not installed: {}".format(exc))
        return onnxruntime

    def version(self):
        # type: () -> Dict[str, Any]
        return {"module": "onnxruntime", "version": self._module().__version__}

    def load(self, path, threads, delegate, params):
        # type: (str, int, Optional[Mapping[str, Any]], Mapping[str, Any]) -> Session
        ort = self._module()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # The delegate of ONNX Runtime is an execution provider, with CPU as the fallback.
        providers = ["CPUExecutionProvider"]  # type: List[Any]
        if delegate:
            if delegate["name"] not in ort.get_available_providers():
                raise RuntimeMissing("execution provider {!r} is not available (have: {})".format(
                    delegate["name"], ", ".join(ort.get_available_providers())))
            providers = [(delegate["name"], dict(delegate.get("options") or {}))] + providers
        session = ort.InferenceSession(path, sess_options=options, providers=providers)
        return OnnxSession(session, {"module": "onnxruntime", "version": ort.__version__,
                                     "providers": session.get_providers()})


# ---------------------------------------------------------------- OpenVINO

class OpenVinoSession(Session):
    def __init__(self, compiled, info):
        # type: (Any, Dict[str, Any]) -> None
        Session.__init__(self)
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.info.update(info)

    @staticmethod
    def _describe(port):
        # type: (Any) -> Dict[str, Any]
        shape = port.get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
        return {"name": port.get_any_name(), "shape": dims,
                "dtype": _numpy_dtype_name(port.get_element_type().to_dtype()), "scale": 0.0, "zero_point": 0}

    def input_details(self):
        # type: () -> List[Dict[str, Any]]
        return [self._describe(p) for p in self.compiled.inputs]

    def output_details(self):
        # type: () -> List[Dict[str, Any]]
        return [self._describe(p) for p in self.compiled.outputs]

    def set_input(self, index, array):
        # type: (int, np.ndarray) -> None
        import openvino as ov
        self.request.set_input_tensor(index, ov.Tensor(np.ascontiguousarray(array)))

    def invoke(self):
        # type: () -> None
        self.request.infer()

    def get_outputs(self):
        # type: () -> List[np.ndarray]
        return [np.array(self.request.get_output_tensor(i).data) for i in range(len(self.compiled.outputs))]


class OpenVinoRuntime(Runtime):
    name = "openvino"

    def _module(self):
        # type: () -> Any
        try:
            import openvino
        except ImportError as exc:
            raise RuntimeMissing("openvino is not installed: {}".format(exc))
        return openvino

    def version(self):
        # type: () -> Dict[str, Any]
        return {"module": "openvino", "version": self._module().get_version()}

    def load(self, path, threads, delegate, params):
        # type: (str, int, Optional[Mapping[str, Any]], Mapping[str, Any]) -> Session
        ov = self._module()
        core = ov.Core()
        # An OpenVINO "delegate" is a device plugin (GPU, NPU, MYRIAD...); CPU otherwise.
        device = delegate["name"] if delegate else "CPU"
        if device not in core.available_devices:
            raise RuntimeMissing("OpenVINO device {!r} is not available (have: {})".format(
                device, ", ".join(core.available_devices)))
        config = {"INFERENCE_NUM_THREADS": threads}  # type: Dict[str, Any]
        if delegate:
            config.update(delegate.get("options") or {})
        if params.get("precision"):
            config["INFERENCE_PRECISION_HINT"] = params["precision"]
        compiled = core.compile_model(core.read_model(path), device, config)
        # The hint is only a request: record what the plugin actually chose.
        return OpenVinoSession(compiled, {
            "module": "openvino", "version": ov.get_version(), "device": device,
            "precision_requested": params.get("precision"),
            "precision_used": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
            "threads_used": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        })


register(TFLiteRuntime())
register(OnnxRuntime())
register(OpenVinoRuntime())

# Frozen TensorFlow graphs (tf, tftrt) live in their own module, which registers them on import.
from . import tfgraph  # noqa: E402,F401
