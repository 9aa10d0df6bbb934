"""`cpu` and `xnnpack` time different things: `cpu` turns TFLite's default delegate (XNNPACK) off.

Real interpreters only: the agent (its zipapp, run as a device runs it) with this host's LiteRT, and the
agent's TFLite plug-in directly against each interpreter module installed here (ai_edge_litert,
tensorflow.lite). The payloads are the host's own (edgefleet/runtimes/tflite.py), as deploy plans them.
"""
from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import pytest
from agent_fixtures import FAST_BENCH, Models, run_agent, tflite_cell, write_run

from edgefleet.agent.efagent import runtimes as agent_runtimes
from edgefleet.results.schema import ResultLine
from edgefleet.runtimes import get_runtime

pytest_plugins = ["agent_fixtures"]
pytestmark = pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected")

PAYLOADS = {name: dict(get_runtime("tflite").delegates[name].payload) for name in ("cpu", "xnnpack")}


def test_the_host_asks_cpu_for_no_default_delegates_and_xnnpack_for_them() -> None:
    assert PAYLOADS["cpu"] == {"name": "cpu", "default_delegates": False}
    assert PAYLOADS["xnnpack"] == {"name": "xnnpack", "default_delegates": True}


def test_agent_cells_record_whether_xnnpack_ran(tmp_path: Path, agent_models: Models, agent_pyz: Path) -> None:
    cells = [tflite_cell(agent_models, "fp32", 1, cell=f"fp32/{name}/t1", delegate=payload, delegate_name=name)
             for name, payload in PAYLOADS.items()]
    run_dir = write_run(tmp_path / "run", agent_models, cells, run_id="run-cpu-xnnpack",
                        bench=dict(FAST_BENCH, min_duration_s=0.05, cooldown_s=0.0))
    proc = run_agent(agent_pyz, "run", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    lines = {line["cell"]: line for line in map(json.loads, (run_dir / "results.jsonl").read_text().splitlines())}
    cpu, xnnpack = lines["fp32/cpu/t1"], lines["fp32/xnnpack/t1"]
    for line in (cpu, xnnpack):
        assert line["status"] == "ok", line["reason"]
        ResultLine.model_validate(line)
    assert cpu["runtime_info"]["module"] == "ai_edge_litert.interpreter"
    assert (cpu["runtime_info"]["default_delegates"], cpu["runtime_info"]["xnnpack"]) == ("off", False)
    assert (xnnpack["runtime_info"]["default_delegates"], xnnpack["runtime_info"]["xnnpack"]) == ("on", True)
    assert "xnnpack_note" not in cpu["runtime_info"] and "xnnpack_note" not in xnnpack["runtime_info"]
    # What the interpreter ran differs too: XNNPACK's partitions are DELEGATE nodes, and only xnnpack has them.
    assert cpu["delegate_coverage"]["delegate_nodes"] == 0
    assert xnnpack["delegate_coverage"]["delegate_nodes"] >= 1
    assert cpu["delegate_coverage"]["explicit_delegate"] is False is xnnpack["delegate_coverage"]["explicit_delegate"]
    assert cpu["env"]["delegate"]["name"] == "cpu" and cpu["env"]["delegate"]["library"] is None


@pytest.mark.parametrize("module", ["ai_edge_litert.interpreter", "tensorflow.lite"])
def test_each_interpreter_here_can_turn_xnnpack_off(agent_models: Models, module: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip(module.split(".")[0])
    # Choose the module the plug-in loads by putting it first in the agent's own search order.
    order = tuple(entry for entry in agent_runtimes._TFLITE_MODULES if entry[0] == module)
    monkeypatch.setattr(agent_runtimes, "_TFLITE_MODULES", order)
    runtime = agent_runtimes.TFLiteRuntime()
    cpu = runtime.load(str(agent_models.fp32), 1, PAYLOADS["cpu"], {})
    xnnpack = runtime.load(str(agent_models.fp32), 1, PAYLOADS["xnnpack"], {})
    assert cpu.info["module"] == module
    assert (cpu.info["default_delegates"], cpu.info["xnnpack"]) == ("off", False)
    assert (xnnpack.info["default_delegates"], xnnpack.info["xnnpack"]) == ("on", True)
    assert cpu.delegate_coverage()["delegate_nodes"] == 0 < xnnpack.delegate_coverage()["delegate_nodes"]
    # Both compute the same thing: only the kernels differ.
    import numpy as np

    feeds = np.random.default_rng(0).random(cpu.input_details()[0]["shape"]).astype(np.float32)
    outputs = []
    for session in (cpu, xnnpack):
        session.set_input(0, feeds)
        session.invoke()
        outputs.append(session.get_outputs()[0])
    assert np.allclose(outputs[0], outputs[1], atol=1e-4)


def test_no_payload_keeps_the_runtime_default(agent_models: Models) -> None:
    # A cell with no delegate (older run.json files) is TFLite's default path, and says whether XNNPACK ran.
    session = agent_runtimes.TFLiteRuntime().load(str(agent_models.fp32), 1, None, {})
    assert (session.info["default_delegates"], session.info["xnnpack"]) == ("on", True)


def test_where_xnnpack_cannot_be_turned_off_the_cpu_cell_says_so(agent_models: Models,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # tflite-runtime before 2.5 has no OpResolverType. Such an interpreter module is made here from the real
    # LiteRT one minus the enum: its Interpreter is the real one, which applies XNNPACK by default.
    litert = importlib.import_module("ai_edge_litert.interpreter")
    old = types.ModuleType("old_tflite_interpreter")
    old.Interpreter, old.load_delegate = litert.Interpreter, litert.load_delegate
    monkeypatch.setitem(sys.modules, old.__name__, old)
    monkeypatch.setattr(agent_runtimes, "_TFLITE_MODULES", ((old.__name__, ()),))
    runtime = agent_runtimes.TFLiteRuntime()
    assert runtime._without_default_delegates(old) is None
    assert runtime._without_default_delegates(litert) is litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    cpu = runtime.load(str(agent_models.fp32), 1, PAYLOADS["cpu"], {})
    assert (cpu.info["default_delegates"], cpu.info["xnnpack"]) == ("on", True)
    assert "cannot turn off its default delegates" in cpu.info["xnnpack_note"]
    assert "the two time the same thing" in cpu.info["xnnpack_note"]
