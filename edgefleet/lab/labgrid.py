"""The one adapter to a labgrid coordinator: reserve, acquire and release a place, and read its board's address.

``with LabgridPlace("127.0.0.1:20408", "rpi3-1") as service:`` waits in the coordinator's queue for the place
(a reservation, so waiting users are served in order), acquires it, and yields the address, user and port of
the place's NetworkService resource; on the way out, also on an error or Ctrl-C, it cancels the reservation
and then releases the place.

labgrid's client API (``labgrid.remote.client.ClientSession`` and its gRPC stub) is internal to labgrid and
changes between releases: it is used here and nowhere else, against the minor version pyproject.toml pins.
"""
from __future__ import annotations

import asyncio
import getpass
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any

from edgefleet.errors import (DEBUG_ENV, ConfigError, DeployError, DeviceBusyError, EdgefleetError,
                              ToolUnavailableError, TransportError)
from edgefleet.lab.config import split_coordinator

Say = Callable[[str], None]

# labgrid-client's own identity variables: the same user is the same holder whichever tool acquired.
USER_ENV, HOST_ENV = "LG_USERNAME", "LG_HOSTNAME"
# A reservation the coordinator is not polled for expires after 60 s; polling often also means the place is
# ours within a fraction of a second of its holder letting go.
POLL_S = 0.25
STATUS_EVERY_S = 10.0
DEFAULT_WAIT_S = 300.0
RPC_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class NetworkService:
    """How the place's board is reached: its NetworkService resource as the exporter published it."""

    host: str
    user: str
    port: int


def identity(user: str | None = None, host: str | None = None) -> str:
    """HOST/USER, as labgrid names a holder."""
    return f"{host or os.environ.get(HOST_ENV) or socket.gethostname()}/" \
           f"{user or os.environ.get(USER_ENV) or getpass.getuser()}"


def release_hint(coordinator: str, place: str) -> str:
    return f"`labgrid-client -x {coordinator} -p {place} release`"


class LabgridPlace:
    """A context manager holding one labgrid place for the length of a block (see the module docstring)."""

    def __init__(self, coordinator: str, place: str, *, wait_s: float = DEFAULT_WAIT_S, say: Say = print,
                 user: str | None = None, host: str | None = None) -> None:
        self.coordinator = coordinator
        self.place = place
        self.wait_s = wait_s
        self.say = say
        self.user, self.host = user, host
        self.identity = identity(user, host)
        self._token: str | None = None
        self._acquired = False

    def __enter__(self) -> NetworkService:
        started = time.monotonic()
        session = self._session()
        try:
            place = session.place(self.place)
            if place.acquired == self.identity:
                # Acquired by hand (labgrid-client acquire) to work on the board: use it, and leave it so.
                self.say(f"labgrid place {self.place} is already acquired by you ({self.identity}): using it "
                         f"and leaving it acquired; release it with {release_hint(self.coordinator, self.place)}")
                return session.network_service(self.place)
            self._token = session.reserve(self.place)
            self._wait_for_allocation(session, started)
            session.acquire(self.place)
            self._acquired = True
            service = session.network_service(self.place)
        except BaseException:
            session.close()
            self._give_back(warn_only=True)
            raise
        session.close()  # nothing needs the coordinator while the place is held; exit connects again
        self.say(f"acquired labgrid place {self.place} ({self.coordinator}) as {self.identity} in "
                 f"{time.monotonic() - started:.2f} s: {service.user}@{service.host}:{service.port}")
        return service

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # A failure to release must not hide the error that ended the block: then it is only reported.
        self._give_back(warn_only=exc is not None)

    # -- internals -----------------------------------------------------------

    def _session(self) -> _Session:
        return _Session(self.coordinator, self.user, self.host)

    def _wait_for_allocation(self, session: _Session, started: float) -> None:
        """Poll the reservation until the coordinator allocates the place to it, saying who holds it meanwhile."""
        assert self._token is not None
        deadline = started + self.wait_s
        last_status = None
        while True:
            state = session.poll(self._token)
            if state in ("allocated", "acquired"):
                return
            if state != "waiting":
                raise DeployError(f"labgrid reservation for place {self.place} ended {state} while waiting")
            now = time.monotonic()
            if now >= deadline:
                holder = session.holder(self.place)
                raise DeviceBusyError(
                    f"labgrid place {self.place} is busy: held by {holder}; gave up after {self.wait_s:g} s in the "
                    f"queue of the coordinator at {self.coordinator} (wait longer with lab_wait_s, or ask "
                    f"{holder.split(' ')[0]} to release it)")
            if last_status is None or now - last_status >= STATUS_EVERY_S:
                self.say(f"waiting for labgrid place {self.place}: held by {session.holder(self.place)} "
                         f"({now - started:.0f} s of {self.wait_s:g} s)")
                last_status = now
            time.sleep(min(POLL_S, max(0.0, deadline - now)))

    def _give_back(self, *, warn_only: bool) -> None:
        """Cancel the reservation, then release the place. In the other order the place would still carry our
        reservation when the release makes the coordinator schedule the next one, and the next user would wait
        for its next scheduling round (every 15 s)."""
        if self._token is None and not self._acquired:
            return
        try:
            session = self._session()
            try:
                if self._token is not None:
                    session.cancel(self._token)
                    self._token = None
                if self._acquired:
                    session.release(self.place)
                    self._acquired = False
                    self.say(f"released labgrid place {self.place}")
            finally:
                session.close()
        except EdgefleetError as err:
            left = (f"the place stays acquired by {self.identity} until released: when the coordinator is back, "
                    f"run {release_hint(self.coordinator, self.place)}" if self._acquired
                    else "the reservation lapses by itself within 60 s")
            message = f"could not release labgrid place {self.place}: {err}. Nothing on the board is undone; {left}"
            if not warn_only:
                raise type(err)(message) from None
            self.say(f"warning: {message}")


