"""Android devices without Python: TFLite's benchmark_model over adb.

commands  the benchmark_model argv of one cell, and the on-device sha256 of an upload
output    benchmark_model's log -> the agent's result line (edgefleet/agent/efagent/cell.py)
facts     getprop, /proc/cpuinfo and the thermal zones -> the device's facts

Everything here is pure (text in, values out): tested without a phone.
"""
