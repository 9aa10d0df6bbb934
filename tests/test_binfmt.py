"""qemu-user-static through binfmt_misc: the real registrations on this host, fake /proc trees for
each way it can be missing, and ``ensure`` for real inside a throwaway user namespace.

Nothing here unregisters, disables or unmounts anything of this host's binfmt_misc: other work
depends on it. A user namespace (Linux >= 6.7) has its own binfmt_misc, so ``ensure`` can mount and
register there for real and the host never sees it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.fleet import FleetError, binfmt
from edgefleet.fleet.binfmt import BINFMT_ROOT, EMULATIONS, emulator_version, ensure, for_machine, status

REPO = Path(__file__).resolve().parents[1]
# The kernel's text for Debian's registration, as /proc/sys/fs/binfmt_misc/qemu-arm shows it.
ENTRY = ("{state}\ninterpreter /usr/libexec/qemu-binfmt/arm-binfmt-P\nflags: {flags}\noffset 0\n"
         "magic 7f454c4601010100000000000000000002002800\nmask ffffffffffffff00fffffffffffffffffeffffff\n")


def fake_tree(tmp_path: Path, **entries: str) -> Path:
    """A mounted-looking binfmt_misc directory with the given entries (name -> file text)."""
    root = tmp_path / "binfmt_misc"
    root.mkdir()
    (root / "status").write_text("enabled\n")
    (root / "register").write_text("")
    for name, text in entries.items():
        (root / name.replace("_", "-")).write_text(text)
    return root


def kinds(st: binfmt.BinfmtStatus) -> list[str]:
    return [p.kind for p in st.problems]


# -- this host ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["armhf", "arm64"])
def test_this_host_runs_the_foreign_userlands(arch: str) -> None:
    st = status(arch)
    assert st.ok, st.problems
    assert (st.mounted, st.registered, st.enabled, st.fix_binary) == (True, True, True, True)
    assert st.name == EMULATIONS[arch].binfmt_name and "F" in st.flags
    assert st.interpreter and Path(st.interpreter).exists()
    assert st.emulator == shutil.which(EMULATIONS[arch].static_binary)
    assert ensure(arch) == st  # nothing to do, nothing done


@pytest.mark.parametrize("arch", ["armhf", "arm64"])
def test_emulator_version_is_read_from_the_real_binary(arch: str) -> None:
    emu = EMULATIONS[arch]
    out = subprocess.run([emu.static_binary, "--version"], capture_output=True, text=True, check=True).stdout
    number = re.match(rf"{emu.binfmt_name} version (\d+\.\d+\.\d+)", out)
    assert number, out
    assert emulator_version(arch) == f"{emu.binfmt_name} {number[1]}" == status(arch).version
    before = emulator_version.cache_info().hits
    emulator_version(arch)
    assert emulator_version.cache_info().hits == before + 1  # read once per process


def test_the_map_names_kernel_entry_binary_and_machine() -> None:
    assert {a: (e.binfmt_name, e.static_binary, e.machine) for a, e in EMULATIONS.items()} == {
        "armhf": ("qemu-arm", "qemu-arm-static", "armv7l"),
        "arm64": ("qemu-aarch64", "qemu-aarch64-static", "aarch64")}
    assert for_machine("armv7l") == EMULATIONS["armhf"] and for_machine("x86_64") is None
    with pytest.raises(FleetError, match="known: armhf, arm64"):
        status("armel")


# -- fake /proc trees -----------------------------------------------------------------------

def test_not_mounted(tmp_path: Path) -> None:
    root = tmp_path / "binfmt_misc"
    root.mkdir()
    st = status("armhf", root)
    assert not st.mounted and not st.registered and not st.ok
    assert kinds(st) == ["mount", "registration"]
    assert st.problems[0].fix == f"mount -t binfmt_misc binfmt_misc {root}"
    assert st.problems[1].fix == "update-binfmts --enable qemu-arm"
    # No directory at all: the module is not loaded yet.
    assert status("armhf", tmp_path / "absent").problems[0].fix.startswith("modprobe binfmt_misc && mount -t")


def test_not_registered(tmp_path: Path) -> None:
    st = status("arm64", fake_tree(tmp_path, qemu_arm=ENTRY.format(state="enabled", flags="PF")))
    assert st.mounted and not st.registered and st.interpreter is None
    assert [str(p) for p in st.problems] == [
        "qemu-aarch64 is not registered; fix: update-binfmts --enable qemu-aarch64"]


def test_disabled(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, qemu_arm=ENTRY.format(state="disabled", flags="PF"))
    st = status("armhf", root)
    assert st.registered and not st.enabled and st.fix_binary
    # update-binfmts --enable would only warn "already enabled in kernel"; the entry's own switch works.
    assert [p.fix for p in st.problems] == [f"echo 1 > {root}/qemu-arm"]


def test_registered_without_the_fix_binary_flag(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, qemu_arm=ENTRY.format(state="enabled", flags="P"))
    st = status("armhf", root)
    assert st.registered and st.enabled and not st.fix_binary and st.flags == "P"
    assert kinds(st) == ["registration"]
    what = st.problems[0].what
    assert "without the F flag" in what and "/usr/libexec/qemu-binfmt/arm-binfmt-P" in what
    assert st.problems[0].fix.startswith(f"echo -1 > {root}/qemu-arm && update-binfmts --enable qemu-arm")
    # Someone else's registration: ensure says how to replace it and leaves it alone.
    with pytest.raises(FleetError, match="not edgefleet's to replace") as err:
        ensure("armhf", root)
    assert "update-binfmts --enable qemu-arm" in str(err.value)
    assert (root / "qemu-arm").read_text() == ENTRY.format(state="enabled", flags="P")


def test_ensure_without_root_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "binfmt_misc"
    root.mkdir()
    monkeypatch.setattr(binfmt.os, "geteuid", lambda: 1000)
    with pytest.raises(FleetError, match=r"fixing it needs root\); as root:") as err:
        ensure("armhf", root)
    assert f"mount -t binfmt_misc binfmt_misc {root}" in str(err.value)
    assert "update-binfmts --enable qemu-arm" in str(err.value)
    assert list(root.iterdir()) == []


def test_without_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # qemu-*-static live in /usr/bin, outside the sbin fallback
    root = fake_tree(tmp_path)
    st = status("armhf", root)
    assert st.emulator is None and st.version is None
    assert str(st.problems[0]) == ("qemu-arm-static is not installed; "
                                   "fix: apt-get install qemu-user-static binfmt-support")
    with pytest.raises(FleetError, match="apt-get install qemu-user-static binfmt-support"):
        ensure("armhf", root)
    assert sorted(p.name for p in root.iterdir()) == ["register", "status"]


# -- ensure, for real, in a private binfmt_misc ------------------------------------------------

# Runs as root of a new user namespace: a fresh, empty binfmt_misc mounted over the usual path is
# the "mounted, nothing registered" machine; an empty directory elsewhere is the "not mounted" one.
IN_NAMESPACE = """
import json, subprocess, sys
from pathlib import Path
from edgefleet.fleet.binfmt import ensure, status
subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"], check=True)
out = {"fresh": status("armhf").problems[0].what}
out["registered"] = ensure("armhf").flags
Path("/proc/sys/fs/binfmt_misc/qemu-arm").write_text("0")
out["disabled"] = [p.fix for p in status("armhf").problems]
out["re-enabled"] = ensure("armhf").enabled
root = Path(sys.argv[1])
out["unmounted"] = [p.kind for p in status("arm64", root).problems]
after = ensure("arm64", root)
out["mounted"] = [after.mounted, after.flags, Path(after.interpreter).name]
print(json.dumps(out))
"""


def test_ensure_mounts_and_registers_in_a_private_binfmt_misc(tmp_path: Path) -> None:
    host_before = {n: (BINFMT_ROOT / n).read_text() for n in ("qemu-arm", "qemu-aarch64")}
    (tmp_path / "elsewhere").mkdir()
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private",
         sys.executable, "-c", IN_NAMESPACE, str(tmp_path / "elsewhere")],
        capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, f"needs user namespaces with their own binfmt_misc (Linux >= 6.7):\n{proc.stderr}"
    out = json.loads(proc.stdout)
    assert out == {
        "fresh": "qemu-arm is not registered",
        "registered": "PF",
        "disabled": ["echo 1 > /proc/sys/fs/binfmt_misc/qemu-arm"],
        "re-enabled": True,
        "unmounted": ["mount", "registration"],
        "mounted": [True, "PF", "aarch64-binfmt-P"],
    }
    # The host's registrations and mount are untouched.
    assert {n: (BINFMT_ROOT / n).read_text() for n in host_before} == host_before
    assert not any(str(tmp_path) in line for line in Path("/proc/mounts").read_text().splitlines())
