"""`invoke buildhost.up` / `buildhost.down`: an emulated build host (a second Docker engine behind sshd)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from edgefleet.api.context import Env
from edgefleet.fleet import buildhost
from edgefleet.errors import ConfigError, FleetError
from edgefleet.fleet.buildhost import BuildHost
from edgefleet.workspace import Workspace

BUILDHOSTS_DIR = "buildhosts"
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,19}")


@dataclass(frozen=True)
class BuildHostUpOptions:
    name: str = "buildhost"
    # Add the host to ~/.ssh/config and ~/.ssh/known_hosts, so `ssh://edgefleet-<name>` works at once.
    ssh_config: bool = False
    data_root: Path | None = None    # the engine's images; default .edgefleet/buildhosts/<name>/engine
    workspace: Path | None = None


@dataclass(frozen=True)
class BuildHostDownOptions:
    name: str = "buildhost"
    workspace: Path | None = None


def state_root(ws: Workspace) -> Path:
    return ws.state_dir / BUILDHOSTS_DIR


def check_name(name: str) -> str:
    """A name that can be part of a network namespace's name and an ssh Host alias."""
    if not NAME.fullmatch(name):
        raise ConfigError(f"build host name {name!r}: use 1-20 lowercase letters, digits and '-', starting with a "
                          "letter or digit")
    return name


def up(options: BuildHostUpOptions, env: Env | None = None) -> BuildHost:
    env = env or Env()
    check_name(options.name)
    if os.geteuid() != 0:
        raise FleetError("an emulated build host needs root: it makes a network namespace and runs a second dockerd")
    ws = env.workspace(options.workspace)
    host = buildhost.up(state_root(ws), options.name, data_root=options.data_root,
                        say=lambda line: env.console.print(escape(line)))
    if options.ssh_config:
        changed = buildhost.install_ssh_config(host, _home(env))
        env.console.print(f"added {host.alias} to {' and '.join(escape(str(f)) for f in changed)}")
    else:
        env.console.print("add this to ~/.ssh/config (or run with --ssh-config):\n" + escape(host.ssh_config()) +
                          f"and this line to ~/.ssh/known_hosts:\n{escape(host.known_hosts_line())}")
    env.console.print(f"build on it: invoke build --target rpi3 --backend docker --docker-host {host.url}")
    return host


def down(options: BuildHostDownOptions, env: Env | None = None) -> None:
    env = env or Env()
    check_name(options.name)
    ws = env.workspace(options.workspace)
    buildhost.down(state_root(ws), options.name)
    buildhost.remove_ssh_config(options.name, _home(env))
    env.console.print(f"build host {escape(options.name)} stopped (its engine's images are kept for the next up)")


def _home(env: Env) -> Path:
    return Path(env.environ.get("HOME") or Path.home())
