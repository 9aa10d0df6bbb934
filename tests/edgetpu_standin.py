"""A STRUCTURAL STAND-IN for what edgetpu_compiler writes, for tests on a machine without the compiler.

edgetpu_compiler exists only for x86-64 Debian/Ubuntu from Coral's apt repository, so no test here
can make a real compiled model. What the compiler writes is an ordinary TFLite flatbuffer in which
every op it mapped is replaced by ONE custom operator named ``edgetpu-custom-op`` per Edge TPU
subgraph (the TPU executable rides in that op's custom options), and every op it could not map stays
as the builtin op it was. This module writes a real TFLite flatbuffer of exactly that shape, with the
schema LiteRT ships, so the checks read it with the same code that reads real models. It is not a
runnable model: the custom options are padding, not an Edge TPU executable.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

EDGETPU_OP = "edgetpu-custom-op"


def standin_compiled_model(ops: Sequence[str], *, pad_to_bytes: int = 0) -> bytes:
    """A one-subgraph model running ``ops`` in order; ``"edgetpu"`` marks an edgetpu-custom-op.

    Other names are TFLite builtin operators (``"QUANTIZE"``). ``pad_to_bytes`` grows the custom ops'
    options so the file has about the size a compiler log reports.
    """
    bare = len(_build(ops, 0))
    n_tpu = sum(1 for name in ops if name == "edgetpu")
    return _build(ops, max(0, pad_to_bytes - bare) // max(1, n_tpu))


def _build(ops: Sequence[str], padding: int) -> bytes:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    codes: list[str] = list(dict.fromkeys(ops))
    model = schema.ModelT()
    model.version = 3
    model.description = "edgefleet test stand-in for edgetpu_compiler output (not runnable)"
    model.operatorCodes = [_code(schema, name) for name in codes]
    model.buffers = [schema.BufferT()]  # buffer 0: the empty sentinel every activation tensor uses

    subgraph = schema.SubGraphT()
    subgraph.tensors = [_tensor(schema, f"t{i}") for i in range(len(ops) + 1)]
    subgraph.operators = []
    for i, name in enumerate(ops):
        op = schema.OperatorT()
        op.opcodeIndex = codes.index(name)
        op.inputs, op.outputs = [i], [i + 1]
        if name == "edgetpu":
            op.customOptions = [0] * padding
        subgraph.operators.append(op)
    subgraph.inputs, subgraph.outputs = [0], [len(ops)]
    subgraph.name = "main"
    model.subgraphs = [subgraph]

    builder = flatbuffers.Builder(1024 + padding)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def write_standin(path: Path, ops: Sequence[str], *, pad_to_bytes: int = 0) -> Path:
    path.write_bytes(standin_compiled_model(ops, pad_to_bytes=pad_to_bytes))
    return path


def _code(schema, name: str):
    code = schema.OperatorCodeT()
    if name == "edgetpu":
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
        code.customCode = EDGETPU_OP
    else:
        value = getattr(schema.BuiltinOperator, name)
        code.builtinCode = value
        code.deprecatedBuiltinCode = min(value, 127)  # the byte field holds codes below 128 only
    code.version = 1
    return code


def _tensor(schema, name: str):
    tensor = schema.TensorT()
    tensor.shape = [1, 8]
    tensor.type = schema.TensorType.UINT8
    tensor.name = name
    tensor.buffer = 0
    return tensor
