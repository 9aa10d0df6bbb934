"""The runtime-compatibility check: a TFLite variant must load in the runtime version its target pins.

Real components only: the host's TensorFlow converts, pip installs tflite-runtime 2.14.0's x86_64 wheel
(and numpy<2) from PyPI into a venv, and that runtime loads the models in a subprocess.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from convert_fixtures import KERAS_SPEC, conversion_params, run_step

from edgefleet.compat.load import LoadCheck, check_load, parse_problems
from edgefleet.compat.runtimes import RuntimePin, pinned_tflite_runtime
from edgefleet.compat.venv import CACHE_DIR, READY_FILE, RuntimeVenv, ensure_runtime_venv, venv_path
from edgefleet.plan.model import SourceInput, StepInput
from edgefleet.plan.planner import PlanInputs, plan_build
from edgefleet.profiles.model import Profile
from edgefleet.recipes.model import Recipe
from edgefleet.errors import EXIT_TOOL_UNAVAILABLE
from edgefleet.steps.process import ERROR_FILE, STEP_MODULE

pytest_plugins = ["convert_fixtures"]
PIN = RuntimePin(distribution="tflite-runtime", version="2.14.0")
# TF 2.14's kernels register FULLY_CONNECTED up to a lower version; newer converters may emit this one.
UNKNOWN_VERSION = 13
REJECTED = f"tflite-runtime 2.14.0 cannot load this model: builtin op FULLY_CONNECTED version {UNKNOWN_VERSION} " \
           "is unknown to it"


# ---------------------------------------------------------------- planning (pure)

@pytest.mark.parametrize("packages, pinned", [
    (["tflite-runtime==2.14.0"], ("tflite-runtime", "2.14.0")),
    (["tflite_runtime==2.14.0"], ("tflite-runtime", "2.14.0")),
    (["ai-edge-litert==2.3.0", "numpy>=1.24,<3"], ("ai-edge-litert", "2.3.0")),
    # The agent tries ai-edge-litert first, so that is the runtime that would load the model.
    (["tflite-runtime==2.14.0", "ai-edge-litert==2.3.0"], ("ai-edge-litert", "2.3.0")),
    (["tflite-runtime>=2.14"], None),
    (["tflite-runtime==2.*"], None),
    (["onnxruntime==1.32.0"], None),
    ([], None),
])
def test_the_pinned_tflite_runtime_comes_from_the_runtime_packages(packages, pinned):
    pin = pinned_tflite_runtime(packages)
    assert (None if pin is None else (pin.distribution, pin.version)) == pinned


def plan_for(formats: dict, runtime: dict):
    recipe = Recipe.model_validate({
        "name": "net", "source": {"format": "keras", "path": "net.keras"},
        "input": {"shape": [1, 32, 32, 3], "normalization": {"mean": [0, 0, 0], "std": [255, 255, 255]}},
        "task": {"kind": "classification", "classes": ["a", "b"], "postprocess": {"kind": "argmax"}},
        "calibration": {"path": "calib.npy"},
    })
    profile = Profile.model_validate({
        "name": "dev", "device": {"board": "b", "arch": "armv7l", "os": "o", "python": "3.11"},
        "runtime": runtime, "formats": formats, "workdir": "/opt/ef",
    })
    return plan_build(PlanInputs(recipe, profile, SourceInput(Path("m"), "a" * 64),
                                 SourceInput(Path("calib.npy"), "c" * 64), {"tf": "v1", "runtime": "v2"}))


def pinned(version: str = "2.14.0") -> dict:
    return {"name": "tflite-runtime", "packages": [f"tflite-runtime=={version}"], "platform_tags": ["linux_armv7l"]}


def test_a_pinned_runtime_gets_a_load_check_that_carries_each_tflite_variant():
    plan = plan_for({"tflite": {"quantizations": ["fp32", "full-int8"]}, "edgetpu": {}}, pinned())
    assert [(s.id, s.kind, s.variant) for s in plan.steps] == [
        ("tflite/fp32/convert", "tflite.convert", None),
        ("tflite/fp32", "tflite.runtime_compat", "tflite-fp32"),
        ("tflite/full-int8/convert", "tflite.convert", None),
        ("tflite/full-int8", "tflite.runtime_compat", "tflite-full-int8"),
        ("edgetpu/preflight", "edgetpu.preflight", None),
        ("edgetpu/compiled", "edgetpu.compile", "edgetpu"),
        ("runtime/wheelhouse", "runtime.wheelhouse", None),
    ]
    check = plan.step("tflite/fp32")
    assert check.inputs == {"model": StepInput("tflite/fp32/convert"),
                            "build": StepInput("tflite/fp32/convert", "manifest.json")}
    assert check.params == {"runtime": {"distribution": "tflite-runtime", "version": "2.14.0"}}
    assert check.runtime == "tflite"
    # The Edge TPU compiler takes the converted model itself, whatever the load check says.
    assert plan.step("edgetpu/compiled").inputs["model"] == StepInput("tflite/full-int8/convert")
    assert any("tflite-runtime 2.14.0" in note for note in plan.notes)


def test_the_check_key_follows_the_runtime_version_and_the_conversion_key_does_not():
    old, new = (plan_for({"tflite": {"quantizations": ["fp32"]}}, pinned(v)) for v in ("2.14.0", "2.13.0"))
    assert old.step("tflite/fp32").key != new.step("tflite/fp32").key
    assert old.step("tflite/fp32/convert").key == new.step("tflite/fp32/convert").key


@pytest.mark.parametrize("runtime", [
    {"name": "tflite-runtime", "provided_by": "device"},
    {"name": "tflite-runtime", "packages": ["tflite-runtime>=2.14"], "platform_tags": ["linux_armv7l"]},
    {"name": "onnxruntime", "packages": ["onnxruntime==1.32.0"], "platform_tags": ["linux_armv7l"]},
])
def test_without_an_exact_tflite_runtime_pin_the_plan_is_unchanged(runtime):
    plan = plan_for({"tflite": {"quantizations": ["fp32"]}}, runtime)
    tflite = [(s.id, s.kind, s.variant) for s in plan.steps if s.id.startswith("tflite/")]
    assert tflite == [("tflite/fp32", "tflite.convert", "tflite-fp32")]


# ---------------------------------------------------------------- the runtime's words -> reasons (pure)

@pytest.mark.parametrize("text, problems", [
    ("ValueError: Didn't find op for builtin opcode 'FULLY_CONNECTED' version '13'. An older version of this "
     "builtin might be supported. Are you using an old TFLite binary with a newer model?\nRegistration failed.",
     ["builtin op FULLY_CONNECTED version 13 is unknown to it"]),
    ("Didn't find op for builtin opcode 'CONV_2D' version '9'.\nDidn't find op for builtin opcode 'ADD' "
     "version '7'.\nDidn't find op for builtin opcode 'CONV_2D' version '9'.",
     ["builtin op CONV_2D version 9 is unknown to it", "builtin op ADD version 7 is unknown to it"]),
    ("Op builtin_code out of range: 208. Are you using old TFLite binary with newer model?",
     ["builtin op code 208 is newer than every op it knows"]),
    ("Encountered unresolved custom op: FlexConv2D.\nSee instructions: https://www.tensorflow.org/lite/guide/ops_custom",
     ["custom op FlexConv2D is not built into it"]),
    ("ValueError: Model provided has model identifier 'abcd', should be 'TFL3'\n",
     ["it failed: ValueError: Model provided has model identifier 'abcd', should be 'TFL3'"]),
])
def test_the_runtime_error_text_becomes_one_reason_per_missing_op(text, problems):
    assert parse_problems(text) == problems


# ---------------------------------------------------------------- real: models, the venv, the load

@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, calibration_npy: Path) -> tuple[Path, Path]:
    """A small classifier (conv -> dense) through the real tflite.convert step: its .tflite and manifest."""
    import keras

    from edgefleet.steps.convert import tflite_convert

    folder = tmp_path_factory.mktemp("converted")
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3), batch_size=1, name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inp)
    scores = keras.layers.Dense(10, activation="softmax", name="scores")(keras.layers.Flatten()(x))
    keras.Model(inp, scores).save(folder / "classifier.keras")
    built = run_step(tflite_convert, "tflite.convert", folder / "out",
                     {"model": folder / "classifier.keras", "calibration": calibration_npy},
                     conversion_params(KERAS_SPEC, quantization="fp32"))
    assert built.result.valid, built.result.invalid_reasons
    manifest = folder / "manifest.json"   # what the store writes beside an artifact, for the fields the check reads
    manifest.write_text(json.dumps(dataclasses.asdict(built.result)))
    return built.primary, manifest


@pytest.fixture(scope="module")
def unloadable(converted: tuple[Path, Path]) -> Path:
    """The same model claiming a FULLY_CONNECTED version tflite-runtime 2.14 does not have."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(converted[0].read_bytes(), 0))
    codes = [c for c in model.operatorCodes if c.builtinCode == schema.BuiltinOperator.FULLY_CONNECTED]
    assert len(codes) == 1 and codes[0].version < UNKNOWN_VERSION
    codes[0].version = UNKNOWN_VERSION
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = converted[0].with_name("unloadable.tflite")
    path.write_bytes(bytes(builder.Output()))
    return path


