"""Frozen TensorFlow graphs on the device: plain TensorFlow (``tf``, the tf-native baseline) and TF-TRT
(``tftrt``), which converts the graph once per device with the tftrt_convert.py shipped beside it.

Runs ON THE DEVICE (a Jetson's Python 3.6 and TensorFlow 1.15): only ``tf.compat.v1`` graph APIs,
which exist from TensorFlow 1.14 on. The converted graph is cached beside the artifact, keyed by the
graph's sha256 and the device's TensorFlow and TensorRT versions, because TensorRT engines are only
valid for the TensorRT (and GPU) that built them.
"""
import collections
import ctypes.util
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .errors import CellError
from .fileio import sha256_file
from .runtimes import Runtime, RuntimeMissing, Session, register

GRAPH_INFO = "graph.json"
SCRIPT = "tftrt_convert.py"
SUMMARY = "tftrt_summary.json"
CONVERTED_DIR = "converted"
# Names a Python file that stands in for TF-TRT's converter where TensorRT cannot exist (the test suite's
# edgefleet/testing/trt_standin.py). The script, the cache key and every result say so when it is set.
STANDIN_ENV = "EDGEFLEET_TRT_STANDIN"
CONVERT_TIMEOUT_S = 3600  # a Nano takes minutes for a large graph; an hour means it hung
# tftrt_convert.py's exit codes (templates/jetson/tftrt_convert.py.j2).
EXIT_NO_TENSORRT = 3
EXIT_NOT_ENGAGED = 5


class ConversionFailed(CellError):
    """TF-TRT could not make this variant; ``info`` carries the script's summary into the result line."""

    def __init__(self, message, info):
        # type: (str, Dict[str, Any]) -> None
        CellError.__init__(self, message)
        self.info = info


class TensorRTMissing(RuntimeMissing):
    def __init__(self, message, info):
        # type: (str, Dict[str, Any]) -> None
        RuntimeMissing.__init__(self, message)
        self.info = info


def _tensorflow():
    # type: () -> Any
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise RuntimeMissing("TensorFlow is not installed: {}".format(exc))
    return tf


def _graph_info(path):
    # type: (str) -> Dict[str, Any]
    """Input and output tensor names, written by the build's freeze step beside the graph."""
    info_path = os.path.join(os.path.dirname(path), GRAPH_INFO)
    try:
        with open(info_path) as handle:
            return json.load(handle)
    except (IOError, OSError, ValueError) as exc:
        raise CellError("cannot read {} beside the graph: {}".format(info_path, exc))


def _read_graph(tf, path):
    # type: (Any, str) -> Any
    graph_def = tf.compat.v1.GraphDef()
    with open(path, "rb") as handle:
        graph_def.ParseFromString(handle.read())
    return graph_def


def op_counts(graph_def):
    # type: (Any) -> Dict[str, int]
    counts = collections.Counter(node.op for node in graph_def.node)
    return dict(sorted(counts.items()))


class GraphSession(Session):
    """A frozen GraphDef in a v1 Session, fed and fetched by the tensor names graph.json records."""

    def __init__(self, tf, graph_def, graph_info, threads):
        # type: (Any, Any, Mapping[str, Any], int) -> None
        Session.__init__(self)
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
        self.session = tf.compat.v1.Session(graph=graph, config=config)
        self._inputs = [dict(t) for t in graph_info["inputs"]]
        self._outputs = [dict(t) for t in graph_info["outputs"]]
        self._fetches = [graph.get_tensor_by_name(t["name"]) for t in self._outputs]
        self._feeds = {}  # type: Dict[Any, np.ndarray]
        self._feed_tensors = [graph.get_tensor_by_name(t["name"]) for t in self._inputs]
        self._results = []  # type: List[np.ndarray]

    @staticmethod
    def _describe(tensor):
        # type: (Mapping[str, Any]) -> Dict[str, Any]
        return {"name": tensor["name"], "shape": tensor.get("shape"), "dtype": tensor["dtype"],
                "scale": 0.0, "zero_point": 0}

    def input_details(self):
        # type: () -> List[Dict[str, Any]]
        return [self._describe(t) for t in self._inputs]

    def output_details(self):
        # type: () -> List[Dict[str, Any]]
        return [self._describe(t) for t in self._outputs]

    def set_input(self, index, array):
        # type: (int, np.ndarray) -> None
        self._feeds[self._feed_tensors[index]] = array

    def invoke(self):
        # type: () -> None
        self._results = self.session.run(self._fetches, feed_dict=self._feeds)

    def get_outputs(self):
        # type: () -> List[np.ndarray]
        return list(self._results)


