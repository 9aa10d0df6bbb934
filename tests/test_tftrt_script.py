"""The device-side TF-TRT script: rendering, Python 3.6 compatibility, and real runs with the host TF."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgefleet.errors import BuildError
from edgefleet.steps.base import StepContext
from edgefleet.steps.tftrt import tftrt_device_script
from edgefleet.tftrt.device_script import TrtSettings, default_template, render_device_script, render_template

REPO = Path(__file__).parents[1]
TEMPLATE = REPO / "templates" / "jetson" / "tftrt_convert.py.j2"


def _constants(source: str) -> dict[str, Any]:
    tree = ast.parse(source)
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.isupper()}


def test_default_template_is_the_repo_template() -> None:
    assert default_template() == TEMPLATE.resolve()


def test_defaults_render_to_the_nano_settings() -> None:
    constants = _constants(render_device_script(TrtSettings(), graph_file="frozen.pb", output_nodes=["Identity"]))
    assert constants["MAX_BATCH_SIZE"] == 1
    assert constants["IS_DYNAMIC_OP"] is False
    assert constants["MAX_WORKSPACE_SIZE_BYTES"] == 1 << 25
    assert constants["PRECISION_MODE"] == "FP16"
    assert constants["MINIMUM_SEGMENT_SIZE"] == 50
    assert constants["OUTPUT_NODES"] == ["Identity"]
    assert constants["GRAPH_FILE"] == "frozen.pb"


def test_overrides_render_as_literals() -> None:
    settings = TrtSettings(max_batch_size=4, is_dynamic_op=True, max_workspace_size_bytes=1 << 28,
                           precision_mode="FP32", minimum_segment_size=3)
    # A quote in a name must not break out of the literal.
    source = render_device_script(settings, graph_file="graph's.pb", output_nodes=["a/b", "it's"])
    constants = _constants(source)
    assert (constants["MAX_BATCH_SIZE"], constants["IS_DYNAMIC_OP"], constants["MAX_WORKSPACE_SIZE_BYTES"],
            constants["PRECISION_MODE"], constants["MINIMUM_SEGMENT_SIZE"]) == (4, True, 1 << 28, "FP32", 3)
    assert constants["OUTPUT_NODES"] == ["a/b", "it's"] and constants["GRAPH_FILE"] == "graph's.pb"


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        TrtSettings(precision_mode="INT8")  # type: ignore[arg-type]  # needs calibration: not offered
    with pytest.raises(ValueError):
        TrtSettings(max_batch_size=0)
    with pytest.raises(BuildError, match="output node names"):
        render_device_script(TrtSettings(), graph_file="frozen.pb", output_nodes=[])


def test_missing_variable_is_a_clear_error() -> None:
    variables = {**TrtSettings().model_dump(), "graph_file": "frozen.pb", "output_nodes": ["Identity"]}
    del variables["minimum_segment_size"]
    with pytest.raises(BuildError, match="variable is missing.*minimum_segment_size"):
        render_template(TEMPLATE, variables)


def _vermin(path: Path) -> subprocess.CompletedProcess[str]:
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    assert vermin is not None, "vermin (a dev dependency) is not installed"
    return subprocess.run([vermin, "--no-tips", "--violations", "-t=3.6-", str(path)],
                          capture_output=True, text=True, check=False)


def test_rendered_script_is_python36_compatible(tmp_path: Path) -> None:
    script = tmp_path / "tftrt_convert.py"
    script.write_text(render_device_script(TrtSettings(), graph_file="frozen.pb", output_nodes=["Identity"]))
    proc = _vermin(script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Control: vermin does flag newer code, so the pass above means something.
    newer = tmp_path / "newer.py"
    newer.write_text("import dataclasses\nif (n := 3):\n    print(f'{n=}')\n")
    assert _vermin(newer).returncode != 0


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small frozen graph with a conv stack TF-TRT could take, made with the host TF."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    kernel = tf.Variable(tf.random.stateless_normal([3, 3, 3, 8], seed=[3, 4]))

    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32, name="image")])
    def net(image: Any) -> Any:
        return tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(image, kernel, 1, "SAME")), axis=[1, 2])

    frozen = convert_variables_to_constants_v2(net.get_concrete_function())
    path = tmp_path_factory.mktemp("graph") / "frozen.pb"
    path.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    return path


def _render_next_to(graph: Path, out: Path, **settings: Any) -> Path:
    script = out / "tftrt_convert.py"
    out.mkdir(parents=True, exist_ok=True)
    script.write_text(render_device_script(TrtSettings(**settings), graph_file=graph.name, output_nodes=["Identity"]))
    return script


@pytest.mark.convert
def test_running_on_a_tf_without_tensorrt_fails_loudly(small_graph: Path, tmp_path: Path) -> None:
    # The host TF (tensorflow-cpu) has no TensorRT: its TrtGraphConverter raises
    # RuntimeError("Tensorflow has not been built with TensorRT support.").
    script = _render_next_to(small_graph, tmp_path)
    proc = subprocess.run([sys.executable, str(script), "--graph", str(small_graph), "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 3
    error = [line for line in proc.stderr.splitlines() if line.startswith("tftrt_convert: error:")]
    assert len(error) == 1
    assert "could not create the TF-TRT converter" in error[0]
    assert "Tensorflow has not been built with TensorRT support" in error[0]
    assert "TensorRT support is missing" in error[0]
    summary = json.loads((tmp_path / "tftrt_summary.json").read_text())
    assert summary["ok"] is False and summary["trt_engine_ops"] is None
    assert summary["settings"]["precision_mode"] == "FP16" and summary["nodes_before"] > 0
    assert not list(tmp_path.glob("*_trt_*.pb"))


# TensorRT cannot exist on this machine, so the next tests swap TF's trt_convert module for a stand-in
# (in a child process, so TF1 mode never leaks into this one). They check what the script does with
# the converter's result: the argument names it passes, the engine count, and the loud 0-engine failure.
_STAND_IN = """
import runpy, sys, types
import tensorflow.python.compiler.tensorrt as package

