"""openvino.convert: ONNX -> IR with the real OpenVINO, gated on the host CPU at an explicit f32 hint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from convert_fixtures import KERAS_SPEC, YOLO_SPEC, Built, conversion_params, run_step

from edgefleet.errors import SourceError

pytest_plugins = ["convert_fixtures"]
pytestmark = pytest.mark.convert


@pytest.fixture(scope="module")
def ir(tmp_path_factory: pytest.TempPathFactory, onnx_from_keras: Built, calibration_npy: Path) -> dict[str, Built]:
    from edgefleet.steps.convert import openvino_convert

    out = tmp_path_factory.mktemp("openvino")
    return {p: run_step(openvino_convert, "openvino.convert", out / p,
                        {"model": onnx_from_keras.primary, "calibration": calibration_npy},
                        conversion_params(KERAS_SPEC, precision=p)) for p in ("fp32", "fp16")}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_ir_runs_passes_and_records_the_precision_hint(ir: dict[str, Built], precision: str) -> None:
    import openvino as ov

    built = ir[precision]
    assert built.result.files == ["model.xml", "model.bin"]
    assert all((built.out_dir / f).is_file() for f in built.result.files)
    assert built.result.valid, built.result.invalid_reasons
    report = built.report
    assert report["size_bytes"] == sum((built.out_dir / f).stat().st_size for f in built.result.files)
    assert report["ops"]["Convolution"] > 0 and report["inputs"][0]["shape"] == [1, 32, 32, 3]
    assert {o["name"] for o in report["outputs"]} == {"boxes", "scores"}

    artifact = report["fidelity"]["artifact"]
    assert artifact["runner"] == "openvino"
    assert artifact["precision_hint_requested"] == "f32" == artifact["precision_hint_used"]
    assert artifact["cpu_capabilities"] == list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    assert report["fidelity"]["reference"]["runner"] == "onnxruntime"

    # The IR runs outside the gate too.
    compiled = ov.Core().compile_model(str(built.primary), "CPU")
    outputs = compiled([np.zeros((1, 32, 32, 3), np.float32)])
    assert {tuple(v.shape) for v in outputs.values()} == {(1, 64, 4), (1, 64, 10)}


def test_fp16_ir_stores_half_width_weights(ir: dict[str, Built]) -> None:
    fp32 = ir["fp32"].report["constant_bytes_by_type"]
    fp16 = ir["fp16"].report["constant_bytes_by_type"]
    assert "f16" not in fp32 and fp16["f16"] > 0
    assert fp16["f16"] == pytest.approx(fp32["f32"] / 2, rel=0.05)
    assert ir["fp16"].report["size_bytes"] < 0.65 * ir["fp32"].report["size_bytes"]
    # The fp16 IR is gated with fp16's looser defaults.
    assert ir["fp16"].report["fidelity"]["thresholds"]["min_cosine"] < ir["fp32"].report["fidelity"]["thresholds"][
        "min_cosine"]


def test_nchw_yolo_ir_keeps_its_layout(tmp_path: Path, yolo_onnx: Path, calibration_npy: Path) -> None:
    from edgefleet.steps.convert import openvino_convert

    built = run_step(openvino_convert, "openvino.convert", tmp_path / "out",
                     {"model": yolo_onnx, "calibration": calibration_npy},
                     {**conversion_params(YOLO_SPEC, precision="fp32"), "fidelity_samples": 2})
    assert built.result.valid, built.result.invalid_reasons
    assert built.report["inputs"][0]["shape"] == [1, 3, 640, 640]
    assert built.report["fidelity"]["artifact"]["layout"] == "NCHW"
    assert built.report["fidelity"]["samples"] == 2


def test_a_corrupt_onnx_is_a_source_error(tmp_path: Path, corrupt_files: dict[str, Path],
                                          calibration_npy: Path) -> None:
    from edgefleet.steps.convert import openvino_convert

    with pytest.raises(SourceError, match=r"'broken\.onnx' is not a readable ONNX model"):
        run_step(openvino_convert, "openvino.convert", tmp_path / "out",
                 {"model": corrupt_files["onnx"], "calibration": calibration_npy},
                 conversion_params(KERAS_SPEC, precision="fp32"))