class TensorFlowGraphRuntime(Runtime):
    """Plain TensorFlow on the frozen graph: what TF-TRT's speed-up is measured against."""

    name = "tf"

    def version(self):
        # type: () -> Dict[str, Any]
        return {"module": "tensorflow", "version": _tensorflow().__version__}

    def load(self, path, threads, delegate, params):
        # type: (str, int, Optional[Mapping[str, Any]], Mapping[str, Any]) -> Session
        tf = _tensorflow()
        if os.path.isdir(path):
            raise CellError("{} is a SavedModel folder; this agent runs frozen graphs (.pb)".format(path))
        session = GraphSession(tf, _read_graph(tf, path), _graph_info(path), threads)
        session.info.update({"module": "tensorflow", "version": tf.__version__})
        return session


def tensorrt_library_version():
    # type: () -> Optional[str]
    """The TensorRT the device has, from libnvinfer's file name (libnvinfer.so.8.2.1), or None.

    Read from the file system rather than from TensorFlow's internals, whose module names changed
    between TF 1.15 and 2.x; the script records what TensorFlow itself reports."""
    found = ctypes.util.find_library("nvinfer")
    if not found:
        return None
    for folder in ("/usr/lib/aarch64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/lib", "/usr/local/lib"):
        candidates = sorted(glob.glob(os.path.join(folder, found + "*")))
        if candidates:
            real = os.path.basename(os.path.realpath(candidates[-1]))
            return real.split(".so.", 1)[-1] if ".so." in real else real
    return found


def _standin():
    # type: () -> Optional[str]
    value = os.environ.get(STANDIN_ENV)
    return os.path.basename(value) if value else None


def conversion_key(tf_version, graph_sha256):
    # type: (str, str) -> str
    """One converted graph per (graph, TensorFlow, TensorRT): engines do not carry over between them."""
    standin = _standin()
    trt = "standin" if standin else (tensorrt_library_version() or "none")
    return "{}-tf{}-trt{}".format(graph_sha256[:16], tf_version, trt)


class TfTrtRuntime(Runtime):
    """TF-TRT: convert once with the shipped script, then time the converted graph like any other."""

    name = "tftrt"

    def version(self):
        # type: () -> Dict[str, Any]
        tf = _tensorflow()
        return {"module": "tensorflow", "version": tf.__version__, "tensorrt": tensorrt_library_version(),
                "tensorrt_standin": _standin()}

    def load(self, path, threads, delegate, params):
        # type: (str, int, Optional[Mapping[str, Any]], Mapping[str, Any]) -> Session
        tf = _tensorflow()
        folder, summary = converted_graph(path, tf.__version__)
        converted = _read_graph(tf, os.path.join(folder, summary["output_graph"]))
        session = GraphSession(tf, converted, _graph_info(path), threads)
        counts = op_counts(converted)
        session.info.update({"module": "tensorflow", "version": tf.__version__,
                             "tftrt": _facts(summary, counts)})
        return session


