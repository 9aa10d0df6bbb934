"""The Python API: one function per task, each taking one options dataclass.

tasks.py only parses arguments into these options; everything else happens here.
"""
