"""Fixtures for the tests that talk to the real Docker engine.

The engine starts with no images and cannot pull, so the base image is made with
debootstrap on first use and then reused by every later session (it stays in the
engine). Builder images are built from a snapshot of the repository taken once per
session, with the repository's .edgefleet/ as the cache, so wheelhouses and images
survive between runs.
Loaded with ``pytest_plugins``; PYTEST_DONT_REWRITE (no asserts here).
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# Step tests use the small runtime image; the tf image is built by the one test that needs it.
SMALL_BUILDER = "runtime"


@dataclass
class Timings:
    """Wall-clock numbers the docker tests print at the end of the session (-s or -rA shows them)."""

    values: dict[str, float] = field(default_factory=dict)

    def record(self, name: str, seconds: float) -> None:
        self.values[name] = round(seconds, 1)


@pytest.fixture(scope="session")
def docker_client() -> Any:
    """The engine, or a skip; under CI an unreachable engine fails the run instead."""
    import docker
    import docker.errors

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the Docker engine, which is unreachable: {exc}")
        pytest.skip(f"no Docker engine: {exc}")
    return client


@pytest.fixture(scope="session")
def timings() -> Iterator[Timings]:
    t = Timings()
    yield t
    if t.values:
        print("\ndocker timings (s): " + ", ".join(f"{k}={v}" for k, v in t.values.items()))


@pytest.fixture(scope="session")
def base_image(docker_client: Any, timings: Timings) -> str:
    from edgefleet.images.base_image import ensure_base_image

    started = time.monotonic()
    lines: list[str] = []
    name = ensure_base_image(docker_client, log=lines.append)
    if not any("reusing" in line for line in lines):
        timings.record("base_image_create", time.monotonic() - started)
    return name


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot of the repository's sources: the edgefleet wheel (and so every image tag) stays
    fixed for the session even while the working tree is being edited."""
    root = tmp_path_factory.mktemp("workspace")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("edgefleet", "builders", "requirements"):
        shutil.copytree(REPO / name, root / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, root / name)
    return root


@pytest.fixture(scope="session")
def cache_root() -> Path:
    """The repository's own cache, so wheelhouses are downloaded once across sessions."""
    return REPO / ".edgefleet"


@pytest.fixture
def builders_copy(tmp_path: Path, workspace: Path) -> Callable[[str], Path]:
    """``builders_copy(name)``: a copy of builders/<name> under tmp_path/builders, to edit freely."""

    def copy(name: str) -> Path:
        dest = tmp_path / "builders" / name
        shutil.copytree(workspace / "builders" / name, dest)
        return dest

    return copy


def step_containers(client: Any, session: str) -> list[Any]:
    """Every container (running or not) a DockerBackend session made."""
    from edgefleet.backends.docker import LABEL_SESSION

    return client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={session}"})


def descendants_of(client: Any, image: str) -> set[str]:
    """Ids of the unlabelled containers whose image descends from ``image``: a build's intermediate
    containers, but not the (labelled) step containers other sessions may be running meanwhile."""
    from edgefleet.backends.docker import LABEL_SESSION

    return {c.id for c in client.containers.list(all=True, filters={"ancestor": image})
            if LABEL_SESSION not in c.labels}
