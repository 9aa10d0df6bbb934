"""tflite.convert and savedmodel.export on a real Keras model, with the real TF converter."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from convert_fixtures import KERAS_SPEC, Built, conversion_params, run_step

from edgefleet.errors import SourceError
from edgefleet.steps.process import STEP_MODULE

pytest_plugins = ["convert_fixtures"]
pytestmark = pytest.mark.convert

REPO = Path(__file__).resolve().parents[1]

EXPECTED_IO = {
    "fp32": "float32", "fp16": "float32", "dynamic": "float32", "int8": "float32",
    "full-int8": "uint8", "full-int8-int8io": "int8",
}


@pytest.mark.parametrize("quantization", list(EXPECTED_IO))
def test_every_quantization_is_valid_with_the_right_io(tflite_artifact: Callable[[str], Built],
                                                       quantization: str) -> None:
    built = tflite_artifact(quantization)
    result = built.result
    assert result.files == [f"model_{quantization}.tflite"]
    assert built.primary.is_file()
    assert result.valid, result.invalid_reasons
    report = result.report
    io_dtype = EXPECTED_IO[quantization]
    assert [i["dtype"] for i in report["inputs"]] == [io_dtype]
    assert sorted(o["dtype"] for o in report["outputs"]) == [io_dtype, io_dtype]
    assert report["inputs"][0]["shape"] == [1, 32, 32, 3]
    # Both heads come through, named as in the Keras model, and the gate compared both.
    assert sorted(o["signature_name"] for o in report["outputs"]) == ["boxes", "scores"]
    fidelity = report["fidelity"]
    assert fidelity["passed"] and fidelity["samples"] == 8 and fidelity["precision"] == quantization
    assert sorted(o["reference"] for o in fidelity["outputs"]) == ["boxes", "scores"]
    scores = next(o for o in fidelity["outputs"] if o["reference"] == "scores")
    assert scores["top1_agreement"] is not None
    if io_dtype != "float32":
        assert report["inputs"][0]["quantization"]["scale"][0] > 0
    json.dumps(report)  # the executor stores it as JSON


def test_sizes_follow_the_weight_precision(tflite_artifact: Callable[[str], Built]) -> None:
    size = {q: tflite_artifact(q).report["size_bytes"] for q in ("fp32", "fp16", "int8")}
    weights = tflite_artifact("fp32").report["weight_bytes_by_dtype"]
    assert weights["float32"] / size["fp32"] > 0.9, "the fixture must be weight-dominated for the ratios to mean much"
    assert 0.45 < size["fp16"] / size["fp32"] < 0.6
    assert 0.2 < size["int8"] / size["fp32"] < 0.35


def test_fp16_and_dynamic_store_their_weights_narrow(tflite_artifact: Callable[[str], Built]) -> None:
    fp16 = tflite_artifact("fp16").report
    assert fp16["weight_bytes_by_dtype"].get("float16", 0) > fp16["weight_bytes_by_dtype"].get("float32", 0)
    assert fp16["ops"].get("DEQUANTIZE", 0) > 0
    dynamic = tflite_artifact("dynamic").report
    bytes_by_dtype = dynamic["weight_bytes_by_dtype"]
    assert bytes_by_dtype["int8"] > 5 * bytes_by_dtype.get("float32", 0)
    # Dynamic range keeps float activations: no QUANTIZE at the edges, float I/O.
    assert "QUANTIZE" not in dynamic["ops"]


def test_full_int8_quantizes_the_io_and_keeps_fp32_fidelity_order(tflite_artifact: Callable[[str], Built]) -> None:
    cos = {q: min(o["cosine_min"] for o in tflite_artifact(q).report["fidelity"]["outputs"])
           for q in ("fp32", "full-int8")}
    assert cos["fp32"] > cos["full-int8"]
    full = tflite_artifact("full-int8").report
    assert full["inputs"][0]["quantization"]["zero_point"][0] in range(0, 256)
    assert full["fidelity"]["artifact"]["input_dtype"] == "uint8"


def test_a_diverging_reference_fails_the_gate_and_marks_the_artifact_invalid(
        tmp_path: Path, keras_model: Path, calibration_npy: Path) -> None:
    import keras

    from edgefleet.steps.convert import tflite_convert

    # Stands for a conversion that corrupted weights: the artifact no longer computes the reference's function.
    model = keras.models.load_model(keras_model, compile=False)
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    kernel, bias = conv.get_weights()
    conv.set_weights([kernel * -1.0, bias])
    broken = tmp_path / "reference.keras"
    model.save(broken)

    built = run_step(tflite_convert, "tflite.convert", tmp_path / "out",
                     {"model": keras_model, "calibration": calibration_npy, "reference": broken},
                     conversion_params(KERAS_SPEC, quantization="fp32"))
    assert built.primary.is_file(), "a failing artifact is still written"
    assert not built.result.valid
    reasons = built.result.invalid_reasons
    assert reasons and all(r.startswith("fidelity: ") for r in reasons)
    assert any("cosine similarity" in r and "< min_cosine 0.9999 (fp32)" in r for r in reasons), reasons
    assert built.report["fidelity"]["passed"] is False
    assert any(line.startswith("fidelity FAILED") for line in built.log)


def test_thresholds_from_the_profile_override_the_defaults(tmp_path: Path, tflite_artifact: Callable[[str], Built],
                                                            keras_model: Path, calibration_npy: Path) -> None:
    from edgefleet.steps.convert import tflite_convert

    measured = min(o["cosine_min"] for o in tflite_artifact("full-int8").report["fidelity"]["outputs"])
    strict = {"min_cosine": float(np.nextafter(measured, 2.0))}
    built = run_step(tflite_convert, "tflite.convert", tmp_path / "out",
                     {"model": keras_model, "calibration": calibration_npy},
                     {**conversion_params(KERAS_SPEC, quantization="full-int8"), "fidelity": strict})
    assert not built.result.valid
    assert any("min_cosine" in r for r in built.result.invalid_reasons)
    assert built.report["fidelity"]["thresholds"]["min_cosine"] == strict["min_cosine"]


@pytest.mark.parametrize("which", ["keras", "keras_zip"])
def test_a_corrupt_keras_file_is_a_source_error(tmp_path: Path, corrupt_files: dict[str, Path],
                                                calibration_npy: Path, which: str) -> None:
    from edgefleet.steps.convert import tflite_convert

    with pytest.raises(SourceError, match=f"cannot load Keras model '{corrupt_files[which].name}'"):
        run_step(tflite_convert, "tflite.convert", tmp_path / "out",
                 {"model": corrupt_files[which], "calibration": calibration_npy},
                 conversion_params(KERAS_SPEC, quantization="fp32"))


def test_bad_calibration_data_is_a_source_error(tmp_path: Path, keras_model: Path) -> None:
    from edgefleet.steps.convert import tflite_convert

    floats = tmp_path / "floats.npy"
    np.save(floats, np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(SourceError, match="raw uint8 pixels"):
        run_step(tflite_convert, "tflite.convert", tmp_path / "out", {"model": keras_model, "calibration": floats},
                 conversion_params(KERAS_SPEC, quantization="fp32"))


def _run_cli(spec: dict, path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(json.dumps(spec))
    return subprocess.run([sys.executable, "-m", STEP_MODULE, str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_the_real_runner_converts_byte_identically_to_an_in_process_run(
        tmp_path: Path, tflite_artifact: Callable[[str], Built], keras_model: Path, calibration_npy: Path) -> None:
    out = tmp_path / "out"
    spec = {"kind": "tflite.convert", "out_dir": str(out),
            "inputs": {"model": str(keras_model), "calibration": str(calibration_npy)},
            "params": conversion_params(KERAS_SPEC, quantization="int8")}
    proc = _run_cli(spec, tmp_path / "spec.json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / ".step-result.json").read_text())
    assert result["files"] == ["model_int8.tflite"] and result["valid"] is True
    assert "tensorflow" in result["tool_versions"] or "tensorflow-cpu" in result["tool_versions"]
    assert "fidelity " in proc.stdout  # the per-output fidelity lines are logged
    # Another process, same inputs: the same bytes (the Docker backend relies on this).
    in_process = tflite_artifact("int8")
    digest = hashlib.sha256((out / "model_int8.tflite").read_bytes()).hexdigest()
    assert digest == result["report"]["sha256"] == in_process.report["sha256"]


def test_the_real_runner_reports_a_corrupt_model_without_a_traceback(
        tmp_path: Path, corrupt_files: dict[str, Path], calibration_npy: Path) -> None:
    spec = {"kind": "tflite.convert", "out_dir": str(tmp_path / "out"),
            "inputs": {"model": str(corrupt_files["keras"]), "calibration": str(calibration_npy)},
            "params": conversion_params(KERAS_SPEC, quantization="fp16")}
    proc = _run_cli(spec, tmp_path / "spec.json")
    assert proc.returncode == SourceError.exit_code
    assert "error: cannot load Keras model 'broken.keras'" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory, keras_model: Path, calibration_npy: Path) -> Built:
    from edgefleet.steps.convert import savedmodel_export

    return run_step(savedmodel_export, "savedmodel.export", tmp_path_factory.mktemp("savedmodel"),
                    {"model": keras_model, "calibration": calibration_npy}, conversion_params(KERAS_SPEC))


def test_savedmodel_export_is_a_gated_directory_artifact(saved_model: Built) -> None:
    built = saved_model
    assert built.result.files == ["saved_model"] and built.primary.is_dir()
    assert built.result.valid, built.result.invalid_reasons
    report = built.report
    assert "saved_model.pb" in report["files"] and any(f.startswith("variables/") for f in report["files"])
    assert report["size_bytes"] == sum(p.stat().st_size for p in built.primary.rglob("*") if p.is_file())
    serving = report["signatures"]["serving_default"]
    assert serving["inputs"]["image"]["shape"][1:] == [32, 32, 3]
    assert sorted(serving["outputs"]) == ["boxes", "scores"]
    assert report["fidelity"]["artifact"]["runner"] == "savedmodel"
    assert all(o["max_abs_error"] < 1e-4 for o in report["fidelity"]["outputs"])


@pytest.mark.parametrize("kind", ["tflite.convert", "onnx.from_tf"])
def test_a_savedmodel_source_converts_and_is_its_own_reference(tmp_path: Path, saved_model: Built,
                                                               calibration_npy: Path, kind: str) -> None:
    from edgefleet.steps.convert import onnx_from_tf, tflite_convert

    func, extra = {"tflite.convert": (tflite_convert, {"quantization": "fp16"}),
                   "onnx.from_tf": (onnx_from_tf, {"opset": 13})}[kind]
    built = run_step(func, kind, tmp_path / "out", {"model": saved_model.primary, "calibration": calibration_npy},
                     conversion_params(KERAS_SPEC, **extra))
    assert built.result.valid, built.result.invalid_reasons
    fidelity = built.report["fidelity"]
    assert fidelity["reference"]["runner"] == "savedmodel"
    assert sorted(o["reference"] for o in fidelity["outputs"]) == ["boxes", "scores"]
