"""benchmark_model's output -> the agent's result line, on logs of real runs (tests/data/benchmark_model/README.md
names the thread each one comes from), and the command of each cell as a table."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edgefleet.android.commands import benchmark_argv, delegate_flags
from edgefleet.android.output import parse_output, result_line
from edgefleet.profiles.model import Bench
from edgefleet.results.schema import ResultLine
from edgefleet.runtimes import runtime_for_profile

DATA = Path(__file__).parent / "data" / "benchmark_model"
SPEC = runtime_for_profile("tflite-benchmark-model")
BENCH = Bench(threads=(1, 4), delegates=("cpu", "gpu-fp16"), warmup_runs=1, min_runs=50, min_duration_s=1.0)
RUN = {"run_id": "20250101T000000Z-android-arm64-abcdef", "device": "android-arm64", "emulated": False,
       "bench": BENCH.model_dump()}


def log(name: str) -> str:
    return (DATA / name).read_text()


def cell(delegate: str, threads: int = 4) -> dict[str, Any]:
    payload = SPEC.delegates[delegate].payload
    return {"cell": f"tflite-fp32/{delegate}/t{threads}", "variant": "tflite-fp32", "runtime": SPEC.name,
            "threads": threads, "delegate": dict(payload) if payload else None, "delegate_name": delegate,
            "artifact": "/data/local/tmp/edgefleet/artifacts/k/model.tflite", "artifact_sha256": "0" * 64}


def schema_errors(line: dict[str, Any]) -> set[str]:
    try:
        ResultLine.model_validate(line)
    except ValidationError as exc:
        return {".".join(str(p) for p in e["loc"]) for e in exc.errors()}
    return set()


# -- a GPU run that the delegate took whole (Android, adb shell) --------------------------------------------

def test_gpu_run_on_a_phone_becomes_an_ok_line_in_milliseconds() -> None:
    line = result_line(cell("gpu-fp16"), parse_output(log("gpu_opencl_adb_tf43541.txt")), run=RUN, returncode=0)
    assert line["status"] == "ok" and line["reason"] is None
    assert line["load_ms"] == pytest.approx(870.557)             # Init: 870557 us
    assert line["first_inference_ms"] == pytest.approx(130.565)  # First inference: 130565
    assert (line["warmup_runs"], line["runs"]) == (4, 50)        # count=4 ..., count=50 ...
    assert line["latency_ms"] == {"mean": pytest.approx(119.375), "std": pytest.approx(1.948),
                                  "min": pytest.approx(113.737), "max": pytest.approx(124.776),
                                  "p50": None, "p90": None, "p99": None}
    assert line["runtime_info"]["warmup_avg_ms"] == pytest.approx(122.373)
    assert line["delegate"] == {"name": "gpu-fp16", "library": None,
                                "options": {"use_gpu": True, "gpu_precision_loss_allowed": True}}
    assert line["delegate_coverage"]["applied"] == "complete"
    assert line["cv"] == pytest.approx(1.948 / 119.375) and line["unstable"] is False


def test_an_ok_line_is_the_agent_schema_with_the_percentiles_benchmark_model_does_not_print_left_null() -> None:
    line = result_line(cell("gpu-fp16"), parse_output(log("gpu_opencl_adb_tf43541.txt")), run=RUN, returncode=0)
    # benchmark_model prints no percentiles, and none is invented here: the schema takes them as null.
    assert [line["latency_ms"][k] for k in ("p50", "p90", "p99")] == [None, None, None]
    assert schema_errors(line) == set()
    disordered = {**line, "latency_ms": {**line["latency_ms"], "p50": line["latency_ms"]["max"] + 1}}
    assert schema_errors(disordered) == {"latency_ms"}  # what is there must still be ordered


def test_cpu_run_reports_the_memory_footprint() -> None:
    out = parse_output(log("cpu_xnnpack_rpi_xnnpack999.txt"))
    line = result_line(cell("cpu"), out, run=RUN, returncode=0)
    assert line["status"] == "ok" and line["delegate"] is None
    assert line["runtime_info"]["memory_footprint_mb"] == {"init": 8.97656, "overall": 18.7227}
    assert line["latency_ms"]["mean"] == pytest.approx(55.0432)
    assert line["load_ms"] == pytest.approx(18.777)
    assert line["delegate_coverage"] is None  # op profiling was on, but the log ends before its tables


# -- runs that must not become a latency ----------------------------------------------------------------------

def test_a_gpu_delegate_that_failed_to_apply_is_an_error() -> None:
    out = parse_output(log("gpu_build_failed_coral_tf62753.txt"))
    line = result_line(cell("gpu-fp32"), out, run=RUN, returncode=1)
    assert line["status"] == "error" and line["latency_ms"] is None and line["runs"] is None
    assert "exited with code 1" in line["reason"] and "Failed to build program executable" in line["reason"]
    assert schema_errors(line) == set()


def test_a_delegate_that_took_no_node_is_reported_not_timed_as_cpu() -> None:
    out = parse_output(log("nnapi_not_applied_logcat_tf56301.txt"))
    assert out.delegation is not None and (out.delegation.name, out.delegation.applied) == ("NNAPI", "none")
    line = result_line(cell("nnapi"), out, run=RUN, returncode=0)
    assert line["status"] == "error" and line["latency_ms"] is None
    assert "NNAPI delegate was not applied" in line["reason"] and "CPU" in line["reason"]
    assert schema_errors(line) == set()


def test_the_same_fallback_with_timings_present_still_reports_none() -> None:
    # A complete run whose delegate took nothing: its numbers are the CPU's, under the delegate's name.
    text = log("nnapi_not_applied_logcat_tf56301.txt") + log("gpu_opencl_adb_tf43541.txt").split("STARTING!")[1] \
        .replace("Explicitly applied GPU delegate, and the model graph will be completely executed by the delegate.",
                 "")
    line = result_line(cell("nnapi"), parse_output(text), run=RUN, returncode=0)
    assert line["status"] == "error" and line["latency_ms"] is None


def test_a_crash_mid_run_is_a_truncated_output() -> None:
    line = result_line(cell("cpu", 1), parse_output(log("segfault_pixel4_iree3472.txt")), run=RUN, returncode=139)
    assert line["status"] == "error" and "exited with code 139" in line["reason"]
    assert "Segmentation fault" in line["reason"]
    no_code = result_line(cell("cpu", 1), parse_output(log("segfault_pixel4_iree3472.txt")), run=RUN, returncode=0)
    assert no_code["reason"].startswith("truncated output") and "Segmentation fault" in no_code["reason"]


@pytest.mark.parametrize("cut_after", ["count=4 first=130565", "Running benchmark for at least 50",
                                       "count=50 first=119212"])
def test_a_log_cut_before_its_timings_line_is_truncated(cut_after: str) -> None:
    text = log("gpu_opencl_adb_tf43541.txt")
    line = result_line(cell("gpu-fp16"), parse_output(text[:text.index(cut_after) + len(cut_after)]), run=RUN,
                       returncode=None)
    assert line["status"] == "error" and line["reason"].startswith("truncated output")
    assert line["latency_ms"] is None and schema_errors(line) == set()


def test_a_gpu_cell_whose_log_never_says_the_delegate_applied_is_an_error() -> None:
    text = log("cpu_xnnpack_rpi_xnnpack999.txt")  # complete timings, but no delegate statement
    line = result_line(cell("gpu-fp32"), parse_output(text), run=RUN, returncode=0)
    assert line["status"] == "error" and "did not say whether the delegate" in line["reason"]


def test_op_profiling_counts_nodes_on_the_delegate_and_on_the_cpu() -> None:
    out = parse_output(log("op_profile_cpu_summary_tf53138.txt"))
    assert out.nodes_executed == 64
    assert out.node_types == {"CONV_2D": 34, "DEPTHWISE_CONV_2D": 13, "TFLite_Detection_PostProcess": 1,
                              "CONCATENATION": 2, "LOGISTIC": 1}
    line = result_line(cell("cpu"), out, run=RUN, returncode=None)
    assert line["delegate_coverage"] == {"delegate_nodes": 0, "total_nodes": 64, "cpu_nodes": 64,
                                         "source": "benchmark_model op profiling"}


def test_logcat_and_info_prefixes_are_stripped() -> None:
    out = parse_output(log("nnapi_not_applied_logcat_tf56301.txt"))
    assert out.last_line.startswith("Though NNAPI delegate")
    assert parse_output(log("gpu_build_failed_coral_tf62753.txt")).errors[0].startswith("Failed to build program")


# -- commands ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("delegate", "flags"), [
    ("cpu", []),
    ("gpu-fp16", ["--use_gpu=true", "--gpu_precision_loss_allowed=true"]),
    ("gpu-fp32", ["--use_gpu=true", "--gpu_precision_loss_allowed=false"]),
    ("nnapi", ["--use_nnapi=true"]),
])
def test_each_delegate_sets_its_flags(delegate: str, flags: list[str]) -> None:
    assert delegate_flags(SPEC.delegates[delegate].payload) == flags


@pytest.mark.parametrize(("threads", "delegate", "bench", "op_profiling", "expected"), [
    (1, "cpu", Bench(), False,
     ["/w/bin/bm", "--graph=/w/m.tflite", "--num_threads=1", "--warmup_runs=5", "--warmup_min_secs=0",
      "--num_runs=50", "--min_secs=2.0"]),
    (4, "gpu-fp16", Bench(warmup_runs=10, min_runs=100, min_duration_s=10.0), False,
     ["/w/bin/bm", "--graph=/w/m.tflite", "--num_threads=4", "--use_gpu=true", "--gpu_precision_loss_allowed=true",
      "--warmup_runs=10", "--warmup_min_secs=0", "--num_runs=100", "--min_secs=10.0"]),
    (2, "gpu-fp32", Bench(warmup_runs=0, min_runs=1, min_duration_s=0.0), True,
     ["/w/bin/bm", "--graph=/w/m.tflite", "--num_threads=2", "--use_gpu=true", "--gpu_precision_loss_allowed=false",
      "--warmup_runs=0", "--warmup_min_secs=0", "--num_runs=1", "--min_secs=0.0", "--enable_op_profiling=true"]),
    (8, "nnapi", Bench(min_duration_s=0.5), True,
     ["/w/bin/bm", "--graph=/w/m.tflite", "--num_threads=8", "--use_nnapi=true", "--warmup_runs=5",
      "--warmup_min_secs=0", "--num_runs=50", "--min_secs=0.5", "--enable_op_profiling=true"]),
])
def test_benchmark_command_table(threads: int, delegate: str, bench: Bench, op_profiling: bool,
                                 expected: list[str]) -> None:
    assert benchmark_argv("/w/bin/bm", "/w/m.tflite", threads, SPEC.delegates[delegate].payload, bench,
                          op_profiling=op_profiling) == expected
