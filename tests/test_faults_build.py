"""R8 and step timeouts: failing and hung build steps leave nothing behind, on both backends.

A failed image build or step raises BuildError with the last 40 log lines, and leaves no
artifact (nor staging folder) in the store, no container and no temp file. A hung step (pip
waiting forever on a package index that accepts connections and never answers) is stopped at
``step_timeout_s`` with a message naming that setting, and takes its child processes with it.
The runtime builder image stands in for every builder (it is the small one).
"""
from __future__ import annotations

import ipaddress
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_fixtures import SMALL_BUILDER, descendants_of, step_containers

from edgefleet.backends.base import Backend
from edgefleet.backends.docker import DockerBackend
from edgefleet.backends.local import LocalBackend
from edgefleet.errors import BuildError
from edgefleet.execute import BuildSummary, execute_plan
from edgefleet.fleet.system import pids_matching
from edgefleet.plan.model import Plan, Step
from edgefleet.store import STAGING_PREFIX, ArtifactStore
from edgefleet.workspace import open_workspace

pytest_plugins = ["docker_fixtures"]


class BlackHoleIndex:
    """A 'package index' that accepts every connection and never sends a byte."""

    def __init__(self, host: str) -> None:
        self.server = socket.create_server((host, 0))
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self.accepted = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, host: str) -> str:
        # https: pip ignores a plain-http index on any host but localhost; the TLS handshake hangs as well.
        return f"https://{host}:{self.port}/simple"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.held.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHoleIndex]:
    index = BlackHoleIndex("0.0.0.0")
    yield index
    index.close()


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's temp files go here, so 'no temp file left' is checked without other processes' noise."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def wheelhouse_step(index_url: str) -> Step:
    params = {"platforms": ["manylinux2014_x86_64"], "python_version": "3.11",
              "packages": [{"requirement": "numpy"}], "index_url": index_url}
    return Step("runtime/wheelhouse", "runtime.wheelhouse", SMALL_BUILDER, params, {}, key=uuid.uuid4().hex * 2)


def run_one(step: Step, store: ArtifactStore, backend: Backend, timeout_s: float = 600) -> BuildSummary:
    return execute_plan(Plan("faults", "none", (step,)), store, backend, timeout_s=timeout_s)


def assert_nothing_left(store: ArtifactStore, private_tmp: Path) -> None:
    assert store.entries() == []
    assert not store.root.exists() or not list(store.root.glob(f"{STAGING_PREFIX}*"))
    assert list(private_tmp.iterdir()) == []


def log_tail(message: str) -> list[str]:
    head, sep, tail = message.partition(" log lines:\n")
    assert sep, message
    return [line.removeprefix("  | ") for line in tail.splitlines()]


# -- step timeouts ---------------------------------------------------------------------------

def test_hung_local_step_expires_at_step_timeout_and_takes_its_children(
        tmp_path: Path, black_hole: BlackHoleIndex, private_tmp: Path) -> None:
    (tmp_path / "targets").mkdir()
    (tmp_path / "edgefleet.yaml").write_text("step_timeout_s: 3\n")
    ws = open_workspace(tmp_path)
    url = black_hole.url("127.0.0.1")
    store = ArtifactStore(ws.artifacts_dir)
    started = time.monotonic()
    summary = run_one(wheelhouse_step(url), store, LocalBackend(), timeout_s=ws.settings.step_timeout_s)
    elapsed = time.monotonic() - started
    assert black_hole.accepted.is_set(), "pip never reached the index"
    (outcome,) = summary.outcomes
    assert outcome.status == "failed"
    assert "step runtime.wheelhouse timed out after 3 s (step_timeout_s in edgefleet.yaml)" in outcome.message
    assert elapsed < 20
    # pip ran as the step's child; it must not go on waiting on the index after the step was given up.
    time.sleep(0.5)
    assert not pids_matching(f":{black_hole.port}/simple")
    assert_nothing_left(store, private_tmp)


