"""Freezing and GraphDef rewrites for TF-TRT, on a real graph built and frozen with the host TensorFlow."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.errors import BuildError
from edgefleet.steps.base import StepContext
from edgefleet.steps.tftrt import tftrt_freeze, tftrt_rewrite
from edgefleet.tftrt.freeze import freeze_model, read_graph
from edgefleet.tftrt.rewrites import CPU_DEVICE, force_nms_on_cpu, remove_asserts, replace_relu6

pytestmark = pytest.mark.convert

N_BOXES = 32


@pytest.fixture(scope="session")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A SavedModel with Relu6, two NMS ops and runtime asserts, frozen through freeze_model."""
    import tensorflow as tf

    class Detector(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel = tf.Variable(tf.random.stateless_normal([3, 3, 3, 4], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32, name="image"),
                                      tf.TensorSpec([N_BOXES, 4], tf.float32, name="boxes"),
                                      tf.TensorSpec([N_BOXES], tf.float32, name="scores")])
        def detect(self, image: Any, boxes: Any, scores: Any) -> dict[str, Any]:
            tf.debugging.assert_greater_equal(scores, 0.0, message="scores must be non-negative")
            tf.debugging.assert_less_equal(boxes, 1.0, message="boxes are normalised")
            # Scaled so the activations cross both 0 and 6: the saturating branches get exercised.
            features = tf.nn.relu6(tf.nn.conv2d(image, self.kernel, 1, "SAME") * 4.0, name="act")
            features = tf.nn.relu6(features * 2.0 - 3.0, name="act2")
            # Named without "NonMaxSuppression": the rewrite must select by op type.
            picked, _, _ = tf.raw_ops.NonMaxSuppressionV5(
                boxes=boxes, scores=scores, max_output_size=8, iou_threshold=0.5, score_threshold=0.2,
                soft_nms_sigma=0.0, pad_to_max_output_size=True, name="pick_boxes")
            selected = tf.image.non_max_suppression(boxes, scores, 8, 0.5, name="select")
            # A node whose NAME says NonMaxSuppression but whose op is not: must be left alone.
            decoy = tf.identity(scores, name="NonMaxSuppression_decoy")
            return {"features": tf.reduce_mean(features, axis=[1, 2]), "picked": picked,
                    "selected": selected, "decoy": decoy}

    saved = tmp_path_factory.mktemp("detector") / "saved_model"
    module = Detector()
    tf.saved_model.save(module, str(saved), signatures={"serving_default": module.detect})
    return freeze_model(saved, target_tf_version="1.15.5")


