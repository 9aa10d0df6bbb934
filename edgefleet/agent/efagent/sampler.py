"""The device's state DURING the timed loop: each core's CPU frequency and every thermal zone, read
from sysfs at a fixed interval by a daemon thread, and the wait for the board to cool between cells.

The thread sleeps between reads and does nothing but read small sysfs files (the reads release the
GIL while in the kernel), so the timed thread is disturbed at most by one GIL hand-off per interval.
``root`` is the filesystem root the sysfs paths hang from: "/" on a device, a fake tree in tests.
"""
import glob
import os
import re
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .fileio import read_text

DEFAULT_INTERVAL_S = 0.1
# The sampler may take at most this share of one CPU: it waits 1/MAX_DUTY times as long as its
# slowest sample took (in CPU time). On a board a sample takes well under a millisecond and the interval stays 0.1 s; under
# qemu-user the same Python takes milliseconds, and a sampler at 0.1 s would steal a core from a loop
# that uses them all.
MAX_DUTY = 0.01
MAX_INTERVAL_S = 2.0
# A frequency this far below the cell's own peak during timing: the clock was lowered under the load.
THROTTLE_FRACTION = 0.9
COOLDOWN_MARGIN_C = 2.0  # back within this of the temperature before the previous cell
COOLDOWN_POLL_S = 0.25
# scaling_cur_freq is readable by every user; cpuinfo_cur_freq (the hardware's own reading) often by root only.
FREQ_FILES = ("scaling_cur_freq", "cpuinfo_cur_freq")


# This thread's CPU time (Python >= 3.7): what the sampler takes from the timed loop, which wall time
# would overstate on a busy host. Older Pythons fall back to wall time.
_cpu_time = getattr(time, "thread_time", time.time)


def _sys(root, *parts):
    # type: (str, *str) -> str
    return os.path.join(root, "sys", *parts)


def _read_int(path):
    # type: (str) -> Optional[int]
    raw = read_text(path)
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


def _natural(path):
    # type: (str) -> Tuple[str, int]
    """cpu2 before cpu10, thermal_zone2 before thermal_zone10."""
    name = os.path.basename(path)
    digits = re.search(r"(\d+)$", name)
    return (name[:digits.start()] if digits else name, int(digits.group(1)) if digits else -1)


def cpu_freq_files(root="/"):
    # type: (str) -> Dict[str, str]
    """{"cpu0": path, ...}: each core's current frequency file (kHz); empty where cpufreq is absent."""
    files = {}  # type: Dict[str, str]
    for cpu_dir in sorted(glob.glob(_sys(root, "devices", "system", "cpu", "cpu[0-9]*")), key=_natural):
        for name in FREQ_FILES:
            path = os.path.join(cpu_dir, "cpufreq", name)
            if _read_int(path) is not None:
                files[os.path.basename(cpu_dir)] = path
                break
    return files


def thermal_zones(root="/"):
    # type: (str) -> Dict[str, Tuple[Optional[str], str]]
    """{"thermal_zone0": (type, temp path), ...}: the zones whose temperature reads as a number."""
    zones = {}  # type: Dict[str, Tuple[Optional[str], str]]
    for zone in sorted(glob.glob(_sys(root, "class", "thermal", "thermal_zone*")), key=_natural):
        temp = os.path.join(zone, "temp")
        if _read_int(temp) is not None:
            zones[os.path.basename(zone)] = (read_text(os.path.join(zone, "type")), temp)
    return zones


def read_temperatures(zones, read_int=_read_int):
    # type: (Dict[str, Tuple[Optional[str], str]], Callable[[str], Optional[int]]) -> Dict[str, float]
    """{zone: °C} of the zones that read now (sysfs gives millidegrees)."""
    temps = {}  # type: Dict[str, float]
    for zone, (_, path) in zones.items():
        millideg = read_int(path)
        if millideg is not None:
            temps[zone] = millideg / 1000.0
    return temps


class _OpenFiles(object):
    """sysfs files kept open while sampling and re-read from offset 0 (sysfs makes a fresh value for
    each read there): one system call a value, where open/read/close would be three."""

    def __init__(self):
        # type: () -> None
        self._fds = {}  # type: Dict[str, int]

    def read_int(self, path):
        # type: (str) -> Optional[int]
        try:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            return int(os.pread(fd, 32, 0).strip(b"\x00 \n"))
        except (OSError, ValueError):
            return None

    def close(self):
        # type: () -> None
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


def max_temperature(root="/"):
    # type: (str) -> Optional[float]
    """The hottest zone now; None where no thermal zone exists."""
    temps = read_temperatures(thermal_zones(root))
    return max(temps.values()) if temps else None


