"""edgetpu_compiler log parsing, against real compiler output recorded in public write-ups."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.edgetpu.logparse import KNOWN_STATUSES, MAPPED, LoggedSize, parse_compiler_log, parse_compiler_logs
from edgefleet.errors import BuildError

LOGS = Path(__file__).parents[1] / "tests" / "data" / "edgetpu-logs"


def read(name: str) -> str:
    return (LOGS / name).read_text()


def test_fixtures_are_documented() -> None:
    source = (LOGS / "SOURCE.md").read_text()
    for log in LOGS.glob("*.log"):
        assert log.name in source


def test_yolov3_tiny_partial_mapping() -> None:
    report = parse_compiler_log(read("yolov3-tiny_int8.partial.log"))
    assert report.compiler_version == "15.0.340273435"
    assert report.compile_time_ms == 577
    assert report.input_model == "/home/yolo/yolov3-tiny_int8.tflite"
    assert report.output_model == "/home/yolo/yolov3-tiny_int8_edgetpu.tflite"
    assert report.output_size is not None and report.output_size.text == "8.70MiB"
    # The write-up omitted the memory and subgraph lines: absent, not invented.
    assert report.on_chip_memory_used is None and report.subgraphs is None
    assert (report.ops_on_tpu, report.ops_on_cpu) == (2, 34)
    assert report.counts_source == "log"
    assert report.total_ops == 36
    assert not report.fully_mapped
    assert report.inconsistencies == ()

    quantize = report.rows_for("QUANTIZE")
    assert [(r.count, r.status) for r in quantize] == [
        (2, "Operation is otherwise supported, but not mapped due to some unspecified limitation"),
        (1, MAPPED),
        (1, "More than one subgraph is not supported"),
    ]
    assert [(r.count, r.mapped) for r in report.rows_for("CONV_2D")] == [(1, True), (12, False)]
    (leaky,) = report.rows_for("LEAKY_RELU")
    assert (leaky.count, leaky.status) == (11, "Operation not supported")
    (resize,) = report.rows_for("RESIZE_NEAREST_NEIGHBOR")
    assert resize.status == "Operation version not supported"
    assert all(r.known_status for r in report.rows)
    assert report.table_ops_on_tpu == 2 and report.table_ops_on_cpu == 34


def test_mobilenet_integer_quant_with_float_io() -> None:
    report = parse_compiler_log(read("mobilenet_v2_integer_quant.log"))
    assert report.compiler_version == "2.0.267685300"
    assert report.subgraphs == 1
    assert report.total_ops == 72
    assert (report.ops_on_tpu, report.ops_on_cpu) == (70, 2)
    assert report.on_chip_memory_available == LoggedSize.parse("6.91MiB")
    assert report.on_chip_memory_used is not None and report.on_chip_memory_used.text == "2.71MiB"
    assert report.off_chip_memory_used is not None and report.off_chip_memory_used.approx_bytes == 0
    assert report.operation_log == "/content/models/mobilenet_v2_integer_quant_edgetpu.log"
    unmapped = {r.operator: r.status for r in report.rows if not r.mapped}
    assert unmapped == {
        "QUANTIZE": "Operation is otherwise supported, but not mapped due to some unspecified limitation",
        "DEQUANTIZE": "Operation is working on an unsupported data type",
    }
    assert not report.fully_mapped


def test_fully_mapped_log_has_no_count_lines_so_counts_come_from_the_table() -> None:
    text = read("mobilenet_v2_full_integer_quant.log")
    assert "Number of operations that will run on" not in text
    report = parse_compiler_log(text)
    assert report.counts_source == "table"
    assert (report.ops_on_tpu, report.ops_on_cpu) == (72, 0)
    assert report.total_ops == sum(r.count for r in report.rows) == 72
    assert report.fully_mapped
    assert report.model_dump()["fully_mapped"] is True


def test_sizes_are_parsed_with_their_rounding() -> None:
    size = LoggedSize.parse("2.77MiB")
    assert size.approx_bytes == round(2.77 * 2**20)
    assert 0 < size.tolerance_bytes < 2**20 // 100
    assert LoggedSize.parse("0.00B").approx_bytes == 0
    with pytest.raises(BuildError, match="unreadable size"):
        LoggedSize.parse("lots")


def test_unknown_status_is_kept_verbatim_and_flagged() -> None:
    odd = "Operation is a mystery to this compiler"
    text = read("mobilenet_v2_full_integer_quant.log").replace(
        "SOFTMAX                        1          Mapped to Edge TPU",
        f"SOFTMAX                        1          {odd}")
    report = parse_compiler_log(text)
    (softmax,) = report.rows_for("SOFTMAX")
    assert softmax.status == odd and not softmax.known_status and not softmax.mapped
    assert report.unknown_statuses == (odd,)
    assert len(report.rows) == 8
    assert not report.fully_mapped


def test_counts_that_disagree_with_the_table_are_reported() -> None:
    text = read("yolov3-tiny_int8.partial.log").replace(
        "Number of operations that will run on Edge TPU: 2", "Number of operations that will run on Edge TPU: 5")
    report = parse_compiler_log(text)
    assert report.ops_on_tpu == 5  # what the compiler said, kept...
    assert report.table_ops_on_tpu == 2  # ...next to what its table says
    assert any("5 ops run on the Edge TPU but the table maps 2" in p for p in report.inconsistencies)
    assert not report.fully_mapped


def test_total_that_disagrees_with_the_table_is_reported() -> None:
    text = read("mobilenet_v2_full_integer_quant.log").replace(
        "Total number of operations: 72", "Total number of operations: 80")
    report = parse_compiler_log(text)
    assert report.inconsistencies and "80" in report.inconsistencies[0]
    assert not report.fully_mapped  # the table alone maps everything, but the log contradicts itself


def test_missing_count_lines_with_unmapped_rows_are_reported() -> None:
    text = "\n".join(line for line in read("mobilenet_v2_integer_quant.log").splitlines()
                     if not line.startswith("Number of operations that will run on"))
    report = parse_compiler_log(text)
    assert report.counts_source == "table"
    assert (report.ops_on_tpu, report.ops_on_cpu) == (70, 2)
    assert any("no TPU/CPU count lines" in p for p in report.inconsistencies)


@pytest.mark.parametrize("text", ["", "\n\n", "Segmentation fault (core dumped)\n",
                                  "random words\nOperator Count Status\n"])
def test_empty_or_garbage_log_is_a_clear_error(text: str) -> None:
    with pytest.raises(BuildError, match="not an edgetpu_compiler log"):
        parse_compiler_log(text)


def test_log_without_a_table_is_a_clear_error() -> None:
    text = "Edge TPU Compiler version 16.0.384591198\nERROR: Didn't find op for builtin opcode 'FULLY_CONNECTED'\n"
    with pytest.raises(BuildError, match="no operator table") as info:
        parse_compiler_log(text)
    assert any("Didn't find op" in line for line in info.value.log_tail)


def test_two_model_reports_need_the_plural_parser() -> None:
    one = read("mobilenet_v2_integer_quant.log")
    body = one[one.index("Input model:"):]
    text = one + "\n" + body.replace("mobilenet_v2_integer_quant", "second")
    with pytest.raises(BuildError, match="2 model reports"):
        parse_compiler_log(text)
    first, second = parse_compiler_logs(text)
    assert first.input_model is not None and second.input_model is not None
    assert "second" in second.input_model and "second" not in first.input_model
    assert second.compiler_version == first.compiler_version == "2.0.267685300"
    assert (second.ops_on_tpu, second.ops_on_cpu) == (70, 2)


def test_known_statuses_cover_every_status_in_the_recorded_logs() -> None:
    seen = {r.status for log in LOGS.glob("*.log") for r in parse_compiler_log(log.read_text()).rows}
    assert seen <= set(KNOWN_STATUSES)
