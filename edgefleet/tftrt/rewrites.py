"""GraphDef -> GraphDef rewrites that make a frozen graph friendlier to TF-TRT on a Jetson.

Each function is pure: it copies the input graph, returns the new graph and a summary
of exactly what changed, and never touches anything else. Node names that consumers
refer to are preserved, so inputs/outputs recorded at freeze time stay valid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgefleet.errors import BuildError

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef

CPU_DEVICE = "/device:CPU:0"


@dataclass(frozen=True)
class RewriteSummary:
    rewrite: str
    added_nodes: tuple[str, ...] = ()
    removed_nodes: tuple[str, ...] = ()
    changed_nodes: tuple[str, ...] = ()
    removed_control_inputs: int = 0
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added_nodes or self.removed_nodes or self.changed_nodes or self.removed_control_inputs)

    def as_dict(self) -> dict[str, Any]:
        return {"rewrite": self.rewrite, "added_nodes": list(self.added_nodes),
                "removed_nodes": list(self.removed_nodes), "changed_nodes": list(self.changed_nodes),
                "removed_control_inputs": self.removed_control_inputs, "notes": list(self.notes)}


def replace_relu6(graph_def: GraphDef) -> tuple[GraphDef, RewriteSummary]:
    """Relu6(x) -> Relu(x) - Relu(x - 6), keeping the node name N for its consumers.

    Older TensorRT (JetPack 4.2-era) had no fast Relu6; newer TensorRT is faster without this rewrite.
    For |x| < 2**24 in float32 both forms are bit-identical, because x - 6 is then exact.
    """
    import tensorflow as tf
    from tensorflow.core.framework.node_def_pb2 import NodeDef

    existing = {n.name for n in graph_def.node}
    new_nodes: list[NodeDef] = []
    added: list[str] = []
    changed: list[str] = []
    for node in graph_def.node:
        if node.op != "Relu6":
            new_nodes.append(node)
            continue
        name = node.name
        data_inputs = [i for i in node.input if not i.startswith("^")]
        controls = [i for i in node.input if i.startswith("^")]
        if len(data_inputs) != 1:
            raise BuildError(f"Relu6 node {name!r} has {len(data_inputs)} data inputs; expected 1")
        x = data_inputs[0]
        names = {part: f"{name}/{part}" for part in ("relu1", "six", "sub1", "relu2")}
        clash = sorted(set(names.values()) & existing)
        if clash:
            raise BuildError(f"cannot rewrite Relu6 {name!r}: the graph already has node(s) {clash}")
        t_attr = node.attr["T"]
        six = NodeDef(name=names["six"], op="Const", device=node.device)
        six.attr["dtype"].type = t_attr.type
        six.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(6, dtype=tf.dtypes.as_dtype(t_attr.type), shape=[]))
        # Control inputs go on the nodes that read x, so nothing runs earlier than it used to.
        new_nodes += [
            _unary_or_binary(names["relu1"], "Relu", [x, *controls], node.device, t_attr),
            six,
            _unary_or_binary(names["sub1"], "Sub", [x, names["six"], *controls], node.device, t_attr),
            _unary_or_binary(names["relu2"], "Relu", [names["sub1"]], node.device, t_attr),
            _unary_or_binary(name, "Sub", [names["relu1"], names["relu2"]], node.device, t_attr),
        ]
        added += [names["relu1"], names["six"], names["sub1"], names["relu2"]]
        changed.append(name)
    summary = RewriteSummary("relu6_replace", added_nodes=tuple(added), changed_nodes=tuple(changed),
                             notes=() if changed else ("no Relu6 op in the graph",))
    return _with_nodes(graph_def, new_nodes), summary


def force_nms_on_cpu(graph_def: GraphDef, device: str = CPU_DEVICE) -> tuple[GraphDef, RewriteSummary]:
    """Pin every NonMaxSuppression* op (V1..V5, WithOverlaps) to the CPU.

    NMS on the Jetson's GPU bounces data between CPU and GPU; on the CPU it is faster.
    Selected by op type: node names are whatever the model author chose.
    """
    out = _copy(graph_def)
    changed = []
    found = 0
    for node in out.node:
        if node.op.startswith("NonMaxSuppression"):
            found += 1
            if node.device != device:
                node.device = device
                changed.append(node.name)
    notes = () if found else ("no NonMaxSuppression op in the graph",)
    return out, RewriteSummary("nms_on_cpu", changed_nodes=tuple(changed), notes=notes)


def remove_asserts(graph_def: GraphDef) -> tuple[GraphDef, RewriteSummary]:
    """Drop Assert ops and every ``^name`` control input that pointed at one.

    TF-TRT cannot place Assert in an engine, and its control edges split segments.
    """
    from tensorflow.core.framework.node_def_pb2 import NodeDef

    removed = {n.name for n in graph_def.node if n.op == "Assert"}
    kept = []
    dropped_controls = 0
    for original in graph_def.node:
        if original.name in removed:
            continue
        node = NodeDef()
        node.CopyFrom(original)
        inputs = [i for i in node.input if not (i.startswith("^") and i[1:] in removed)]
        dropped_controls += len(node.input) - len(inputs)
        del node.input[:]
        node.input.extend(inputs)
        kept.append(node)
    out = _with_nodes(graph_def, kept)
    notes = [] if removed else ["no Assert op in the graph"]
    in_functions = sum(1 for f in graph_def.library.function for n in f.node_def if n.op == "Assert")
    if in_functions:
        notes.append(f"{in_functions} Assert op(s) inside the function library were left in place")
    return out, RewriteSummary("remove_asserts", removed_nodes=tuple(sorted(removed)),
                               removed_control_inputs=dropped_controls, notes=tuple(notes))


def _unary_or_binary(name: str, op: str, inputs: list[str], device: str, t_attr: Any) -> Any:
    from tensorflow.core.framework.node_def_pb2 import NodeDef

    node = NodeDef(name=name, op=op, input=inputs, device=device)
    node.attr["T"].CopyFrom(t_attr)
    return node


def _copy(graph_def: GraphDef) -> GraphDef:
    from tensorflow.core.framework.graph_pb2 import GraphDef

    out = GraphDef()
    out.CopyFrom(graph_def)
    return out


def _with_nodes(graph_def: GraphDef, nodes: list[Any]) -> GraphDef:
    """A copy of graph_def (versions, function library) with ``nodes`` as its node list."""
    out = _copy(graph_def)
    del out.node[:]
    out.node.extend(nodes)
    return out
