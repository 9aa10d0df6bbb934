"""The device-state sampler: on a fake sysfs tree the test writes (and changes mid-cell), and on this
machine's real /sys, whatever it holds."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.efagent.bench import measure
from edgefleet.agent.efagent.envprobe import (board_state, board_throttled, devfreq_clocks, parse_nvpmodel,
                                              parse_thermal_status, temperatures)
from edgefleet.agent.efagent.sampler import (MAX_DUTY, Sampler, cooldown_target, cpu_freq_files, frequency_dipped,
                                             max_temperature, thermal_zones, wait_until_cool)

BENCH = {"warmup_runs": 2, "warmup_max_runs": 2, "min_runs": 30, "min_duration_s": 0.15, "max_runs": 100000,
         "cooldown_s": 0.0, "cv_threshold": 0.15}


class FakeSysfs:
    """The files the agent reads, where a real kernel puts them, with the neighbours it must ignore."""

    def __init__(self, root: Path) -> None:
        self.root = root
        cpu = root / "sys/devices/system/cpu"
        for name in ("cpufreq/policy0", "cpuidle", "cpu0/cpuidle", "cpu0/topology"):
            (cpu / name).mkdir(parents=True, exist_ok=True)
        (cpu / "online").write_text("0-3\n")
        (root / "sys/class/thermal/cooling_device0").mkdir(parents=True)
        (root / "sys/class/thermal/cooling_device0/cur_state").write_text("0\n")

    def set_freq(self, cpu: str, khz: int, name: str = "scaling_cur_freq") -> None:
        folder = self.root / "sys/devices/system/cpu" / cpu / "cpufreq"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"{khz}\n")

    def set_temp(self, zone: str, millideg: int | str, kind: str = "cpu-thermal") -> None:
        folder = self.root / "sys/class/thermal" / zone
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "type").write_text(kind + "\n")
        (folder / "temp").write_text(f"{millideg}\n")


@pytest.fixture
def sysfs(tmp_path: Path) -> FakeSysfs:
    fake = FakeSysfs(tmp_path / "root")
    for cpu in ("cpu0", "cpu1", "cpu2", "cpu10"):
        fake.set_freq(cpu, 1_800_000)
    fake.set_temp("thermal_zone0", 45_000)
    fake.set_temp("thermal_zone1", 38_500, kind="gpu-thermal")
    fake.set_temp("thermal_zone2", "not a number", kind="broken")
    return fake


class FakeSession:
    """A runtimes.Session stand-in: ``on_invoke(n)`` runs at each invoke, as the device's state changes."""

    def __init__(self, on_invoke=None, seconds: float = 0.0002) -> None:
        self.invokes = 0
        self.on_invoke = on_invoke
        self.seconds = seconds

    def set_input(self, index: int, array: np.ndarray) -> None:
        pass

    def invoke(self) -> None:
        self.invokes += 1
        if self.on_invoke:
            self.on_invoke(self.invokes)
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:  # busy, as a model is: sleeping would hand the core away
            pass

    def get_outputs(self) -> list[np.ndarray]:
        return [np.zeros((1, 4), dtype=np.float32)]


FEEDS = [[np.zeros((1, 4), dtype=np.float32)]]


def test_the_fake_tree_is_found_as_a_kernel_lays_it_out(sysfs: FakeSysfs) -> None:
    root = str(sysfs.root)
    assert list(cpu_freq_files(root)) == ["cpu0", "cpu1", "cpu2", "cpu10"]  # cpufreq/ and cpuidle/ are not cores
    zones = thermal_zones(root)
    assert list(zones) == ["thermal_zone0", "thermal_zone1"]  # the zone that does not read as a number is left out
    assert zones["thermal_zone1"][0] == "gpu-thermal"
    assert max_temperature(root) == 45.0
    assert temperatures(root) == [{"zone": "thermal_zone0", "type": "cpu-thermal", "temp_c": 45.0},
                                  {"zone": "thermal_zone1", "type": "gpu-thermal", "temp_c": 38.5}]
    # Where only root may read scaling_cur_freq's sibling, either file serves.
    sysfs.set_freq("cpu3", 600_000, name="cpuinfo_cur_freq")
    assert cpu_freq_files(root)["cpu3"].endswith("cpuinfo_cur_freq")


