"""``android.aar``: build the TensorFlow Lite AARs (CPU and GPU delegate) and TFLite's ``benchmark_model``
binary (what measures on a phone without Python) from TensorFlow source with Bazel.

Runs in the android-aar builder image, which provides Bazel, the Android SDK and NDK
r21e and a configured TensorFlow source tree. Bazel still downloads TensorFlow's
external repositories, so the step needs network; anything missing fails fast with a
message naming it, instead of a Bazel run that hangs or dies an hour in.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from edgefleet.errors import BuildError, ToolUnavailableError
from edgefleet.images.wheelhouse import run_logged
from edgefleet.steps.base import StepContext, StepResult

ABIS = ("arm64-v8a", "armeabi-v7a", "x86", "x86_64")
DEFAULT_ABIS = ("arm64-v8a", "armeabi-v7a")
TARGETS = {
    "tensorflow-lite.aar": "//tensorflow/lite/java:tensorflow-lite",
    "tensorflow-lite-gpu.aar": "//tensorflow/lite/java:tensorflow-lite-gpu",
}
BENCHMARK_TARGET = "//tensorflow/lite/tools/benchmark:benchmark_model"
# ABI -> TensorFlow's .bazelrc config that cross-compiles a binary for it (the AARs use --fat_apk_cpu instead).
BENCHMARK_CONFIGS = {"arm64-v8a": "android_arm64", "armeabi-v7a": "android_arm", "x86_64": "android_x86_64"}
# Bazel fetches TensorFlow's external repositories from GitHub and Google's mirrors.
NETWORK_PROBES = (("github.com", 443), ("storage.googleapis.com", 443))
PROBE_TIMEOUT_S = 3.0


def android_aar(ctx: StepContext) -> StepResult:
    # The planner passes the profile's fat_apk_cpu; "abis" is the older name of the same list.
    abis = _abis(ctx.params.get("fat_apk_cpu", ctx.params.get("abis", list(DEFAULT_ABIS))))
    env = os.environ
    missing = missing_prerequisites(env)
    if missing:
        raise ToolUnavailableError("android.aar cannot build here; it needs " + "; ".join(missing))
    source = Path(env["EDGEFLEET_TF_SOURCE"])
    with tempfile.TemporaryDirectory(prefix="bazel-") as tmp:
        _bazel(bazel_command(abis, Path(tmp)), source, ctx)
        for name in TARGETS:
            shutil.copy2(Path(tmp) / "out-bin" / "tensorflow" / "lite" / "java" / name, ctx.out_dir / name)
        # Second build, same output root (its cache is shared): the binaries, one config per ABI. The out-bin
        # link now points at that config's outputs, so the AARs were copied first.
        binaries = []
        for abi in (a for a in abis if a in BENCHMARK_CONFIGS):
            _bazel(benchmark_command(abi, Path(tmp)), source, ctx)
            binaries.append(f"benchmark_model-{abi}")
            shutil.copy2(Path(tmp) / "out-bin" / "tensorflow" / "lite" / "tools" / "benchmark" / "benchmark_model",
                         ctx.out_dir / binaries[-1])
    return StepResult(
        files=[*TARGETS, *binaries],
        report={"abis": list(abis), "targets": [*TARGETS.values(), BENCHMARK_TARGET], "benchmark_model": binaries},
        tool_versions={"bazel": _bazel_version(), "tensorflow_source": env.get("EDGEFLEET_TF_SOURCE_TAG", "unknown"),
                       "ndk": Path(env["ANDROID_NDK_HOME"]).name},
    )


def bazel_command(abis: tuple[str, ...], workdir: Path) -> list[str]:
    """The AAR build: both targets, optimized, one fat AAR holding every requested ABI."""
    return [
        "bazel", f"--output_user_root={workdir}/root", "build", "-c", "opt",
        f"--fat_apk_cpu={','.join(abis)}",
        "--host_crosstool_top=@bazel_tools//tools/cpp:toolchain",
        "--define=android_dexmerger_tool=d8_dexmerger",
        "--define=android_incremental_dexing_tool=d8_dexbuilder",
        # bazel-* links go to the scratch dir: the source tree is read-only to the step's user.
        f"--symlink_prefix={workdir}/out-",
        *TARGETS.values(),
    ]


def benchmark_command(abi: str, workdir: Path) -> list[str]:
    """TFLite's benchmark_model for one ABI, in the AAR build's output root so the two share Bazel's cache."""
    return [
        "bazel", f"--output_user_root={workdir}/root", "build", "-c", "opt", f"--config={BENCHMARK_CONFIGS[abi]}",
        f"--symlink_prefix={workdir}/out-", BENCHMARK_TARGET,
    ]


def _bazel(command: list[str], source: Path, ctx: StepContext) -> None:
    code, lines = run_logged(command, ctx.log, cwd=source)
    if code != 0:
        raise BuildError("android.aar: the Bazel build failed", command=command, returncode=code, log=lines)


def _abis(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or any(v not in ABIS for v in value):
        raise BuildError(f"android.aar: params.abis must be a non-empty list of {', '.join(ABIS)}; got {value!r}")
    return tuple(value)


def missing_prerequisites(env: Mapping[str, str]) -> list[str]:
    """What this machine lacks for the AAR build, each with where it comes from."""
    missing = []
    if shutil.which("bazel", path=env.get("PATH")) is None:
        missing.append("Bazel on PATH (the android-aar image pins the release TensorFlow's .bazelversion names)")
    sdk = env.get("ANDROID_HOME")
    if not sdk or not Path(sdk, "platforms").is_dir():
        missing.append("the Android SDK with a platform (API >= 23) and build-tools at $ANDROID_HOME")
    ndk = env.get("ANDROID_NDK_HOME")
    if not ndk or not Path(ndk, "source.properties").is_file():
        missing.append("the Android NDK r21e at $ANDROID_NDK_HOME")
    source = env.get("EDGEFLEET_TF_SOURCE")
    if not source or not Path(source, ".tf_configure.bazelrc").is_file():
        missing.append("a configured TensorFlow source tree (cloned from github.com/tensorflow/tensorflow) "
                       "at $EDGEFLEET_TF_SOURCE")
    unreachable = [f"{host}:{port}" for host, port in NETWORK_PROBES if not _reachable(host, port)]
    if unreachable:
        missing.append(f"network access to {', '.join(unreachable)} (Bazel downloads TensorFlow's external "
                       f"repositories)")
    return missing


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _bazel_version() -> str:
    try:
        out = subprocess.run(["bazel", "--version"], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip().removeprefix("bazel ") or "unknown"
