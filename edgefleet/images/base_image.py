"""The base image every local builder starts FROM, made with debootstrap because the engine has no registry.

``python -m edgefleet.images.base_image`` (wrapped by ``scripts/make-base-image``) makes it
on a fresh machine or in CI; the Docker backend calls :func:`ensure_base_image` on demand.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.errors import BuildError

if TYPE_CHECKING:
    import docker

DEFAULT_BASE_IMAGE = "edgefleet/base:bookworm"
DEFAULT_SUITE = "bookworm"
# python3-venv brings ensurepip and its bundled pip, so python3-pip is not needed.
DEFAULT_INCLUDE = ("python3", "python3-venv", "ca-certificates")
LABEL_PREFIX = "org.edgefleet"
MADE_BY = "edgefleet.images.base_image"

# Runtime-only or cache content the image must not carry; the directories themselves stay.
_EMPTIED_DIRS = ("proc", "sys", "dev", "run", "tmp", "var/cache/apt/archives", "var/lib/apt/lists")

Log = Callable[[str], None]


def ensure_base_image(client: docker.DockerClient, name: str = DEFAULT_BASE_IMAGE,
                      suite: str = DEFAULT_SUITE, log: Log = print, *,
                      include: Sequence[str] = DEFAULT_INCLUDE, mirror: str | None = None,
                      workdir: Path | None = None) -> str:
    """Return ``name`` after making sure the engine has it; debootstrap and import it if missing.

    ``mirror`` is passed to debootstrap only when given, so by default debootstrap
    uses its own default Debian mirror.
    """
    import docker.errors
    from docker.utils import parse_repository_tag

    try:
        image = client.images.get(name)
    except docker.errors.ImageNotFound:
        pass
    else:
        log(f"base image {name} exists ({image.short_id}); reusing it")
        return name

    debootstrap = _debootstrap_executable()
    started = time.monotonic()
    with _scratch_dir(workdir) as scratch:
        rootfs = scratch / "rootfs"
        command = [debootstrap, "--variant=minbase", f"--include={','.join(include)}", suite, str(rootfs)]
        if mirror:
            command.append(mirror)
        _run_streaming(command, log)
        tarball = scratch / "rootfs.tar"
        log(f"packing {rootfs.name} into {tarball.name}")
        _pack_rootfs(rootfs, tarball)
        repository, tag = parse_repository_tag(name)
        changes = _image_changes(suite=suite, include=include, debootstrap_version=_debootstrap_version(debootstrap))
        log(f"importing {tarball.stat().st_size // 2**20} MiB as {name}")
        try:
            client.api.import_image(src=str(tarball), repository=repository, tag=tag or "latest",
                                    changes=changes)
        except docker.errors.APIError as exc:
            raise BuildError(f"importing the base image {name} failed: {exc}") from exc
    log(f"base image {name} made in {time.monotonic() - started:.0f} s")
    return name


def _debootstrap_executable() -> str:
    found = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if not found:
        raise BuildError("making the base image needs debootstrap; install it (apt-get install debootstrap) "
                         "or run scripts/bootstrap")
    if os.geteuid() != 0:
        raise BuildError("making the base image needs root for debootstrap; run scripts/make-base-image as root")
    return found


def _debootstrap_version(executable: str) -> str:
    try:
        out = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "unknown"
    return out.stdout.strip().rpartition(" ")[2] or "unknown"


def _run_streaming(command: list[str], log: Log) -> None:
    tail: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as proc:
        for raw in proc.stdout or ():
            line = raw.rstrip("\n")
            log(line)
            tail.append(line)
            del tail[:-BuildError.tail_lines]
    if proc.returncode != 0:
        raise BuildError("debootstrap failed", command=command, returncode=proc.returncode, log=tail)


def _pack_rootfs(rootfs: Path, tarball: Path) -> None:
    emptied = tuple(f"./{d}/" for d in _EMPTIED_DIRS)

    def keep(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if member.name.startswith(emptied) else member

    # GNU format keeps long names and device nodes; ownership stays numeric (root).
    with tarfile.open(tarball, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(rootfs, arcname=".", filter=keep)


def _image_changes(*, suite: str, include: Sequence[str], debootstrap_version: str) -> list[str]:
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {
        f"{LABEL_PREFIX}.made-by": MADE_BY,
        f"{LABEL_PREFIX}.tool": f"debootstrap {debootstrap_version} --variant=minbase",
        f"{LABEL_PREFIX}.suite": suite,
        f"{LABEL_PREFIX}.include": ",".join(include),
        "org.opencontainers.image.created": created,
    }
    return [
        *(f'LABEL {key}="{value}"' for key, value in labels.items()),
        "ENV LANG=C.UTF-8",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        'CMD ["/bin/bash"]',
    ]


@contextmanager
def _scratch_dir(parent: Path | None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edgefleet-base-", dir=parent))
    try:
        yield path
    finally:
        # An interrupted debootstrap can leave /proc or /sys mounted inside the rootfs;
        # deleting through a live mount would try to remove the host's files.
        _unmount_below(path)
        shutil.rmtree(path, ignore_errors=True)


def _unmount_below(path: Path) -> None:
    prefix = str(path.resolve()) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    mounts = [fields[4] for fields in (line.split() for line in lines) if len(fields) > 4]
    for mount_point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount_point], check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make-base-image", description=__doc__)
    parser.add_argument("--name", default=DEFAULT_BASE_IMAGE)
    parser.add_argument("--suite", default=DEFAULT_SUITE)
    parser.add_argument("--mirror", default=None, help="Debian mirror URL (default: debootstrap's)")
    parser.add_argument("--docker-host", default=None, help="engine URL (default: DOCKER_HOST or the local socket)")
    args = parser.parse_args(argv)

    import docker

    from edgefleet.errors import EdgefleetError

    try:
        client = docker.DockerClient(base_url=args.docker_host) if args.docker_host else docker.from_env()
        ensure_base_image(client, args.name, args.suite, mirror=args.mirror,
                          log=lambda line: print(line, flush=True))
    except EdgefleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except docker.errors.DockerException as exc:
        print(f"error: cannot talk to the Docker engine: {exc}", file=sys.stderr)
        return BuildError.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
