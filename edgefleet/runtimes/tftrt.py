"""TF-TRT on a Jetson: frozen graphs converted on the device by the rendered tftrt_convert.py, because
TensorRT engines are tied to the board's GPU and TensorRT version. TensorFlow comes with JetPack."""
from edgefleet.runtimes.base import DelegateSpec, RuntimeSpec

SPEC = RuntimeSpec(name="tftrt", profile_names=(), formats=("tftrt",), device_modules=("tensorflow",),
                   delegates={"cpu": DelegateSpec()}, sources=("device",),
                   templates={"tftrt_convert": "jetson/tftrt_convert.py.j2"})