@pytest.mark.docker
def test_hung_docker_step_expires_at_step_timeout_and_its_container_goes(
        docker_client: Any, base_image: str, workspace: Path, cache_root: Path, tmp_path: Path,
        black_hole: BlackHoleIndex, private_tmp: Path) -> None:
    backend = DockerBackend(workspace, client_factory=lambda: docker_client, env={}, cache_root=cache_root)
    backend.images.ensure(SMALL_BUILDER, lambda line: None)  # built (or reused) before the clock starts
    subnet = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Subnet"]
    gateway = str(next(ipaddress.ip_network(subnet).hosts()))  # the host, as containers see it
    store = ArtifactStore(tmp_path / "artifacts")
    started = time.monotonic()
    summary = run_one(wheelhouse_step(black_hole.url(gateway)), store, backend, timeout_s=5)
    elapsed = time.monotonic() - started
    (outcome,) = summary.outcomes
    assert black_hole.accepted.is_set(), f"pip in the container never reached the index: {outcome.message}"
    assert outcome.status == "failed"
    assert "step timed out after 5 s (step_timeout_s in edgefleet.yaml)" in outcome.message
    assert elapsed < 30
    assert step_containers(docker_client, backend.session) == []
    assert_nothing_left(store, private_tmp)


# -- R8: failures leave nothing behind --------------------------------------------------------

@pytest.mark.docker
def test_r8_failing_image_build_carries_the_last_40_lines_and_leaves_nothing(
        docker_client: Any, base_image: str, workspace: Path, cache_root: Path, tmp_path: Path,
        builders_copy: Callable[[str], Path], private_tmp: Path) -> None:
    builder_dir = builders_copy(SMALL_BUILDER)
    template = builder_dir / "Dockerfile.j2"
    marker = uuid.uuid4().hex[:8]
    broken = f"RUN for i in $(seq 1 100); do echo {marker}-line-$i; done; exit 3\n"
    template.write_text(template.read_text().replace("WORKDIR /tmp\n", "WORKDIR /tmp\n" + broken, 1))
    backend = DockerBackend(workspace, client_factory=lambda: docker_client, env={},
                            builders_root=builder_dir.parent, cache_root=cache_root)
    containers_before = descendants_of(docker_client, base_image)
    store = ArtifactStore(tmp_path / "artifacts")
    step = Step("probe", "probe.env", SMALL_BUILDER, {}, {}, key=uuid.uuid4().hex * 2)
    (outcome,) = run_one(step, store, backend).outcomes
    assert outcome.status == "failed"
    tail = log_tail(outcome.message)
    assert len(tail) == BuildError.tail_lines == 40
    echoed = [line for line in tail if line.startswith(f"{marker}-line-")]
    assert echoed == [f"{marker}-line-{i}" for i in range(100 - len(echoed) + 1, 101)]
    assert "returned a non-zero code: 3" in tail[-1]
    tag = backend.images.context(SMALL_BUILDER, lambda line: None).tag
    assert not docker_client.images.list(name=tag)
    assert descendants_of(docker_client, base_image) - containers_before == set()
    assert_nothing_left(store, private_tmp)


@pytest.mark.docker
def test_r8_failing_step_carries_its_log_tail_and_leaves_nothing(
        docker_client: Any, base_image: str, workspace: Path, cache_root: Path, tmp_path: Path,
        private_tmp: Path) -> None:
    backend = DockerBackend(workspace, client_factory=lambda: docker_client, env={}, cache_root=cache_root)
    store = ArtifactStore(tmp_path / "artifacts")
    step = Step("probe", "probe.env", SMALL_BUILDER, {"convert": "yes please"}, {}, key=uuid.uuid4().hex * 2)
    (outcome,) = run_one(step, store, backend).outcomes
    assert outcome.status == "failed"
    assert re.search(r"step probe\.env failed in edgefleet/builder-runtime:\w+: .*params\.convert",
                     outcome.message)
    tail = log_tail(outcome.message)
    assert 0 < len(tail) <= 40 and "params.convert must be true or false" in tail[-1]
    assert f"exit code: {BuildError.exit_code}" in outcome.message
    assert step_containers(docker_client, backend.session) == []
    assert_nothing_left(store, private_tmp)