# -- the labgrid client session ----------------------------------------------

_client_module: ModuleType | None = None


def _client() -> ModuleType:
    """labgrid's client module, imported on first use (edgefleet works without labgrid until a lab is used)."""
    global _client_module
    if _client_module is None:
        hook = sys.excepthook
        try:
            from labgrid.remote import client  # noqa: PLC0415
        except ImportError as err:
            raise ToolUnavailableError(f"a labgrid place needs the labgrid package ({err}): install edgefleet with "
                                       "its lab extra (`pip install -e '.[lab]'`, or `scripts/bootstrap --dev`)"
                                       ) from None
        finally:
            sys.excepthook = hook  # labgrid's client replaces it when imported; edgefleet keeps its own
        _quiet_labgrid_logging()
        _client_module = client
    return _client_module


class _LabgridClientLog(logging.Filter):
    """labgrid's client logs a lost coordinator to the root logger with a traceback; edgefleet raises its own
    error saying so, so those records only show with EDGEFLEET_DEBUG=1."""

    def filter(self, record: logging.LogRecord) -> bool:
        return bool(os.environ.get(DEBUG_ENV)) or "/labgrid/remote/" not in record.pathname.replace(os.sep, "/")


def _quiet_labgrid_logging() -> None:
    root = logging.getLogger()
    if not any(isinstance(f, _LabgridClientLog) for f in root.filters):
        root.addFilter(_LabgridClientLog())


