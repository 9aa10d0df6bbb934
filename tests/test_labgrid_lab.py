"""Boards in a labgrid lab: a real coordinator and exporter on 127.0.0.1 (`fleet.up --labgrid`) hand out a real
sshd device of the emulated fleet as a place; deploy holds the place, other users queue, and a lost coordinator
is reported without losing what is on the board."""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from edgefleet.api.collect import pull_run
from edgefleet.api.context import Env
from edgefleet.api.deploy import DeployOptions, deploy
from edgefleet.api.fleet import FleetDownOptions, FleetUpOptions, down, up
from edgefleet.deploy.devices import fleet_dir, recorded_lab, resolve_device
from edgefleet.deploy.inventory import load_inventory
from edgefleet.errors import ConfigError, DeployError, DeviceBusyError, TransportError
from edgefleet.fleet.labgrid_lab import lab_dir, lab_pids, publish_fleet, stop_lab
from edgefleet.lab.labgrid import LabgridPlace, NetworkService
from edgefleet.profiles.load import load_profile
from edgefleet.runs import RunRecord
from edgefleet.transport.registry import open_transport
from fleet_fixtures import quick, require_fleet_tools

REPO = Path(__file__).resolve().parents[1]
CLIENT = str(Path(sys.executable).parent / "labgrid-client")
PLACE = "rpi3"
# The coordinator schedules waiting reservations when a place is released, and otherwise every 15 s.
SCHEDULING_PERIOD_S = 15.0

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`fleet.up --labgrid` with one host-CPU device (a real sshd on 127.0.0.x): (workspace, coordinator)."""
    require_fleet_tools("loopback")
    root = tmp_path_factory.mktemp("ws")
    for name in ("targets", "templates", "builders", "models"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, root / name)
    (root / "edgefleet.yaml").write_text("backend: local\n")
    shutil.copy(REPO / "tasks.py", root / "tasks.py")  # the command line, as a user runs it here
    started = time.monotonic()
    inventory = up(FleetUpOptions(devices=(PLACE,), isolation="loopback", emulate="host", labgrid=True,
                                  workspace=root), quiet_env())
    print(f"fleet.up --labgrid: {time.monotonic() - started:.1f} s")
    coordinator = inventory.devices[PLACE].lab.labgrid.coordinator
    try:
        yield root, coordinator
    finally:
        down(FleetDownOptions(workspace=root), quiet_env())


def quiet_env() -> Env:
    return Env(console=Console(file=io.StringIO(), width=200))


def said(env: Env) -> str:
    return env.console.file.getvalue()  # type: ignore[attr-defined]


def client(coordinator: str, *argv: str, user: str | None = None, check: bool = True) -> str:
    """labgrid's own command line tool, as another user of the lab would run it."""
    environ = dict(os.environ)
    if user is not None:
        environ["LG_HOSTNAME"], environ["LG_USERNAME"] = user.split("/")
    result = subprocess.run([CLIENT, "-x", coordinator, *argv], capture_output=True, text=True, env=environ,
                            timeout=60)
    assert not check or result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def holder(coordinator: str) -> str:
    for line in client(coordinator, "-p", PLACE, "show").splitlines():
        if line.strip().startswith("acquired:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no 'acquired:' line")


def test_fleet_up_records_the_place_and_publishes_the_device(lab):
    root, coordinator = lab
    inventory = load_inventory(fleet_dir(root / ".edgefleet"))
    device = inventory.devices[PLACE]
    assert device.lab is not None and device.lab.labgrid.place == PLACE
    assert coordinator.startswith("127.0.0.1:")
    assert PLACE in client(coordinator, "places").split()
    assert f"fleet/{PLACE}/NetworkService" in client(coordinator, "resources")
    # deploy finds the place where it finds the device
    address = resolve_device(load_profile(root / "targets", PLACE).profile, root / ".edgefleet")
    assert address.lab == device.lab


