"""verify_compiled: an Edge TPU artifact is accepted only when it is the model its compiler log describes.

The logs are REAL edgetpu_compiler output (tests/data/edgetpu-logs/, see its SOURCE.md). The compiler cannot
be installed here, so the "compiled" models are STRUCTURAL STAND-INS (tests/edgetpu_standin.py): real TFLite
flatbuffers shaped like the compiler's output (one edgetpu-custom-op per Edge TPU subgraph plus the ops left
to the CPU), not runnable Edge TPU models. The model that is not compiled at all is a real full-int8 .tflite
converted here with TensorFlow.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edgetpu_standin import write_standin

from edgefleet.edgetpu.compile import verify_compiled
from edgefleet.edgetpu.logparse import MappingReport, parse_compiler_log
from edgefleet.errors import BuildError

pytestmark = pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")

LOGS = Path(__file__).parent / "data" / "edgetpu-logs"
FULL = "mobilenet_v2_full_integer_quant.log"        # 72 ops, all mapped, 1 Edge TPU subgraph
PARTIAL = "mobilenet_v2_integer_quant.log"          # 70 on the TPU; QUANTIZE and DEQUANTIZE on the CPU
YOLO = "yolov3-tiny_int8.partial.log"               # 2 on the TPU, 34 on the CPU, no subgraph line
# What the yolov3-tiny log's table leaves unmapped, row by row (QUANTIZE: 2 + 1 rows).
YOLO_CPU = (["MAX_POOL_2D"] * 6 + ["QUANTIZE"] * 3 + ["CONV_2D"] * 12 + ["RESIZE_NEAREST_NEIGHBOR"]
            + ["LEAKY_RELU"] * 11 + ["CONCATENATION"])


def report(name: str) -> MappingReport:
    return parse_compiler_log((LOGS / name).read_text())


def compiled_as(name: str) -> str:
    """The model path the recorded compile was given, which its log echoes as "Input model"."""
    logged = report(name).input_model
    assert logged is not None
    return logged


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real full-int8 .tflite (uint8 I/O), converted with TensorFlow: a model no compiler has touched."""
    import keras
    import tensorflow as tf

    inputs = keras.Input(shape=(16, 16, 3), batch_size=1)
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(x)))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)

    def representative():
        rng = np.random.default_rng(0)
        for _ in range(4):
            yield [rng.random((1, 16, 16, 3), dtype=np.float32)]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    path = tmp_path_factory.mktemp("int8") / "shapes_int8.tflite"
    path.write_bytes(converter.convert())
    return path


# --- matching pairs pass ---------------------------------------------------------------------

@pytest.mark.parametrize("log_name, ops", [
    (FULL, ["edgetpu"]),
    (PARTIAL, ["QUANTIZE", "edgetpu", "DEQUANTIZE"]),
    (YOLO, ["edgetpu", *YOLO_CPU]),
])
def test_a_model_shaped_as_its_log_says_passes(tmp_path: Path, log_name: str, ops: list[str]) -> None:
    model = write_standin(tmp_path / "m_edgetpu.tflite", ops)
    checked = verify_compiled(model, report(log_name), compiled=compiled_as(log_name))
    assert checked.edgetpu_ops == 1
    assert sum(checked.cpu_ops.values()) == report(log_name).ops_on_cpu
    assert "verified m_edgetpu.tflite: 1 edgetpu-custom-op" in checked.summary()


def test_a_relative_input_path_is_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The compiler echoes the path as given: relative when it was given relative (to where it ran, our cwd).
    text = (LOGS / FULL).read_text().replace("/content/models/mobilenet_v2_full_integer_quant1.tflite",
                                             "net.tflite", 1)
    model = write_standin(tmp_path / "net_edgetpu.tflite", ["edgetpu"])
    monkeypatch.chdir(tmp_path)
    verify_compiled(model, parse_compiler_log(text), compiled=str(tmp_path / "net.tflite"))
    with pytest.raises(BuildError, match="the log's input model is 'net.tflite' but this step compiled"):
        verify_compiled(model, parse_compiler_log(text), compiled=str(tmp_path / "other" / "net.tflite"))


# --- mismatched pairs are rejected, naming what disagrees ------------------------------------

@pytest.mark.convert
def test_a_real_int8_model_that_was_never_compiled_is_rejected(int8_model: Path) -> None:
    # The real mobilenet_v2 log against a real, uncompiled int8 model: every check disagrees.
    with pytest.raises(BuildError) as info:
        verify_compiled(int8_model, report(PARTIAL), compiled=str(int8_model))
    message = str(info.value)
    assert message.startswith("shapes_int8.tflite is not the compiled model its edgetpu_compiler log describes")
    assert "it has no edgetpu-custom-op operator, so nothing in it runs on the Edge TPU" in message
    assert "CONV_2D x1" in message and "FULLY_CONNECTED x1" in message  # the model's own ops, named
    assert "leaves DEQUANTIZE x1, QUANTIZE x1 on the CPU" in message
    assert "the log says 2 ops run on the CPU" in message
    assert f"the log's input model is '/content/models/mobilenet_v2_integer_quant.tflite' but this step " \
           f"compiled {str(int8_model)!r}" in message


