"""Build steps that prepare a model for TF-TRT on a Jetson: freeze, rewrite, render the device script."""
from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

from edgefleet.errors import BuildError
from edgefleet.steps.base import StepContext, StepResult
from edgefleet.tftrt.device_script import SCRIPT_NAME

if TYPE_CHECKING:
    from edgefleet.tftrt.opregistry import OpRegistry, TargetCheck

GRAPH_FILE = "frozen.pb"
GRAPH_INFO_FILE = "graph.json"


def tftrt_freeze(ctx: StepContext) -> StepResult:
    """Input "model": a .keras/.h5 file or a SavedModel dir; optional "op_registry": the JSON registry of
    the device's TF (planned whenever there is one), which the graph is fitted to and checked against.
    Params: signature_key, batch_size, target_tf_version."""
    from edgefleet.tftrt.freeze import DEFAULT_TARGET_TF_VERSION, freeze_model, write_graph

    batch_size = ctx.params.get("batch_size")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise BuildError(f"step {ctx.kind!r}: param 'batch_size' must be a positive integer, got {batch_size!r}")
    graph_def, info = freeze_model(
        ctx.input("model"),
        signature_key=str(ctx.params.get("signature_key", "serving_default")),
        batch_size=batch_size,
        target_tf_version=str(ctx.params.get("target_tf_version", DEFAULT_TARGET_TF_VERSION)),
        registry=_registry(ctx),
    )
    write_graph(graph_def, ctx.out_dir / GRAPH_FILE)
    (ctx.out_dir / GRAPH_INFO_FILE).write_text(info.model_dump_json(indent=2))
    ctx.log(f"froze {info.node_count} nodes; inputs {[t.name for t in info.inputs]}, "
            f"outputs {[t.name for t in info.outputs]}")
    warnings = info.warnings()
    for warning in warnings:
        ctx.log(f"warning: {warning}")
    check = info.target_check
    if check is not None:
        _log_check(ctx, check)
    return StepResult(
        files=[GRAPH_FILE, GRAPH_INFO_FILE], device_files=[GRAPH_INFO_FILE],
        report={"inputs": [t.name for t in info.inputs], "outputs": [t.name for t in info.outputs],
                "node_count": info.node_count, "target_tf_version": info.target_tf_version, "warnings": warnings,
                **({"target_check": check.model_dump()} if check is not None else {})},
        tool_versions={"tensorflow": info.tf_version},
        valid=check is None or check.passed,
        invalid_reasons=list(check.problems) if check is not None else [],
    )


def tftrt_rewrite(ctx: StepContext) -> StepResult:
    """Input "graph": frozen.pb; optional "graph_info" (graph.json) and "script" (tftrt_convert.py), copied
    beside the rewritten graph so the device has what it converts and runs with; optional "op_registry",
    which the rewritten graph is checked against like the frozen one. Params: relu6_replace,
    nms_on_cpu, remove_asserts (booleans)."""
    from edgefleet.tftrt.freeze import read_graph, write_graph
    from edgefleet.tftrt.opregistry import fit_graph
    from edgefleet.tftrt.rewrites import force_nms_on_cpu, remove_asserts, replace_relu6

    # Relu6 replacement helped only old TensorRT; newer TensorRT is faster without it, so it is opt-in.
    chosen = {
        "remove_asserts": (_bool_param(ctx, "remove_asserts", True), remove_asserts),
        "nms_on_cpu": (_bool_param(ctx, "nms_on_cpu", True), force_nms_on_cpu),
        "relu6_replace": (_bool_param(ctx, "relu6_replace", False), replace_relu6),
    }
    graph_def = read_graph(ctx.input("graph"))
    nodes_before = len(graph_def.node)
    summaries = []
    for name, (enabled, rewrite) in chosen.items():
        if not enabled:
            continue
        graph_def, summary = rewrite(graph_def)
        summaries.append(summary.as_dict())
        ctx.log(f"{name}: +{len(summary.added_nodes)} nodes, -{len(summary.removed_nodes)} nodes, "
                f"{len(summary.changed_nodes)} changed, {summary.removed_control_inputs} control inputs dropped")
    _check_imports(graph_def)
    # The rewrites add nodes of their own: the graph the device gets is checked, not just its source.
    registry = _registry(ctx)
    check = fit_graph(graph_def, registry) if registry is not None else None
    if check is not None:
        _log_check(ctx, check)
    write_graph(graph_def, ctx.out_dir / GRAPH_FILE)
    beside = _copy_beside(ctx, {"graph_info": GRAPH_INFO_FILE, "script": SCRIPT_NAME})
    report = {"nodes_before": nodes_before, "nodes_after": len(graph_def.node), "rewrites": summaries,
              "enabled": {name: enabled for name, (enabled, _) in chosen.items()}}
    if check is not None:
        report["target_check"] = check.model_dump()
    return StepResult(files=[GRAPH_FILE, *beside], device_files=beside, report=report,
                      valid=check is None or check.passed,
                      invalid_reasons=list(check.problems) if check is not None else [])


