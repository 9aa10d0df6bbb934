"""Edge TPU preflight on real int8 models built here with TensorFlow, compile checks, and the steps.

edgetpu_compiler cannot be installed on this machine (Coral ships it only for x86-64
Debian/Ubuntu through its own apt repository, which is unreachable here), so the compile
tests put a fake compiler SCRIPT on PATH that stands in for it: it prints one of the
recorded real compiler logs and writes a chosen output, normally a structural stand-in of a
compiled model (tests/edgetpu_standin.py: a real TFLite flatbuffer whose mapped part is one
edgetpu-custom-op) with the ops and size that log reports. Unless a test wants a foreign log, the
log's "Input model"/"Output model" lines name this run's files, as the real compiler's would.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from edgetpu_standin import standin_compiled_model

from edgefleet.errors import ToolUnavailableError

from edgefleet.edgetpu.compile import (NOT_FOUND_REASON, CompilerOptions, compile_model, compiler_command,
                                       expected_outputs)
from edgefleet.edgetpu.logparse import KNOWN_STATUSES, LoggedSize, parse_compiler_log
from edgefleet.edgetpu.preflight import _STATUS, EDGETPU_SUPPORTED_OPS, Problem, preflight
from edgefleet.errors import BuildError
from edgefleet.steps.base import StepContext
from edgefleet.steps.edgetpu import edgetpu_compile, edgetpu_preflight

pytestmark = [pytest.mark.convert,
              pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")]

LOGS = Path(__file__).parents[1] / "tests" / "data" / "edgetpu-logs"
SHAPE = (16, 16, 3)


def _convert(build: Callable, *, quantize: bool = True, integer_io: bool = True) -> bytes:
    import keras
    import tensorflow as tf

    inputs = keras.Input(shape=SHAPE, batch_size=1)
    model = keras.Model(inputs, build(inputs))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize:
        def representative():
            rng = np.random.default_rng(0)
            for _ in range(8):
                yield [rng.random((1, *SHAPE), dtype=np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if integer_io:
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
    return converter.convert()


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small real .tflite models, converted once per session."""
    import keras
    import tensorflow as tf

    L = keras.layers

    def conv(x):
        return L.Conv2D(4, 3, activation="relu")(x)

    builds: dict[str, tuple[Callable, dict]] = {
        "clean": (lambda x: L.Dense(10)(L.Flatten()(L.MaxPooling2D()(conv(x)))), {}),
        "leaky": (lambda x: L.Dense(10)(L.Flatten()(L.LeakyReLU(negative_slope=0.1)(L.Conv2D(4, 3)(x)))), {}),
        "upsample": (lambda x: L.Conv2D(4, 1)(L.UpSampling2D(interpolation="bilinear")(conv(x))), {}),
        "resize_v1": (lambda x: L.Conv2D(4, 1)(L.Lambda(lambda t: tf.compat.v1.image.resize(t, (28, 28)),
                                                        output_shape=(28, 28, 4))(conv(x))), {}),
        "strided": (lambda x: L.Conv2D(4, 1)(L.Lambda(lambda t: t[:, ::2, ::2, :])(conv(x))), {}),
        "float": (lambda x: L.Dense(10)(L.Flatten()(L.MaxPooling2D()(conv(x)))), {"quantize": False}),
        "float_io": (lambda x: L.Dense(10)(L.Flatten()(L.MaxPooling2D()(conv(x)))), {"integer_io": False}),
    }
    out = tmp_path_factory.mktemp("tflite")
    paths = {}
    for name, (build, kwargs) in builds.items():
        paths[name] = out / f"{name}.tflite"
        paths[name].write_bytes(_convert(build, **kwargs))
    return paths


# --- preflight -------------------------------------------------------------------------------

def test_clean_int8_net_is_predicted_fully_mapped(models: dict[str, Path]) -> None:
    report = preflight(models["clean"])
    assert [op.name for op in report.ops] == ["QUANTIZE", "CONV_2D", "MAX_POOL_2D", "RESHAPE",
                                              "FULLY_CONNECTED", "QUANTIZE"]
    assert report.findings == ()
    assert report.first_unmappable_op is None
    assert report.predicted_fully_mapped
    assert (report.predicted_tpu_ops, report.predicted_cpu_ops) == (6, 0)


def test_leaky_relu_cuts_the_partition_at_its_op(models: dict[str, Path]) -> None:
    report = preflight(models["leaky"])
    names = [op.name for op in report.ops]
    leaky = names.index("LEAKY_RELU")
    assert report.first_unmappable_op == leaky
    assert report.first_unmappable_op_name == "LEAKY_RELU"
    (finding,) = report.findings
    assert finding.op_index == leaky and finding.problem is Problem.UNSUPPORTED_OP
    assert "ReLU" in finding.fix and "PReLU" in finding.fix
    # Like the real yolov3-tiny log: the ops before stay on the TPU, the rest falls to the CPU.
    assert report.predicted_tpu_ops == leaky
    assert report.predicted_cpu_ops == len(names) - leaky
    assert [op.status for op in report.ops[leaky + 1:]] == ["More than one subgraph is not supported"] * (
        len(names) - leaky - 1)
    assert report.ops[leaky].status == "Operation not supported"


