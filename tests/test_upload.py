"""Verified uploads: skip when present, atomic replace, retry across a cut link (resuming where it
stopped, and starting over when the part on the device is bad), disk-full precheck."""
from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.deploy import file_sha256, remote_free_bytes, remote_sha256, upload_verified
from edgefleet.deploy.upload import UploadResult
from edgefleet.errors import DeployError
from edgefleet.fleet import EmulatedFleet
from edgefleet.transport.base import HashingPut, ResumeRefused, Transport
from edgefleet.transport.local import LocalTransport
from edgefleet.transport.registry import open_transport

pytest.register_assert_rewrite("fleet_fixtures")
from fleet_fixtures import quick  # noqa: E402

pytest_plugins = ["fleet_fixtures"]

MB = 1024 * 1024


def _blob(path: Path, size: int) -> str:
    path.write_bytes(os.urandom(size))
    return file_sha256(path)


def _temps(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".part-" in p.name]


# -- any transport (local: fast, no sshd) ------------------------------------------

def test_upload_then_skip_on_same_sha(tmp_path: Path) -> None:
    source = tmp_path / "model.tflite"
    sha = _blob(source, MB + 7)
    dest = tmp_path / "device" / "models" / "model.tflite"
    local = LocalTransport(name="here")
    first = upload_verified(local, source, str(dest), sha256=sha)
    assert (first.sent_bytes, first.skipped, first.attempts) == (MB + 7, False, 1)
    assert file_sha256(dest) == sha
    second = upload_verified(local, source, str(dest), sha256=sha)
    assert (second.sent_bytes, second.skipped) == (0, True)
    assert _temps(dest.parent) == []


