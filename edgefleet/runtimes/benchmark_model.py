"""TFLite's benchmark_model binary, for devices without Python (Android over adb): it measures in place of
the agent, with the GPU delegate or CPU threads. The binary comes from the Android builder or the device."""
from edgefleet.runtimes.base import DelegateSpec, RuntimeSpec

SPEC = RuntimeSpec(
    name="tflite-benchmark-model", profile_names=("tflite-benchmark-model",), formats=(), device_modules=(),
    delegates={"cpu": DelegateSpec(), "gpu-fp16": DelegateSpec({"use_gpu": True, "gpu_precision_loss_allowed": True}),
               "gpu-fp32": DelegateSpec({"use_gpu": True, "gpu_precision_loss_allowed": False}),
               "nnapi": DelegateSpec({"use_nnapi": True})},
    sources=("device",), agent=False)
