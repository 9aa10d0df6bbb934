"""An Android device's facts from the text of three commands: ``getprop``, ``cat /proc/cpuinfo`` and a listing of
the thermal zones. Pure parsers; edgefleet/deploy/benchmark_model.py runs the commands."""
from __future__ import annotations

import re
from typing import Any

GETPROP_KEYS = {"model": "ro.product.model", "manufacturer": "ro.product.manufacturer",
                "platform": "ro.board.platform", "android": "ro.build.version.release",
                "sdk": "ro.build.version.sdk", "abi": "ro.product.cpu.abi", "build": "ro.build.fingerprint"}
# `grep -H . FILES` prints path:value; the shell expands the zones the phone exposes.
THERMAL_SCRIPT = "grep -H . /sys/class/thermal/thermal_zone*/type /sys/class/thermal/thermal_zone*/temp 2>/dev/null"
_GETPROP = re.compile(r"^\[([^\]]+)\]: \[(.*)\]$")
_ZONE = re.compile(r"/(thermal_zone\d+)/(type|temp):(.*)$")


def parse_getprop(text: str) -> dict[str, str]:
    """``getprop``'s ``[key]: [value]`` lines as a mapping."""
    props = {}
    for line in text.splitlines():
        found = _GETPROP.match(line.strip())
        if found:
            props[found.group(1)] = found.group(2)
    return props


def device_facts(props: dict[str, str]) -> dict[str, str | None]:
    """The properties a result line records (model, SoC platform, Android release...); None where unset."""
    return {name: props.get(key) or None for name, key in GETPROP_KEYS.items()}


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """CPU count, the SoC's name where the kernel gives it, and the distinct cores (implementer/part pairs:
    a big.LITTLE phone lists two or three)."""
    processors = 0
    hardware = None
    cores: set[tuple[str, str]] = set()
    implementer = None
    for line in text.splitlines():
        key, sep, value = (part.strip() for part in line.partition(":"))
        if not sep:
            continue
        if key == "processor" and value.isdigit():
            processors += 1
        elif key == "Hardware":
            hardware = value
        elif key == "CPU implementer":
            implementer = value
        elif key == "CPU part" and implementer is not None:
            cores.add((implementer, value))
    return {"cpu_count": processors or None, "hardware": hardware,
            "cores": [f"{i}/{p}" for i, p in sorted(cores)]}


def parse_thermal(text: str) -> list[dict[str, Any]]:
    """The zones of THERMAL_SCRIPT's output, in the agent's shape ({"zone", "type", "temp_c"}). Temperatures are
    millidegrees Celsius, as the kernel's sysfs ABI documents; the raw value is kept beside them."""
    zones: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        found = _ZONE.search(line.strip())
        if not found:
            continue
        zone = zones.setdefault(found.group(1), {"zone": found.group(1), "type": None, "temp_c": None})
        if found.group(2) == "type":
            zone["type"] = found.group(3).strip()
        else:
            try:
                zone["temp_raw"] = int(found.group(3).strip())
            except ValueError:
                continue
            zone["temp_c"] = zone["temp_raw"] / 1000.0
    return [z for _, z in sorted(zones.items(), key=lambda kv: int(kv[0].removeprefix("thermal_zone")))
            if z["temp_c"] is not None]
