"""ONNX Runtime's CPU execution provider through the agent."""
from edgefleet.runtimes.base import DelegateSpec, RuntimeSpec

SPEC = RuntimeSpec(name="onnxruntime", profile_names=("onnxruntime",), formats=("onnx",),
                   device_modules=("onnxruntime",), delegates={"cpu": DelegateSpec()})
