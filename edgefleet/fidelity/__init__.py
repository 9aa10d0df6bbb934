"""The fidelity gate: run an artifact next to its reference on real samples and compare.

``check_fidelity`` is what the conversion steps call; ``gate`` holds the
metrics and thresholds, ``reference`` the runners for each model format.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.convert.preprocess import InputSpec, model_inputs
from edgefleet.fidelity.gate import DEFAULT_THRESHOLDS, FidelityReport, Thresholds, evaluate, thresholds_for

__all__ = ["DEFAULT_THRESHOLDS", "FidelityReport", "Thresholds", "check_fidelity", "thresholds_for"]


def check_fidelity(reference: Path, artifact: Path, spec: InputSpec, calibration: np.ndarray, *,
                   precision: str, overrides: Mapping[str, Any] | None = None, samples: int = 8,
                   openvino_precision_hint: str = "f32") -> FidelityReport:
    """Run both models on the first ``samples`` raw calibration images and gate the artifact.

    Each model gets the images normalized per ``spec`` in the layout its own
    input has, so an NCHW reference and an NHWC artifact see the same pixels.
    """
    from edgefleet.fidelity.reference import open_runner

    thresholds_for(precision, overrides)  # reject bad overrides before the slow part
    raw = calibration[:samples]
    ref_runner = open_runner(reference)
    art_runner = open_runner(artifact, openvino_precision_hint=openvino_precision_hint)
    ref_layout = spec.layout_of(ref_runner.input_shape)
    art_layout = spec.layout_of(art_runner.input_shape)
    ref_x = model_inputs(raw, spec, ref_layout)
    art_x = model_inputs(raw, spec, art_layout)
    ref_out = [ref_runner.run(ref_x[i:i + 1]) for i in range(len(raw))]
    art_out = [art_runner.run(art_x[i:i + 1]) for i in range(len(raw))]
    report = evaluate(ref_out, art_out, precision, overrides)
    report.context.update({
        "reference": {"file": reference.name, "layout": ref_layout, **ref_runner.describe()},
        "artifact": {"file": artifact.name, "layout": art_layout, **art_runner.describe()},
    })
    return report
