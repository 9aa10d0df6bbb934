"""Steps that bring a source model into the store unchanged (an ONNX source is already a variant)."""
from __future__ import annotations

import shutil

from edgefleet.errors import BuildError
from edgefleet.steps.base import StepContext, StepResult


def onnx_import(ctx: StepContext) -> StepResult:
    import onnx

    source = ctx.input("model")
    try:
        model = onnx.load(str(source))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError and others for a bad file
        raise BuildError(f"{source.name} is not a valid ONNX model: {exc}") from None
    target = ctx.out_dir / "model.onnx"
    shutil.copyfile(source, target)
    ctx.log(f"imported {source.name} (opset {model.opset_import[0].version if model.opset_import else '?'})")
    report: dict[str, object] = {"format": "onnx", "size_bytes": target.stat().st_size}
    try:
        from edgefleet.analysis.onnx_report import onnx_report
    except ImportError:
        pass
    else:
        report.update(onnx_report(target))
    return StepResult(files=["model.onnx"], report=report, tool_versions={"onnx": onnx.__version__})