ENGINES = {engines}
calls = []

class TrtGraphConverter(object):
    def __init__(self, input_graph_def=None, nodes_blacklist=None, max_batch_size=1, is_dynamic_op=False,
                 max_workspace_size_bytes=1, precision_mode="FP32", minimum_segment_size=3,
                 maximum_cached_engines=1):
        # The TF 1.15 signature: the keep-out list is still called nodes_blacklist there.
        calls.append(dict(nodes_blacklist=nodes_blacklist, max_batch_size=max_batch_size,
                          is_dynamic_op=is_dynamic_op, max_workspace_size_bytes=max_workspace_size_bytes,
                          precision_mode=precision_mode, minimum_segment_size=minimum_segment_size))
        self.graph_def = input_graph_def

    def convert(self):
        for i in range(ENGINES):
            self.graph_def.node.add(name="TRTEngineOp_%d" % i, op="TRTEngineOp")
        print("STAND_IN_CALLS", calls)
        return self.graph_def

fake = types.ModuleType("trt_convert")
fake.TrtGraphConverter = TrtGraphConverter
package.trt_convert = fake
sys.modules["tensorflow.python.compiler.tensorrt.trt_convert"] = fake
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run_with_stand_in(script: Path, graph: Path, out: Path, engines: int) -> subprocess.CompletedProcess[str]:
    runner = out / "stand_in_runner.py"
    runner.write_text(_STAND_IN.format(engines=engines))
    return subprocess.run([sys.executable, str(runner), str(script), "--graph", str(graph), "--out-dir", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.convert
def test_zero_engines_is_a_loud_failure(small_graph: Path, tmp_path: Path) -> None:
    script = _render_next_to(small_graph, tmp_path)
    proc = _run_with_stand_in(script, small_graph, tmp_path, engines=0)
    assert proc.returncode == 5, proc.stderr[-2000:]
    assert "TensorRT did not engage" in proc.stderr and "0 TRTEngineOp" in proc.stderr
    summary = json.loads((tmp_path / "tftrt_summary.json").read_text())
    assert summary["ok"] is False and summary["trt_engine_ops"] == 0
    assert not list(tmp_path.glob("*_trt_*.pb"))


@pytest.mark.convert
def test_engaged_conversion_passes_the_settings_and_counts_engines(small_graph: Path, tmp_path: Path) -> None:
    script = _render_next_to(small_graph, tmp_path, minimum_segment_size=3)
    proc = _run_with_stand_in(script, small_graph, tmp_path, engines=2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    calls = ast.literal_eval(proc.stdout.split("STAND_IN_CALLS", 1)[1].strip().splitlines()[0])
    assert calls == [{"nodes_blacklist": ["Identity"], "max_batch_size": 1, "is_dynamic_op": False,
                      "max_workspace_size_bytes": 1 << 25, "precision_mode": "FP16", "minimum_segment_size": 3}]
    summary = json.loads((tmp_path / "tftrt_summary.json").read_text())
    assert summary["ok"] is True and summary["trt_engine_ops"] == 2
    assert summary["output_graph"] == "frozen_trt_fp16.pb" and (tmp_path / "frozen_trt_fp16.pb").is_file()


def test_device_script_step(tmp_path: Path) -> None:
    info = tmp_path / "graph.json"
    info.write_text(json.dumps({"outputs": [{"name": "Identity:0", "node": "Identity"},
                                            {"name": "Identity_1:0", "node": "Identity_1"}]}))
    out = tmp_path / "out"
    out.mkdir()
    ctx = StepContext(kind="tftrt_device_script", inputs={"graph_info": info},
                      params={"minimum_segment_size": 10}, out_dir=out, log=lambda line: None)
    result = tftrt_device_script(ctx)
    assert result.files == ["tftrt_convert.py"]
    assert "runs on the Jetson" in result.report["note"]
    constants = _constants((out / "tftrt_convert.py").read_text())
    assert constants["OUTPUT_NODES"] == ["Identity", "Identity_1"] and constants["MINIMUM_SEGMENT_SIZE"] == 10

    bad = StepContext(kind="tftrt_device_script", inputs={}, params={"precision_mode": "INT8"}, out_dir=out,
                      log=lambda line: None)
    with pytest.raises(BuildError, match="bad TF-TRT settings"):
        tftrt_device_script(bad)
    no_outputs = StepContext(kind="tftrt_device_script", inputs={}, params={}, out_dir=out, log=lambda line: None)
    with pytest.raises(BuildError, match="needs the output node names"):
        tftrt_device_script(no_outputs)