def _facts(summary, counts):
    # type: (Mapping[str, Any], Optional[Mapping[str, int]]) -> Dict[str, Any]
    """What every TF-TRT cell records about its conversion (op counts: None when nothing was converted)."""
    left = None if counts is None else dict((op, n) for op, n in counts.items() if op != "TRTEngineOp")
    return {"trt_engine_ops": summary.get("trt_engine_ops"), "ops_left_in_tf": left,
            "nodes_left_in_tf": None if left is None else sum(left.values()),
            "convert_seconds": summary.get("convert_seconds"),
            "tf_version": summary.get("tf_version"), "tensorrt_version": summary.get("tensorrt_version"),
            "tensorrt_standin": summary.get("tensorrt_standin"), "cached": summary.get("cached", False),
            "cache_key": summary.get("cache_key"), "settings": summary.get("settings")}


def converted_graph(path, tf_version):
    # type: (str, str) -> Tuple[str, Dict[str, Any]]
    """The cache folder with this graph's conversion and its summary, converting on first use.

    A failed conversion is cached too: the next cells of the same variant get the same verdict at once
    instead of running a conversion that cannot succeed again."""
    key = conversion_key(tf_version, sha256_file(path))
    folder = os.path.join(os.path.dirname(path), CONVERTED_DIR, key)
    cached = os.path.isdir(folder)
    if not cached:
        _convert(path, folder)
    summary = _summary(folder)
    summary.update({"cached": cached, "cache_key": key})
    _raise_for(summary)
    return folder, summary


def _convert(path, folder):
    # type: (str, str) -> None
    """Run the shipped script into a private folder, then rename it into place (never half a cache)."""
    script = os.path.join(os.path.dirname(path), SCRIPT)
    if not os.path.isfile(script):
        raise CellError("{} is missing beside the graph; deploy ships it with every TF-TRT variant".format(script))
    staging = "{}.tmp-{}".format(folder, os.getpid())
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    started = time.time()
    proc = subprocess.Popen([sys.executable, script, "--graph", path, "--out-dir", staging],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = proc.communicate(timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    with open(os.path.join(staging, "convert.log"), "wb") as handle:
        handle.write(output)
    summary_path = os.path.join(staging, SUMMARY)
    if not os.path.isfile(summary_path):
        tail = output.decode("utf-8", "replace")[-2000:]
        shutil.rmtree(staging, ignore_errors=True)
        raise CellError("{} ended with code {} and wrote no {}: {}".format(SCRIPT, proc.returncode, SUMMARY, tail))
    _annotate(summary_path, proc.returncode, time.time() - started)
    try:
        os.rename(staging, folder)
    except OSError:  # another run converted the same graph first: theirs is as good
        shutil.rmtree(staging, ignore_errors=True)


def _annotate(summary_path, returncode, seconds):
    # type: (str, int, float) -> None
    with open(summary_path) as handle:
        summary = json.load(handle)
    summary.update({"exit_code": returncode, "script_seconds": round(seconds, 3)})
    with open(summary_path, "w") as handle:
        json.dump(summary, handle, indent=2, sort_keys=True)


def _summary(folder):
    # type: (str) -> Dict[str, Any]
    try:
        with open(os.path.join(folder, SUMMARY)) as handle:
            return json.load(handle)
    except (IOError, OSError, ValueError) as exc:
        raise CellError("the cached conversion in {} is unreadable ({}); remove the folder to convert again"
                        .format(folder, exc))


def _raise_for(summary):
    # type: (Dict[str, Any]) -> None
    """The script's verdict as this cell's status: no TensorRT is missing_runtime, the rest are errors."""
    if summary.get("ok"):
        return
    info = {"tftrt": _facts(summary, None)}
    reason = "tftrt_convert.py: {}".format(summary.get("error") or "failed with code {}".format(
        summary.get("exit_code")))
    if summary.get("exit_code") == EXIT_NO_TENSORRT:
        raise TensorRTMissing(reason, info)
    if summary.get("exit_code") == EXIT_NOT_ENGAGED:
        info["tftrt"]["engaged"] = False
    raise ConversionFailed(reason, info)


register(TensorFlowGraphRuntime())
register(TfTrtRuntime())