def make_workspace(root: Path) -> Path:
    (root / "targets").mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("compat") / "ws")


@pytest.fixture(scope="module")
def venv(workspace: Path) -> RuntimeVenv:
    lines: list[str] = []
    made = ensure_runtime_venv(PIN, workspace / ".edgefleet" / CACHE_DIR, lines.append)
    assert made.created and any(line.startswith("first tflite-runtime 2.14.0 load check") for line in lines)
    assert made.installed["tflite-runtime"] == "2.14.0" and made.installed["numpy"].startswith("1.")
    return made


@pytest.mark.convert
@pytest.mark.slow
def test_the_check_rejects_an_op_version_the_pinned_runtime_lacks(venv: RuntimeVenv, unloadable: Path):
    check = check_load(venv, unloadable)
    assert not check.loaded
    assert check.reasons == [REJECTED]
    assert "Didn't find op for builtin opcode 'FULLY_CONNECTED' version '13'" in (check.error or "")


@pytest.mark.convert
@pytest.mark.slow
def test_the_check_passes_what_the_pinned_runtime_loads(venv: RuntimeVenv, converted: tuple[Path, Path]):
    check = check_load(venv, converted[0])
    assert check.loaded and check.reasons == []
    assert check.report()["checked_against"] == "tflite-runtime 2.14.0"


