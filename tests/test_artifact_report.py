"""The per-artifact structured reports, checked against the libraries' own views of the files."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from convert_fixtures import Built

from edgefleet.analysis.onnx_report import describe_onnx
from edgefleet.analysis.tflite_report import describe_tflite
from edgefleet.errors import SourceError

pytest_plugins = ["convert_fixtures"]
pytestmark = pytest.mark.convert


def _interpreter(path: Path):  # type: ignore[no-untyped-def]
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without the default delegate, so ops are not folded into XNNPACK's DELEGATE node.
    it = Interpreter(model_path=str(path),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


@pytest.mark.parametrize("quantization", ["fp32", "dynamic", "full-int8", "full-int8-int8io"])
def test_tflite_report_agrees_with_the_interpreter(tflite_artifact: Callable[[str], Built], quantization: str) -> None:
    built = tflite_artifact(quantization)
    report = describe_tflite(built.primary)
    assert report == {k: v for k, v in built.report.items() if k in report}, "the step embeds this same report"
    it = _interpreter(built.primary)

    assert report["ops"] == dict(Counter(op["op_name"] for op in it._get_ops_details()))
    assert report["op_count"] == sum(report["ops"].values())
    assert report["size_bytes"] == built.primary.stat().st_size
    for mine, theirs in ((report["inputs"], it.get_input_details()), (report["outputs"], it.get_output_details())):
        assert len(mine) == len(theirs)
        by_index = {d["index"]: d for d in theirs}
        for tensor in mine:
            detail = by_index[tensor["index"]]
            assert tensor["name"] == detail["name"]
            assert tensor["dtype"] == np.dtype(detail["dtype"]).name
            assert tensor["shape"] == detail["shape"].tolist()
            assert tensor["shape_signature"] == detail["shape_signature"].tolist()
            scale, zero_point = detail["quantization"]
            if tensor["quantization"] is None:
                assert scale == 0.0
            else:
                assert tensor["quantization"]["scale"] == [pytest.approx(scale)]
                assert tensor["quantization"]["zero_point"] == [zero_point]
    assert report["signatures"] == {k: {"inputs": sorted(v["inputs"]), "outputs": sorted(v["outputs"])}
                                    for k, v in it.get_signature_list().items()}
    json.dumps(report)


def test_int8_reports_show_the_quantized_graph(tflite_artifact: Callable[[str], Built]) -> None:
    fp32 = tflite_artifact("fp32").report
    full = tflite_artifact("full-int8").report
    assert fp32["ops"]["CONV_2D"] == full["ops"]["CONV_2D"]
    assert "QUANTIZE" in full["ops"] and "QUANTIZE" not in fp32["ops"]
    assert full["weight_bytes_by_dtype"]["int8"] > 0 and "float32" not in full["weight_bytes_by_dtype"]
    assert fp32["transpose_count"] == 0 and fp32["custom_ops"] == []
    assert full["sha256"] != fp32["sha256"]


def test_onnx_report_agrees_with_onnx(onnx_from_keras: Built, yolo_onnx: Path) -> None:
    import onnx

    for path in (onnx_from_keras.primary, yolo_onnx):
        report = describe_onnx(path)
        model = onnx.load(str(path))
        assert report["ops"] == dict(Counter(n.op_type for n in model.graph.node))
        assert report["transpose_count"] == report["ops"].get("Transpose", 0)
        assert report["opset"] == next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
        assert report["size_bytes"] == path.stat().st_size
        assert sum(report["weight_bytes_by_dtype"].values()) == sum(
            onnx.numpy_helper.to_array(i).nbytes for i in model.graph.initializer)
    yolo = describe_onnx(yolo_onnx)
    assert yolo["inputs"] == [{"name": "images", "dtype": "float32", "shape": [1, 3, 640, 640]}]
    assert yolo["outputs"] == [{"name": "output0", "dtype": "float32", "shape": [1, 25200, 85]}]


def test_corrupt_files_are_source_errors(corrupt_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="corrupt TFLite flatbuffer"):
        describe_tflite(corrupt_files["tflite"])
    with pytest.raises(SourceError, match="not a TFLite flatbuffer"):
        describe_tflite(corrupt_files["onnx"])
    with pytest.raises(SourceError, match="not a readable ONNX model"):
        describe_onnx(corrupt_files["onnx"])
    with pytest.raises(SourceError, match="does not exist"):
        describe_onnx(tmp_path / "missing.onnx")