def test_sampler_keeps_each_cores_extremes_and_the_hottest_zone(sysfs: FakeSysfs) -> None:
    sampler = Sampler(str(sysfs.root), interval_s=60)  # only the samples taken here
    sampler.sample()
    sysfs.set_freq("cpu1", 600_000)
    sysfs.set_temp("thermal_zone1", 71_250, kind="gpu-thermal")
    sampler.sample()
    sysfs.set_freq("cpu1", 1_800_000)
    sampler.sample()
    sampler.close()
    state = sampler.summary()
    assert state["samples"] == 3
    freq = state["cpu_freq_khz"]
    assert (freq["min"], freq["max"]) == (600_000, 1_800_000)
    assert freq["per_core"]["cpu1"] == {"min": 600_000, "max": 1_800_000}
    assert freq["per_core"]["cpu0"] == {"min": 1_800_000, "max": 1_800_000}
    # One idle core clocking down is not throttling: the fastest core stayed at its peak.
    assert (freq["peak_min"], freq["peak_max"]) == (1_800_000, 1_800_000)
    assert frequency_dipped(state) is False
    assert state["temp_c"]["max"] == 71.25
    assert state["temp_c"]["zones"]["thermal_zone0"] == {"type": "cpu-thermal", "max": 45.0}


def test_the_thread_samples_while_the_loop_runs_and_stops_with_it(sysfs: FakeSysfs) -> None:
    with Sampler(str(sysfs.root), interval_s=0.01) as sampler:
        time.sleep(0.2)
    count = sampler.summary()["samples"]
    assert count >= 5  # one at each end and the thread's in between
    time.sleep(0.05)
    assert sampler.summary()["samples"] == count  # the thread is gone
    assert not any(t.name == "efagent-sampler" for t in threading.enumerate())


def test_a_cell_whose_clock_drops_during_timing_is_flagged_throttled(sysfs: FakeSysfs) -> None:
    def throttle(invokes: int) -> None:
        if invokes == 20:  # in the timed loop: 1 first inference, 2 warm-up runs, then >= 30 timed runs
            for cpu in ("cpu0", "cpu1", "cpu2", "cpu10"):
                sysfs.set_freq(cpu, 1_200_000)

    result = measure(FakeSession(throttle), FEEDS, BENCH, sysfs_root=str(sysfs.root), interval_s=0.02)
    assert result["runs"] >= BENCH["min_runs"] and result["warmup_runs"] == 2
    assert result["throttled"] is True and result["throttle_reasons"] == ["frequency"]
    assert "frequency" in result["unstable_reasons"] and result["unstable"] is True
    freq = result["device_state"]["cpu_freq_khz"]
    assert (freq["peak_min"], freq["peak_max"]) == (1_200_000, 1_800_000)
    assert result["device_state"]["samples"] >= 2


def test_a_steady_clock_and_a_hot_zone(sysfs: FakeSysfs) -> None:
    def heat(invokes: int) -> None:
        if invokes == 100:
            sysfs.set_temp("thermal_zone0", 82_000)

    root = str(sysfs.root)
    steady = measure(FakeSession(heat), FEEDS, dict(BENCH, max_temp_c=80.0), sysfs_root=root, interval_s=0.02)
    assert steady["throttled"] is False and "frequency" not in steady["unstable_reasons"]
    assert steady["hot"] is True and steady["device_state"]["temp_c"]["max"] == 82.0
    # No limit in the profile: nothing is hot, whatever the temperature.
    assert measure(FakeSession(), FEEDS, BENCH, sysfs_root=root)["hot"] is False


def test_no_sysfs_at_all_is_a_clean_none(tmp_path: Path) -> None:
    result = measure(FakeSession(), FEEDS, dict(BENCH, max_temp_c=70.0), sysfs_root=str(tmp_path))
    state = result["device_state"]
    assert (state["samples"], state["cpu_freq_khz"], state["temp_c"]) == (0, None, None)
    assert result["hot"] is None  # a limit, but nothing to read it on
    assert result["throttled"] is False


def test_the_sampler_on_this_machines_real_sys() -> None:
    """Whatever this machine exposes: numbers where the files exist, None where they do not."""
    with Sampler("/", interval_s=0.01) as sampler:
        time.sleep(0.05)
    state = sampler.summary()
    if cpu_freq_files("/"):
        freq = state["cpu_freq_khz"]
        assert 0 < freq["min"] <= freq["peak_min"] <= freq["peak_max"] == freq["max"]
    else:
        assert state["cpu_freq_khz"] is None
    if thermal_zones("/"):
        assert isinstance(state["temp_c"]["max"], float) and isinstance(max_temperature("/"), float)
    else:
        assert state["temp_c"] is None and max_temperature("/") is None
    assert (state["samples"] >= 2) == sampler.has_sources
    board = board_state("/")
    assert set(board) == {"vcgencmd", "nvpmodel", "devfreq", "android_thermal_status"}
    if not any(board.values()):  # no board tool here (a PC, a VM): nothing can report throttling
        assert board_throttled(board, board) == []