def tftrt_device_script(ctx: StepContext) -> StepResult:
    """Render tftrt_convert.py. Params: TrtSettings fields, optional output_nodes and graph_file.

    Optional inputs: "graph_info" (graph.json from tftrt_freeze, for the output node names) and
    "template" (the .j2 file, when the step runs away from the repository checkout).
    """
    from pydantic import ValidationError

    from edgefleet.tftrt.device_script import TrtSettings, render_device_script

    params = dict(ctx.params)
    output_nodes = params.pop("output_nodes", None)
    graph_file = str(params.pop("graph_file", GRAPH_FILE))
    try:
        settings = TrtSettings.model_validate(params)
    except ValidationError as exc:
        raise BuildError(f"step {ctx.kind!r}: bad TF-TRT settings: {exc}") from None
    if output_nodes is None and "graph_info" in ctx.inputs:
        output_nodes = _output_nodes(ctx)
    if not isinstance(output_nodes, list) or not all(isinstance(n, str) for n in output_nodes):
        raise BuildError(f"step {ctx.kind!r} needs the output node names: give input 'graph_info' (graph.json "
                         "from tftrt_freeze) or param 'output_nodes' (a list of names)")
    template = ctx.input("template") if "template" in ctx.inputs else None
    script = render_device_script(settings, graph_file=graph_file, output_nodes=output_nodes, template=template)
    (ctx.out_dir / SCRIPT_NAME).write_text(script)
    ctx.log(f"rendered {SCRIPT_NAME}; the TF-TRT conversion itself runs on the Jetson")
    return StepResult(files=[SCRIPT_NAME], report={
        "settings": settings.model_dump(), "output_nodes": output_nodes, "graph_file": graph_file,
        "runs_on": "device",
        "note": "the TF-TRT conversion itself runs on the Jetson (it needs TensorRT and the GPU): run "
                f"python3 {SCRIPT_NAME} next to {graph_file}; it fails loudly if TensorRT does not engage"})


def _copy_beside(ctx: StepContext, names: dict[str, str]) -> list[str]:
    """Copy the optional inputs the device needs next to the graph, under their usual file names."""
    copied = []
    for name, file_name in names.items():
        if name in ctx.inputs:
            shutil.copyfile(ctx.input(name), ctx.out_dir / file_name)
            copied.append(file_name)
    return copied


def _output_nodes(ctx: StepContext) -> Any:
    path = ctx.input("graph_info")
    try:
        info = json.loads(path.read_text())
        return [t["node"] for t in info["outputs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BuildError(f"cannot read the output nodes from {path.name}: {exc}") from None


def _registry(ctx: StepContext) -> OpRegistry | None:
    from edgefleet.tftrt.opregistry import load_registry

    return load_registry(ctx.input("op_registry")) if "op_registry" in ctx.inputs else None


def _log_check(ctx: StepContext, check: TargetCheck) -> None:
    version = check.tensorflow_version
    if check.stripped_attrs:
        ctx.log(f"dropped attrs TF {version} does not know, all at their defaults: "
                f"{', '.join(f'{k} ({n})' for k, n in check.stripped_attrs.items())}")
    if check.passed:
        ctx.log(f"every op and attr is known to TF {version} (GraphDef producer "
                f"{check.producer_graph_def_version}; TF {version} reads version {check.consumer_graph_def_version})")
    for problem in check.problems:
        ctx.log(f"INVALID for TF {version}: {problem}")


def _check_imports(graph_def: Any) -> None:
    import tensorflow as tf

    try:
        with tf.Graph().as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
    except (ValueError, tf.errors.OpError) as exc:
        raise BuildError(f"the rewritten graph does not import: {exc}") from None


def _bool_param(ctx: StepContext, name: str, default: bool) -> bool:
    value = ctx.params.get(name, default)
    if not isinstance(value, bool):
        raise BuildError(f"step {ctx.kind!r}: param {name!r} must be true or false, got {value!r}")
    return value
