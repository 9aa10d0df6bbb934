"""The fidelity gate: metrics, output matching, thresholds, and the runners on real artifacts."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from convert_fixtures import KERAS_SPEC, Built
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.errors import BuildError
from edgefleet.fidelity.gate import DEFAULT_THRESHOLDS, evaluate, match_outputs, measure, thresholds_for

pytest_plugins = ["convert_fixtures"]
pytestmark = pytest.mark.convert

RNG = np.random.default_rng(0)


def _samples(n: int = 4, **shapes: tuple[int, ...]) -> list[dict[str, np.ndarray]]:
    return [{k: RNG.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(n)]


def test_every_precision_has_defaults_and_int8_is_the_loosest() -> None:
    assert set(DEFAULT_THRESHOLDS) == {"fp32", "fp16", "dynamic", "int8", "full-int8", "full-int8-int8io"}
    cos = {p: thresholds_for(p).min_cosine for p in DEFAULT_THRESHOLDS}
    assert cos["fp32"] > cos["fp16"] > cos["dynamic"] > cos["int8"] == cos["full-int8"]
    assert thresholds_for("int8").min_top1_agreement is not None


def test_overrides_replace_single_thresholds_and_unknown_keys_are_errors() -> None:
    t = thresholds_for("fp16", {"min_cosine": 0.5})
    assert t.min_cosine == 0.5 and t.max_rel_error == thresholds_for("fp16").max_rel_error
    with pytest.raises(BuildError, match="unknown fidelity threshold"):
        thresholds_for("fp16", {"min_cos": 0.5})
    with pytest.raises(BuildError, match="no fidelity thresholds for precision 'int4'"):
        thresholds_for("int4")


def test_identical_outputs_pass_every_precision() -> None:
    ref = _samples(boxes=(1, 8, 4), scores=(1, 8, 10))
    for precision in DEFAULT_THRESHOLDS:
        report = evaluate(ref, [dict(s) for s in ref], precision)
        assert report.passed, report.reasons
        assert all(o.cosine_min == pytest.approx(1.0) and o.max_abs_error == 0 for o in report.outputs)


def test_outputs_are_matched_by_name_then_shape_then_layout() -> None:
    ref = {"boxes": (1, 8, 4), "scores": (1, 8, 10), "fmap": (1, 16, 5, 7)}
    # TFLite-style renamed and reordered outputs, one NHWC where the reference is NCHW.
    art = {"Identity_2": (1, 5, 7, 16), "Identity": (1, 8, 10), "boxes": (1, 8, 4)}
    matches, missing = match_outputs(ref, art)
    assert not missing
    assert {(m.reference, m.artifact, m.by) for m in matches} == {
        ("boxes", "boxes", "name"), ("scores", "Identity", "shape"), ("fmap", "Identity_2", "layout")}


def test_layout_matched_outputs_are_compared_after_transposing() -> None:
    ref = _samples(fmap=(1, 16, 5, 7))
    art = [{"out": s["fmap"].transpose(0, 2, 3, 1)} for s in ref]
    report = evaluate(ref, art, "fp32")
    assert report.passed, report.reasons
    assert report.outputs[0].matched_by == "layout" and report.outputs[0].max_abs_error == 0


def test_equal_shapes_fall_back_to_order_and_say_so() -> None:
    matches, _ = match_outputs({"a": (1, 3), "b": (1, 3)}, {"x": (1, 3), "y": (1, 3)})
    assert [(m.reference, m.artifact, m.by) for m in matches] == [("a", "x", "order"), ("b", "y", "order")]


def test_a_missing_output_fails_with_the_shapes_in_the_reason() -> None:
    ref = _samples(boxes=(1, 8, 4), scores=(1, 8, 10))
    art = [{"boxes": s["boxes"]} for s in ref]
    report = evaluate(ref, art, "fp32")
    assert not report.passed
    assert report.reasons == ["reference output 'scores' [1, 8, 10] has no counterpart in the artifact's "
                              "outputs boxes [1, 8, 4]"]


def test_noise_fails_fp32_but_passes_int8_and_reasons_name_metric_value_threshold() -> None:
    ref = _samples(8, scores=(1, 64, 10))
    noisy = [{"scores": s["scores"] + RNG.normal(0, 0.02, s["scores"].shape).astype(np.float32)} for s in ref]
    fp32 = evaluate(ref, noisy, "fp32")
    assert not fp32.passed
    cos = fp32.outputs[0].cosine_min
    assert f"output 'scores': cosine similarity {cos:.6f} < min_cosine 0.9999 (fp32)" in fp32.reasons
    assert any(r.startswith("output 'scores': relative error") and "max_rel_error 0.001" in r for r in fp32.reasons)
    assert evaluate(ref, noisy, "int8").passed


def test_top1_agreement_is_scored_on_class_like_outputs_only() -> None:
    ref = _samples(8, boxes=(1, 64, 4), scores=(1, 64, 10), regressors=(1, 64, 16))
    for sample in ref:  # probabilities, as a softmax head gives them
        sample["scores"] = np.exp(sample["scores"]) / np.exp(sample["scores"]).sum(-1, keepdims=True)
    # Same values, classes rolled by one: cosine drops a bit, but the argmax moves everywhere.
    art = [{name: np.roll(value, 1, axis=-1) if name != "boxes" else value for name, value in s.items()}
           for s in ref]
    report = evaluate(ref, art, "int8", {"min_cosine": -1.0})
    by_name = {o.reference: o for o in report.outputs}
    assert by_name["boxes"].top1_agreement is None
    # Unbounded box-and-keypoint regressions (BlazeFace's 16 per anchor) are not class scores either.
    assert by_name["regressors"].top1_agreement is None
    assert by_name["scores"].top1_agreement == 0.0
    assert report.reasons == ["output 'scores': top-1 agreement 0.000 < min_top1_agreement 0.8 (int8)"]


def test_non_finite_artifact_outputs_fail() -> None:
    ref = _samples(2, y=(1, 4))
    art = [{"y": np.full((1, 4), np.nan, np.float32)} for _ in ref]
    report = evaluate(ref, art, "int8", {"min_cosine": -1.0})
    assert report.reasons == ["output 'y': the artifact produced NaN or infinite values"]


@settings(max_examples=50, deadline=None)
@given(scale=st.floats(0.01, 100.0), n=st.integers(1, 5))
def test_cosine_ignores_scale_but_rel_error_does_not(scale: float, n: int) -> None:
    rng = np.random.default_rng(n)
    ref = [rng.normal(size=(1, 32)) for _ in range(n)]
    m = measure(ref, [r * scale for r in ref])
    assert m["cosine_min"] == pytest.approx(1.0, abs=1e-9)
    assert m["rel_error"] == pytest.approx(abs(scale - 1.0), rel=1e-6, abs=1e-9)


def test_a_tflite_with_corrupted_weights_fails_check_fidelity(tmp_path: Path, tflite_artifact: Callable[[str], Built],
                                                              keras_model: Path, calibration_npy: Path) -> None:
    from ai_edge_litert import schema_py_generated as schema

    from edgefleet.convert.preprocess import InputSpec, load_calibration
    from edgefleet.fidelity import check_fidelity

    good = tflite_artifact("fp32").primary
    data = bytearray(good.read_bytes())
    model = schema.Model.GetRootAs(data, 0)
    biggest = max(range(model.BuffersLength()), key=lambda i: model.Buffers(i).DataLength())
    weights = model.Buffers(biggest).DataAsNumpy().view(np.float32)  # a writable view into ``data``
    weights[:] = np.random.default_rng(1).permutation(weights)
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(bytes(data))

    spec = InputSpec.model_validate(KERAS_SPEC)
    images = load_calibration(calibration_npy)
    ok = check_fidelity(keras_model, good, spec, images, precision="fp32", samples=4)
    bad = check_fidelity(keras_model, broken, spec, images, precision="fp32", samples=4)
    assert ok.passed and ok.samples == 4
    assert not bad.passed and any("min_cosine" in r for r in bad.reasons)


def test_quantized_io_is_quantized_and_dequantized_by_the_runner(tflite_artifact: Callable[[str], Built],
                                                                  calibration_npy: Path) -> None:
    from edgefleet.convert.preprocess import InputSpec, load_calibration, model_inputs
    from edgefleet.fidelity.reference import open_runner

    spec = InputSpec.model_validate(KERAS_SPEC)
    x = model_inputs(load_calibration(calibration_npy, 1), spec)
    outs = {q: open_runner(tflite_artifact(q).primary).run(x) for q in ("int8", "full-int8", "full-int8-int8io")}
    for q, out in outs.items():
        assert {k: v.dtype for k, v in out.items()} == {"boxes": np.float32, "scores": np.float32}, q
        # Softmax scores survive (de)quantization as probabilities.
        assert np.allclose(out["scores"].sum(-1), 1.0, atol=0.1), q
    # uint8 and int8 I/O are the same quantized network behind different zero points.
    np.testing.assert_allclose(outs["full-int8"]["scores"], outs["full-int8-int8io"]["scores"], atol=1e-6)
