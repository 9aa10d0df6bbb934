"""`invoke study --model blazeface` on this host: a real published network from the mediapipe wheel, built
from its TFLite source, benchmarked, and evaluated on real photographs as agreement with its fp32 source."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.api.context import Env
from edgefleet.api.study import StudyOptions, study
from edgefleet.console import make_console
from edgefleet.store import ArtifactStore
from edgefleet.workspace import open_workspace

pytestmark = [pytest.mark.convert, pytest.mark.slow]


def test_blazeface_study_reports_agreement_with_fp32(workspace_copy: Path, tmp_path: Path) -> None:
    ws = workspace_copy
    # This host is the device; fewer formats and a short bench keep the test to the chain's essentials.
    (ws / "targets" / "local.yaml").write_text(
        f"extends: builtin:local\nworkdir: {tmp_path / 'device'}\n"
        "formats: {tflite: {quantizations: [fp32, full-int8]}, openvino: null, savedmodel: null}\n"
        "bench: {threads: [1], warmup_runs: 2, min_runs: 10, min_duration_s: 0.2, cooldown_s: 0.0}\n")
    paths = study(StudyOptions(model="blazeface", workspace=ws), Env(console=make_console(quiet=True)))

    table = paths.table.read_text()
    assert "| agreement with fp32 @.5 |" in table and "mAP" not in table
    variants = {row["variant"]: row for row in json.loads((paths.table.parent / "variants.json").read_text())["rows"]}
    assert set(variants) == {"tflite-fp32", "tflite-full-int8", "onnx"}
    agreement = {name: row["metrics"]["agreement_50"] for name, row in variants.items()}
    # The source itself, and an ONNX within 1e-5 of it, find exactly the reference's detections.
    assert agreement["tflite-fp32"] == pytest.approx(1.0) and agreement["onnx"] > 0.99
    assert 0.0 < agreement["tflite-full-int8"] <= 1.0
    # The gate judges agreement (a fraction: 0.1 by default), and says which way it went.
    full_int8 = variants["tflite-full-int8"]
    assert full_int8["gate"] == ("passed" if agreement["tflite-full-int8"] >= 0.9 - 1e-9 else "failed")
    assert paths.pareto_plot is not None and paths.pareto_plot.is_file()

    # The int8 quantizer calibrated on the photographs, and its manifest says which.
    store = ArtifactStore(open_workspace(ws).artifacts_dir)
    (manifest,) = [m for m in (store.manifest(k) for k in store.entries())
                   if m.get("kind") == "tflite.convert" and m["params"].get("quantization") == "full-int8"]
    assert manifest["params"]["calibration_images"][0] == "skimage/data/astronaut.png"
    assert manifest["params"]["calibration_samples"] == len(manifest["params"]["calibration_images"]) == 70
