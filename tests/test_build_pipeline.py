"""`invoke build` end to end on the bundled model and a yolov5s-shaped ONNX, through the real CLI."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Exit

from edgefleet import errors
from edgefleet.api.build import BuildOptions, build
from edgefleet.api.context import Env
from edgefleet.console import make_console
from edgefleet.store import ArtifactStore
from edgefleet.testing.yolo_onnx import make_yolov5s_like_onnx

pytestmark = [pytest.mark.convert, pytest.mark.slow]
INVOKE = str(Path(sys.executable).with_name("invoke"))
REPO = Path(__file__).resolve().parents[1]


def invoke(ws: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # EDGEFLEET_DEBUG from the caller's shell would turn every clean message into a traceback.
    inherited = {k: v for k, v in os.environ.items() if k != errors.DEBUG_ENV}
    return subprocess.run([INVOKE, *args], cwd=ws, capture_output=True, text=True, timeout=900,
                          env={**inherited, "COLUMNS": "200", **(env or {})})


def manifests(ws: Path) -> dict[str, dict]:
    store = ArtifactStore(ws / ".edgefleet" / "artifacts")
    return {store.manifest(k)["step"]: store.manifest(k) for k in store.entries()}


def test_rpi3_builds_every_variant_then_everything_is_cached(workspace_copy):
    ws = workspace_copy
    first = invoke(ws, "build", "--target", "rpi3")
    assert first.returncode == 0, first.stdout + first.stderr
    built = manifests(ws)
    for quant in ("fp32", "fp16", "dynamic", "int8"):
        m = built[f"tflite/{quant}"]
        assert m["valid"] is True and m["variant"] == f"tflite-{quant}"
        assert m["report"]["fidelity"]["passed"] is True
        assert m["files"][0]["name"] == f"model_{quant}.tflite"
    sizes = {q: built[f"tflite/{q}"]["files"][0]["size"] for q in ("fp32", "fp16", "int8")}
    assert sizes["fp16"] < 0.6 * sizes["fp32"] and sizes["int8"] < 0.35 * sizes["fp32"]
    wheels = [Path(f["name"]).name for f in built["runtime/wheelhouse"]["files"] if f["name"].endswith(".whl")]
    assert any(w.startswith("tflite_runtime-2.14.0") and "armv7l" in w for w in wheels)

    # A no-op rebuild: every step cached, and no converter imported on that path.
    probe = ("import sys; from pathlib import Path; from edgefleet.api.build import BuildOptions, build; "
             "from edgefleet.api.context import Env; from edgefleet.console import make_console; "
             "s = build(BuildOptions(target='rpi3', workspace=Path('.')), Env(console=make_console(quiet=True))); "
             "print(sorted({o.status for o in s.outcomes})); "
             "print([m for m in ('tensorflow', 'onnx', 'onnx2tf', 'openvino', 'keras') if m in sys.modules])")
    again = subprocess.run([sys.executable, "-c", probe], cwd=ws, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["['cached']", "[]"]


def test_coral_dry_run_prints_the_plan_and_builds_nothing(workspace_copy):
    result = invoke(workspace_copy, "build", "--target", "coral", "--dry-run")
    assert result.returncode == 0, result.stderr
    for step in ("tflite/full-int8", "edgetpu/preflight", "edgetpu/compiled"):
        assert step in result.stdout
    assert "dry run: nothing was built" in result.stdout
    assert not (workspace_copy / ".edgefleet" / "artifacts").exists()


def test_misspelled_key_from_the_cli(workspace_copy):
    path = workspace_copy / "targets" / "rpi3.yaml"
    lines = path.read_text().splitlines()
    line = lines.index("  threads: [1, 2, 3, 4]") + 1
    path.write_text(path.read_text().replace("  threads: [1, 2, 3, 4]", "  thread: [1, 2, 3, 4]"))
    result = invoke(workspace_copy, "build", "--target", "rpi3")
    assert result.returncode == 2
    assert f"targets/rpi3.yaml:{line}:3: unknown key 'thread' (did you mean 'threads'?)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_edgefleet_debug_prints_the_exception_chain_and_keeps_the_exit_code(workspace_copy):
    path = workspace_copy / "targets" / "rpi3.yaml"
    path.write_text(path.read_text().replace("  threads: [1, 2, 3, 4]", "  thread: [1, 2, 3, 4]"))
    result = invoke(workspace_copy, "build", "--target", "rpi3", env={errors.DEBUG_ENV: "1"})
    assert result.returncode == errors.ConfigError.exit_code, result.stdout + result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert re.search(r"^edgefleet\.errors\.ConfigError: targets/rpi3\.yaml:\d+:3: unknown key 'thread'",
                     result.stderr, re.MULTILINE)
    # The pydantic error the ConfigError was raised "from None" over: what a bug report needs.
    assert "ValidationError" in result.stderr
    assert "During handling of the above exception, another exception occurred" in result.stderr


def all_errors() -> list[type[errors.EdgefleetError]]:
    found, pending = [], [errors.EdgefleetError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_readme_tables_every_exit_code_and_each_error_has_its_own():
    classes = [c for c in all_errors() if c.__module__ == "edgefleet.errors"]
    codes = [c.exit_code for c in classes]
    assert len(set(codes)) == len(codes), sorted(zip(codes, (c.__name__ for c in classes)))
    rows = re.findall(r"^\| (\d+) \| (?:`(\w+)`)?[^|]*\|", (REPO / "README.md").read_text(), re.MULTILINE)
    table = {int(code): name for code, name in rows}
    constants = {getattr(errors, n) for n in dir(errors) if n.startswith("EXIT_")}
    assert set(table) == constants == set(codes) | {errors.EXIT_OK, errors.EXIT_INTERRUPTED}
    for cls in classes:
        if cls is not errors.EdgefleetError:
            assert table[cls.exit_code] == cls.__name__, cls


@pytest.mark.parametrize("error", [errors.FleetError, errors.ChecksFailedError, errors.ToolUnavailableError,
                                   errors.DeviceBusyError])
def test_a_task_exits_with_the_errors_own_code(error, monkeypatch):
    from edgefleet.tasks import reports_errors

    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)

    @reports_errors
    def failing() -> None:
        raise error("it broke")

    with pytest.raises(Exit) as caught:
        failing()
    assert caught.value.code == error.exit_code and caught.value.message == "error: it broke"


def test_fleet_error_is_its_own_and_importable_where_it_was():
    from edgefleet.fleet import FleetError
    from edgefleet.fleet.system import FleetError as from_system

    assert FleetError is from_system is errors.FleetError
    assert not issubclass(FleetError, errors.DeployError)
    assert FleetError.exit_code == errors.EXIT_FLEET != errors.DeployError.exit_code


def test_yolov5s_shaped_onnx_through_onnx2tf_has_no_transposes(workspace_copy, tmp_path):
    ws = workspace_copy
    recipe = ws / "models" / "yolov5s" / "recipe.yaml"
    # The real release asset cannot be downloaded here: a generated ONNX of the same structure stands in.
    make_yolov5s_like_onnx(recipe.parent / "yolov5s-like.onnx")
    text = recipe.read_text().replace(
        "  url: https://github.com/ultralytics/yolov5/releases/download/v7.0/yolov5s.onnx",
        "  path: yolov5s-like.onnx")
    recipe.write_text(text)
    (ws / "targets" / "yolo-dev.yaml").write_text(
        "device: {board: this host, arch: x86_64, os: linux, python: '3.11'}\n"
        "runtime: {name: ai-edge-litert, provided_by: device}\n"
        "formats: {tflite: {quantizations: [fp32]}, onnx: {}}\nworkdir: /var/tmp/edgefleet-yolo\n")
    summary = build(BuildOptions(target="yolo-dev", model="yolov5s", workspace=ws),
                    Env(console=make_console(quiet=True)))
    by_step = {o.step.id: o for o in summary.outcomes}
    tflite = by_step["tflite/fp32"]
    assert tflite.step.kind == "onnx2tf.convert" and tflite.status == "built"
    report = tflite.manifest["report"]
    assert report["transpose_count"] == 0
    assert report["inputs"][0]["shape"] == [1, 640, 640, 3]  # NCHW in, NHWC out
    assert tflite.manifest["valid"] is True
    assert by_step["onnx"].step.kind == "onnx.import"
    assert json.dumps(report["fidelity"]["passed"]) == "true"
