"""`fleet.up --labgrid`: a labgrid lab on this host that hands out the emulated devices, one place each.

A labgrid coordinator on 127.0.0.1 and one exporter publishing each device's sshd as a NetworkService
resource; a place per device matches it. The inventory then names each device's place, so deploy and
collect reserve and acquire it exactly as they would a board in a shared lab. The two processes outlive
``fleet.up`` (like the devices' sshd) and ``fleet.down`` stops them.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edgefleet.deploy.inventory import Inventory, save_inventory
from edgefleet.fleet.system import FleetError, all_pids, cmdline, kill_all
from edgefleet.lab.config import Lab, LabgridPlaceRef

LAB_DIR = "labgrid"          # in the fleet's state folder; the coordinator keeps places.yaml there
LAB_FILE = "lab.json"
EXPORTER_NAME = "fleet"
LISTEN_ADDRESS = "127.0.0.1"  # never all interfaces (the coordinator's default)
READY_TIMEOUT_S = 30.0
CLIENT_TIMEOUT_S = 30.0
Say = Callable[[str], None]


def lab_dir(state_dir: Path) -> Path:
    return Path(state_dir) / LAB_DIR


def publish_fleet(state_dir: Path, inventory: Inventory, say: Say = print) -> Inventory:
    """Start the lab for the fleet in ``state_dir``, record each device's place in its inventory, return it."""
    stop_lab(state_dir)
    folder = lab_dir(state_dir)
    folder.mkdir(parents=True)
    started = time.monotonic()
    try:
        coordinator = _start_coordinator(folder)
        _start_exporter(folder, coordinator, inventory)
        _create_places(coordinator, sorted(inventory.devices))
        _wait_for_resources(folder, coordinator, sorted(inventory.devices))
    except BaseException:
        stop_lab(state_dir)
        raise
    devices = {name: device.model_copy(update={"lab": Lab(labgrid=LabgridPlaceRef(coordinator=coordinator,
                                                                                    place=name))})
               for name, device in inventory.devices.items()}
    published = inventory.model_copy(update={"devices": devices})
    save_inventory(published, Path(state_dir))
    say(f"labgrid coordinator on {coordinator} hands out the devices as places ({', '.join(sorted(devices))}) "
        f"after {time.monotonic() - started:.1f} s; try `labgrid-client -x {coordinator} places`")
    return published


def stop_lab(state_dir: Path) -> None:
    """Stop the exporter and the coordinator (also ones a crashed start did not record) and remove the folder."""
    folder = lab_dir(state_dir).resolve()
    if not folder.is_dir():
        return
    kill_all(_lab_processes(folder, "labgrid-exporter"))  # first: it would exit on its own, code 100, anyway
    kill_all(_lab_processes(folder, "labgrid-coordinator"))
    shutil.rmtree(folder, ignore_errors=True)


def lab_pids(state_dir: Path, tool: str) -> set[int]:
    """The running ``tool`` (labgrid-coordinator or labgrid-exporter) of the lab in ``state_dir``."""
    return _lab_processes(lab_dir(state_dir).resolve(), tool)


def lab_coordinator(state_dir: Path) -> str | None:
    try:
        return str(json.loads((lab_dir(state_dir) / LAB_FILE).read_text())["coordinator"])
    except (OSError, ValueError, KeyError):
        return None


# -- internals ---------------------------------------------------------------

def _tool(name: str) -> str:
    """labgrid's commands: on PATH, or beside this Python (a venv run without activating it)."""
    beside = Path(sys.executable).parent / name
    found = shutil.which(name) or (str(beside) if beside.is_file() else None)
    if found is None:
        raise FleetError(f"`fleet.up --labgrid` needs {name}: install edgefleet's lab extra "
                         "(`pip install -e '.[lab]'`, or `scripts/bootstrap --dev`)")
    return found


def _spawn(folder: Path, name: str, argv: Sequence[str]) -> int:
    # The lab's folder is the working directory of both processes: how stop_lab recognises them.
    with open(folder / f"{name}.log", "ab") as log:
        proc = subprocess.Popen([_tool(name), *argv], cwd=folder, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


def _start_coordinator(folder: Path) -> str:
    address = f"{LISTEN_ADDRESS}:{_free_port()}"
    (folder / LAB_FILE).write_text(json.dumps({"coordinator": address}) + "\n")
    pid = _spawn(folder, "labgrid-coordinator", ["-l", address])
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not _answers(address):
        if time.monotonic() > deadline or not _alive(pid):
            raise FleetError(f"labgrid-coordinator did not listen on {address} within {READY_TIMEOUT_S:g} s; "
                             f"log:\n{_tail(folder / 'labgrid-coordinator.log')}")
        time.sleep(0.05)
    return address


def _start_exporter(folder: Path, coordinator: str, inventory: Inventory) -> None:
    groups = {name: {"NetworkService": {"address": d.connection.host, "username": d.connection.user or "root",
                                        "port": d.connection.port or 22}}
              for name, d in sorted(inventory.devices.items())}
    config = folder / "exporter.yaml"
    config.write_text(json.dumps(groups, indent=2) + "\n")  # JSON is YAML
    _spawn(folder, "labgrid-exporter", ["-c", coordinator, "-n", EXPORTER_NAME, "--hostname", LISTEN_ADDRESS,
                                        str(config)])


def _create_places(coordinator: str, names: Sequence[str]) -> None:
    # labgrid-client takes about a second to start: the places go in parallel, one command round each.
    _client_all(coordinator, [["-p", name, "create"] for name in names])
    _client_all(coordinator, [["-p", name, "add-match", f"{EXPORTER_NAME}/{name}/NetworkService"]
                              for name in names])


def _wait_for_resources(folder: Path, coordinator: str, names: Sequence[str]) -> None:
    """Until the coordinator lists every device's NetworkService (a place acquired before that has none)."""
    wanted = {f"{EXPORTER_NAME}/{name}/NetworkService" for name in names}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        listed = set(_client_all(coordinator, [["resources"]])[0].split())
        if wanted <= listed:
            return
        if time.monotonic() > deadline:
            raise FleetError(f"the labgrid exporter did not publish {', '.join(sorted(wanted - listed))} within "
                             f"{READY_TIMEOUT_S:g} s; log:\n{_tail(folder / 'labgrid-exporter.log')}")
        time.sleep(0.2)


def _client_all(coordinator: str, commands: Sequence[Sequence[str]]) -> list[str]:
    """Run labgrid-client commands at once; their outputs, or FleetError naming the first that failed."""
    client = _tool("labgrid-client")
    procs = [(argv, subprocess.Popen([client, "-x", coordinator, *argv], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
             for argv in commands]
    outputs = []
    for argv, proc in procs:
        try:
            out, err = proc.communicate(timeout=CLIENT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise FleetError(f"labgrid-client {' '.join(argv)} did not finish within {CLIENT_TIMEOUT_S:g} s") from None
        if proc.returncode != 0:
            raise FleetError(f"labgrid-client -x {coordinator} {' '.join(argv)} failed (exit code {proc.returncode}): "
                             f"{err.strip()}")
        outputs.append(out)
    return outputs


def _lab_processes(folder: Path, name: str) -> set[int]:
    found = set()
    for pid in all_pids():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd == str(folder) and name in cmdline(pid):
            found.add(pid)
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LISTEN_ADDRESS, 0))
        return int(sock.getsockname()[1])


def _answers(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return waited == 0


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