class _Session:
    """One labgrid ClientSession on an event loop of its own (collect pulls from several boards at once, each
    in a worker thread), with the given identity and a gRPC connection of its own: the coordinator tells
    clients apart by their TCP peer, and gRPC would share one connection between sessions of a process."""

    def __init__(self, coordinator: str, user: str | None, host: str | None) -> None:
        client = _client()
        self.coordinator = coordinator
        self.identity = identity(user, host)
        self._loop = asyncio.new_event_loop()
        host_name, port = split_coordinator(coordinator)
        address = f"[{host_name}]:{port}" if ":" in host_name else f"{host_name}:{port}"
        who = self.identity

        class Session(client.ClientSession):  # type: ignore[misc,name-defined]
            def gethostname(self) -> str:
                return who.split("/", 1)[0]

            def getuser(self) -> str:
                return who.split("/", 1)[1]

        async def start() -> Any:
            import grpc  # noqa: PLC0415  (a labgrid dependency)
            from labgrid.remote.generated import labgrid_coordinator_pb2_grpc  # noqa: PLC0415
            session = Session(address, self._loop)  # grpc.aio binds the channel to the running loop
            shared = session.channel
            session.channel = grpc.aio.insecure_channel(
                target=address, options=[("grpc.use_local_subchannel_pool", 1)])
            session.stub = labgrid_coordinator_pb2_grpc.CoordinatorStub(session.channel)
            await shared.close()
            await session.start()
            return session

        try:
            self._session = self._run(start, "connecting")
        except TransportError:
            self._loop.close()
            raise
        except client.ServerError as err:
            self._loop.close()
            raise self._unreachable(" ".join(map(str, err.args))) from None

    def _unreachable(self, detail: str) -> TransportError:
        return TransportError(f"the labgrid coordinator at {self.coordinator} is unreachable ({detail.strip()}); "
                              "is labgrid-coordinator running there, and is the profile's "
                              "lab.labgrid.coordinator right?")

    def _run(self, make: Callable[[], Coroutine[Any, Any, Any]], what: str, timeout: float = RPC_TIMEOUT_S) -> Any:
        import grpc  # noqa: PLC0415

        async def bounded() -> Any:
            return await asyncio.wait_for(make(), timeout)

        try:
            return self._loop.run_until_complete(bounded())
        except asyncio.TimeoutError:
            raise self._unreachable(f"no answer within {timeout:g} s while {what}") from None
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise self._unreachable(err.details() or "unavailable") from None
            raise _RpcFailed(err.code().name, err.details() or "") from None

    def _call(self, method: str, request: Any, what: str) -> Any:
        stub = self._session.stub
        result = self._run(lambda: getattr(stub, method)(request), what)
        if not self._run(self._session.sync_with_coordinator, what):  # our view of places is current
            raise self._unreachable(f"the connection ended while {what}")
        return result

    @property
    def _pb(self) -> Any:
        from labgrid.remote.generated import labgrid_coordinator_pb2  # noqa: PLC0415
        return labgrid_coordinator_pb2

    def place(self, name: str) -> Any:
        places = self._session.places
        if name not in places:
            known = ", ".join(sorted(places)) or "none"
            raise ConfigError(f"the labgrid coordinator at {self.coordinator} has no place {name!r} (places: {known}); "
                              f"check the profile's lab.labgrid.place")
        return places[name]

    def reserve(self, name: str) -> str:
        pb = self._pb
        request = pb.CreateReservationRequest(filters={"main": pb.Reservation.Filter(filter={"name": name})},
                                              prio=0.0)
        try:
            return str(self._call("CreateReservation", request, f"reserving place {name}").reservation.token)
        except _RpcFailed as err:
            raise DeployError(f"the labgrid coordinator at {self.coordinator} refused to reserve place {name}: "
                              f"{err.details}") from None

    def poll(self, token: str) -> str:
        """The reservation's state: waiting, allocated, acquired, expired or invalid. Polling also keeps it alive."""
        try:
            response = self._call("PollReservation", self._pb.PollReservationRequest(token=token), "waiting")
        except _RpcFailed as err:
            raise DeployError(f"labgrid reservation {token} is gone: {err.details}") from None
        return str(_client().Reservation.from_pb2(response.reservation).state.name)

    def acquire(self, name: str) -> None:
        try:
            self._call("AcquirePlace", self._pb.AcquirePlaceRequest(placename=name), f"acquiring place {name}")
        except _RpcFailed as err:
            hint = " (is the exporter that publishes its resources running?)" if "resources" in err.details else ""
            raise DeployError(f"could not acquire labgrid place {name}: {err.details}{hint}") from None

    def release(self, name: str) -> None:
        try:
            self._call("ReleasePlace", self._pb.ReleasePlaceRequest(placename=name), f"releasing place {name}")
        except _RpcFailed as err:
            if "not acquired" not in err.details:  # someone released it for us (labgrid-client release --kick)
                raise DeployError(f"could not release labgrid place {name}: {err.details}") from None

    def cancel(self, token: str) -> None:
        try:
            self._call("CancelReservation", self._pb.CancelReservationRequest(token=token), "cancelling")
        except _RpcFailed as err:
            if "does not exist" not in err.details:  # it had expired or was cancelled already
                raise DeployError(f"could not cancel labgrid reservation {token}: {err.details}") from None

    def holder(self, name: str) -> str:
        """Who keeps us waiting: the HOST/USER that acquired the place, or whose reservation it is allocated to."""
        place = self.place(name)
        if place.acquired:
            return str(place.acquired)
        if place.reservation:
            response = self._call("GetReservations", self._pb.GetReservationsRequest(), "listing reservations")
            for reservation in response.reservations:
                if reservation.token == place.reservation:
                    return f"{reservation.owner} (reserved, not yet acquired)"
        return "nobody yet (the coordinator has not scheduled our reservation)"

    def network_service(self, name: str) -> NetworkService:
        place = self.place(name)
        found = []
        for exporter, group, cls, resource in place.acquired_resources:
            if cls == "NetworkService":
                entry = self._session.resources.get(exporter, {}).get(group, {}).get(resource)
                if entry is not None:
                    found.append((f"{exporter}/{group}/{cls}/{resource}", entry))
        if len(found) != 1:
            listed = ", ".join("/".join(r) for r in place.acquired_resources) or "none"
            raise ConfigError(f"labgrid place {name} must match exactly one NetworkService resource, for the "
                              f"board's SSH address; it has {len(found)} (its resources: {listed})")
        path, entry = found[0]
        params = entry.params
        if entry.extra.get("proxy_required"):
            raise ConfigError(f"labgrid place {name}: {path} is reached through its exporter as a proxy "
                              f"({params.get('address')}), which edgefleet does not do yet")
        return NetworkService(host=str(params["address"]), user=str(params["username"]),
                              port=int(params.get("port", 22)))

    def close(self) -> None:
        """Stop the session and its loop; a coordinator that is gone already changes nothing here."""
        if self._loop.is_closed():
            return
        async def stop() -> None:
            await self._session.stop()
            await self._session.close()
        try:
            self._run(stop, "closing", timeout=CLOSE_TIMEOUT_S)
        except (TransportError, _RpcFailed):
            pass
        finally:
            self._loop.close()


class _RpcFailed(Exception):
    """The coordinator answered, and said no; each caller turns it into an edgefleet error."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code, self.details = code, details
