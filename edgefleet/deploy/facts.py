"""Facts about a device, gathered in one remote call: arch, OS, Python, disk, runtime, files present.

The probe is a small Python 3.6-compatible program sent on stdin, so one SSH
round trip answers everything deploy needs to plan.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.deploy.inventory import is_host_cpu
from edgefleet.errors import DeployError
from edgefleet.transport.base import Transport

# Runs on the device: stdlib only, Python >= 3.6. Reads {"workdir", "files": {path: sha}} on stdin.
PROBE = r'''
import json, os, platform, shutil, sys
req = json.loads(sys.stdin.read())
from importlib.util import find_spec
# Finding a module's spec does not import it (numpy takes a second to import under qemu).
missing = [m for m in req.get("modules", []) if find_spec(m) is None]
wd = req["workdir"]
probe = wd
while not os.path.exists(probe):
    probe = os.path.dirname(probe) or "/"
usage = shutil.disk_usage(probe)
osname = ""
try:
    with open("/etc/os-release") as fh:
        for line in fh:
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip().strip('"')
except OSError:
    pass
identity = None
try:
    with open(os.path.join(wd, "device.json")) as fh:
        identity = json.load(fh)
except (OSError, ValueError):
    pass
present = {}
for path, sha in req["files"].items():
    try:
        with open(path + ".sha256") as fh:
            present[path] = fh.read().strip() == sha and os.path.isfile(path)
    except OSError:
        present[path] = False
runtime = None
try:
    with open(os.path.join(wd, "runtime", "provisioned.json")) as fh:
        runtime = json.load(fh)
except (OSError, ValueError):
    pass
# The CPUs this process may run on (an affinity mask or a cgroup can give fewer than the machine has).
cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
print(json.dumps({
    "arch": platform.machine(), "os": osname, "python": "%d.%d" % sys.version_info[:2], "cpus": cpus,
    "python_path": sys.executable, "free_bytes": usage.free, "free_path": probe,
    "identity": identity, "present": present, "runtime": runtime, "missing_modules": missing,
}))
'''


@dataclass(frozen=True)
class DeviceFacts:
    arch: str
    os: str
    python: str
    python_path: str
    free_bytes: int
    free_path: str
    identity: Mapping[str, Any] | None
    present: Mapping[str, bool] = field(default_factory=dict)
    runtime: Mapping[str, Any] | None = None
    missing_modules: tuple[str, ...] = ()   # of those asked for, the ones the device's Python cannot find
    cpus: int | None = None                 # CPUs the device's processes may use; None: not reported

    @property
    def emulated(self) -> bool:
        return bool(self.identity and self.identity.get("emulated"))

    @property
    def host_cpu_standin(self) -> bool:
        """The device says it is this host's CPU standing in for a board (`--emulate host`)."""
        return is_host_cpu(self.emulated, (self.identity or {}).get("emulation"))


def gather_facts(transport: Transport, workdir: str, files: Mapping[str, str], *, modules: tuple[str, ...] = (),
                 python: str = "python3", timeout: float = 60.0) -> DeviceFacts:
    request = json.dumps({"workdir": workdir, "files": dict(files), "modules": list(modules)}).encode()
    result = transport.run([python, "-c", PROBE], stdin=request, timeout=timeout, check=False)
    if result.returncode == 127 or "not found" in result.stderr and python in result.stderr:
        raise DeployError(f"{transport.describe()}: no {python} on the device; the edgefleet agent needs "
                          "Python >= 3.6 (install python3, or set device.python in the profile)")
    if result.returncode != 0:
        raise DeployError(f"{transport.describe()}: the facts probe failed (exit {result.returncode}): "
                          f"{result.stderr.strip()[-500:]}")
    try:
        data = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DeployError(f"{transport.describe()}: the facts probe printed no JSON: {result.stdout[-300:]!r}") \
            from None
    data["missing_modules"] = tuple(data.get("missing_modules", ()))
    return DeviceFacts(**data)