def test_upsampling_with_half_pixel_centers_is_flagged(models: dict[str, Path]) -> None:
    report = preflight(models["upsample"])
    (finding,) = report.findings
    assert finding.op_name == "RESIZE_BILINEAR" and finding.problem is Problem.RESIZE_HALF_PIXEL
    assert report.first_unmappable_op == finding.op_index
    assert "half_pixel_centers=False" in finding.fix and "tf.compat.v1.image.resize" in finding.fix


def test_the_suggested_resize_fix_really_maps(models: dict[str, Path]) -> None:
    report = preflight(models["resize_v1"])
    assert "RESIZE_BILINEAR" in [op.name for op in report.ops]
    assert report.findings == () and report.predicted_fully_mapped


def test_float_model_is_flagged_from_its_first_op(models: dict[str, Path]) -> None:
    report = preflight(models["float"])
    assert report.first_unmappable_op == 0
    assert report.predicted_tpu_ops == 0
    data_type = [f for f in report.findings if f.problem is Problem.DATA_TYPE]
    assert {f.op_index for f in data_type} == set(range(len(report.ops)))
    assert all("FLOAT32" in t for f in data_type for t in f.tensors)
    assert "TFLITE_BUILTINS_INT8" in data_type[0].fix and "tf.uint8" in data_type[0].fix


def test_step_two_strided_slice_is_flagged(models: dict[str, Path]) -> None:
    report = preflight(models["strided"])
    (finding,) = report.findings
    assert finding.op_name == "STRIDED_SLICE" and finding.problem is Problem.STRIDED_SLICE
    assert "[1, 2, 2, 1]" in finding.explanation
    assert report.ops[finding.op_index].status == "Only Strided-Slice with unitary strides supported"
    assert report.first_unmappable_op == finding.op_index


def test_float_io_boundaries_match_the_real_compiler_log(models: dict[str, Path]) -> None:
    report = preflight(models["float_io"])
    assert report.first_unmappable_op is None  # the boundary ops stay on the CPU but cut nothing
    assert {f.problem for f in report.findings} == {Problem.FLOAT_INPUT_QUANTIZE, Problem.FLOAT_OUTPUT_DEQUANTIZE}
    assert not any(f.breaks_partition for f in report.findings)
    assert report.predicted_cpu_ops == 2 and report.predicted_tpu_ops == len(report.ops) - 2
    real = parse_compiler_log((LOGS / "mobilenet_v2_integer_quant.log").read_text())
    real_unmapped = {r.operator: r.status for r in real.rows if not r.mapped}
    predicted_unmapped = {r.operator: r.status for r in report.predicted_table if not r.mapped}
    assert predicted_unmapped == real_unmapped


def test_predicted_statuses_are_compiler_statuses() -> None:
    assert set(_STATUS.values()) <= set(KNOWN_STATUSES)
    assert "LEAKY_RELU" not in EDGETPU_SUPPORTED_OPS and "CONV_2D" in EDGETPU_SUPPORTED_OPS


def test_not_a_tflite_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(BuildError, match="not a TFLite flatbuffer"):
        preflight(bad)
    with pytest.raises(BuildError, match="cannot read the model"):
        preflight(tmp_path / "missing.tflite")


# --- compile -----------------------------------------------------------------------------------

def test_command_construction(tmp_path: Path) -> None:
    model = tmp_path / "net.tflite"
    assert compiler_command(model, tmp_path / "out", CompilerOptions()) == [
        "edgetpu_compiler", "-s", "-o", str(tmp_path / "out"), str(model)]
    options = CompilerOptions(search_delegate=True, min_runtime_version=13, num_segments=2)
    assert compiler_command(model, tmp_path / "out", options) == [
        "edgetpu_compiler", "-s", "-o", str(tmp_path / "out"), "--search_delegate",
        "--min_runtime_version", "13", "--num_segments", "2", str(model)]
    assert [p.name for p in expected_outputs(model, tmp_path, options)] == [
        "net_segment_0_of_2_edgetpu.tflite", "net_segment_1_of_2_edgetpu.tflite"]
    with pytest.raises(ValueError):
        CompilerOptions(num_segments=0)
    with pytest.raises(ValueError):
        CompilerOptions(bogus=True)  # type: ignore[call-arg]