class Sampler(object):
    """``with Sampler(root) as s: <timed loop>``, then ``s.summary()``.

    One sample is taken as the loop starts and one as it ends, so even a loop shorter than the
    interval has its state at both ends; a daemon thread takes the ones in between.
    """

    def __init__(self, root="/", interval_s=DEFAULT_INTERVAL_S):
        # type: (str, float) -> None
        self.interval_s = interval_s
        self.base_interval_s = interval_s
        self.sample_cost_s = 0.0  # the slowest sample's wall time
        self.freq_files = cpu_freq_files(root)
        self.zones = thermal_zones(root)
        self.samples = 0
        self._files = _OpenFiles()
        self._freq = {}  # type: Dict[str, List[int]]  # core -> [min, max]
        self._peaks = []  # type: List[int]  # each sample's fastest core
        self._temps = {}  # type: Dict[str, float]  # zone -> max
        self._stop = threading.Event()
        self._thread = None  # type: Optional[threading.Thread]

    @property
    def has_sources(self):
        # type: () -> bool
        return bool(self.freq_files or self.zones)

    def sample(self):
        # type: () -> None
        freqs = [(cpu, self._files.read_int(path)) for cpu, path in self.freq_files.items()]
        temps = read_temperatures(self.zones, self._files.read_int)
        for cpu, khz in freqs:
            if khz is not None:
                low_high = self._freq.setdefault(cpu, [khz, khz])
                low_high[0], low_high[1] = min(low_high[0], khz), max(low_high[1], khz)
        read = [khz for _, khz in freqs if khz is not None]
        if read:
            self._peaks.append(max(read))
        for zone, temp in temps.items():
            self._temps[zone] = max(temp, self._temps.get(zone, temp))
        self.samples += 1

    def _run(self):
        # type: () -> None
        while not self._stop.wait(self.interval_s):
            started = _cpu_time()
            self.sample()
            self.sample_cost_s = max(self.sample_cost_s, _cpu_time() - started)
            self.interval_s = min(MAX_INTERVAL_S, max(self.base_interval_s, self.sample_cost_s / MAX_DUTY))

    def __enter__(self):
        # type: () -> Sampler
        if self.has_sources:
            self.sample()
            self._thread = threading.Thread(target=self._run, name="efagent-sampler")
            self._thread.daemon = True  # never keeps a dying agent alive
            self._thread.start()
        return self

    def __exit__(self, *exc):
        # type: (*Any) -> None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.sample()
        self.close()

    def close(self):
        # type: () -> None
        self._files.close()

    def summary(self):
        # type: () -> Dict[str, Any]
        return {"interval_s": self.interval_s, "samples": self.samples, "sample_cost_s": round(self.sample_cost_s, 6),
                "cpu_freq_khz": self._freq_summary(), "temp_c": self._temp_summary()}

    def _freq_summary(self):
        # type: () -> Optional[Dict[str, Any]]
        if not self._peaks:
            return None
        sources = sorted(set(os.path.basename(p) for p in self.freq_files.values()))
        return {"min": min(low for low, _ in self._freq.values()), "max": max(high for _, high in self._freq.values()),
                # The fastest core of each sample: the loaded one, whatever idle cores and slower clusters do.
                "peak_min": min(self._peaks), "peak_max": max(self._peaks),
                "per_core": {cpu: {"min": low, "max": high} for cpu, (low, high) in sorted(
                    self._freq.items(), key=lambda item: _natural(item[0]))},
                "source": ",".join(sources)}

    def _temp_summary(self):
        # type: () -> Optional[Dict[str, Any]]
        if not self._temps:
            return None
        return {"max": max(self._temps.values()),
                "zones": {zone: {"type": self.zones[zone][0], "max": temp}
                          for zone, temp in sorted(self._temps.items(), key=lambda item: _natural(item[0]))}}


def frequency_dipped(state, fraction=THROTTLE_FRACTION):
    # type: (Optional[Dict[str, Any]], float) -> Optional[bool]
    """The fastest core ran below ``fraction`` of the cell's own peak at some sample; None when unknown.

    Judged on each sample's fastest core, not each core: idle cores and a slower cluster of a
    big.LITTLE board change clock all the time without slowing the loaded core.
    """
    freq = (state or {}).get("cpu_freq_khz")
    if not freq:
        return None
    return freq["peak_min"] < fraction * freq["peak_max"]


def cooldown_target(before_c, limit_c):
    # type: (Optional[float], Optional[float]) -> Optional[float]
    """The temperature to wait for: back near where the previous cell started, and under the limit."""
    targets = [t for t in (None if before_c is None else before_c + COOLDOWN_MARGIN_C, limit_c) if t is not None]
    return min(targets) if targets else None


def wait_until_cool(max_wait_s, before_c, limit_c, root="/", poll_s=COOLDOWN_POLL_S):
    # type: (float, Optional[float], Optional[float], str, float) -> Dict[str, Any]
    """The pause between cells: until the hottest zone is back at the target, ``max_wait_s`` at most.

    Without a thermal zone (or anything to aim for) it is the fixed pause of ``max_wait_s``.
    """
    start = time.monotonic()
    target = cooldown_target(before_c, limit_c)
    now = max_temperature(root)
    if now is None or target is None:
        time.sleep(max_wait_s)
        return {"mode": "fixed", "waited_s": time.monotonic() - start, "max_wait_s": max_wait_s,
                "target_c": None, "temp_c": now, "reached": None}
    while now is not None and now > target and time.monotonic() - start < max_wait_s:
        time.sleep(min(poll_s, max(0.0, max_wait_s - (time.monotonic() - start))))
        now = max_temperature(root)
    return {"mode": "thermal", "waited_s": time.monotonic() - start, "max_wait_s": max_wait_s,
            "target_c": target, "temp_c": now, "reached": now is not None and now <= target}
