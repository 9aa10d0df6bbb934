"""The device's environment, recorded with every result line: what the latencies were measured on.

A static part (board, CPU, OS, Python, numpy), taken once per run, and a dynamic part (CPU governor,
firmware throttling, temperatures), taken around each cell: a board that heats up or is throttled
mid-run measures slower, and the line must say so.
"""
import glob
import os
import platform
import resource
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from . import AGENT_VERSION, SCHEMA, runtimes
from .fileio import read_text

# vcgencmd get_throttled bits (Raspberry Pi firmware documentation).
THROTTLE_BITS = {
    0: "under_voltage", 1: "arm_frequency_capped", 2: "throttled", 3: "soft_temperature_limit",
    16: "under_voltage_occurred", 17: "arm_frequency_capped_occurred", 18: "throttled_occurred",
    19: "soft_temperature_limit_occurred",
}


def cpu_model():
    # type: () -> Optional[str]
    text = read_text("/proc/cpuinfo") or ""
    fields = {}  # type: Dict[str, str]
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    # x86 names it "model name"; ARM boards use one of the others, or none.
    for key in ("model name", "Model", "Hardware", "Processor", "cpu model"):
        if fields.get(key):
            return fields[key]
    return platform.processor() or None


def cpu_governors():
    # type: () -> Optional[List[str]]
    paths = glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor")
    values = sorted(set(v for v in (read_text(p) for p in paths) if v))
    return values or None


def temperatures():
    # type: () -> List[Dict[str, Any]]
    zones = []
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        raw = read_text(os.path.join(zone, "temp"))
        try:
            millideg = int(raw) if raw is not None else None
        except ValueError:
            millideg = None
        if millideg is None:
            continue
        zones.append({"zone": os.path.basename(zone), "type": read_text(os.path.join(zone, "type")),
                      "temp_c": millideg / 1000.0})
    return zones


def throttle_state():
    # type: () -> Optional[Dict[str, Any]]
    """The Raspberry Pi firmware's throttle flags; None where vcgencmd does not exist."""
    if shutil.which("vcgencmd") is None:
        return None
    try:
        out = subprocess.check_output(["vcgencmd", "get_throttled"], stderr=subprocess.STDOUT,
                                      universal_newlines=True, timeout=5)
    except (subprocess.SubprocessError, OSError) as exc:
        return {"raw": None, "error": str(exc)}
    raw = out.strip().partition("=")[2]
    try:
        value = int(raw, 16)
    except ValueError:
        return {"raw": out.strip(), "error": "unparsed"}
    return {"raw": raw, "flags": [name for bit, name in sorted(THROTTLE_BITS.items()) if value & (1 << bit)]}


def os_release():
    # type: () -> Optional[str]
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except (IOError, OSError):
        pass
    return None


def static_fingerprint(emulated, emulation=None):
    # type: (bool, Optional[Mapping[str, Any]]) -> Dict[str, Any]
    """What does not change during a run: taken once. ``emulation`` is the host's account of how an
    emulated device is emulated (emulator, emulated and real OS), passed through from run.json."""
    uname = os.uname()
    return {
        "uname": {"sysname": uname.sysname, "nodename": uname.nodename, "release": uname.release,
                  "version": uname.version, "machine": uname.machine},
        "board": read_text("/proc/device-tree/model"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "numpy_path": os.path.dirname(np.__file__),
        "emulated": emulated,
        "emulation": dict(emulation) if emulation else None,
        "os": os_release(),
    }


def dynamic_fingerprint():
    # type: () -> Dict[str, Any]
    """What may change between cells (governor switched, board throttling)."""
    return {"cpu_governor": cpu_governors(), "throttled": throttle_state()}


def rss_kb():
    # type: () -> int
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak // 1024) if sys.platform == "darwin" else int(peak)  # macOS reports bytes


def versions():
    # type: () -> Dict[str, Any]
    """`version`: this agent, and the Python, numpy and runtimes it would run with here."""
    found = {}  # type: Dict[str, Any]
    for name, runtime in sorted(runtimes.REGISTRY.items()):
        try:
            found[name] = runtime.version()
        except runtimes.RuntimeMissing as exc:
            found[name] = {"missing": str(exc)}
    return {"agent": AGENT_VERSION, "schema": SCHEMA, "python": platform.python_version(),
            "numpy": np.__version__, "runtimes": found}