def test_missing_compiler_is_a_result_not_an_error(models: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    result = compile_model(models["clean"], tmp_path / "out", log=lambda line: None)
    assert not result.compiled
    assert result.reason == NOT_FOUND_REASON
    written = json.loads((tmp_path / "out" / "compile.json").read_text())
    assert written["compiled"] is False and written["reason"] == NOT_FOUND_REASON
    assert written["command"][0] == "edgetpu_compiler"


@pytest.fixture
def fake_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Install a stand-in for edgetpu_compiler, which cannot be installed on this machine."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()

    def install(log_name: str, output: bytes, returncode: int = 0, *, foreign: bool = False) -> Path:
        (bin_dir / "output.bin").write_bytes(output)
        script = bin_dir / "edgetpu_compiler"
        script.write_text(
            f"#!{sys.executable}\n"
            "# Stand-in for the real edgetpu_compiler (not installable here): replays a recorded real log.\n"
            "import sys, pathlib, shutil\n"
            "args = sys.argv[1:]\n"
            "out = pathlib.Path(args[args.index('-o') + 1])\n"
            "model = args[-1]\n"
            "written = out / (pathlib.Path(model).stem + '_edgetpu.tflite')\n"
            f"shutil.copyfile({str(bin_dir / 'output.bin')!r}, written)\n"
            f"text = pathlib.Path({str(LOGS / log_name)!r}).read_text()\n"
            f"if not {foreign!r}:  # the paths of this run, as the real compiler prints them\n"
            "    lines = [('Input model: ' + model) if l.startswith('Input model:') else\n"
            "             ('Output model: ' + str(written)) if l.startswith('Output model:') else l\n"
            "             for l in text.splitlines()]\n"
            "    text = '\\n'.join(lines)\n"
            "print(text)\n"
            f"sys.exit({returncode})\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        return script

    return install


def _logged_output_bytes(log_name: str) -> int:
    size = parse_compiler_log((LOGS / log_name).read_text()).output_size
    assert size is not None
    return size.approx_bytes


def _standin_for(log_name: str, size: int | None = None) -> bytes:
    """The stand-in compiled model a log describes: one edgetpu-custom-op plus the ops its table leaves unmapped."""
    report = parse_compiler_log((LOGS / log_name).read_text())
    cpu = [row.operator for row in report.rows if not row.mapped for _ in range(row.count)]
    return standin_compiled_model(["edgetpu", *cpu], pad_to_bytes=_logged_output_bytes(log_name) if size is None
                                  else size)


def test_compile_with_fake_compiler_parses_and_writes_the_report(models: dict[str, Path], tmp_path: Path,
                                                                 fake_compiler: Callable[..., Path]) -> None:
    log_name = "mobilenet_v2_integer_quant.log"
    fake_compiler(log_name, _standin_for(log_name))
    out = tmp_path / "out"
    result = compile_model(models["leaky"], out, log=lambda line: None)
    assert result.compiled and result.returncode == 0
    assert result.outputs == ["leaky_edgetpu.tflite"]
    assert result.compiler_version == "2.0.267685300"
    (mapping,) = result.mappings
    assert (mapping.ops_on_tpu, mapping.ops_on_cpu) == (70, 2)
    assert result.fully_mapped is False
    assert "Number of operations that will run on CPU: 2" in (out / "compiler.log").read_text()
    written = json.loads((out / "compile.json").read_text())
    assert written["compiled"] is True and written["mappings"][0]["ops_on_cpu"] == 2


def test_exit_zero_with_stub_output_is_a_failure(models: dict[str, Path], tmp_path: Path,
                                                 fake_compiler: Callable[..., Path]) -> None:
    fake_compiler("mobilenet_v2_full_integer_quant.log", b"\x01" * 16)
    with pytest.raises(BuildError, match="16-byte stub") as info:
        compile_model(models["clean"], tmp_path / "out", log=lambda line: None)
    assert info.value.returncode == 0 and info.value.command is not None


def test_output_that_is_not_the_logged_size_is_a_failure(models: dict[str, Path], tmp_path: Path,
                                                         fake_compiler: Callable[..., Path]) -> None:
    fake_compiler("mobilenet_v2_full_integer_quant.log", _standin_for("mobilenet_v2_full_integer_quant.log", 100_000))
    with pytest.raises(BuildError, match="compiler logged an output size of 2.77MiB"):
        compile_model(models["clean"], tmp_path / "out", log=lambda line: None)


def test_nonzero_exit_is_a_failure_with_the_log(models: dict[str, Path], tmp_path: Path,
                                                fake_compiler: Callable[..., Path]) -> None:
    fake_compiler("yolov3-tiny_int8.partial.log", b"", returncode=1)
    with pytest.raises(BuildError, match="edgetpu_compiler failed") as info:
        compile_model(models["clean"], tmp_path / "out", log=lambda line: None)
    assert info.value.returncode == 1
    assert any("LEAKY_RELU" in line for line in info.value.log_tail)


# --- steps -------------------------------------------------------------------------------------

def _ctx(kind: str, model: Path, out: Path, **params: object) -> StepContext:
    out.mkdir(parents=True, exist_ok=True)  # the executor creates out_dir before running a step
    return StepContext(kind=kind, inputs={"model": model}, params=params, out_dir=out, log=lambda line: None)


def test_preflight_step(models: dict[str, Path], tmp_path: Path) -> None:
    result = edgetpu_preflight(_ctx("edgetpu_preflight", models["leaky"], tmp_path))
    assert result.files == ["preflight.json"] and result.valid
    assert result.report["first_unmappable_op_name"] == "LEAKY_RELU"
    assert result.report["n_findings"] == 1 and "LEAKY_RELU" in result.report["findings"][0]
    saved = json.loads((tmp_path / "preflight.json").read_text())
    assert saved["predicted_cpu_ops"] == result.report["predicted_cpu_ops"]

    strict = edgetpu_preflight(_ctx("edgetpu_preflight", models["leaky"], tmp_path / "s",
                                    require_fully_mapped=True))
    assert not strict.valid and "LEAKY_RELU" in strict.invalid_reasons[0]
    with pytest.raises(BuildError, match="require_fully_mapped"):
        edgetpu_preflight(_ctx("edgetpu_preflight", models["leaky"], tmp_path, require_fully_mapped="yes"))


def test_compile_step_without_compiler(models: dict[str, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    # No compiler: the step says so plainly and leaves no artifact to cache.
    with pytest.raises(ToolUnavailableError, match="Edge TPU compile did not run") as info:
        edgetpu_compile(_ctx("edgetpu_compile", models["clean"], tmp_path))
    assert NOT_FOUND_REASON in str(info.value)


def test_compile_step_with_partial_mapping_stays_valid(models: dict[str, Path], tmp_path: Path,
                                                       fake_compiler: Callable[..., Path]) -> None:
    log_name = "yolov3-tiny_int8.partial.log"
    fake_compiler(log_name, _standin_for(log_name))
    result = edgetpu_compile(_ctx("edgetpu_compile", models["leaky"], tmp_path, num_segments=1))
    assert result.files == ["leaky_edgetpu.tflite", "compile.json", "compiler.log"]
    assert result.valid and result.invalid_reasons == []
    assert result.report["fully_mapped"] is False
    assert "only 2 of 36 ops run on the Edge TPU" in result.report["warnings"][0]
    assert result.tool_versions == {"edgetpu_compiler": "15.0.340273435"}
    with pytest.raises(BuildError, match="bad compiler options"):
        edgetpu_compile(_ctx("edgetpu_compile", models["leaky"], tmp_path, num_segments="many"))


def test_compile_step_fully_mapped(models: dict[str, Path], tmp_path: Path,
                                   fake_compiler: Callable[..., Path]) -> None:
    log_name = "mobilenet_v2_full_integer_quant.log"
    fake_compiler(log_name, _standin_for(log_name))
    result = edgetpu_compile(_ctx("edgetpu_compile", models["clean"], tmp_path))
    assert result.report["fully_mapped"] is True and result.report["warnings"] == []
    assert LoggedSize.parse("2.77MiB").approx_bytes == (tmp_path / "clean_edgetpu.tflite").stat().st_size


def test_compile_step_rejects_a_foreign_log(models: dict[str, Path], tmp_path: Path,
                                            fake_compiler: Callable[..., Path]) -> None:
    # The recorded log verbatim: it reports compiling /content/models/..., not this step's input.
    log_name = "mobilenet_v2_full_integer_quant.log"
    fake_compiler(log_name, _standin_for(log_name), foreign=True)
    with pytest.raises(BuildError, match="not the compiled model its edgetpu_compiler log describes") as info:
        edgetpu_compile(_ctx("edgetpu_compile", models["clean"], tmp_path))
    message = str(info.value)
    assert "'/content/models/mobilenet_v2_full_integer_quant1.tflite'" in message
    assert repr(str(models["clean"])) in message
    assert info.value.returncode == 0 and "Input model:" in "\n".join(info.value.log_tail)


def test_compile_step_rejects_an_output_that_disagrees_with_its_log(models: dict[str, Path], tmp_path: Path,
                                                                    fake_compiler: Callable[..., Path]) -> None:
    # The log leaves QUANTIZE and DEQUANTIZE on the CPU; the output claims a full mapping.
    log_name = "mobilenet_v2_integer_quant.log"
    fake_compiler(log_name, standin_compiled_model(["edgetpu"], pad_to_bytes=_logged_output_bytes(log_name)))
    with pytest.raises(BuildError, match="leaves DEQUANTIZE x1, QUANTIZE x1 on the CPU but the model holds no ops"):
        edgetpu_compile(_ctx("edgetpu_compile", models["leaky"], tmp_path))
