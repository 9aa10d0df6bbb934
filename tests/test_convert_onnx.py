"""onnx.from_tf (tf2onnx) and onnx2tf.convert with the real converters, and the YOLOv5s-like ONNX."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from convert_fixtures import KERAS_SPEC, YOLO_SPEC, Built, conversion_params, run_step

from edgefleet.errors import BuildError, SourceError

pytest_plugins = ["convert_fixtures"]
pytestmark = pytest.mark.convert


def test_yolov5s_like_onnx_has_the_yolov5_structure(yolo_onnx: Path) -> None:
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(yolo_onnx))
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    for op in ("Conv", "Sigmoid", "Mul", "Concat", "Resize", "Slice", "Reshape"):
        assert ops[op] > 0, op
    producer = {out: n for n in model.graph.node for out in n.output}
    silu = sum(1 for n in model.graph.node if n.op_type == "Mul"
               and producer.get(n.input[1]) is not None and producer[n.input[1]].op_type == "Sigmoid"
               and producer[n.input[1]].input[0] == n.input[0])
    assert silu == ops["Conv"] - 3, "every conv but the 3 detect-head convs is followed by SiLU (x * sigmoid(x))"
    strided = [n for n in model.graph.node if n.op_type == "Slice"]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert sum(1 for n in strided if (inits[n.input[4]] == 2).all()) == 4, "Focus: four stride-2 slices"
    resize = next(n for n in model.graph.node if n.op_type == "Resize")
    assert onnx.helper.get_attribute_value(next(a for a in resize.attribute if a.name == "mode")) == b"nearest"

    session = ort.InferenceSession(str(yolo_onnx), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape) == ("images", [1, 3, 640, 640])
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 640, 640)).astype(np.float32)
    session.run(None, {"images": x})
    start = time.perf_counter()
    (y,) = session.run(None, {"images": x})
    elapsed = time.perf_counter() - start
    assert y.shape == (1, 3 * (80 * 80 + 40 * 40 + 20 * 20), 85) == tuple(out.shape)
    assert np.isfinite(y).all() and y[..., 4:].min() >= 0 and y[..., 4:].max() <= 1  # sigmoid scores
    assert elapsed > 1e-3, "the test net must cost real compute"


def test_yolov5s_like_onnx_is_seeded(tmp_path: Path) -> None:
    from edgefleet.testing.yolo_onnx import make_yolov5s_like_onnx

    a = make_yolov5s_like_onnx(tmp_path / "a.onnx", width_mult=0.125, seed=3, image_size=128)
    b = make_yolov5s_like_onnx(tmp_path / "b.onnx", width_mult=0.125, seed=3, image_size=128)
    c = make_yolov5s_like_onnx(tmp_path / "c.onnx", width_mult=0.125, seed=4, image_size=128)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    with pytest.raises(ValueError, match="multiple of 32"):
        make_yolov5s_like_onnx(tmp_path / "d.onnx", image_size=100)


def test_tf2onnx_output_runs_in_onnxruntime_and_matches_keras(onnx_from_keras: Built, keras_model: Path,
                                                             calibration_npy: Path) -> None:
    import keras
    import onnxruntime as ort

    from edgefleet.convert.preprocess import InputSpec, model_inputs

    result = onnx_from_keras.result
    assert result.files == ["model.onnx"] and result.valid, result.invalid_reasons
    report = result.report
    assert report["input_layout"] == "NHWC" and report["inputs"][0]["shape"] == [1, 32, 32, 3]
    assert report["opset"] == 13 and report["checker"] == "ok"
    assert sorted(o["name"] for o in report["outputs"]) == ["boxes", "scores"]

    # An independent check of the gate's verdict: run both models here.
    x = model_inputs(np.load(calibration_npy)[:2], InputSpec.model_validate(KERAS_SPEC))
    session = ort.InferenceSession(str(onnx_from_keras.primary), providers=["CPUExecutionProvider"])
    model = keras.models.load_model(keras_model, compile=False)
    for i in range(2):
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": x[i:i + 1]}),
                       strict=True))
        want = model(x[i:i + 1], training=False)
        for name in ("boxes", "scores"):
            np.testing.assert_allclose(got[name], np.asarray(want[name]), rtol=1e-4, atol=1e-5)


def test_tf2onnx_can_make_the_input_nchw(tmp_path: Path, keras_model: Path, calibration_npy: Path) -> None:
    from edgefleet.steps.convert import onnx_from_tf

    built = run_step(onnx_from_tf, "onnx.from_tf", tmp_path / "out",
                     {"model": keras_model, "calibration": calibration_npy},
                     conversion_params(KERAS_SPEC, opset=13, input_layout="NCHW"))
    assert built.result.valid, built.result.invalid_reasons
    assert built.report["input_layout"] == "NCHW" and built.report["inputs"][0]["shape"] == [1, 3, 32, 32]
    fidelity = built.report["fidelity"]
    assert (fidelity["reference"]["layout"], fidelity["artifact"]["layout"]) == ("NHWC", "NCHW")


def test_onnx2tf_on_nchw_yolo_gives_nhwc_tflite_without_transposes(yolo_onnx2tf: Built, yolo_onnx: Path) -> None:
    from edgefleet.analysis.onnx_report import describe_onnx

    result = yolo_onnx2tf.result
    assert result.files == ["model_fp32.tflite", "saved_model"]
    assert result.valid, result.invalid_reasons
    report = result.report
    assert report["transpose_count"] == 0 and "TRANSPOSE" not in report["ops"]
    assert describe_onnx(yolo_onnx)["transpose_count"] > 0, \
        "the ONNX permutes its head; onnx2tf must have folded those into the NHWC layout"
    assert report["input_layout"] == "NHWC" and report["inputs"][0]["shape"] == [1, 640, 640, 3]
    assert report["outputs"][0]["shape"] == [1, 25200, 85]
    assert report["conversion"]["keep_input_shape"] is False

    fidelity = report["fidelity"]
    assert fidelity["passed"] and fidelity["reference"]["runner"] == "onnxruntime"
    assert (fidelity["reference"]["layout"], fidelity["artifact"]["layout"]) == ("NCHW", "NHWC")
    (out,) = fidelity["outputs"]
    assert out["reference"] == "output0" and out["matched_by"] == "shape"

    saved = yolo_onnx2tf.out_dir / "saved_model"
    assert (saved / "saved_model.pb").is_file()
    assert not list(saved.glob("*.tflite")), "onnx2tf's other TFLite variants are not shipped"
    assert not (yolo_onnx2tf.out_dir / ".onnx2tf-work").exists()
    assert any(line.startswith("onnx2tf: ") for line in yolo_onnx2tf.log)


def test_onnx2tf_keeps_an_nhwc_onnx_input_and_compares_with_native_tflite(
        tmp_path: Path, onnx_from_keras: Built, tflite_artifact, calibration_npy: Path,
        capsys: pytest.CaptureFixture[str], record_property) -> None:
    """Keras -> ONNX (NHWC, tf2onnx) -> onnx2tf vs Keras -> TFLite: report latency and TRANSPOSE counts."""
    from edgefleet.steps.convert import onnx2tf_convert

    via_onnx = run_step(onnx2tf_convert, "onnx2tf.convert", tmp_path / "out",
                        {"model": onnx_from_keras.primary, "calibration": calibration_npy},
                        conversion_params(KERAS_SPEC, quantization="fp32"))
    assert via_onnx.result.valid, via_onnx.result.invalid_reasons
    assert via_onnx.report["conversion"]["keep_input_shape"] is True
    assert via_onnx.report["inputs"][0]["shape"] == [1, 32, 32, 3]
    native = tflite_artifact("fp32")

    measured = {}
    for name, built in (("keras->tflite", native), ("keras->onnx->onnx2tf", via_onnx)):
        measured[name] = {"transposes": built.report["transpose_count"],
                          "median_ms": _median_latency_ms(built.primary)}
        record_property(name, measured[name])
    with capsys.disabled():
        print(f"\n[latency, not asserted] {measured} "
              f"(ONNX had {onnx_from_keras.report['transpose_count']} Transpose nodes)")


def _median_latency_ms(path: Path, runs: int = 50) -> float:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    detail = it.get_input_details()[0]
    it.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    for _ in range(5):
        it.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        it.invoke()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def test_onnx2tf_rejects_a_corrupt_onnx_with_a_source_error(tmp_path: Path, corrupt_files: dict[str, Path],
                                                            calibration_npy: Path) -> None:
    from edgefleet.steps.convert import onnx2tf_convert

    with pytest.raises(SourceError, match=r"'broken\.onnx' is not a readable ONNX model"):
        run_step(onnx2tf_convert, "onnx2tf.convert", tmp_path / "out",
                 {"model": corrupt_files["onnx"], "calibration": calibration_npy},
                 conversion_params(YOLO_SPEC, quantization="fp32"))


def test_onnx2tf_refuses_unknown_quantizations_before_converting(tmp_path: Path, yolo_onnx: Path,
                                                                 calibration_npy: Path) -> None:
    from edgefleet.steps.convert import onnx2tf_convert

    with pytest.raises(BuildError, match="quantization='int4' is not one of"):
        run_step(onnx2tf_convert, "onnx2tf.convert", tmp_path / "out",
                 {"model": yolo_onnx, "calibration": calibration_npy},
                 conversion_params(YOLO_SPEC, quantization="int4"))


def test_input_spec_that_fits_no_layout_is_a_build_error(tmp_path: Path, yolo_onnx: Path,
                                                         calibration_npy: Path) -> None:
    from edgefleet.steps.convert import onnx2tf_convert

    wrong = {**YOLO_SPEC, "shape": [1, 3, 320, 320]}
    with pytest.raises(BuildError, match=r"fits neither NHWC nor NCHW"):
        run_step(onnx2tf_convert, "onnx2tf.convert", tmp_path / "out",
                 {"model": yolo_onnx, "calibration": calibration_npy}, conversion_params(wrong))
