"""Android over adb without a phone: the device facts parsers, the dry-run plan of the real deploy API, the
upload hashing over adb, and the real `adb`'s error when no phone is attached."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from edgefleet.android.facts import device_facts, parse_cpuinfo, parse_getprop, parse_thermal
from edgefleet.api.build import BuildOptions, build
from edgefleet.api.context import Env
from edgefleet.api.deploy import DeployOptions, deploy
from edgefleet.errors import EXIT_TRANSPORT, ConfigError, TransportError
from edgefleet.profiles.load import load_profile
from edgefleet.transport.adb import SHA256_COMMANDS, parse_sha256, sha256_argv

pytest_plugins = ["adb_fixtures"]

REPO = Path(__file__).resolve().parents[1]
INVOKE = str(Path(sys.executable).with_name("invoke"))
TARGET = "android-arm64"

# Format samples of the three commands (getprop's [key]: [value], /proc/cpuinfo of an arm64 kernel, and
# `grep -H .` over sysfs), written for these tests: no phone was read.
GETPROP = """\
[ro.board.platform]: [lito]
[ro.build.version.release]: [12]
[ro.build.version.sdk]: [31]
[ro.product.cpu.abi]: [arm64-v8a]
[ro.product.model]: [Pixel 4a (5G)]
[ro.product.manufacturer]: [Google]
[persist.sys.locale]: [en-US]
"""
CPUINFO = """\
processor\t: 0
BogoMIPS\t: 38.40
CPU implementer\t: 0x51
CPU part\t: 0x805

processor\t: 1
CPU implementer\t: 0x51
CPU part\t: 0x805

processor\t: 6
CPU implementer\t: 0x41
CPU part\t: 0xd0d

