"""The report's Devices section: what each device said it was, and how it was emulated.

One row per (run, device), built from the environment every result line carries
(uname, OS, Python, numpy, the emulation record the fleet passed through) and the
runtime its successful cells loaded. Markdown, HTML and JSON render these rows.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from edgefleet.results.db import CellRecord, RunRecord

# Debian's python3-* packages install here: a numpy from it is the OS's build, not a wheel we shipped.
OS_PACKAGE_PREFIX = "/usr/lib/python3/dist-packages"
HOST_CPU = "this host's CPU"
REAL_BOARD = "— (real board)"
# (key, header) for the table; the "what differs" text is too long for a column and goes below it.
DEVICE_COLUMNS = (("device", "device"), ("run_id", "run"), ("machine", "arch"), ("os", "OS"),
                  ("python", "Python"), ("runtimes", "runtime"), ("numpy", "numpy"),
                  ("emulated_by", "emulated by"), ("board_os", "real board's OS"))


@dataclass(frozen=True)
class DeviceRow:
    run_id: str
    device: str
    machine: str | None                 # uname -m as the device reports it
    os: str | None                      # its /etc/os-release PRETTY_NAME; absent in older results
    python: str | None
    runtimes: tuple[str, ...]           # "module version" of each runtime its ok cells loaded
    numpy: str | None
    numpy_source: str | None            # "OS package" | "wheel" | None (path not recorded)
    emulated: bool | None               # None: no cell and no run record says
    emulated_by: str | None             # the emulator, HOST_CPU, REAL_BOARD or None (unknown)
    emulation_kind: str | None = None   # "qemu-user" | "host-cpu" | None
    host_arch: str | None = None
    board_os: str | None = None
    differs: str | None = None          # what the emulation does not reproduce
    runtime_standin: tuple[str, ...] = ()

    def text(self, key: str) -> str:
        if key == "runtimes":
            return ", ".join(self.runtimes) or "—"
        if key == "numpy" and self.numpy and self.numpy_source:
            return f"{self.numpy} ({self.numpy_source})"
        value = getattr(self, key)
        return "—" if value is None else str(value)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["runtimes"] = list(self.runtimes)
        data["runtime_standin"] = list(self.runtime_standin)
        return data


def _dict(value: Any) -> Mapping[str, Any]:
    # Results come from devices (and older agents): a field of the wrong type reads as absent.
    return value if isinstance(value, Mapping) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(s for s in value if isinstance(s, str)) if isinstance(value, list) else ()


def _env(cell: CellRecord) -> Mapping[str, Any]:
    try:
        return _dict(json.loads(cell.env))
    except ValueError:
        return {}


def _numpy_source(path: Any) -> str | None:
    if not isinstance(path, str):
        return None
    return "OS package" if path.startswith(OS_PACKAGE_PREFIX) else "wheel"


def _runtimes(cells: Sequence[CellRecord]) -> tuple[str, ...]:
    """Each runtime library the device's ok cells loaded, in cell order; failed cells loaded none."""
    seen: dict[str, None] = {}
    for cell in cells:
        info = _dict(cell.raw_json.get("runtime_info")) if cell.status == "ok" else {}
        module = _str(info.get("module"))
        if module:
            seen[" ".join(filter(None, (module, _str(info.get("version")))))] = None
    return tuple(seen)


def _emulated_by(emulated: bool | None, emulation: Mapping[str, Any]) -> str | None:
    kind = emulation.get("kind")
    if kind == "qemu-user":
        return _str(emulation.get("emulator")) or "qemu-user"
    if kind == "host-cpu":
        return HOST_CPU
    if emulation:
        return _str(kind) or "unknown emulation"
    # Results from before the emulation record existed: every emulated device was then this host's CPU.
    if emulated:
        return HOST_CPU
    return REAL_BOARD if emulated is False else None


def _device_row(run_id: str, device: str, cells: Sequence[CellRecord], run: RunRecord | None) -> DeviceRow:
    # The agent takes the static facts once per run and puts them in every line, failed ones too.
    reference = cells[0] if cells else None
    env = _env(reference) if reference else {}
    emulation = _dict(env.get("emulation"))
    emulated = reference.emulated if reference else (run.emulated if run else None)
    return DeviceRow(
        run_id=run_id, device=device, machine=_str(_dict(env.get("uname")).get("machine")),
        os=_str(env.get("os")), python=_str(env.get("python")), runtimes=_runtimes(cells),
        numpy=_str(env.get("numpy")), numpy_source=_numpy_source(env.get("numpy_path")), emulated=emulated,
        emulated_by=_emulated_by(emulated, emulation), emulation_kind=_str(emulation.get("kind")),
        host_arch=_str(emulation.get("host_arch")), board_os=_str(emulation.get("board_os")),
        # A host-cpu device has no list of differences: its note says what stands in for the board.
        differs=_str(emulation.get("differs")) or _str(emulation.get("note")),
        runtime_standin=_strings(emulation.get("runtime_standin")))


def build_devices(runs: Sequence[RunRecord], cells: Sequence[CellRecord]) -> tuple[DeviceRow, ...]:
    by_key: dict[tuple[str, str], list[CellRecord]] = {}
    for cell in cells:
        by_key.setdefault((cell.run_id, cell.device), []).append(cell)
    run_by_key = {(r.run_id, r.device): r for r in runs}
    keys = sorted(set(by_key) | set(run_by_key), key=lambda k: (k[1], k[0]))
    return tuple(_device_row(run_id, device, by_key.get((run_id, device), []), run_by_key.get((run_id, device)))
                 for run_id, device in keys)


def differences(rows: Sequence[DeviceRow]) -> tuple[tuple[str, str], ...]:
    """(label, text) of what each emulated device does not reproduce, once per device and text;
    the label names the runs only when a device's text changed between them."""
    groups: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        if row.differs:
            groups.setdefault((row.device, row.differs), []).append(row.run_id)
    texts_per_device = Counter(device for device, _ in groups)
    return tuple((device if texts_per_device[device] == 1 else f"{device} ({', '.join(run_ids)})", text)
                 for (device, text), run_ids in groups.items())
