"""ONNX -> OpenVINO IR (model.xml + model.bin), and the report of an IR."""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefleet.errors import BuildError, SourceError

PRECISIONS = ("fp32", "fp16")


def onnx_to_openvino(source: Path, out_xml: Path, precision: str, *, log: Callable[[str], None] = print) -> None:
    """Convert ``source`` and save the IR as ``out_xml`` (+ the .bin beside it)."""
    import openvino as ov

    from edgefleet.analysis.onnx_report import load_onnx

    if precision not in PRECISIONS:
        raise BuildError(f"unknown OpenVINO precision {precision!r}; known: {', '.join(PRECISIONS)}")
    load_onnx(source, external_data=False)  # a clear SourceError for a corrupt file before OpenVINO's own
    log(f"openvino {ov.__version__}: {source.name} -> IR {precision}")
    try:
        model = ov.convert_model(str(source))
    except Exception as exc:  # OpenVINO raises its own OpConversionFailure/GeneralFailure classes
        raise BuildError(f"OpenVINO cannot convert {source.name!r}: {type(exc).__name__}: {exc}") from None
    # compress_to_fp16 stores weights as f16 (with Convert ops); inference precision is a runtime choice.
    ov.save_model(model, str(out_xml), compress_to_fp16=precision == "fp16")


def describe_openvino(xml: Path) -> dict[str, Any]:
    """Size of xml+bin, op type histogram, I/O, constant bytes by element type."""
    import openvino as ov

    bin_path = xml.with_suffix(".bin")
    try:
        model = ov.Core().read_model(str(xml))
    except RuntimeError as exc:
        raise SourceError(f"OpenVINO cannot read {xml.name!r}: {exc}") from None
    ops: Counter[str] = Counter()
    constant_bytes: Counter[str] = Counter()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        ops[kind] += 1
        if kind == "Constant":
            out = op.output(0)
            constant_bytes[out.get_element_type().get_type_name()] += out.get_element_type().size * max(
                1, _count(out.get_partial_shape()))
    digest = hashlib.sha256(xml.read_bytes())
    if bin_path.is_file():
        digest.update(bin_path.read_bytes())
    return {
        "format": "openvino",
        "file": xml.name,
        "files": [xml.name] + ([bin_path.name] if bin_path.is_file() else []),
        "size_bytes": xml.stat().st_size + (bin_path.stat().st_size if bin_path.is_file() else 0),
        "sha256": digest.hexdigest(),
        "op_count": sum(ops.values()),
        "ops": dict(sorted(ops.items())),
        "transpose_count": ops.get("Transpose", 0),
        "inputs": [_port(p) for p in model.inputs],
        "outputs": [_port(p) for p in model.outputs],
        "constant_bytes_by_type": dict(sorted(constant_bytes.items())),
    }


def _count(shape: Any) -> int:
    n = 1
    for d in shape:
        n *= d.get_length() if d.is_static else 1
    return n


def _port(port: Any) -> dict[str, Any]:
    return {
        "name": ",".join(sorted(port.get_names())) or None,
        "dtype": port.get_element_type().get_type_name(),
        "shape": [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()],
    }
