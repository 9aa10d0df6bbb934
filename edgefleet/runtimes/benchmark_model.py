"""TFLite's benchmark_model binary, for devices without Python (Android over adb): it measures in place of
the agent, with the GPU delegate, NNAPI or CPU threads. The binary comes from the Android builder (the
android.aar step builds it beside the AARs) or from a local file the profile names (runtime.benchmark_binary).

Each delegate's payload is the benchmark_model flags it sets (edgefleet/android/commands.py turns them into
``--flag=value``), so a new delegate is a table row here, not a branch anywhere else."""
from edgefleet.runtimes.base import DelegateSpec, RuntimeSpec

SPEC = RuntimeSpec(
    name="tflite-benchmark-model", profile_names=("tflite-benchmark-model",), formats=("tflite",), device_modules=(),
    delegates={"cpu": DelegateSpec(), "gpu-fp16": DelegateSpec({"use_gpu": True, "gpu_precision_loss_allowed": True}),
               "gpu-fp32": DelegateSpec({"use_gpu": True, "gpu_precision_loss_allowed": False}),
               "nnapi": DelegateSpec({"use_nnapi": True})},
    sources=("device",), agent=False)

BINARY = "benchmark_model"
MODEL_SUFFIX = ".tflite"  # the one model format benchmark_model reads
# `uname -m` of the device -> the Android ABI of the binary built for it (files are BINARY-<abi>).
ABI_FOR_ARCH = {"aarch64": "arm64-v8a", "armv7l": "armeabi-v7a", "x86_64": "x86_64"}


def built_name(arch: str) -> str | None:
    """The file name of the builder's binary for a device of this arch, or None when none is built for it."""
    abi = ABI_FOR_ARCH.get(arch)
    return f"{BINARY}-{abi}" if abi else None
