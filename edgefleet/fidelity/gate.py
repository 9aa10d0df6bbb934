"""The fidelity gate: compare an artifact's outputs to the reference's and decide pass/fail.

Pure numpy: the runners (reference.py) produce the outputs, this module
matches them up, measures, and applies the thresholds.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from edgefleet.errors import BuildError

# Default thresholds per precision. The cosine is the worst single sample's, over
# the whole output tensor; rel is max-abs error / max |reference|. Measured here
# on 8 samples (tiny 2-head Keras detector 32x32; YOLOv5s-like ONNX 640x640):
#   fp32 (TFLite, tf2onnx, OpenVINO, onnx2tf)  cos > 0.9999999, rel <= 2e-6, top-1 1.0
#   fp16 (TFLite, OpenVINO IR, onnx2tf)        cos > 0.9999997, rel <= 1.1e-3, top-1 1.0
#   dynamic range (TFLite)                     cos 0.99957, rel 0.048, top-1 0.982
#   int8 / full-int8 / full-int8-int8io         cos 0.9948, rel 0.106, top-1 0.955
# Broken ones: a sign-flipped or shuffled weight tensor gives cos < 0.1 and
# top-1 0.01-0.1; onnx2tf full-int8 of the YOLO head (pixel boxes and 0..1
# scores behind one output scale) gives cos 0.76. The limits sit well below the
# clean numbers, so deeper real models pass, and well above the broken ones.
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    # Same math in another kernel library: only float32 rounding may differ.
    "fp32": {"min_cosine": 0.9999, "max_rel_error": 1e-3, "min_top1_agreement": 0.99},
    # float16 weights (and maybe activations): about three significant digits.
    "fp16": {"min_cosine": 0.999, "max_rel_error": 2e-2, "min_top1_agreement": 0.95},
    # int8 weights, float activations. No max_rel_error from here down: one
    # outlier element says little once rounding is everywhere; the cosine and
    # the class ranking do.
    "dynamic": {"min_cosine": 0.99, "min_top1_agreement": 0.9},
    # int8 weights and activations: the ranking of classes must mostly survive.
    "int8": {"min_cosine": 0.95, "min_top1_agreement": 0.8},
    "full-int8": {"min_cosine": 0.95, "min_top1_agreement": 0.8},
    "full-int8-int8io": {"min_cosine": 0.95, "min_top1_agreement": 0.8},
}
# An output is scored as class scores (top-1 agreement) when its last axis has at least this many
# entries and the reference's values are probabilities (all in [0, 1]). A 4-coordinate box head is not,
# nor a box-and-keypoints regression such as BlazeFace's 16 values per anchor, whose argmax means nothing.
MIN_CLASSES_FOR_TOP1 = 5


@dataclass(frozen=True)
class Thresholds:
    min_cosine: float | None = None
    max_rel_error: float | None = None
    min_top1_agreement: float | None = None


def thresholds_for(precision: str, overrides: Mapping[str, Any] | None = None) -> Thresholds:
    """The default thresholds of ``precision`` with the ``fidelity`` param's keys laid over them."""
    if precision not in DEFAULT_THRESHOLDS:
        raise BuildError(f"no fidelity thresholds for precision {precision!r}; "
                         f"known: {', '.join(DEFAULT_THRESHOLDS)}")
    return replace(Thresholds(**DEFAULT_THRESHOLDS[precision]), **checked_overrides(overrides))


def checked_overrides(overrides: Mapping[str, Any] | None) -> dict[str, float | None]:
    """The ``fidelity`` param as threshold fields; BuildError for unknown keys or non-numbers."""
    overrides = dict(overrides or {})
    known = sorted(Thresholds.__dataclass_fields__)
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise BuildError(f"unknown fidelity threshold(s) {unknown}; known: {known}")
    try:
        return {k: None if v is None else float(v) for k, v in overrides.items()}
    except (TypeError, ValueError):
        raise BuildError(f"fidelity thresholds must be numbers, got {overrides}") from None


@dataclass(frozen=True)
class OutputMatch:
    reference: str
    artifact: str
    by: str                       # "name", "shape", "order" or "layout" (artifact output is NHWC of an NCHW ref)


@dataclass(frozen=True)
class OutputMetrics:
    reference: str
    artifact: str
    matched_by: str
    shape: list[int]
    max_abs_error: float
    rel_error: float              # max_abs_error / max |reference|
    cosine_min: float             # worst sample
    cosine_mean: float
    top1_agreement: float | None  # over the last axis, for class-score-like outputs
    finite: bool


@dataclass
class FidelityReport:
    precision: str
    samples: int
    thresholds: Thresholds
    outputs: list[OutputMetrics] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "samples": self.samples,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "thresholds": asdict(self.thresholds),
            "outputs": [asdict(o) for o in self.outputs],
            **self.context,
        }


