"""The structured report of a .tflite file, read from its flatbuffer.

The flatbuffer rather than the Interpreter: it names every op as written,
including custom and Flex ops an interpreter may refuse to load, it sees
through delegates (an allocated interpreter shows XNNPACK partitions as
DELEGATE), and it tells the stored dtype of the weights (int8 for dynamic
range, float16 for fp16), which the runtime view hides.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from edgefleet.errors import SourceError

_FILE_IDENTIFIER = b"TFL3"


def _enum_names(enum_cls: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def describe_tflite(path: Path) -> dict[str, Any]:
    """Size, op histogram, TRANSPOSE count, I/O tensors with quantization, signatures, weight dtypes."""
    from ai_edge_litert import schema_py_generated as schema

    data = _read(path)
    if len(data) < 8 or data[4:8] != _FILE_IDENTIFIER:
        raise SourceError(f"{path.name!r} is not a TFLite flatbuffer (no {_FILE_IDENTIFIER.decode()} identifier)")
    try:
        model = schema.Model.GetRootAs(data, 0)
        report = _describe(model, schema)
    except Exception as exc:  # a truncated flatbuffer fails anywhere inside the generated accessors
        raise SourceError(f"{path.name!r} is a corrupt TFLite flatbuffer: {type(exc).__name__}: {exc}") from None
    return {
        "format": "tflite",
        "file": path.name,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        **report,
    }


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None


def _describe(model: Any, schema: Any) -> dict[str, Any]:
    op_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)
    codes = [_op_name(model.OperatorCodes(i), op_names) for i in range(model.OperatorCodesLength())]

    ops: Counter[str] = Counter()
    weight_bytes: Counter[str] = Counter()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for i in range(sg.OperatorsLength()):
            ops[codes[sg.Operators(i).OpcodeIndex()]] += 1
        for t in range(sg.TensorsLength()):
            tensor = sg.Tensors(t)
            size = _buffer_size(model, tensor.Buffer())
            if size:
                weight_bytes[type_names.get(tensor.Type(), str(tensor.Type())).lower()] += size

    main = model.Subgraphs(0)
    signatures = _signatures(model)
    names_by_index = {idx: name for sig in signatures.values() for kind in ("inputs", "outputs")
                      for name, idx in sig[kind].items()}
    inputs = [_tensor(main, main.Inputs(i), type_names, names_by_index) for i in range(main.InputsLength())]
    outputs = [_tensor(main, main.Outputs(i), type_names, names_by_index) for i in range(main.OutputsLength())]
    return {
        "subgraphs": model.SubgraphsLength(),
        "op_count": sum(ops.values()),
        "ops": dict(sorted(ops.items())),
        "transpose_count": ops.get("TRANSPOSE", 0),
        "custom_ops": sorted(name for name in ops if name.startswith("CUSTOM:")),
        "inputs": inputs,
        "outputs": outputs,
        "signatures": {key: {kind: sorted(sig[kind]) for kind in ("inputs", "outputs")}
                       for key, sig in signatures.items()},
        "weight_bytes_by_dtype": dict(sorted(weight_bytes.items())),
    }


def _op_name(code: Any, op_names: dict[int, str]) -> str:
    # Builtin codes above 127 live in BuiltinCode; older files only fill the deprecated byte.
    value = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    name = op_names.get(value, f"BUILTIN_{value}")
    if name == "CUSTOM":
        custom = code.CustomCode()
        return f"CUSTOM:{custom.decode() if custom else '?'}"
    return name


def _buffer_size(model: Any, index: int) -> int:
    if index <= 0 or index >= model.BuffersLength():
        return 0  # buffer 0 is the empty sentinel every activation tensor points to
    buf = model.Buffers(index)
    # Models over 2 GB keep weights after the flatbuffer and store offset/size instead of data.
    return int(buf.DataLength() or buf.Size())


def _signatures(model: Any) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {}
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        if sig.SubgraphIndex() != 0:
            continue
        key = (sig.SignatureKey() or b"").decode()
        out[key] = {
            "inputs": {sig.Inputs(j).Name().decode(): sig.Inputs(j).TensorIndex() for j in range(sig.InputsLength())},
            "outputs": {sig.Outputs(j).Name().decode(): sig.Outputs(j).TensorIndex()
                        for j in range(sig.OutputsLength())},
        }
    return out


def _tensor(sg: Any, index: int, type_names: dict[int, str], signature_names: dict[int, str]) -> dict[str, Any]:
    tensor = sg.Tensors(index)
    shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
    signature = [int(d) for d in tensor.ShapeSignatureAsNumpy()] if tensor.ShapeSignatureLength() else shape
    info: dict[str, Any] = {
        "name": (tensor.Name() or b"").decode(),
        "index": index,
        "dtype": type_names.get(tensor.Type(), str(tensor.Type())).lower(),
        "shape": shape,
        "shape_signature": signature,
        "quantization": _quantization(tensor.Quantization()),
    }
    if index in signature_names:
        info["signature_name"] = signature_names[index]
    return info


def _quantization(q: Any) -> dict[str, Any] | None:
    if q is None or not q.ScaleLength():
        return None
    return {
        "scale": [float(s) for s in q.ScaleAsNumpy()],
        "zero_point": [int(z) for z in q.ZeroPointAsNumpy()] if q.ZeroPointLength() else [0] * q.ScaleLength(),
        "quantized_dimension": int(q.QuantizedDimension()),
    }
