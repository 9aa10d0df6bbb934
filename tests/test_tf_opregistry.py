"""Frozen graphs checked against the op registry of the TF a Jetson runs (1.15.5), read from its real wheel.

The registry is fetched from PyPI once into EDGEFLEET_TF_OPREGISTRY_CACHE (conftest shares it across
the session and later runs); graphs are frozen with this host's TensorFlow 2.x.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.errors import PlanError, ToolUnavailableError
from edgefleet.plan.model import SourceInput
from edgefleet.plan.workspace import load_plan
from edgefleet.steps.base import StepContext
from edgefleet.steps.tftrt import tftrt_freeze, tftrt_rewrite
from edgefleet.tftrt.freeze import freeze_model, read_graph, write_graph
from edgefleet.tftrt.opregistry import (
    CACHE_ENV, OpRegistry, ensure_registry, fit_graph, load_registry, pip_command, registry_path,
)
from edgefleet.workspace import open_workspace

pytestmark = pytest.mark.convert

VERSION = "1.15.5"
# What TF 2.x writes into a MobileNet-like graph that TF 1.15 does not know; all at their default values.
MOBILENET_STRIPPED = {"DepthwiseConv2dNative.explicit_paddings", "MaxPool.explicit_paddings",
                      "MatMul.grad_a", "MatMul.grad_b"}


@pytest.fixture(scope="session")
def registry_file() -> Path:
    cache = Path(os.environ[CACHE_ENV])
    try:
        return ensure_registry(cache, VERSION, print)
    except ToolUnavailableError as exc:
        # CI installs from PyPI, so there an unreachable PyPI is a failure, never a silent skip.
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"PyPI is not reachable for the TF {VERSION} wheel: {str(exc).splitlines()[0]}")


@pytest.fixture(scope="session")
def registry(registry_file: Path) -> OpRegistry:
    return load_registry(registry_file)


def _ctx(out: Path, inputs: dict[str, Path], **params: Any) -> StepContext:
    out.mkdir(parents=True, exist_ok=True)
    return StepContext(kind="tftrt.test", inputs=inputs, params=params, out_dir=out, log=lambda line: None)


def _saved_model(tmp_path: Path, body: Any) -> Path:
    """A SavedModel whose serving signature computes ``body(x)`` for a [1, 4] float input."""
    import tensorflow as tf

    module = tf.Module()
    module.serve = tf.function(body, input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
    path = tmp_path / "saved_model"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


# --- the registry ------------------------------------------------------------------------------

def test_registry_comes_from_the_real_wheel(registry_file: Path, registry: OpRegistry) -> None:
    assert registry.tensorflow_version == VERSION and len(registry.ops) > 1000
    conv = registry.ops["Conv2D"]
    assert set(conv.attrs) == {"T", "strides", "use_cudnn_on_gpu", "padding", "explicit_paddings",
                               "data_format", "dilations"}
    assert conv.attrs["padding"].allowed == {"SAME", "VALID", "EXPLICIT"}
    assert "DT_FLOAT" in (conv.attrs["T"].allowed or ())
    assert conv.module.endswith("python/ops/gen_nn_ops.py")
    # Not declared by the wheel's op modules: NVIDIA's TensorRT op and the runtime-internal ones.
    assert "TRTEngineOp" not in registry.ops and "_Arg" not in registry.ops
    assert registry.graph_def_version == 134
    # tf.contrib ops are read too, but marked: a plain import on the device does not register them.
    assert registry.ops["ImageProjectiveTransformV2"].contrib_only and not conv.contrib_only
    # Provenance: which wheel, its digest, and the command that fetches it again.
    source = registry.source
    assert re.fullmatch(r"tensorflow-1\.15\.5-cp37-cp37m-manylinux2010_x86_64\.whl", source["wheel"])
    assert re.fullmatch(r"[0-9a-f]{64}", source["sha256"])
    assert source["command"] == " ".join(pip_command(VERSION))
    assert registry_file == registry_path(Path(os.environ[CACHE_ENV]), VERSION)
    # Cached: the second call neither fetches nor logs.
    lines: list[str] = []
    assert ensure_registry(registry_file.parent, VERSION, lines.append) == registry_file and lines == []


def test_unreleased_and_malformed_versions_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"PyPI has no TensorFlow 1\.15\.99 wheel .*pip download"):
        ensure_registry(tmp_path, "1.15.99", lambda line: None)
    with pytest.raises(PlanError, match="not a TensorFlow release number"):
        ensure_registry(tmp_path, "1.15", lambda line: None)
    assert not list(tmp_path.glob("*.json"))


def test_an_offline_machine_is_told_the_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real pip against an index nobody listens on: what a machine without a network sees.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        monkeypatch.delenv(name, raising=False)
    lines: list[str] = []
    with pytest.raises(ToolUnavailableError, match=r"PyPI is not reachable.*pip download --no-deps"):
        ensure_registry(tmp_path, VERSION, lines.append)
    assert lines[0].startswith(f"fetching the TensorFlow {VERSION} op registry from PyPI")
    assert not list(tmp_path.iterdir()) or all(p.suffix == ".lock" for p in tmp_path.iterdir())


# --- fitting and checking graphs -----------------------------------------------------------------

def test_mobilenet_like_model_passes_once_default_attrs_are_dropped(tmp_path: Path, registry: OpRegistry) -> None:
    import keras
    import tensorflow as tf

    inputs = keras.Input(shape=(16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(max_value=6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))
    model.save(tmp_path / "net.keras")

    # As TF 2.x freezes it, the graph carries attrs 1.15 would refuse ...
    raw, _ = freeze_model(tmp_path / "net.keras", batch_size=1)
    assert {f"{n.op}.{a}" for n in raw.node for a in n.attr} >= MOBILENET_STRIPPED
    # ... and fitted to the 1.15 registry it does not, with the dropped attrs on record.
    graph_def, info = freeze_model(tmp_path / "net.keras", batch_size=1, registry=registry)
    check = info.target_check
    assert check is not None and check.passed, check
    assert set(check.stripped_attrs) == MOBILENET_STRIPPED
    assert not {f"{n.op}.{a}" for n in graph_def.node for a in n.attr} & MOBILENET_STRIPPED
    assert (check.consumer_graph_def_version, check.producer_graph_def_version) == (134, raw.versions.producer)

    # Dropping defaults changes nothing: the fitted graph computes what the model does.
    sample = np.random.default_rng(0).random((1, 16, 16, 3), dtype=np.float32)
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            got = session.run(info.outputs[0].name, {info.inputs[0].name: sample})
    np.testing.assert_allclose(got, model(sample, training=False).numpy(), rtol=1e-5, atol=1e-6)


def test_steps_take_the_registry_and_record_the_check(tmp_path: Path, registry_file: Path) -> None:
    import keras

    inputs = keras.Input(shape=(8, 8, 3), name="img")
    x = keras.layers.DepthwiseConv2D(3)(inputs)
    x = keras.layers.ReLU(max_value=6.0)(keras.layers.MaxPooling2D()(x))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    model.save(tmp_path / "net.keras")

    frozen = tmp_path / "frozen"
    result = tftrt_freeze(_ctx(frozen, {"model": tmp_path / "net.keras", "op_registry": registry_file},
                               batch_size=1, target_tf_version=VERSION))
    assert result.valid and result.invalid_reasons == []
    assert set(result.report["target_check"]["stripped_attrs"]) == MOBILENET_STRIPPED
    assert json.loads((frozen / "graph.json").read_text())["target_check"]["problems"] == []

    result = tftrt_rewrite(_ctx(tmp_path / "rewrite", {"graph": frozen / "frozen.pb", "op_registry": registry_file},
                                relu6_replace=True, nms_on_cpu=True, remove_asserts=True))
    assert result.valid and result.report["target_check"]["problems"] == []


def test_an_op_tf_1_15_lacks_is_rejected_naming_it(tmp_path: Path, registry: OpRegistry,
                                                    registry_file: Path) -> None:
    import tensorflow as tf

    # Xlog1py came with TF 2.x: the host has it, the 1.15 registry does not.
    assert hasattr(tf.raw_ops, "Xlog1py") and "Xlog1py" not in registry.ops
    saved = _saved_model(tmp_path, lambda x: tf.math.xlog1py(x, x) + 1.0)

    _, info = freeze_model(saved, registry=registry)
    assert info.target_check is not None and not info.target_check.passed
    result = tftrt_freeze(_ctx(tmp_path / "out", {"model": saved, "op_registry": registry_file},
                               target_tf_version=VERSION))
    assert not result.valid
    assert len(result.invalid_reasons) == 1
    assert result.invalid_reasons[0].startswith("op 'Xlog1py' does not exist in TF 1.15.5 (node ")
    assert result.report["target_check"]["problems"] == result.invalid_reasons


def test_an_unknown_attr_at_a_non_default_value_is_rejected(tmp_path: Path, registry: OpRegistry,
                                                            registry_file: Path) -> None:
    import tensorflow as tf

    saved = _saved_model(tmp_path, lambda x: tf.raw_ops.MatMul(a=x, b=tf.transpose(x), grad_a=True))
    graph_def, info = freeze_model(saved, registry=registry)
    check = info.target_check
    assert check is not None
    assert check.stripped_attrs == {"MatMul.grad_b": 1}   # the default one goes, the other cannot
    assert len(check.problems) == 1
    assert check.problems[0].startswith("op 'MatMul' attr 'grad_a' = b: true is unknown to TF 1.15.5")

    # The rewrite step checks the graph it writes, too: the same graph stays invalid there.
    write_graph(graph_def, tmp_path / "frozen.pb")
    result = tftrt_rewrite(_ctx(tmp_path / "rewrite", {"graph": tmp_path / "frozen.pb", "op_registry": registry_file},
                                nms_on_cpu=False, remove_asserts=False))
    assert not result.valid and "'MatMul' attr 'grad_a'" in result.invalid_reasons[0]
    assert read_graph(tmp_path / "rewrite" / "frozen.pb").node  # kept, marked invalid: deploy skips it


def test_graph_versions_the_device_refuses(registry: OpRegistry) -> None:
    from tensorflow.core.framework.graph_pb2 import GraphDef

    graph_def = GraphDef()
    graph_def.node.add(name="x", op="NoOp")
    graph_def.versions.producer = 2474   # above 1.15's 134: allowed, as TF's CheckVersions allows it
    assert fit_graph(graph_def, registry).passed
    graph_def.versions.min_consumer = 135
    graph_def.node.add(name="y", op="_Arg")
    check = fit_graph(graph_def, registry)
    assert check.problems == ["GraphDef min_consumer 135 is above TF 1.15.5's GraphDef version 134"]
    assert check.unknown_ops == ["_Arg"] and "_Arg" in check.warnings()[0]
    contrib = GraphDef()
    contrib.node.add(name="warp", op="ImageProjectiveTransformV2")
    assert fit_graph(contrib, registry).problems[0].startswith(
        "op 'ImageProjectiveTransformV2' exists in TF 1.15.5 only in tf.contrib")


# --- planning ------------------------------------------------------------------------------------

def test_planned_tftrt_steps_take_the_registry(workspace_copy: Path, registry_file: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ws = open_workspace(workspace_copy)
    plan = load_plan(ws, "jetson-nano", None)
    registry_input = plan.step("tftrt/frozen").inputs["op_registry"]
    assert isinstance(registry_input, SourceInput) and registry_input.path == registry_file
    rewrites = [s for s in plan.steps if s.kind == "tftrt.rewrite"]
    assert rewrites and all(s.inputs["op_registry"] == registry_input for s in rewrites)
    assert "op_registry" not in str(load_plan(ws, "rpi3", None).steps)

    # A different registry file (another fetch, an edited cache) is a different input: new keys.
    cache = tmp_path / "cache"
    cache.mkdir()
    document = json.loads(registry_file.read_text())
    document["ops"]["Conv2D"]["attrs"].pop("explicit_paddings")
    registry_path(cache, VERSION).write_text(json.dumps(document))
    monkeypatch.setenv(CACHE_ENV, str(cache))
    edited = load_plan(ws, "jetson-nano", None)
    assert edited.step("tftrt/frozen").inputs["op_registry"].path == registry_path(cache, VERSION)
    for step in [plan.step("tftrt/frozen"), *rewrites]:
        assert edited.step(step.id).key != step.key, step.id