def run_check_step(workspace: Path, model: Path, manifest: Path, name: str):
    from edgefleet.steps.compat import tflite_runtime_compat

    # Where the store stages a step, so the step finds the workspace's venv cache from its output folder.
    out_dir = workspace / ".edgefleet" / "artifacts" / f".staging-{name}" / "out"
    return run_step(tflite_runtime_compat, "tflite.runtime_compat", out_dir,
                    {"model": model, "build": manifest}, {"runtime": PIN.model_dump()})


@pytest.mark.convert
@pytest.mark.slow
def test_the_step_marks_an_unloadable_variant_invalid_and_keeps_the_conversion_verdict(
        workspace: Path, venv: RuntimeVenv, converted: tuple[Path, Path], unloadable: Path):
    built = run_check_step(workspace, unloadable, converted[1], "bad")
    assert built.result.valid is False
    assert built.result.invalid_reasons == [REJECTED]
    assert built.result.files == ["unloadable.tflite", "runtime_compat.json"]
    assert built.primary.read_bytes() == unloadable.read_bytes()
    assert built.report["fidelity"]["passed"] is True          # carried from the conversion
    assert built.report["runtime_compat"]["passed"] is False
    assert any(line == f"runtime compat FAILED: {REJECTED}" for line in built.log)
    assert not any("creating its venv" in line for line in built.log)  # the workspace's cached venv


@pytest.mark.convert
@pytest.mark.slow
def test_the_step_records_a_pass_against_the_pinned_runtime(workspace: Path, venv: RuntimeVenv,
                                                             converted: tuple[Path, Path]):
    built = run_check_step(workspace, converted[0], converted[1], "good")
    assert built.result.valid is True and built.result.invalid_reasons == []
    compat = built.report["runtime_compat"]
    assert compat["checked_against"] == "tflite-runtime 2.14.0" and compat["passed"] is True
    assert compat["runtime_packages"]["tflite-runtime"] == "2.14.0"
    assert json.loads((built.out_dir / "runtime_compat.json").read_text())["passed"] is True
    assert built.result.tool_versions == json.loads(converted[1].read_text())["tool_versions"]


ENSURE = ("import sys; from pathlib import Path; from edgefleet.compat.runtimes import RuntimePin; "
          "from edgefleet.compat.venv import ensure_runtime_venv; "
          "v = ensure_runtime_venv(RuntimePin(distribution='tflite-runtime', version='2.14.0'), Path(sys.argv[1]), "
          "lambda line: print(line, file=sys.stderr)); print('created' if v.created else 'reused')")


