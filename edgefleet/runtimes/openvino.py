"""OpenVINO's CPU plug-in through the agent."""
from edgefleet.runtimes.base import DelegateSpec, RuntimeSpec

SPEC = RuntimeSpec(name="openvino", profile_names=("openvino",), formats=("openvino",),
                   device_modules=("openvino",), delegates={"cpu": DelegateSpec()})
