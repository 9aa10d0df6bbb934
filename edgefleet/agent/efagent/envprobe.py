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
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from . import AGENT_VERSION, SCHEMA, runtimes
from .fileio import read_text
from .sampler import read_temperatures, thermal_zones

# vcgencmd get_throttled bits (Raspberry Pi firmware documentation).
THROTTLE_BITS = {
    0: "under_voltage", 1: "arm_frequency_capped", 2: "throttled", 3: "soft_temperature_limit",
    16: "under_voltage_occurred", 17: "arm_frequency_capped_occurred", 18: "throttled_occurred",
    19: "soft_temperature_limit_occurred",
}
PI_THROTTLING_NOW = {THROTTLE_BITS[bit] for bit in (0, 1, 2, 3)}
PI_THROTTLING_OCCURRED = {THROTTLE_BITS[bit] for bit in (16, 17, 18, 19)}
ANDROID_THROTTLING = 1  # PowerManager.THERMAL_STATUS_LIGHT: the platform has started throttling
COMMAND_TIMEOUT_S = 5


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


def temperatures(root="/"):
    # type: (str) -> List[Dict[str, Any]]
    """Every thermal zone that reads now, as the line's ``thermal.before`` and ``after`` list them."""
    zones = thermal_zones(root)
    return [{"zone": zone, "type": zones[zone][0], "temp_c": temp}
            for zone, temp in read_temperatures(zones).items()]


def _command(args):
    # type: (List[str]) -> Tuple[Optional[str], Optional[str]]
    """(output, None), or (None, why not); (None, None) where the tool does not exist on this board."""
    if shutil.which(args[0]) is None:
        return None, None
    try:
        return subprocess.check_output(args, stderr=subprocess.STDOUT, universal_newlines=True,
                                       timeout=COMMAND_TIMEOUT_S), None
    except (subprocess.SubprocessError, OSError) as exc:
        return None, str(exc)


def throttle_state():
    # type: () -> Optional[Dict[str, Any]]
    """The Raspberry Pi firmware's throttle flags; None where vcgencmd does not exist."""
    out, error = _command(["vcgencmd", "get_throttled"])
    if out is None:
        return {"raw": None, "error": error} if error else None
    raw = out.strip().partition("=")[2]
    try:
        value = int(raw, 16)
    except ValueError:
        return {"raw": out.strip(), "error": "unparsed"}
    return {"raw": raw, "flags": [name for bit, name in sorted(THROTTLE_BITS.items()) if value & (1 << bit)]}


def nvpmodel_state():
    # type: () -> Optional[Dict[str, Any]]
    """The Jetson's power mode (`nvpmodel -q`: its name, then its number); None where nvpmodel does not exist."""
    out, error = _command(["nvpmodel", "-q"])
    if out is None:
        return {"mode": None, "error": error} if error else None
    return parse_nvpmodel(out)


def parse_nvpmodel(text):
    # type: (str) -> Dict[str, Any]
    state = {"mode": None, "id": None}  # type: Dict[str, Any]
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "NV Power Mode":
            state["mode"] = value.strip()
        elif line.strip().isdigit():
            state["id"] = int(line.strip())
    return state


def devfreq_clocks(root="/"):
    # type: (str) -> Optional[Dict[str, Dict[str, Optional[int]]]]
    """Clocks of the accelerators and memory the kernel scales (Jetson GPU and EMC...), Hz; None where none."""
    clocks = {}  # type: Dict[str, Dict[str, Optional[int]]]
    for device in sorted(glob.glob(os.path.join(root, "sys", "class", "devfreq", "*"))):
        values = {}  # type: Dict[str, Optional[int]]
        for name in ("cur_freq", "min_freq", "max_freq"):
            raw = read_text(os.path.join(device, name))
            values[name.replace("_freq", "_hz")] = int(raw) if raw and raw.isdigit() else None
        if values["cur_hz"] is not None:
            clocks[os.path.basename(device)] = values
    return clocks or None


def android_thermal_status():
    # type: () -> Optional[int]
    """Android's thermal status (0 none, 1 light throttling ... 6 shutdown) from `dumpsys thermalservice`;
    None where it cannot be read (not Android, or no permission)."""
    out, _ = _command(["dumpsys", "thermalservice"])
    return parse_thermal_status(out or "")


def parse_thermal_status(text):
    # type: (str) -> Optional[int]
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Thermal Status" and value.strip().isdigit():
            return int(value.strip())
    return None


def board_state(root="/"):
    # type: (str) -> Dict[str, Any]
    """What the board's own tools say about throttling and clocks; each None where this board has no such tool."""
    return {"vcgencmd": throttle_state(), "nvpmodel": nvpmodel_state(), "devfreq": devfreq_clocks(root),
            "android_thermal_status": android_thermal_status()}


def board_throttled(before, after):
    # type: (Mapping[str, Any], Mapping[str, Any]) -> List[str]
    """The board tools that reported throttling around the timed loop (empty: none did, or none exist)."""
    sources = []
    pi_before = set((before.get("vcgencmd") or {}).get("flags") or [])
    pi_after = set((after.get("vcgencmd") or {}).get("flags") or [])
    # A "now" bit at either end, or an "occurred" bit (sticky since boot) that appeared during the loop.
    if (pi_before | pi_after) & PI_THROTTLING_NOW or (pi_after - pi_before) & PI_THROTTLING_OCCURRED:
        sources.append("vcgencmd")
    if any((state.get("android_thermal_status") or 0) >= ANDROID_THROTTLING for state in (before, after)):
        sources.append("android_thermal_status")
    modes = [(state.get("nvpmodel") or {}).get("mode") for state in (before, after)]
    if modes[0] != modes[1]:
        sources.append("nvpmodel")  # the power mode, and so the clocks, changed under the loop
    return sources


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
