"""A Docker-backend step that needs network this machine lacks ends as "not built here", not as a failed build.

The network a builder needs is probed (TCP connect) before any image is built or container started. Every
probe here goes to loopback: a port nothing listens on stands for an unreachable host, a listening socket
for a reachable one. The real Docker engine is used (no image is built, no network is created).
"""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_fixtures import step_containers

from edgefleet.backends.base import StepRequest
from edgefleet.backends.docker import DockerBackend, builder_hosts, step_hosts, unreachable_hosts
from edgefleet.errors import EXIT_TOOL_UNAVAILABLE, ToolUnavailableError
from edgefleet.images.builder_spec import load_builder_spec
from edgefleet.steps.android import NETWORK_PROBES

pytest_plugins = ["docker_fixtures"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_the_hosts_a_builder_and_a_step_declare() -> None:
    # The edgetpu image installs the compiler from Coral's apt repository, named in its builder.yaml.
    assert builder_hosts(load_builder_spec(REPO / "builders" / "edgetpu")) == [("packages.cloud.google.com", 443)]
    assert builder_hosts(load_builder_spec(REPO / "builders" / "tf")) == []
    # A step's own NETWORK_PROBES, and the URLs among its params (a package index).
    assert step_hosts("android.aar", {}) == list(NETWORK_PROBES)
    assert step_hosts("runtime.wheelhouse", {"index_url": "http://127.0.0.1:8080/simple", "python_version": "3.9"}) \
        == [("127.0.0.1", 8080)]
    assert step_hosts("runtime.wheelhouse", {"index_url": "https://mirror.example/simple"}) == \
        [("mirror.example", 443)]


def test_probe_tells_reachable_from_unreachable(closed_port: int, listening_port: int) -> None:
    assert unreachable_hosts([("127.0.0.1", listening_port)]) == []
    assert unreachable_hosts([("127.0.0.1", listening_port), ("127.0.0.1", closed_port)]) == \
        [f"127.0.0.1:{closed_port}"]


@pytest.mark.docker
def test_networked_step_with_unreachable_hosts_is_not_built_here(docker_client: Any, workspace: Path,
                                                                 cache_root: Path, tmp_path: Path,
                                                                 closed_port: int) -> None:
    # runtime.wheelhouse runs in the runtime image, whose steps get a network; its index is unreachable.
    backend = DockerBackend(workspace, client_factory=lambda: docker_client, env={}, cache_root=cache_root)
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(ToolUnavailableError) as caught:
        backend.run_step(StepRequest(kind="runtime.wheelhouse", builder="runtime", inputs={},
                                     params={"index_url": f"http://127.0.0.1:{closed_port}/simple"},
                                     out_dir=tmp_path / "out"), lines.append)
    message = str(caught.value)
    assert message.startswith("step runtime.wheelhouse is not built here: it needs network access to "
                              f"127.0.0.1:{closed_port}, which this machine cannot reach")
    assert caught.value.exit_code == EXIT_TOOL_UNAVAILABLE
    assert any("not built here" in line for line in lines)
    # Checked before anything ran: no image build, no container, nothing written.
    assert time.monotonic() - started < 10
    assert step_containers(docker_client, backend.session) == []
    assert not (tmp_path / "out").exists()
