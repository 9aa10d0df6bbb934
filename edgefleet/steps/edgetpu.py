"""Build steps for the Coral Edge TPU: preflight a full-int8 model, then compile it."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgefleet.errors import BuildError, ToolUnavailableError
from edgefleet.steps.base import StepContext, StepResult

if TYPE_CHECKING:
    from edgefleet.edgetpu.compile import CompileResult

PREFLIGHT_FILE = "preflight.json"


def edgetpu_preflight(ctx: StepContext) -> StepResult:
    """Input "model": a full-int8 .tflite. Param "require_fully_mapped" (default False)."""
    from edgefleet.edgetpu.preflight import preflight

    require = _bool_param(ctx, "require_fully_mapped", False)
    report = preflight(ctx.input("model"))
    (ctx.out_dir / PREFLIGHT_FILE).write_text(report.model_dump_json(indent=2))
    summary = report.summary()
    ctx.log(f"preflight: {summary['predicted_tpu_ops']} ops predicted on the Edge TPU, "
            f"{summary['predicted_cpu_ops']} on the CPU")
    for line in summary["findings"]:
        ctx.log(f"  {line}")
    reasons = []
    if require and not report.predicted_fully_mapped:
        reasons.append(f"the model is not predicted to map fully to the Edge TPU (partition ends at op "
                       f"{report.first_unmappable_op} {report.first_unmappable_op_name})")
    return StepResult(files=[PREFLIGHT_FILE], report=summary, valid=not reasons, invalid_reasons=reasons)


def edgetpu_compile(ctx: StepContext) -> StepResult:
    """Input "model": a full-int8 .tflite. Params: the CompilerOptions fields.

    compile_model accepts an output only once verify_compiled has matched it to the compiler's log
    (edgetpu-custom-op present, CPU ops as logged, the log's input model is this step's input).
    """
    from pydantic import ValidationError

    from edgefleet.edgetpu.compile import LOG_FILE, RESULT_FILE, CompilerOptions, compile_model

    try:
        options = CompilerOptions.model_validate(dict(ctx.params))
    except ValidationError as exc:
        raise BuildError(f"step {ctx.kind!r}: bad compiler options: {exc}") from None
    result = compile_model(ctx.input("model"), ctx.out_dir, options, log=ctx.log)
    if not result.compiled:
        # No compiler here: say so plainly and leave no artifact, so a later run with the compiler builds it.
        raise ToolUnavailableError(f"Edge TPU compile did not run: {result.reason or 'not compiled'}")

    report: dict[str, Any] = {
        "compiled": True,
        "fully_mapped": result.fully_mapped,
        "mappings": [{
            "ops_on_tpu": m.ops_on_tpu, "ops_on_cpu": m.ops_on_cpu, "total_ops": m.total_ops,
            "subgraphs": m.subgraphs,
            "unmapped": [f"{r.operator} x{r.count}: {r.status}" for r in m.rows if not r.mapped],
        } for m in result.mappings],
        "warnings": _warnings(result),
    }
    for warning in report["warnings"]:
        ctx.log(f"warning: {warning}")
    return StepResult(files=[*result.outputs, RESULT_FILE, LOG_FILE], report=report,
                      tool_versions={"edgetpu_compiler": result.compiler_version or "unknown"})


def _warnings(result: CompileResult) -> list[str]:
    # A partly mapped model is still a valid artifact: it runs, with the tail on the CPU.
    warnings = []
    for m in result.mappings:
        if not m.fully_mapped and m.ops_on_cpu:
            warnings.append(f"only {m.ops_on_tpu} of {m.total_ops} ops run on the Edge TPU; {m.ops_on_cpu} fall back "
                            "to the CPU, which is much slower (see the edgetpu_preflight findings for fixes)")
        warnings.extend(f"compiler log inconsistent: {problem}" for problem in m.inconsistencies)
        warnings.extend(f"unknown compiler status kept verbatim: {status!r}" for status in m.unknown_statuses)
    return warnings


def _bool_param(ctx: StepContext, name: str, default: bool) -> bool:
    value = ctx.params.get(name, default)
    if not isinstance(value, bool):
        raise BuildError(f"step {ctx.kind!r}: param {name!r} must be true or false, got {value!r}")
    return value
