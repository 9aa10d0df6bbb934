"""Typed connection data for each transport, as written in a profile's ``transport:`` block.

The ``kind`` field selects the transport through the registry; nothing else in the
core looks at it.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Connection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for the device to answer.")
    command_timeout_s: float = Field(
        600.0, gt=0, description="Limit for any one remote command (a quick query may use a shorter one).")


class SshConnection(_Connection):
    """An SSH device, reached with Fabric. Passwords are never stored: use keys or the agent."""

    kind: Literal["ssh"] = "ssh"
    host: str = Field(min_length=1, description="Host name or address; ~/.ssh/config aliases work.")
    port: int | None = Field(None, ge=1, le=65535)
    user: str | None = None
    key_filename: str | None = Field(None, description="Private key file; default: agent and ~/.ssh keys.")
    known_hosts: str | None = Field(None, description="known_hosts file; default ~/.ssh/known_hosts.")
    trust_on_first_use: bool = Field(
        False, description="Accept and record an unknown host key. A changed key is always refused.")
    io_timeout_s: float = Field(
        60.0, gt=0, description="Drop the connection when the device acknowledges nothing for this long "
                                "(link down); an upload then reconnects and retries.")


class LocalConnection(_Connection):
    """This host."""

    kind: Literal["local"] = "local"


class AdbConnection(_Connection):
    """An Android device over adb; its workdir lives under /data/local/tmp."""

    kind: Literal["adb"] = "adb"
    serial: str | None = Field(None, description="adb serial (-s); default: the only attached device.")
    adb_path: str = "adb"


Connection = Annotated[Union[SshConnection, LocalConnection, AdbConnection], Field(discriminator="kind")]
