"""TF-TRT preparation for NVIDIA Jetson: freeze to a TF1 GraphDef, apply graph rewrites, and render
the conversion script that runs on the device (TensorRT exists only there).

Submodules import TensorFlow inside their functions, so importing this package stays cheap.
"""