def test_acquire_yields_the_network_service_and_releases_after(lab):
    root, coordinator = lab
    device = load_inventory(fleet_dir(root / ".edgefleet")).devices[PLACE]
    lines: list[str] = []
    started = time.monotonic()
    with LabgridPlace(coordinator, PLACE, user="alice", host="desk", say=lines.append) as service:
        acquired_s = time.monotonic() - started
        assert service == NetworkService(device.connection.host, device.connection.user, device.connection.port)
        assert holder(coordinator) == "desk/alice"
        # The address is the board's: an SSH session there works.
        board = quick(device.connection.model_copy(update={"host": service.host, "port": service.port}))
        with open_transport(board, name=PLACE) as transport:
            assert transport.run(["echo", "on the board"]).stdout == "on the board\n"
        leaving = time.monotonic()
    released_s = time.monotonic() - leaving
    assert holder(coordinator) == "None"
    assert "Reservation" not in client(coordinator, "reservations")
    assert lines[0].startswith(f"acquired labgrid place {PLACE} ({coordinator}) as desk/alice")
    assert lines[-1] == f"released labgrid place {PLACE}"
    print(f"acquire {acquired_s * 1000:.0f} ms, release {released_s * 1000:.0f} ms")
    assert acquired_s < 5 and released_s < 2


def test_a_second_user_queues_and_gets_the_place_right_after_the_first(lab):
    _, coordinator = lab
    hold_s = 2.0
    alice_holds, times = threading.Event(), {}
    bob_lines: list[str] = []

    def alice() -> None:
        with LabgridPlace(coordinator, PLACE, user="alice", host="desk", say=lambda _: None):
            alice_holds.set()
            time.sleep(hold_s)
            times["alice_leaves"] = time.monotonic()
        times["alice_left"] = time.monotonic()

    first = threading.Thread(target=alice)
    first.start()
    assert alice_holds.wait(30)
    asked = time.monotonic()
    with LabgridPlace(coordinator, PLACE, user="bob", host="ci", wait_s=60, say=bob_lines.append) as service:
        got = time.monotonic()
        assert holder(coordinator) == "ci/bob" and service.port > 0
    first.join()
    waited, after_release = got - asked, got - times["alice_leaves"]
    print(f"bob waited {waited:.2f} s; had the place {after_release:.2f} s after alice let go")
    assert waited > hold_s / 2, "bob did not wait for alice"
    assert any("waiting for labgrid place rpi3: held by desk/alice" in line for line in bob_lines), bob_lines
    # Cancel-before-release: the release schedules bob at once, not at the coordinator's next 15 s round.
    assert after_release < 3.0 < SCHEDULING_PERIOD_S