def test_board_tools_that_report_throttling() -> None:
    quiet = {"vcgencmd": {"raw": "0x0", "flags": []}, "nvpmodel": None, "android_thermal_status": None}
    assert board_throttled(quiet, quiet) == []
    # An "occurred" bit is sticky since boot: only one that appears during the loop counts.
    occurred = dict(quiet, vcgencmd={"raw": "0x40000", "flags": ["throttled_occurred"]})
    assert board_throttled(quiet, occurred) == ["vcgencmd"]
    assert board_throttled(occurred, occurred) == []
    capped = dict(quiet, vcgencmd={"raw": "0x2", "flags": ["arm_frequency_capped"]})
    assert board_throttled(capped, quiet) == ["vcgencmd"]
    assert board_throttled(quiet, dict(quiet, android_thermal_status=2)) == ["android_thermal_status"]
    assert board_throttled(dict(quiet, nvpmodel={"mode": "MAXN"}), dict(quiet, nvpmodel={"mode": "5W"})) == ["nvpmodel"]


def test_cooldown_waits_for_the_temperature_not_the_clock(sysfs: FakeSysfs) -> None:
    root = str(sysfs.root)
    assert cooldown_target(40.0, None) == 42.0 and cooldown_target(40.0, 41.0) == 41.0
    assert cooldown_target(None, 70.0) == 70.0 and cooldown_target(None, None) is None

    sysfs.set_temp("thermal_zone0", 60_000)
    cooler = threading.Timer(0.3, sysfs.set_temp, ("thermal_zone0", 41_000))
    cooler.start()
    waited = wait_until_cool(5.0, 40.0, None, root=root, poll_s=0.02)
    cooler.join()
    assert waited["mode"] == "thermal" and waited["reached"] is True and waited["target_c"] == 42.0
    assert 0.25 <= waited["waited_s"] < 2.0

    # Still hot: the wait ends at cooldown_s and says the target was not reached.
    sysfs.set_temp("thermal_zone0", 60_000)
    waited = wait_until_cool(0.2, 40.0, None, root=root, poll_s=0.02)
    assert waited["reached"] is False and 0.2 <= waited["waited_s"] < 1.0 and waited["temp_c"] == 60.0

    # Already cool: no wait at all.
    assert wait_until_cool(5.0, 59.0, None, root=root)["waited_s"] < 0.1


def test_cooldown_without_thermal_zones_is_the_fixed_pause(tmp_path: Path) -> None:
    waited = wait_until_cool(0.15, 40.0, 70.0, root=str(tmp_path))
    assert waited["mode"] == "fixed" and waited["reached"] is None and waited["target_c"] is None
    assert 0.15 <= waited["waited_s"] < 1.0


def test_board_tools_output_is_parsed() -> None:
    assert parse_nvpmodel("NV Fan Mode:quiet\nNV Power Mode: MAXN\n0\n") == {"mode": "MAXN", "id": 0}
    assert parse_nvpmodel("garbage") == {"mode": None, "id": None}
    dumpsys = "IsStatusOverride: false\nThermalStatusListeners:\n\tcallbacks: 1\nThermal Status: 2\n"
    assert parse_thermal_status(dumpsys) == 2
    assert parse_thermal_status("Permission Denial: can't dump ThermalManagerService") is None


def test_devfreq_clocks_from_a_fake_jetson_tree(tmp_path: Path) -> None:
    gpu = tmp_path / "sys/class/devfreq/57000000.gpu"
    gpu.mkdir(parents=True)
    for name, hz in (("cur_freq", 76_800_000), ("min_freq", 76_800_000), ("max_freq", 921_600_000)):
        (gpu / name).write_text(f"{hz}\n")
    assert devfreq_clocks(str(tmp_path)) == {
        "57000000.gpu": {"cur_hz": 76_800_000, "min_hz": 76_800_000, "max_hz": 921_600_000}}
    assert devfreq_clocks(str(tmp_path / "nowhere")) is None


def test_a_costly_sample_stretches_the_interval_to_keep_the_sampler_under_one_percent(sysfs: FakeSysfs) -> None:
    """Under qemu-user a sample costs milliseconds of CPU: at 0.1 s the sampler would take a share of a core
    from a loop that uses them all."""
    class Costly(Sampler):
        def sample(self) -> None:
            started = time.thread_time()
            while time.thread_time() - started < 0.004:
                pass
            super().sample()

    with Costly(str(sysfs.root), interval_s=0.01) as sampler:
        time.sleep(0.3)
    state = sampler.summary()
    assert state["sample_cost_s"] >= 0.004
    assert state["interval_s"] == pytest.approx(state["sample_cost_s"] / MAX_DUTY, rel=1e-3) and state["interval_s"] >= 0.4
    assert state["samples"] <= 3, "after the first costly sample the thread waited 0.4 s or more"