def test_a_log_recorded_for_another_model_is_rejected(tmp_path: Path) -> None:
    # A stand-in shaped like the yolov3-tiny compile, checked against the mobilenet_v2 log.
    model = write_standin(tmp_path / "yolov3-tiny_int8_edgetpu.tflite", ["edgetpu", *YOLO_CPU])
    with pytest.raises(BuildError) as info:
        verify_compiled(model, report(PARTIAL), compiled=compiled_as(YOLO))
    message = str(info.value)
    assert "leaves DEQUANTIZE x1, QUANTIZE x1 on the CPU but the model holds CONCATENATION x1, CONV_2D x12" in message
    assert "the log says 2 ops run on the CPU but the model has 34 ops outside the Edge TPU" in message
    assert "'/content/models/mobilenet_v2_integer_quant.tflite' but this step compiled " \
           "'/home/yolo/yolov3-tiny_int8.tflite'" in message


@pytest.mark.parametrize("log_name, ops, expected", [
    # Fully mapped log, but the model keeps ops on the CPU.
    (FULL, ["QUANTIZE", "edgetpu"], "leaves no ops on the CPU but the model holds QUANTIZE x1"),
    # Partial log, but the model claims everything is on the TPU.
    (PARTIAL, ["edgetpu"], "leaves DEQUANTIZE x1, QUANTIZE x1 on the CPU but the model holds no ops"),
    # Two Edge TPU ops where the log reports one Edge TPU subgraph.
    (FULL, ["edgetpu", "edgetpu"], "it has 2 edgetpu-custom-op operators but the log reports 1 Edge TPU subgraph"),
    # Right op names, wrong counts.
    (YOLO, ["edgetpu", *YOLO_CPU[:-1]], "the log says 34 ops run on the CPU but the model has 33"),
])
def test_op_counts_that_disagree_with_the_log_are_rejected(tmp_path: Path, log_name: str, ops: list[str],
                                                           expected: str) -> None:
    model = write_standin(tmp_path / "m_edgetpu.tflite", ops)
    with pytest.raises(BuildError, match="is not the compiled model") as info:
        verify_compiled(model, report(log_name), compiled=compiled_as(log_name))
    assert expected in str(info.value)


def test_the_right_model_with_a_foreign_input_path_is_rejected(tmp_path: Path) -> None:
    model = write_standin(tmp_path / "m_edgetpu.tflite", ["edgetpu"])
    with pytest.raises(BuildError) as info:
        verify_compiled(model, report(FULL), compiled=str(tmp_path / "mobilenet_v2_full_integer_quant1.tflite"))
    message = str(info.value)
    # Same file name, other directory: not the file this step compiled. Only the input disagrees.
    assert "'/content/models/mobilenet_v2_full_integer_quant1.tflite' but this step compiled" in message
    assert "operator" not in message.split("describes: ", 1)[1]


def test_a_log_without_an_input_model_cannot_vouch_for_anything(tmp_path: Path) -> None:
    text = "\n".join(line for line in (LOGS / FULL).read_text().splitlines() if not line.startswith("Input model:"))
    model = write_standin(tmp_path / "m_edgetpu.tflite", ["edgetpu"])
    with pytest.raises(BuildError, match="the log does not name its input model"):
        verify_compiled(model, parse_compiler_log(text), compiled=compiled_as(FULL))


def test_an_output_that_is_not_a_tflite_file_is_rejected(tmp_path: Path) -> None:
    bogus = tmp_path / "m_edgetpu.tflite"
    bogus.write_bytes(b"\x01" * 4096)
    with pytest.raises(BuildError, match="the compiler's output is not a usable model: .*not a TFLite flatbuffer"):
        verify_compiled(bogus, report(FULL), compiled=compiled_as(FULL))


def test_segmented_inputs_are_accepted_by_their_segment_name(tmp_path: Path) -> None:
    # No segmented compile has been recorded; the log names a segment of the model the step compiled.
    text = (LOGS / FULL).read_text().replace("mobilenet_v2_full_integer_quant1.tflite",
                                             "net_segment_1_of_2.tflite", 1)
    model = write_standin(tmp_path / "net_segment_1_of_2_edgetpu.tflite", ["edgetpu"])
    verify_compiled(model, parse_compiler_log(text), compiled=str(tmp_path / "net.tflite"), segments=2)
    with pytest.raises(BuildError, match="input model"):
        verify_compiled(model, parse_compiler_log(text), compiled=str(tmp_path / "net.tflite"))
