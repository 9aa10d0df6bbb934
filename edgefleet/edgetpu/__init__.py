"""Coral Edge TPU: predict the TPU partition before compiling, compile, and read the compiler's report.

Submodules stay import-light: the flatbuffer schema is loaded inside the functions that need it.
"""
