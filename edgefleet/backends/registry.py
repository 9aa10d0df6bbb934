"""Backend name -> factory. The docker backend's SDK is imported only when it is chosen."""
from __future__ import annotations

from collections.abc import Callable, Mapping

from edgefleet.backends.base import Backend
from edgefleet.config.validate import did_you_mean
from edgefleet.errors import ConfigError
from edgefleet.workspace import Workspace

BackendFactory = Callable[[Workspace, Mapping[str, str]], Backend]


def _local(ws: Workspace, environ: Mapping[str, str]) -> Backend:
    from edgefleet.backends.local import LocalBackend
    return LocalBackend(env=environ)


def _docker(ws: Workspace, environ: Mapping[str, str]) -> Backend:
    from edgefleet.backends.docker import DockerBackend
    return DockerBackend.for_workspace(ws, environ)


BACKENDS: dict[str, BackendFactory] = {"local": _local, "docker": _docker}


def open_backend(name: str, ws: Workspace, environ: Mapping[str, str]) -> Backend:
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}{did_you_mean(name, BACKENDS)}; "
                          f"choose one of {', '.join(BACKENDS)}") from None
    return factory(ws, environ)
