"""Typed connection data for each transport, as written in a profile's ``transport:`` block.

The ``kind`` field selects the transport through the registry; nothing else in the
core looks at it. Hosts, user names and paths are checked here, once, when the profile
loads: they end up in ssh/adb command lines and in terminal output, so a value that could
be read as an option (``-oProxyCommand=...``), carry shell syntax, or hide behind bidi and
control characters is refused with the profile's file:line, never passed on.
"""
from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# Cc: control characters (NUL, ESC, newline...); Cf: format characters, among them the bidi overrides and
# isolates (U+202A-202E, U+2066-2069) that make text display in another order than it is read (CVE-2021-42574);
# Zl/Zp: the Unicode line and paragraph separators, which split a log line.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
# RFC 1123 labels; underscores too, since ~/.ssh/config aliases may use them. No label starts with "-".
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
# POSIX portable user names, as useradd accepts them (a trailing $ for Samba machine accounts).
_USER = re.compile(r"^[a-z_][a-z0-9_-]*\$?$")
_USER_MAX = 32
_ADB_SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


def no_hidden_characters(value: str) -> str:
    """Refuse control, format (bidi) and line-separator characters in a name or path."""
    for ch in value:
        if unicodedata.category(ch) in _HIDDEN_CATEGORIES:
            raise ValueError(f"contains U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed character')}), a control or "
                             "bidi formatting character; names and paths must be plain text")
    return value


# A name or path in a profile: plain text, no character that changes how it displays or where a line ends.
PlainText = Annotated[str, AfterValidator(no_hidden_characters)]


def valid_host(value: str) -> str:
    """A host name (or ssh_config alias) or an IPv4/IPv6 address, nothing ssh could read as anything else."""
    no_hidden_characters(value)
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value  # a fully qualified name may end in the root "."
    if len(name) > 253 or not name or not all(_HOST_LABEL.match(label) for label in name.split(".")):
        raise ValueError("must be a host name (letters, digits, '-', '_' and dots; no label starting with '-') "
                         "or an IP address")
    return value


def valid_user(value: str) -> str:
    no_hidden_characters(value)
    if len(value) > _USER_MAX or not _USER.match(value):
        raise ValueError(f"must be a POSIX user name: a lowercase letter or '_', then lowercase letters, digits, "
                         f"'_' or '-' (optionally ending in '$'), at most {_USER_MAX} characters")
    return value


def valid_adb_serial(value: str) -> str:
    no_hidden_characters(value)
    if not _ADB_SERIAL.match(value):
        raise ValueError("must be an adb serial as `adb devices` lists it (letters, digits, '.', '_', ':', '-'; "
                         "not starting with '-')")
    return value


class _Connection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for the device to answer.")
    command_timeout_s: float = Field(
        600.0, gt=0, description="Limit for any one remote command (a quick query may use a shorter one).")


class SshConnection(_Connection):
    """An SSH device, reached with Fabric. Passwords are never stored: use keys or the agent."""

    kind: Literal["ssh"] = "ssh"
    host: Annotated[str, AfterValidator(valid_host)] = Field(
        min_length=1, description="Host name or address; ~/.ssh/config aliases work.")
    port: int | None = Field(None, ge=1, le=65535)
    user: Annotated[str, AfterValidator(valid_user)] | None = None
    key_filename: PlainText | None = Field(None, description="Private key file; default: agent and ~/.ssh keys.")
    known_hosts: PlainText | None = Field(None, description="known_hosts file; default ~/.ssh/known_hosts.")
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
    serial: Annotated[str, AfterValidator(valid_adb_serial)] | None = Field(
        None, description="adb serial (-s); default: the only attached device.")
    adb_path: PlainText = "adb"


Connection = Annotated[Union[SshConnection, LocalConnection, AdbConnection], Field(discriminator="kind")]