def test_wrong_expected_sha_is_refused_without_touching_the_destination(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    _blob(source, 4096)
    dest = tmp_path / "device" / "model.onnx"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    with pytest.raises(DeployError, match="does not have the expected sha256"):
        upload_verified(LocalTransport(name="here"), source, str(dest), sha256="0" * 64, backoff_s=0)
    assert dest.read_bytes() == b"old"
    assert _temps(dest.parent) == []


def test_stale_temp_files_of_a_dead_upload_are_swept(tmp_path: Path) -> None:
    source = tmp_path / "m.bin"
    sha = _blob(source, 1000)
    device = tmp_path / "device"
    device.mkdir()
    (device / ".m.bin.part-deadbeef").write_bytes(b"half")
    (device / ".other.bin.part-deadbeef").write_bytes(b"not ours")
    upload_verified(LocalTransport(name="here"), source, str(device / "m.bin"), sha256=sha)
    assert sorted(p.name for p in device.iterdir()) == [".other.bin.part-deadbeef", "m.bin"]


# -- real sshd ------------------------------------------------------------------

@pytest.mark.ssh
def test_upload_over_ssh_skips_second_time(rpi3: Transport, rpi3_scratch: Path, tmp_path: Path) -> None:
    source = tmp_path / "model.tflite"
    sha = _blob(source, 3 * MB)
    remote = f"{rpi3_scratch}/models/model.tflite"
    calls: list[tuple[int, int]] = []
    first = upload_verified(rpi3, source, remote, sha256=sha, progress=lambda d, t: calls.append((d, t)))
    assert first.sent_bytes == 3 * MB and not first.skipped
    assert calls[-1] == (3 * MB, 3 * MB)
    assert remote_sha256(rpi3, remote) == sha == hashlib.sha256(Path(remote).read_bytes()).hexdigest()
    again = upload_verified(rpi3, source, remote, sha256=sha)
    assert (again.sent_bytes, again.skipped) == (0, True)
    assert _temps(rpi3_scratch / "models") == []


def _upload_across_a_cut(fleet: EmulatedFleet, scratch: Path, tmp_path: Path,
                         while_down: Callable[[], None] = lambda: None) -> tuple[UploadResult, list[bytes], str, Path]:
    """A 50 MB upload whose link goes down for 2.5 s once a third is sent; ``while_down`` runs meanwhile."""
    source = tmp_path / "big.bin"
    sha = _blob(source, 50 * MB)
    final = scratch / "big.bin"
    final.write_bytes(b"previous version")
    seen_during_outage: list[bytes] = []
    outage = threading.Event()

    def cut_for_a_while() -> None:
        try:
            with fleet.link_down("rpi3"):
                time.sleep(0.5)  # the device-side receiver writes what reached it
                while_down()
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    seen_during_outage.append(final.read_bytes())
                    time.sleep(0.1)
        finally:
            outage.set()

    def progress(done: int, total: int) -> None:
        if done > total // 3 and not seen_during_outage and not outage.is_set():
            seen_during_outage.append(final.read_bytes())
            threading.Thread(target=cut_for_a_while, daemon=True).start()

    conn = quick(fleet.device("rpi3").connection, connect_timeout_s=1.5, io_timeout_s=1.0)
    with open_transport(conn, name="rpi3") as transport:
        result = upload_verified(transport, source, str(final), sha256=sha, retries=5, backoff_s=0.5,
                                 progress=progress)
    assert outage.wait(10)
    return result, seen_during_outage, sha, final


@pytest.mark.ssh
def test_upload_survives_a_cut_link_and_resumes_where_it_stopped(fleet: EmulatedFleet, rpi3_scratch: Path,
                                                                  tmp_path: Path) -> None:
    started = time.monotonic()
    result, seen_during_outage, sha, final = _upload_across_a_cut(fleet, rpi3_scratch, tmp_path)
    elapsed = time.monotonic() - started
    assert result.attempts >= 2 and not result.skipped
    # The retry continued the part already on the device: about a third was not sent again.
    assert result.resumed_bytes > 10 * MB
    # Every attempt's bytes count; what the cut lost in flight is sent again, what had arrived is not.
    assert 50 * MB <= result.sent_bytes < 50 * MB + result.resumed_bytes
    assert file_sha256(final) == sha
    # During the outage the final path only ever held the previous version.
    assert len(seen_during_outage) > 5
    assert set(seen_during_outage) == {b"previous version"}
    assert _temps(rpi3_scratch) == []
    assert elapsed < 60


@pytest.mark.ssh
def test_a_resumed_upload_with_a_damaged_part_is_sent_again_whole(fleet: EmulatedFleet, rpi3_scratch: Path,
                                                                   tmp_path: Path) -> None:
    damaged: list[Path] = []

    def damage_the_part() -> None:
        for part in rpi3_scratch.glob(".big.bin.part-*"):
            with part.open("r+b") as handle:
                first = handle.read(1)
                handle.seek(0)
                handle.write(bytes([first[0] ^ 0xFF]))
            damaged.append(part)

    result, _, sha, final = _upload_across_a_cut(fleet, rpi3_scratch, tmp_path, damage_the_part)
    assert damaged, "no part file to damage"
    # The resumed attempt's whole-file hash on the device caught the bad byte; the next one started over
    # and sent the whole file (the resumed attempt's part included, so at least twice the file in all).
    assert result.attempts >= 3 and result.resumed_bytes == 0
    assert result.sent_bytes >= 100 * MB
    assert file_sha256(final) == sha
    assert _temps(rpi3_scratch) == []


@pytest.mark.ssh
def test_upload_gives_up_after_its_retries(fleet: EmulatedFleet, rpi3_scratch: Path, tmp_path: Path) -> None:
    source = tmp_path / "m.bin"
    sha = _blob(source, 1000)
    conn = quick(fleet.device("rpi3").connection, connect_timeout_s=0.5, command_timeout_s=1.0)
    with open_transport(conn, name="rpi3") as transport, fleet.link_down("rpi3"):
        with pytest.raises(DeployError, match=r"rpi3 .*upload of m.bin .* failed after 2 attempts"):
            upload_verified(transport, source, f"{rpi3_scratch}/m.bin", sha256=sha, retries=1, backoff_s=0.1)
    assert not (rpi3_scratch / "m.bin").exists()


@pytest.mark.ssh
def test_disk_full_is_caught_before_sending(fleet: EmulatedFleet, coral: Transport, tmp_path: Path) -> None:
    workdir = fleet.device("coral").workdir
    free = remote_free_bytes(coral, workdir)
    host_view = os.statvfs(workdir)
    assert abs(free - host_view.f_bavail * host_view.f_frsize) < 64 * 1024
    source = tmp_path / "too_big.bin"
    size = free + MB
    sha = _blob(source, size)
    sent: list[int] = []
    with pytest.raises(DeployError) as caught:
        upload_verified(coral, source, f"{workdir}/too_big.bin", sha256=sha,
                        progress=lambda done, total: sent.append(done))
    message = str(caught.value)
    assert message.startswith("coral (ssh root@")
    assert f"needs {size} bytes" in message and "bytes free" in message
    assert sent == []
    assert not (Path(workdir) / "too_big.bin").exists() and _temps(Path(workdir)) == []


@pytest.mark.ssh
def test_put_hashed_continues_a_part_and_hashes_the_whole_file(rpi3: Transport, rpi3_scratch: Path,
                                                               tmp_path: Path) -> None:
    assert isinstance(rpi3, HashingPut)
    source = tmp_path / "m.bin"
    sha = _blob(source, 3 * MB + 17)
    data = source.read_bytes()
    part = rpi3_scratch / "m.part"
    part.write_bytes(data[:MB] + b"stale tail of a longer earlier attempt")
    sent: list[int] = []
    assert rpi3.put_hashed(source, str(part), offset=MB, progress=lambda done, total: sent.append(done)) == sha
    assert part.read_bytes() == data
    assert sent[-1] == len(data)  # progress counts the whole file; only the rest went over the wire

    part.write_bytes(data[:100])
    with pytest.raises(ResumeRefused, match="holds 100 bytes, fewer than 1048576"):
        rpi3.put_hashed(source, str(part), offset=MB)
    part.unlink()
    with pytest.raises(ResumeRefused, match="cannot resume"):
        rpi3.put_hashed(source, str(part), offset=MB)
