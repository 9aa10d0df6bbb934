"""TensorFlow Lite through the agent: LiteRT, the standalone tflite-runtime wheel, or full TensorFlow."""
from edgefleet.runtimes.base import DelegateSpec, Distribution, RuntimeSpec

GPU = "libtensorflowlite_gpu_delegate.so"

SPEC = RuntimeSpec(
    name="tflite",
    profile_names=("tflite-runtime", "ai-edge-litert"),
    formats=("tflite", "edgetpu"),
    device_modules=("ai_edge_litert", "tflite_runtime", "tensorflow"),
    delegates={
        # TFLite's own CPU path both: "cpu" asks for its default delegates (XNNPACK) off, so it times the
        # builtin kernels; "xnnpack" keeps them on. The agent records in runtime_info whether XNNPACK ran, and
        # says so where an interpreter cannot turn it off (then the two cells time the same thing).
        "cpu": DelegateSpec({"name": "cpu", "default_delegates": False}),
        "xnnpack": DelegateSpec({"name": "xnnpack", "default_delegates": True}),
        "edgetpu": DelegateSpec({"name": "edgetpu", "library": "libedgetpu.so.1", "options": {}},
                                frozenset({"edgetpu"})),
        "gpu-fp16": DelegateSpec({"name": "gpu", "library": GPU, "options": {"precision_loss_allowed": "1"}}),
        "gpu-fp32": DelegateSpec({"name": "gpu", "library": GPU, "options": {"precision_loss_allowed": "0"}}),
        "nnapi": DelegateSpec({"name": "nnapi", "library": "libnnapi_delegate.so", "options": {}}),
    },
    accelerator_only={"edgetpu": "edgetpu"},
    # The agent's own order (edgefleet/agent/efagent/runtimes.py), so a device with two is checked against the one used.
    distributions=(
        Distribution("ai-edge-litert", "ai_edge_litert.interpreter"),
        # Built against numpy 1.x but declaring numpy>=1.23: with numpy 2 its import fails.
        Distribution("tflite-runtime", "tflite_runtime.interpreter", ("numpy<2",)),
    ),
)