Hardware\t: Qualcomm Technologies, Inc LITO
"""
THERMAL = """\
/sys/class/thermal/thermal_zone10/type:gpu-usr
/sys/class/thermal/thermal_zone10/temp:41300
/sys/class/thermal/thermal_zone2/type:cpu-1-0-usr
/sys/class/thermal/thermal_zone2/temp:43100
/sys/class/thermal/thermal_zone3/type:sdm-therm
/sys/class/thermal/thermal_zone3/temp:not readable
"""


# -- device facts ------------------------------------------------------------------------------------------

def test_getprop_gives_model_platform_and_release() -> None:
    facts = device_facts(parse_getprop(GETPROP))
    assert (facts["model"], facts["platform"], facts["android"], facts["abi"]) == \
        ("Pixel 4a (5G)", "lito", "12", "arm64-v8a")
    assert facts["build"] is None  # not in the output: unknown, not empty


@pytest.mark.parametrize(("text", "expected"), [
    (CPUINFO, {"cpu_count": 3, "hardware": "Qualcomm Technologies, Inc LITO", "cores": ["0x41/0xd0d", "0x51/0x805"]}),
    ("", {"cpu_count": None, "hardware": None, "cores": []}),
])
def test_cpuinfo_table(text: str, expected: dict) -> None:
    assert parse_cpuinfo(text) == expected


def test_thermal_zones_in_the_agents_shape_unreadable_ones_dropped() -> None:
    assert parse_thermal(THERMAL) == [
        {"zone": "thermal_zone2", "type": "cpu-1-0-usr", "temp_c": 43.1, "temp_raw": 43100},
        {"zone": "thermal_zone10", "type": "gpu-usr", "temp_c": 41.3, "temp_raw": 41300},
    ]


# -- upload hashing over adb -------------------------------------------------------------------------------

@pytest.mark.parametrize(("tool", "argv"), [
    (SHA256_COMMANDS[0], ["sha256sum", "--", "/data/local/tmp/x y"]),
    (SHA256_COMMANDS[1], ["toybox", "sha256sum", "--", "/data/local/tmp/x y"]),
])
def test_sha256_commands_in_fallback_order(tool, argv) -> None:
    assert sha256_argv("/data/local/tmp/x y", tool) == argv


@pytest.mark.parametrize(("stdout", "digest"), [
    ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  /data/local/tmp/f\n",
     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    ("\\E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855  /a\\nb\n",
     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    ("toybox: Unknown command sha256sum\n", None),
    ("", None),
])
def test_parse_sha256(stdout: str, digest: str | None) -> None:
    assert parse_sha256(stdout) == digest


# -- the profile's runtime fields --------------------------------------------------------------------------

def test_benchmark_binary_is_checked_at_load(tmp_path: Path) -> None:
    targets = tmp_path / "targets"
    shutil.copytree(REPO / "targets", targets)
    profile = targets / f"{TARGET}.yaml"
    profile.write_text(profile.read_text().replace("  provided_by: device\n",
                                                   "  provided_by: device\n  benchmark_binary: /nonexistent/bm\n"))
    with pytest.raises(ConfigError, match=rf"{TARGET}.yaml:\d+.*benchmark_binary.*no such file"):
        load_profile(targets, TARGET)
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF")
    profile.write_text(profile.read_text().replace("/nonexistent/bm", str(binary)))
    assert load_profile(targets, TARGET).profile.runtime.benchmark_binary == str(binary)


# -- the real deploy API, no phone ---------------------------------------------------------------------------

def recording_env() -> tuple[Env, Console]:
    console = Console(record=True, width=400, file=open(os.devnull, "w"), highlight=False)
    return Env(console=console), console


@pytest.fixture(scope="module")
def built_ws(tmp_path_factory) -> Path:
    """A workspace where the android-arm64 target's .tflite variants are built for real (the android.aar step
    ends "not built here": no Bazel, no network)."""
    root = tmp_path_factory.mktemp("ws")
    for name in ("targets", "builders", "templates", "models"):
        shutil.copytree(REPO / name, root / name)
    for name in ("edgefleet.yaml", "tasks.py"):
        shutil.copy(REPO / name, root / name)
    build(BuildOptions(target=TARGET, workspace=root, backend="local"), recording_env()[0])
    return root


def test_dry_run_without_anything_built_says_what_is_missing(workspace_copy: Path) -> None:
    env, console = recording_env()
    outcome = deploy(DeployOptions(target=TARGET, dry_run=True, workspace=workspace_copy), env)
    text = console.export_text()
    assert "benchmark_model: not built here, give runtime.benchmark_binary" in text
    assert "models: 0" in text and outcome.plan.cells == 0 and outcome.applied is None


@pytest.mark.convert
@pytest.mark.slow
def test_dry_run_shows_binary_models_and_one_command_per_cell(built_ws: Path) -> None:
    env, console = recording_env()
    outcome = deploy(DeployOptions(target=TARGET, dry_run=True, workspace=built_ws), env)
    text = console.export_text()
    profile = load_profile(built_ws / "targets", TARGET).profile
    bench = profile.bench
    assert "benchmark_model: not built here" in text
    assert "model tflite-fp32" in text and "model tflite-fp16" in text
    commands = [line.split(": ", 1)[1] for line in text.splitlines() if "--graph=" in line]
    # Every variant x delegate x thread count of the profile is one shell-quoted command.
    assert len(commands) == outcome.plan.cells == 2 * len(bench.delegates) * len(bench.threads)
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == f"{profile.workdir}/bin/benchmark_model"
        assert argv[1].startswith(f"--graph={profile.workdir}/artifacts/") and argv[1].endswith(".tflite")
        assert f"--num_runs={bench.min_runs}" in argv and f"--warmup_runs={bench.warmup_runs}" in argv
        assert f"--min_secs={bench.min_duration_s}" in argv
    gpu16 = [c for c in commands if "--gpu_precision_loss_allowed=true" in c]
    gpu32 = [c for c in commands if "--gpu_precision_loss_allowed=false" in c]
    assert len(gpu16) == len(gpu32) == 2 * len(bench.threads)
    assert all("--use_gpu=true" in c for c in gpu16 + gpu32)
    assert [u.what for u in outcome.plan.uploads] == ["model tflite-fp32", "model tflite-fp16"]


@pytest.mark.convert
@pytest.mark.slow
def test_deploy_without_a_phone_fails_with_adbs_answer(built_ws: Path, private_adb_server: dict[str, str]) -> None:
    # The models are built (a deploy builds what is missing first); the phone is asked before anything is sent.
    env, _ = recording_env()
    with pytest.raises(TransportError) as caught:
        deploy(DeployOptions(target=TARGET, workspace=built_ws, backend="local"), env)
    message = str(caught.value)
    assert "no Android device attached (`adb devices` lists none)" in message and "USB debugging" in message
    assert caught.value.exit_code == EXIT_TRANSPORT


@pytest.mark.convert
@pytest.mark.slow
def test_invoke_deploy_without_a_phone_exits_with_the_transport_code(built_ws: Path,
                                                                      private_adb_server: dict[str, str]) -> None:
    done = subprocess.run([INVOKE, "deploy", "--target", TARGET, "--backend", "local"], cwd=built_ws,
                          env=private_adb_server, capture_output=True, text=True, timeout=900)
    assert done.returncode == EXIT_TRANSPORT, done.stdout[-2000:] + done.stderr[-2000:]
    assert "no Android device attached" in done.stdout + done.stderr
