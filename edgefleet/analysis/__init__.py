"""Structured reports of built artifacts: size, op histogram, I/O tensors, quantization.

``tflite_report`` and ``onnx_report`` read the files directly; the OpenVINO IR
and SavedModel reports live beside their converters in ``edgefleet.convert``.
"""
