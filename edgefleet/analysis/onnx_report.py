"""The structured report of an .onnx file: size, opset, op histogram, I/O, weight dtypes."""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from edgefleet.errors import SourceError


def load_onnx(path: Path, *, external_data: bool = True) -> Any:
    """``onnx.load`` with a SourceError instead of a protobuf traceback for a bad file."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise SourceError(f"ONNX model {path.name!r} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=external_data)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise SourceError(f"{path.name!r} is not a readable ONNX model: {type(exc).__name__}: {exc}") from None
    if not model.graph.node:
        raise SourceError(f"{path.name!r} is not a readable ONNX model: its graph has no nodes")
    return model


def describe_onnx(path: Path) -> dict[str, Any]:
    import onnx

    model = load_onnx(path, external_data=False)
    graph = model.graph
    ops = Counter(node.op_type for node in graph.node)
    opsets = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
    initializer_names = {init.name for init in graph.initializer}
    weight_bytes: Counter[str] = Counter()
    for init in graph.initializer:
        weight_bytes[_dtype(init.data_type)] += _tensor_bytes(init)
    external = sorted({entry.value for init in graph.initializer for entry in init.external_data
                       if entry.key == "location"})
    size = path.stat().st_size + sum((path.parent / name).stat().st_size for name in external
                                     if (path.parent / name).is_file())
    return {
        "format": "onnx",
        "file": path.name,
        "size_bytes": size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "external_data_files": external,
        "ir_version": model.ir_version,
        "opset": opsets.get("ai.onnx"),
        "opsets": opsets,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "op_count": sum(ops.values()),
        "ops": dict(sorted(ops.items())),
        "transpose_count": ops.get("Transpose", 0),
        "inputs": [_value_info(v) for v in graph.input if v.name not in initializer_names],
        "outputs": [_value_info(v) for v in graph.output],
        "weight_bytes_by_dtype": dict(sorted(weight_bytes.items())),
        "checker": _check(onnx, model),
    }


def _check(onnx: Any, model: Any) -> str:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        return f"invalid: {str(exc).splitlines()[0]}"
    return "ok"


def _dtype(elem_type: int) -> str:
    from onnx import helper

    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError):
        return f"onnx:{elem_type}"


def _tensor_bytes(init: Any) -> int:
    import numpy as np
    from onnx import helper

    if init.raw_data:
        return len(init.raw_data)
    count = int(np.prod(init.dims)) if init.dims else 1
    try:
        return count * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    except (KeyError, ValueError):
        return 0


def _value_info(value: Any) -> dict[str, Any]:
    tensor = value.type.tensor_type
    shape: list[int | str] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value"):
            shape.append(int(dim.dim_value))
        else:
            shape.append(dim.dim_param or "?")
    return {"name": value.name, "dtype": _dtype(tensor.elem_type), "shape": shape}
