"""Connection model -> transport. Core code asks for a transport here and never looks at its kind.

Each factory imports its module lazily so that planning never pays for paramiko/Fabric.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgefleet.errors import TransportError
from edgefleet.transport.base import Transport
from edgefleet.transport.connections import AdbConnection, LocalConnection, SshConnection

TransportFactory = Callable[[Any, str], Transport]


def _ssh(connection: SshConnection, name: str) -> Transport:
    from edgefleet.transport.ssh import SshTransport
    return SshTransport(connection, name=name)


def _local(connection: LocalConnection, name: str) -> Transport:
    from edgefleet.transport.local import LocalTransport
    return LocalTransport(connection, name=name)


def _adb(connection: AdbConnection, name: str) -> Transport:
    from edgefleet.transport.adb import AdbTransport
    return AdbTransport(connection, name=name)


_FACTORIES: dict[type, TransportFactory] = {
    SshConnection: _ssh,
    LocalConnection: _local,
    AdbConnection: _adb,
}


def register_transport(connection_type: type, factory: TransportFactory) -> None:
    _FACTORIES[connection_type] = factory


def open_transport(connection: SshConnection | LocalConnection | AdbConnection, *, name: str) -> Transport:
    """A transport for ``connection``, not yet connected: use it as a context manager."""
    try:
        factory = _FACTORIES[type(connection)]
    except KeyError:
        known = ", ".join(sorted(t.__name__ for t in _FACTORIES))
        raise TransportError(f"{name}: no transport for {type(connection).__name__} (known: {known})") from None
    return factory(connection, name)
