"""Keras model / SavedModel -> a TF1-style frozen GraphDef for TF-TRT on a Jetson.

JetPack 4 ships a TF1 runtime whose TF-TRT entry point (``TrtGraphConverter``) takes
a frozen GraphDef plus the names of the output nodes. Freezing happens here, on the
host, with whatever TF is installed; the device's older TF must understand every op
and attribute the newer one wrote. Given the device release's op registry, freezing
drops the attributes that release does not know where they hold their default, and
records what remains wrong (edgefleet.tftrt.opregistry).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from edgefleet.errors import BuildError
from edgefleet.tftrt.opregistry import OpRegistry, TargetCheck, fit_graph

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef

# NVIDIA's TF1 wheel for JetPack 4.6, the last JetPack for the Jetson Nano.
DEFAULT_TARGET_TF_VERSION = "1.15.5"
_NODE_NAME_RE = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/]*$")


class TensorInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str            # tensor name, "node:0"
    node: str            # the node that produces it; what TF-TRT's nodes denylist wants
    dtype: str
    shape: list[int | None] | None
    key: str | None = None  # the signature/structured output key, when there is one


class FrozenGraphInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    source_format: str   # "keras" or "saved_model"
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    tf_version: str
    target_tf_version: str
    node_count: int
    op_types: list[str]
    # The check against the device release's op registry; None when frozen without one.
    target_check: TargetCheck | None = None

    @property
    def output_nodes(self) -> list[str]:
        return [t.node for t in self.outputs]

    def warnings(self) -> list[str]:
        if self.target_check is not None:
            return self.target_check.warnings()
        host_major = self.tf_version.split(".")[0]
        target_major = self.target_tf_version.split(".")[0]
        if host_major != target_major:
            return [f"frozen with TF {self.tf_version} but the device runs TF {self.target_tf_version}: every op "
                    f"type in op_types must exist in TF {self.target_tf_version}, or the graph will not import there "
                    "(not checked: frozen without that release's op registry)"]
        return []


def freeze_model(source: Path, *, signature_key: str = "serving_default", batch_size: int | None = None,
                 target_tf_version: str = DEFAULT_TARGET_TF_VERSION,
                 registry: OpRegistry | None = None) -> tuple[GraphDef, FrozenGraphInfo]:
    """Freeze a ``.keras``/``.h5`` file or a SavedModel directory into a constant-only GraphDef.

    With ``registry`` (the op registry of ``target_tf_version``), the graph is fitted to that release
    and ``info.target_check`` says what was dropped and what still keeps it from importing there.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    # ``owner`` keeps the loaded object alive: its variables die with it, and freezing reads them.
    if source.is_dir() and (source / "saved_model.pb").is_file():
        owner, function = _saved_model_function(source, signature_key)
        source_format = "saved_model"
    elif source.is_file() and source.suffix in (".keras", ".h5"):
        owner, function = _keras_function(source, batch_size)
        source_format = "keras"
    else:
        raise BuildError(f"cannot freeze {source}: expected a .keras/.h5 file or a SavedModel directory "
                         "(with saved_model.pb)")
    try:
        frozen = convert_variables_to_constants_v2(function)
    except Exception as exc:  # TF raises a zoo of types for graphs it cannot fold
        raise BuildError(f"freezing {source.name} failed: {type(exc).__name__}: {exc}") from None
    del owner
    graph_def = frozen.graph.as_graph_def()
    if registry is not None and registry.tensorflow_version != target_tf_version:
        raise BuildError(f"the op registry given is TF {registry.tensorflow_version}'s, but the graph is for "
                         f"TF {target_tf_version}")
    target_check = fit_graph(graph_def, registry) if registry is not None else None
    info = FrozenGraphInfo(
        source_format=source_format,
        inputs=[_tensor_info(t) for t in frozen.inputs if t.dtype != tf.resource],
        outputs=_outputs(frozen.outputs, function.structured_outputs),
        tf_version=tf.__version__,
        target_tf_version=target_tf_version,
        node_count=len(graph_def.node),
        op_types=sorted({n.op for n in graph_def.node}),
        target_check=target_check,
    )
    return graph_def, info


def write_graph(graph_def: GraphDef, path: Path) -> None:
    # Deterministic: node attrs are a protobuf map, whose order otherwise varies between processes, and a
    # rewrite that changed nothing must give the same bytes (deploy measures identical variants once).
    path.write_bytes(graph_def.SerializeToString(deterministic=True))


def read_graph(path: Path) -> GraphDef:
    from google.protobuf.message import DecodeError
    from tensorflow.core.framework.graph_pb2 import GraphDef

    graph_def = GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except OSError as exc:
        raise BuildError(f"cannot read the frozen graph {path}: {exc.strerror}") from None
    except DecodeError:
        raise BuildError(f"{path} is not a serialized GraphDef") from None
    if not graph_def.node:
        raise BuildError(f"{path} holds an empty GraphDef")
    return graph_def


def _saved_model_function(source: Path, signature_key: str) -> tuple[Any, Any]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(source))
    signatures = loaded.signatures
    if signature_key not in signatures:
        raise BuildError(f"SavedModel {source.name} has no signature {signature_key!r}; it has "
                         f"{sorted(signatures) or 'none'}")
    return loaded, signatures[signature_key]


def _keras_function(source: Path, batch_size: int | None) -> tuple[Any, Any]:
    import keras
    import tensorflow as tf

    try:
        model = keras.models.load_model(source, compile=False)
    except Exception as exc:  # Keras wraps load failures in many exception types
        raise BuildError(f"cannot load the Keras model {source.name}: {exc}") from None
    specs = []
    for i, tensor in enumerate(model.inputs):
        shape = list(tensor.shape)
        if batch_size is not None:
            shape[0] = batch_size
        name = tensor.name if _NODE_NAME_RE.match(tensor.name or "") else f"input_{i}"
        specs.append(tf.TensorSpec(shape, tensor.dtype, name=name))

    def call(*args: Any) -> Any:
        return model(args[0] if len(args) == 1 else list(args), training=False)

    return model, tf.function(call).get_concrete_function(*specs)


def _outputs(tensors: list[Any], structured: Any) -> list[TensorInfo]:
    # Freezing flattens a signature's dict of outputs in sorted key order; recover the keys from the original.
    keys: list[str | None] = [str(k) for k in sorted(structured)] if isinstance(structured, dict) else []
    if len(keys) != len(tensors):
        keys = [None] * len(tensors)
    return [_tensor_info(t, key=k) for t, k in zip(tensors, keys, strict=True)]


def _tensor_info(tensor: Any, key: str | None = None) -> TensorInfo:
    shape = None if tensor.shape.rank is None else list(tensor.shape.as_list())
    return TensorInfo(name=tensor.name, node=tensor.name.split(":")[0], dtype=tensor.dtype.name,
                      shape=shape, key=key)
