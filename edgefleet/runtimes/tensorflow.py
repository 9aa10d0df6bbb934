"""Full TensorFlow running a SavedModel through the agent (and JetPack's TensorFlow on a Jetson)."""
from edgefleet.runtimes.base import DelegateSpec, RuntimeSpec

SPEC = RuntimeSpec(name="tf", profile_names=("tensorflow",), formats=("savedmodel",),
                   device_modules=("tensorflow",), delegates={"cpu": DelegateSpec()})