def _feeds(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    corner = rng.random((N_BOXES, 2), dtype=np.float32) * 0.7
    size = rng.random((N_BOXES, 2), dtype=np.float32) * 0.3
    return {"image:0": rng.normal(size=(1, 8, 8, 3)).astype(np.float32),
            "boxes:0": np.concatenate([corner, corner + size], axis=1),
            "scores:0": rng.random(N_BOXES, dtype=np.float32)}


def _run(graph_def: Any, fetches: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        return session.run(fetches, feed_dict=feeds)


def _named(graph_def: Any, suffix: str) -> str:
    """The node whose name ends in ``suffix`` (loading a SavedModel prefixes the function's scope)."""
    (name,) = [n.name for n in graph_def.node if n.name == suffix or n.name.endswith("/" + suffix)]
    return name


def _fetches(original: Any, info: Any) -> list[str]:
    # The recorded outputs, plus the Relu6 outputs themselves, which the rewrite replaces by name.
    return [t.name for t in info.outputs] + [f"{_named(original, n)}:0" for n in ("act", "act2")]


def _assert_same_outputs(original: Any, rewritten: Any, info: Any) -> None:
    fetches = _fetches(original, info)
    for seed in range(3):
        feeds = _feeds(seed)
        before = _run(original, fetches, feeds)
        after = _run(rewritten, fetches, feeds)
        for name, a, b in zip(fetches, before, after, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b), name


def _ops(graph_def: Any) -> dict[str, str]:
    return {n.name: n.op for n in graph_def.node}


def test_freeze_records_io_and_versions(frozen: tuple[Any, Any]) -> None:
    import tensorflow as tf

    graph_def, info = frozen
    assert info.source_format == "saved_model"
    assert sorted(t.name for t in info.inputs) == ["boxes:0", "image:0", "scores:0"]
    assert [t.key for t in info.outputs] == ["decoy", "features", "picked", "selected"]
    assert info.tf_version == tf.__version__ and info.target_tf_version == "1.15.5"
    assert info.warnings() and "1.15.5" in info.warnings()[0]
    ops = set(_ops(graph_def).values())
    assert {"Relu6", "NonMaxSuppressionV5", "NonMaxSuppressionV3", "Assert"} <= ops
    assert not ops & {"VarHandleOp", "ReadVariableOp"}  # really frozen
    picked = next(t for t in info.outputs if t.key == "picked")
    assert picked.dtype == "int32" and picked.shape == [8]


def test_relu6_replacement(frozen: tuple[Any, Any]) -> None:
    import tensorflow as tf

    from tensorflow.core.framework.graph_pb2 import GraphDef

    original, info = frozen
    snapshot = GraphDef()
    snapshot.CopyFrom(original)
    rewritten, summary = replace_relu6(original)
    assert original == snapshot  # pure: the input is untouched

    relu6 = sorted(n.name for n in original.node if n.op == "Relu6")
    assert relu6 == [_named(original, "act"), _named(original, "act2")]
    assert sorted(summary.changed_nodes) == relu6
    assert len(rewritten.node) == len(original.node) + 4 * len(relu6)  # relu1, sub1, relu2 and the const
    assert "Relu6" not in _ops(rewritten).values()
    nodes = {n.name: n for n in rewritten.node}
    for name in relu6:
        assert nodes[name].op == "Sub" and list(nodes[name].input) == [f"{name}/relu1", f"{name}/relu2"]
        assert nodes[f"{name}/relu1"].op == "Relu" and nodes[f"{name}/relu2"].op == "Relu"
        assert nodes[f"{name}/sub1"].op == "Sub" and nodes[f"{name}/sub1"].input[1] == f"{name}/six"
        assert tf.make_ndarray(nodes[f"{name}/six"].attr["value"].tensor) == 6.0
        assert nodes[f"{name}/six"].attr["dtype"].type == tf.float32.as_datatype_enum
        for part in ("relu1", "sub1", "relu2"):
            assert nodes[f"{name}/{part}"].attr["T"].type == tf.float32.as_datatype_enum
    # The Relu6 outputs really saturate at both ends on these inputs, so both branches are compared.
    act = _run(original, [f"{relu6[0]}:0"], _feeds(0))[0]
    assert act.min() == 0.0 and act.max() == 6.0
    _assert_same_outputs(original, rewritten, info)


def test_nms_on_cpu_selects_by_op_type(frozen: tuple[Any, Any]) -> None:
    original, info = frozen
    from tensorflow.core.framework.graph_pb2 import GraphDef

    start = GraphDef()
    start.CopyFrom(original)
    # One NMS node already pinned elsewhere: it must be moved too.
    picked = _named(start, "pick_boxes")
    next(n for n in start.node if n.name == picked).device = "/device:GPU:0"
    rewritten, summary = force_nms_on_cpu(start)

    nms = {n.name for n in start.node if n.op.startswith("NonMaxSuppression")}
    assert picked in nms and "NonMaxSuppression" not in picked and len(nms) == 2
    assert set(summary.changed_nodes) == nms
    before = {n.name: n.device for n in start.node}
    after = {n.name: n.device for n in rewritten.node}
    assert before.keys() == after.keys()
    assert {name for name in after if after[name] != before[name]} == nms
    assert all(after[name] == CPU_DEVICE for name in nms)
    decoy = _named(start, "NonMaxSuppression_decoy")
    assert after[decoy] == before[decoy] == ""
    _assert_same_outputs(original, rewritten, info)

    again, summary_again = force_nms_on_cpu(rewritten)
    assert not summary_again.changed and summary_again.notes == () and again == rewritten


def test_assert_removal(frozen: tuple[Any, Any]) -> None:
    original, info = frozen
    asserts = {n.name for n in original.node if n.op == "Assert"}
    assert len(asserts) == 2
    controls_to_asserts = sum(1 for n in original.node for i in n.input if i.startswith("^") and i[1:] in asserts)
    assert controls_to_asserts > 0

    rewritten, summary = remove_asserts(original)
    assert set(summary.removed_nodes) == asserts
    assert summary.removed_control_inputs == controls_to_asserts
    assert len(rewritten.node) == len(original.node) - len(asserts)
    assert "Assert" not in _ops(rewritten).values()
    names = {n.name for n in rewritten.node}
    dangling = [i for n in rewritten.node for i in n.input if i.startswith("^") and i[1:] not in names]
    assert dangling == []
    _assert_same_outputs(original, rewritten, info)


def test_all_rewrites_together_keep_the_outputs(frozen: tuple[Any, Any]) -> None:
    original, info = frozen
    graph_def, _ = remove_asserts(original)
    graph_def, _ = force_nms_on_cpu(graph_def)
    graph_def, _ = replace_relu6(graph_def)
    _assert_same_outputs(original, graph_def, info)


def test_relu6_name_clash_is_refused(frozen: tuple[Any, Any]) -> None:
    original, _ = frozen
    from tensorflow.core.framework.graph_pb2 import GraphDef

    clashing = GraphDef()
    clashing.CopyFrom(original)
    clashing.node.add(name=f"{_named(original, 'act')}/relu1", op="NoOp")
    with pytest.raises(BuildError, match="already has node"):
        replace_relu6(clashing)


# --- steps -------------------------------------------------------------------------------------

def _ctx(kind: str, out: Path, inputs: dict[str, Path], **params: Any) -> StepContext:
    out.mkdir(parents=True, exist_ok=True)  # the executor creates out_dir before running a step
    return StepContext(kind=kind, inputs=inputs, params=params, out_dir=out, log=lambda line: None)


def test_freeze_and_rewrite_steps_on_a_keras_model(tmp_path: Path) -> None:
    import keras

    inputs = keras.Input(shape=(8, 8, 3), name="img")
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.ReLU(max_value=6.0)(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    model.save(tmp_path / "net.keras")

    frozen_dir = tmp_path / "freeze"
    result = tftrt_freeze(_ctx("tftrt_freeze", frozen_dir, {"model": tmp_path / "net.keras"}, batch_size=1))
    assert result.files == ["frozen.pb", "graph.json"]
    info = json.loads((frozen_dir / "graph.json").read_text())
    assert [t["name"] for t in info["inputs"]] == ["img:0"] and info["inputs"][0]["shape"] == [1, 8, 8, 3]
    assert result.report["outputs"] == [t["name"] for t in info["outputs"]]
    assert "tensorflow" in result.tool_versions

    rewrite_dir = tmp_path / "rewrite"
    result = tftrt_rewrite(_ctx("tftrt_rewrite", rewrite_dir, {"graph": frozen_dir / "frozen.pb"},
                                relu6_replace=True, nms_on_cpu=True, remove_asserts=True))
    assert result.report["nodes_after"] == result.report["nodes_before"] + 4
    relu6 = next(r for r in result.report["rewrites"] if r["rewrite"] == "relu6_replace")
    assert len(relu6["changed_nodes"]) == 1
    assert "Relu6" not in {n.op for n in read_graph(rewrite_dir / "frozen.pb").node}

    with pytest.raises(BuildError, match="relu6_replace"):
        tftrt_rewrite(_ctx("tftrt_rewrite", rewrite_dir, {"graph": frozen_dir / "frozen.pb"}, relu6_replace="yes"))


def test_freeze_rejects_what_it_cannot_freeze(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BuildError, match="expected a .keras/.h5 file or a SavedModel"):
        tftrt_freeze(_ctx("tftrt_freeze", tmp_path / "out", {"model": tmp_path / "notes.txt"}))
    (tmp_path / "bad.pb").write_bytes(b"\xff\xfe not a graph")
    with pytest.raises(BuildError, match="not a serialized GraphDef|empty GraphDef"):
        read_graph(tmp_path / "bad.pb")
