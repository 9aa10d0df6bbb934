"""The Docker engines a build runs on: this machine's, or build hosts reached over ``ssh://``.

``docker_host`` in edgefleet.yaml (or ``--docker-host``) names one engine or a list of them. Each engine
runs at most ``jobs`` steps at once; steps go to the engine with the most free slots. An engine is
health-checked (a ping) the first time it is needed: one that does not answer is skipped with a warning,
and the build fails only when none answers.

``ssh://`` engines are reached the way ``docker -H ssh://`` reaches them, through the docker SDK: the SSH
settings (user, port, IdentityFile) come from ``~/.ssh/config`` and the host key must already be in
``~/.ssh/known_hosts``. The build host needs the ``docker`` CLI (the SDK runs ``docker system dial-stdio``
there). Everything a step needs travels over that connection; nothing is mounted from this machine.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from edgefleet.errors import BuildError, ToolUnavailableError

if TYPE_CHECKING:
    import docker

    from edgefleet.images.build import ImageBuilder

LOCAL = "the local engine"


def engine_errors() -> tuple[type[BaseException], ...]:
    """What talking to an engine raises when the engine or the way to it fails: the SDK's own errors, the
    HTTP layer's and (for ssh://) paramiko's; a dropped connection is an OSError."""
    import docker.errors
    import paramiko
    import requests

    return docker.errors.DockerException, requests.RequestException, paramiko.SSHException, OSError, EOFError


def connect(url: str | None, env: Mapping[str, str], *, timeout: int = 60) -> docker.DockerClient:
    """A client of the engine at ``url`` (else DOCKER_HOST, else the local socket), checked to answer a ping."""
    import docker

    try:
        client = docker.DockerClient(base_url=url, timeout=timeout) if url else \
            docker.from_env(environment=dict(env), timeout=timeout)
        client.ping()
    except engine_errors() as exc:
        raise ToolUnavailableError(f"cannot reach the Docker engine at {describe(url, env)}: "
                                   f"{_reason(exc)}{_advice(url, exc)}") from exc
    return client


def describe(url: str | None, env: Mapping[str, str]) -> str:
    return url or env.get("DOCKER_HOST") or LOCAL


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _advice(url: str | None, exc: BaseException) -> str:
    if url and urlsplit(url).scheme == "ssh":
        host = urlsplit(url).hostname or url
        if "known_hosts" in str(exc):
            return (f"; its host key is not in ~/.ssh/known_hosts: connect once with `ssh {host}` and check the "
                    "key, or add it with ssh-keyscan")
        return (f"; check that `ssh {host} docker version` works (user, port and IdentityFile come from "
                "~/.ssh/config), or drop it from docker_host")
    return "; start it, or set docker_host in edgefleet.yaml (or DOCKER_HOST)"


@dataclass
class Engine:
    """One engine and its slots. ``client`` is made (and pinged) on first use."""

    url: str | None                   # None: DOCKER_HOST, else the local socket
    label: str
    factory: Callable[[], docker.DockerClient]
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Steps that share an engine wait for one build of a builder image, not one each.
    image_lock: threading.Lock = field(default_factory=threading.Lock)
    client: docker.DockerClient | None = None
    images: ImageBuilder | None = None
    failed: str | None = None          # why the health check failed, once it has
    networked: bool = False            # gives containers a network (a `bridge`), found at the health check
    busy: int = 0

    @contextmanager
    def session(self) -> Iterator[docker.DockerClient]:
        """A client for one step. Over ssh:// it is a connection of the step's own: sshd allows a connection
        10 sessions (MaxSessions) and the SDK opens one per pooled HTTP connection, so steps sharing one
        would be refused channels ("open failed") when several run at once."""
        if urlsplit(self.url or "").scheme != "ssh":
            assert self.client is not None
            yield self.client
            return
        try:
            client = self.factory()
        except ToolUnavailableError as exc:
            raise BuildError(str(exc)) from exc   # it answered the health check: now it is failing
        with closing(client):
            yield client


class EnginePool:
    """Hands out engines with a free slot, health-checking each on first use."""

    def __init__(self, urls: Sequence[str | None], *, jobs: int, env: Mapping[str, str],
                 factory: Callable[[str | None], docker.DockerClient] | None = None) -> None:
        make = factory or (lambda url: connect(url, env))
        self.engines = [Engine(url, describe(url, env), (lambda url=url: make(url)))
                        for url in (list(dict.fromkeys(urls)) or [None])]
        self.jobs = jobs
        self._choose = threading.Condition()

    @property
    def capacity(self) -> int:
        """Steps that can run at once over every engine (a failed engine still counts until it is checked)."""
        return self.jobs * len(self.engines)

    @contextmanager
    def engine(self, log: Callable[[str], None], *, network: str | None = None) -> Iterator[Engine]:
        """An answering engine with a free slot, held for the block. ``network`` names what needs one that
        gives containers a network (e.g. "step runtime.wheelhouse"); None takes any engine."""
        while True:
            engine = self._take(network)
            try:
                if self._check(engine, log) and (network is None or engine.networked):
                    yield engine
                    return
            finally:
                self._give_back(engine)

    def _take(self, network: str | None) -> Engine:
        with self._choose:
            while True:
                healthy = [e for e in self.engines if e.failed is None]
                if not healthy:
                    reasons = "; ".join(f"{e.label}: {e.failed}" for e in self.engines)
                    raise BuildError(f"cannot reach the Docker engine: no build host answered ({reasons})")
                if network is not None:
                    healthy = self._networked(healthy, network)
                free = [e for e in healthy if e.busy < self.jobs]
                if free:
                    engine = min(free, key=lambda e: e.busy)
                    engine.busy += 1
                    return engine
                self._choose.wait()

    def _networked(self, healthy: list[Engine], what: str) -> list[Engine]:
        """The engines whose containers get a network; unchecked ones may (the check tells)."""
        eligible = [e for e in healthy if e.networked or e.client is None]
        if not eligible:
            names = ", ".join(e.label for e in healthy)
            raise ToolUnavailableError(f"{what} is not built here: it needs the network, and no engine gives its "
                                       f"containers one ({names}: no `bridge` network); add one that does to "
                                       "docker_host")
        return eligible

    def _give_back(self, engine: Engine) -> None:
        with self._choose:
            engine.busy -= 1
            self._choose.notify_all()

    def _check(self, engine: Engine, log: Callable[[str], None]) -> bool:
        with engine.lock:
            if engine.client is None and engine.failed is None:
                try:
                    engine.client = engine.factory()
                    engine.networked = bool(engine.client.networks.list(names=["bridge"]))
                except (BuildError, ToolUnavailableError, *engine_errors()) as exc:
                    engine.failed = str(exc)
                    log(f"warning: skipping build host {engine.label}: {exc}")
        return engine.failed is None

    def fail(self, engine: Engine, why: str) -> None:
        """Take an engine out of the pool after it broke mid-step; later steps go elsewhere."""
        with engine.lock:
            engine.failed = why
            engine.client = None
        with self._choose:
            self._choose.notify_all()