def match_outputs(reference: Mapping[str, tuple[int, ...]],
                  artifact: Mapping[str, tuple[int, ...]]) -> tuple[list[OutputMatch], list[str]]:
    """Pair outputs by name, then by unique shape, then by order among equal shapes, then by layout.

    Converters rename (onnx2tf: Identity_1) and reorder (TFLite) outputs, so
    names are tried first but shapes decide. Returns the matches and the
    reference outputs left without a counterpart.
    """
    left_ref = [n for n in reference]
    left_art = [n for n in artifact]
    matches: list[OutputMatch] = []

    def take(ref: str, art: str, by: str) -> None:
        matches.append(OutputMatch(ref, art, by))
        left_ref.remove(ref)
        left_art.remove(art)

    for ref in list(left_ref):
        art = next((a for a in left_art if _base_name(a) == _base_name(ref)), None)
        if art is not None and tuple(artifact[art]) == tuple(reference[ref]):
            take(ref, art, "name")
    for want, by in ((lambda s: s, "shape"), (_nchw_as_nhwc, "layout")):
        for ref in list(left_ref):
            shape = tuple(reference[ref])
            cands = [a for a in left_art if tuple(artifact[a]) == want(shape)]
            if not cands:
                continue
            # Several outputs of one shape can only be paired in the order the models list them.
            ambiguous = (sum(tuple(s) == shape for s in reference.values()) > 1
                         or sum(tuple(s) == want(shape) for s in artifact.values()) > 1)
            take(ref, cands[0], "order" if ambiguous else by)
    return matches, left_ref


def _base_name(name: str) -> str:
    return name.rsplit(":", 1)[0]


def _nchw_as_nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], *shape[2:], shape[1]) if len(shape) == 4 else ()


def measure(reference: Sequence[np.ndarray], artifact: Sequence[np.ndarray]) -> dict[str, Any]:
    """Error metrics of one output over all samples (each array is one sample's output)."""
    ref = np.stack([np.asarray(r, np.float64) for r in reference])
    art = np.stack([np.asarray(a, np.float64) for a in artifact])
    finite = bool(np.isfinite(art).all())
    if not finite:
        art = np.nan_to_num(art, nan=0.0, posinf=0.0, neginf=0.0)
    max_abs = float(np.abs(art - ref).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    cosines = [_cosine(r.ravel(), a.ravel()) for r, a in zip(ref, art, strict=True)]
    top1 = None
    if ref.ndim >= 2 and ref.shape[-1] >= MIN_CLASSES_FOR_TOP1 and ref.size and 0.0 <= ref.min() <= ref.max() <= 1.0:
        top1 = float(np.mean(ref.argmax(-1) == art.argmax(-1)))
    return {
        "max_abs_error": max_abs,
        "rel_error": max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf")),
        "cosine_min": float(min(cosines)),
        "cosine_mean": float(np.mean(cosines)),
        "top1_agreement": top1,
        "finite": finite,
    }


def _cosine(r: np.ndarray, a: np.ndarray) -> float:
    nr, na = float(np.linalg.norm(r)), float(np.linalg.norm(a))
    if nr == 0 and na == 0:
        return 1.0
    if nr == 0 or na == 0:
        return 0.0
    return float(np.dot(r, a) / (nr * na))


def evaluate(reference: Sequence[Mapping[str, np.ndarray]], artifact: Sequence[Mapping[str, np.ndarray]],
             precision: str, overrides: Mapping[str, Any] | None = None) -> FidelityReport:
    """Gate the artifact: ``reference[i]`` and ``artifact[i]`` are the outputs for sample i."""
    thresholds = thresholds_for(precision, overrides)
    report = FidelityReport(precision, len(reference), thresholds)
    if not reference or len(reference) != len(artifact):
        report.reasons.append(f"fidelity needs outputs for the same samples; got {len(reference)} reference "
                              f"and {len(artifact)} artifact runs")
        return report
    ref_shapes = {k: tuple(v.shape) for k, v in reference[0].items()}
    art_shapes = {k: tuple(v.shape) for k, v in artifact[0].items()}
    matches, missing = match_outputs(ref_shapes, art_shapes)
    for name in missing:
        report.reasons.append(f"reference output {name!r} {list(ref_shapes[name])} has no counterpart in the "
                              f"artifact's outputs {_shapes_text(art_shapes)}")
    for m in matches:
        def art_of(sample: Mapping[str, np.ndarray], m: OutputMatch = m) -> np.ndarray:
            value = sample[m.artifact]
            return value.transpose(0, 3, 1, 2) if m.by == "layout" else value

        metrics = measure([s[m.reference] for s in reference], [art_of(s) for s in artifact])
        out = OutputMetrics(m.reference, m.artifact, m.by, list(ref_shapes[m.reference]), **metrics)
        report.outputs.append(out)
        report.reasons.extend(_violations(out, thresholds, precision))
    return report


def _violations(out: OutputMetrics, t: Thresholds, precision: str) -> list[str]:
    where = f"output {out.reference!r}"
    reasons = []
    if not out.finite:
        reasons.append(f"{where}: the artifact produced NaN or infinite values")
    if t.min_cosine is not None and out.cosine_min < t.min_cosine:
        reasons.append(f"{where}: cosine similarity {out.cosine_min:.6f} < min_cosine {t.min_cosine} ({precision})")
    if t.max_rel_error is not None and out.rel_error > t.max_rel_error:
        reasons.append(f"{where}: relative error {out.rel_error:.3g} > max_rel_error {t.max_rel_error} ({precision})")
    if (t.min_top1_agreement is not None and out.top1_agreement is not None
            and out.top1_agreement < t.min_top1_agreement):
        reasons.append(f"{where}: top-1 agreement {out.top1_agreement:.3f} < min_top1_agreement "
                       f"{t.min_top1_agreement} ({precision})")
    return reasons


def _shapes_text(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{k} {list(v)}" for k, v in shapes.items()) or "(none)"
