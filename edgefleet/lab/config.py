"""Where a board lives in a lab, as a profile's ``lab:`` block or the fleet inventory records it."""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from edgefleet.transport.connections import valid_host

# labgrid's own default port (labgrid-client -x HOST without a port).
DEFAULT_COORDINATOR_PORT = 20408
# A place name goes into labgrid-client arguments, a reservation filter and messages: plain and short,
# and never with the "/" that separates a match's EXPORTER/GROUP/CLASS.
_PLACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def valid_coordinator(value: str) -> str:
    """HOST or HOST:PORT (an IPv6 address in brackets: [::1]:20408)."""
    host, port = split_coordinator(value)
    valid_host(host)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not in 1-65535")
    return value


def split_coordinator(value: str) -> tuple[str, int]:
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, ""
    if port and not port.isdigit():
        raise ValueError(f"{value!r}: the port must be a number (HOST:PORT)")
    return host, int(port) if port else DEFAULT_COORDINATOR_PORT


def valid_place(value: str) -> str:
    if not _PLACE.match(value):
        raise ValueError("must be a labgrid place name: letters, digits, '.', '_' and '-', at most 63 characters, "
                         "starting with a letter or digit")
    return value


class LabgridPlaceRef(BaseModel):
    """A labgrid place holding the board: deploy and collect reserve and acquire it, and reach the board at
    its NetworkService resource's address, user and port."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    coordinator: Annotated[str, AfterValidator(valid_coordinator)] = Field(
        description="The labgrid coordinator, HOST:PORT (port 20408 when left out).")
    place: Annotated[str, AfterValidator(valid_place)] = Field(description="The place's name in that coordinator.")


class Lab(BaseModel):
    """The lab manager that hands the board out. Only labgrid for now."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labgrid: LabgridPlaceRef