@pytest.mark.convert
@pytest.mark.slow
def test_concurrent_builds_make_the_venv_once(tmp_path: Path):
    cache = tmp_path / CACHE_DIR
    procs = [subprocess.Popen([sys.executable, "-c", ENSURE, str(cache)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    assert sorted(out.strip() for out, _ in results) == ["created", "reused"]
    # One finished venv, no staging folder left behind.
    name = venv_path(cache, PIN).name
    assert sorted(p.name for p in cache.iterdir()) == [name, f"{name}.lock"]
    assert (cache / name / READY_FILE).is_file()


@pytest.mark.convert
@pytest.mark.slow
def test_without_pypi_or_a_cached_venv_the_step_is_not_built_here(tmp_path: Path, converted: tuple[Path, Path]):
    ws = make_workspace(tmp_path / "ws")
    out_dir = ws / ".edgefleet" / "artifacts" / ".staging-offline" / "out"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"kind": "tflite.runtime_compat", "out_dir": str(out_dir),
                                "inputs": {"model": str(converted[0]), "build": str(converted[1])},
                                "params": {"runtime": PIN.model_dump()}}))
    # Nothing listens on the discard port: pip gets "connection refused", as on a machine without a network.
    # ... and the workspace's own (empty) venv cache, not the suite's shared one.
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "EDGEFLEET_COMPAT_CACHE")}
    env["PIP_INDEX_URL"] = "http://127.0.0.1:9/simple"
    proc = subprocess.run([sys.executable, "-m", STEP_MODULE, str(spec)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == EXIT_TOOL_UNAVAILABLE, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    error = json.loads((out_dir / ERROR_FILE).read_text())
    assert error["type"] == "ToolUnavailableError"
    message = error["message"].splitlines()[0]
    assert "the tflite-runtime 2.14.0 load check needs a venv with tflite-runtime==2.14.0, numpy<2 for Python" \
        in message
    assert "from PyPI" in message and "Run a build once where PyPI is reachable" in message
    cache = ws / ".edgefleet" / CACHE_DIR
    assert [p.name for p in cache.iterdir()] == [f"{venv_path(cache, PIN).name}.lock"]  # no half-made venv


# ---------------------------------------------------------------- real: a build of the rpi3 target

@pytest.mark.convert
@pytest.mark.slow
def test_an_rpi3_build_checks_every_tflite_variant_against_tflite_runtime_2_14(workspace_copy: Path):
    from edgefleet.plan.workspace import load_plan
    from edgefleet.backends.registry import open_backend
    from edgefleet.execute import execute_plan
    from edgefleet.profiles.load import load_profile
    from edgefleet.store import ArtifactStore
    from edgefleet.workspace import open_workspace

    ws = open_workspace(workspace_copy)
    quantizations = load_profile(ws.targets_dir, "rpi3").profile.formats.tflite.quantizations
    plan = load_plan(ws, "rpi3", None)
    # Deploy ships plan.variants by their own manifests: for tflite those are the load checks.
    assert {s.id: s.kind for s in plan.variants} == {f"tflite/{q}": "tflite.runtime_compat" for q in quantizations}
    # The whole plan, as `invoke build` runs it; only the tflite steps are this test's business.
    summary = execute_plan(plan, ArtifactStore(ws.artifacts_dir), open_backend("local", ws, os.environ), jobs=2)
    outcomes = {o.step.id: o for o in summary.outcomes}
    for q in quantizations:
        assert outcomes[f"tflite/{q}/convert"].status == "built", outcomes[f"tflite/{q}/convert"].message
        check = outcomes[f"tflite/{q}"]
        assert check.status == "built", check.message
        manifest = check.manifest
        assert manifest["variant"] == f"tflite-{q}" and manifest["valid"] is True, manifest["invalid_reasons"]
        compat = manifest["report"]["runtime_compat"]
        assert compat["checked_against"] == "tflite-runtime 2.14.0" and compat["passed"] is True
        assert manifest["report"]["fidelity"]["passed"] is True
        assert manifest["files"][0]["name"] == f"model_{q}.tflite"
        converted = outcomes[f"tflite/{q}/convert"].manifest["files"][0]
        assert manifest["files"][0]["sha256"] == converted["sha256"]
    cache = Path(os.environ["EDGEFLEET_COMPAT_CACHE"]) if os.environ.get("EDGEFLEET_COMPAT_CACHE") \
        else ws.state_dir / CACHE_DIR
    assert (venv_path(cache, PIN) / READY_FILE).is_file()


def test_a_load_check_reads_as_a_reason_per_problem():
    check = LoadCheck(distribution="ai-edge-litert", version="2.3.0", python="3.11.7", machine="x86_64",
                      loaded=False, problems=("custom op X is not built into it",))
    assert check.reasons == ["ai-edge-litert 2.3.0 cannot load this model: custom op X is not built into it"]
    assert check.report()["passed"] is False