def test_a_held_place_and_a_short_wait_name_the_holder_and_the_place(lab):
    root, coordinator = lab
    client(coordinator, "-p", PLACE, "acquire", user="bench/carol")
    try:
        started = time.monotonic()
        with pytest.raises(DeviceBusyError, match=r"labgrid place rpi3 is busy: held by bench/carol; gave up after "
                                                  r"1 s in the queue of the coordinator at 127\.0\.0\.1:\d+"):
            with LabgridPlace(coordinator, PLACE, user="dave", host="desk", wait_s=1.0, say=lambda _: None):
                pytest.fail("the place is carol's")
        assert time.monotonic() - started < 5
        assert "Reservation" not in client(coordinator, "reservations")  # ours was cancelled
        # deploy gives up the same way, before sending anything to the board.
        env = quiet_env()
        with pytest.raises(DeviceBusyError, match="held by bench/carol"):
            deploy(DeployOptions(target=PLACE, dry_run=True, lab_wait_s=0.5, workspace=root), env)
        assert "deploy plan" not in said(env)
        # And from the command line, with the wait given there.
        proc = subprocess.run([str(Path(sys.executable).with_name("invoke")), "deploy", "--target", PLACE,
                               "--dry-run", "--lab-wait", "0.5"], cwd=root, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode != 0 and "held by bench/carol" in proc.stderr + proc.stdout, proc.stderr
        assert "gave up after 0.5 s" in proc.stderr + proc.stdout
    finally:
        client(coordinator, "-p", PLACE, "release", user="bench/carol")


def test_deploy_holds_the_place_while_on_the_board_and_releases_it_when_it_fails(lab):
    """A deploy reserves and acquires the place, gathers the board's facts over SSH at the place's address, and
    then fails planning (this workspace has built no variants): the place is released all the same."""
    root, coordinator = lab
    env = quiet_env()
    with pytest.raises(DeployError, match="rpi3: nothing to benchmark"):
        deploy(DeployOptions(target=PLACE, dry_run=True, workspace=root), env)
    output = said(env)
    assert output.index(f"acquired labgrid place {PLACE} ({coordinator})") < \
        output.index(f"released labgrid place {PLACE}")
    assert holder(coordinator) == "None"


def test_collect_pulls_a_run_through_the_place(lab, tmp_path):
    """collect finds the device's place as deploy did and reaches the board at the place's address, not at the
    one the run recorded."""
    root, coordinator = lab
    device = load_inventory(fleet_dir(root / ".edgefleet")).devices[PLACE]
    run_dir = Path(device.workdir) / "runs" / "r-lab"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text('{"run_id": "r-lab"}\n')
    record = RunRecord(run_id="r-lab", target=PLACE, model="m", device=PLACE, workdir=device.workdir, emulated=True,
                       started="2026-01-01T00:00:00+00:00", agent=str(run_dir / "no-agent.py"), python="python3",
                       connection=quick(device.connection).model_copy(update={"host": "recorded.invalid"})
                       .model_dump(mode="json"))
    lab_ref = recorded_lab(root / "targets", root / ".edgefleet", PLACE, PLACE)
    assert lab_ref == device.lab
    lines: list[str] = []
    try:
        folder = pull_run(record, tmp_path / "into", lab_ref, 30.0, lines.append)
    finally:
        shutil.rmtree(run_dir)
    assert (folder / "run.json").read_text() == '{"run_id": "r-lab"}\n'
    assert lines[0].startswith(f"acquired labgrid place {PLACE}") and lines[-1] == f"released labgrid place {PLACE}"
    assert holder(coordinator) == "None"


def test_a_place_acquired_by_hand_is_used_and_left_acquired(lab):
    _, coordinator = lab
    client(coordinator, "-p", PLACE, "acquire", user="desk/hank")
    try:
        lines: list[str] = []
        with LabgridPlace(coordinator, PLACE, user="hank", host="desk", say=lines.append) as service:
            assert service.port > 0
        assert lines == [f"labgrid place {PLACE} is already acquired by you (desk/hank): using it and leaving it "
                         f"acquired; release it with `labgrid-client -x {coordinator} -p {PLACE} release`"]
        assert holder(coordinator) == "desk/hank"
    finally:
        client(coordinator, "-p", PLACE, "release", user="desk/hank")


def test_unknown_place_and_unreachable_coordinator_are_clear(lab):
    _, coordinator = lab
    with pytest.raises(ConfigError, match=r"has no place 'rpi9' \(places: rpi3\)"):
        with LabgridPlace(coordinator, "rpi9", say=lambda _: None):
            pass
    with pytest.raises(TransportError, match=r"labgrid coordinator at 127\.0\.0\.1:1 is unreachable"):
        with LabgridPlace("127.0.0.1:1", PLACE, say=lambda _: None):
            pass


def test_the_coordinator_going_away_mid_session(lab, tmp_path, capfd):
    """A lab of its own (its coordinator is killed): the error says the coordinator is unreachable and how to
    release later, labgrid prints no traceback, and what was written on the board stays."""
    root, _ = lab
    inventory = load_inventory(fleet_dir(root / ".edgefleet"))
    state = tmp_path / "lab"
    coordinator = publish_fleet(state, inventory, say=lambda _: None).devices[PLACE].lab.labgrid.coordinator
    device = inventory.devices[PLACE]
    marker = Path(device.workdir) / f"kept-{os.getpid()}"
    lines: list[str] = []
    try:
        with pytest.raises(TransportError) as caught:
            with LabgridPlace(coordinator, PLACE, user="erin", host="desk", say=lines.append) as service:
                board = quick(device.connection.model_copy(update={"host": service.host, "port": service.port}))
                with open_transport(board, name=PLACE) as transport:
                    transport.run(["sh", "-c", f"echo kept > {marker}"])
                for pid in lab_pids(state, "labgrid-coordinator"):
                    os.kill(pid, signal.SIGKILL)
        message = str(caught.value)
        assert f"could not release labgrid place {PLACE}: the labgrid coordinator at {coordinator} is unreachable" \
            in message
        assert "Nothing on the board is undone" in message
        assert f"labgrid-client -x {coordinator} -p {PLACE} release" in message
        assert marker.read_text() == "kept\n"
        # The exporter follows its coordinator.
        deadline = time.monotonic() + 20
        while lab_pids(state, "labgrid-exporter") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not lab_pids(state, "labgrid-exporter")

        assert "Traceback" not in capfd.readouterr().err
    finally:
        marker.unlink(missing_ok=True)
        stop_lab(state)
    assert not lab_dir(state).exists()


def test_an_error_in_the_block_survives_a_failed_release(lab, tmp_path):
    root, _ = lab
    inventory = load_inventory(fleet_dir(root / ".edgefleet"))
    state = tmp_path / "lab"
    coordinator = publish_fleet(state, inventory, say=lambda _: None).devices[PLACE].lab.labgrid.coordinator
    lines: list[str] = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with LabgridPlace(coordinator, PLACE, user="frank", host="desk", say=lines.append):
                for pid in lab_pids(state, "labgrid-coordinator"):
                    os.kill(pid, signal.SIGKILL)
                raise KeyboardInterrupt
        assert lines[-1].startswith(f"warning: could not release labgrid place {PLACE}: the labgrid coordinator at "
                                    f"{coordinator} is unreachable")
    finally:
        stop_lab(state)


def test_ctrl_c_while_queued_cancels_the_reservation(lab):
    _, coordinator = lab
    client(coordinator, "-p", PLACE, "acquire", user="bench/carol")
    try:
        interrupt = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
        interrupt.start()
        with pytest.raises(KeyboardInterrupt):
            with LabgridPlace(coordinator, PLACE, user="gina", host="desk", wait_s=30, say=lambda _: None):
                pytest.fail("the place is carol's")
        interrupt.join()
        assert "Reservation" not in client(coordinator, "reservations")
    finally:
        client(coordinator, "-p", PLACE, "release", user="bench/carol")


def test_fleet_down_stops_the_lab(tmp_path):
    """fleet.down ends both processes and removes the lab's folder, places.yaml with it."""
    require_fleet_tools("loopback")
    root = tmp_path / "ws"
    shutil.copytree(REPO / "targets", root / "targets")
    (root / "edgefleet.yaml").write_text("backend: local\n")
    up(FleetUpOptions(devices=(PLACE,), isolation="loopback", emulate="host", labgrid=True, workspace=root),
       quiet_env())
    state = fleet_dir(root / ".edgefleet")
    assert lab_pids(state, "labgrid-coordinator") and lab_pids(state, "labgrid-exporter")
    down(FleetDownOptions(workspace=root), quiet_env())
    assert not lab_pids(state, "labgrid-coordinator") and not lab_pids(state, "labgrid-exporter")
    assert not lab_dir(state).exists()


QUICK_TARGET = """\
extends: rpi3
formats: {tflite: {quantizations: [fp32]}}
bench: {threads: [1], warmup_runs: 2, min_runs: 10, min_duration_s: 0.2, cooldown_s: 0.0}
"""


def test_two_users_deploy_to_one_place_the_second_waits_in_the_queue_then_runs(lab):
    """Two engineers' `invoke deploy --wait` to one board: the second waits in labgrid's queue while the first
    holds the place for its whole run, then gets it and runs; both runs complete."""
    root, coordinator = lab
    (root / "targets" / "rpi3-quick.yaml").write_text(QUICK_TARGET)
    from edgefleet.api.build import BuildOptions, build
    build(BuildOptions(target="rpi3-quick", workspace=root), quiet_env())

    def deploy_as(user: str) -> subprocess.Popen[str]:
        environ = dict(os.environ, LG_HOSTNAME="desk", LG_USERNAME=user, COLUMNS="200")
        return subprocess.Popen([str(Path(sys.executable).with_name("invoke")), "deploy", "--target", "rpi3-quick",
                                 "--device", PLACE, "--wait", "--lab-wait", "120"], cwd=root, env=environ,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = deploy_as("alice")
    deadline = time.monotonic() + 60
    while holder(coordinator) != "desk/alice":
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read() if first.stdout else ""
        time.sleep(0.2)
    second = deploy_as("bob")
    out_first, _ = first.communicate(timeout=300)
    out_second, _ = second.communicate(timeout=300)
    assert first.returncode == 0, out_first
    assert second.returncode == 0, out_second
    assert "waiting for labgrid place rpi3: held by desk/alice" in out_second, out_second
    # bob's deploy went on the board only after alice's run had finished and her place was released.
    assert out_second.index("held by desk/alice") < out_second.index(f"acquired labgrid place {PLACE}")
    for output in (out_first, out_second):
        assert f"released labgrid place {PLACE}" in output and "done: 1/1 cells" in output, output
    assert holder(coordinator) == "None"
