"""`invoke targets`: list and validate every profile."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from edgefleet.api.context import Env
from edgefleet.errors import ConfigError
from edgefleet.profiles.load import LoadedProfile, load_all_profiles


@dataclass(frozen=True)
class TargetsOptions:
    workspace: Path | None = None


def list_targets(options: TargetsOptions, env: Env | None = None) -> list[LoadedProfile]:
    env = env or Env()
    ws = env.workspace(options.workspace)
    loaded, errors = load_all_profiles(ws.targets_dir)
    table = Table(title="targets")
    for column in ("target", "arch", "runtime", "formats", "threads", "transport"):
        table.add_column(column)
    for item in loaded:
        p = item.profile
        formats = []
        for name in type(p.formats).model_fields:
            spec = getattr(p.formats, name)
            if spec is None:
                continue
            detail = getattr(spec, "quantizations", None) or getattr(spec, "precisions", None)
            formats.append(f"{name}({','.join(detail)})" if detail else name)
        table.add_row(p.name, p.device.arch, p.runtime.name, " ".join(formats),
                      ",".join(map(str, p.bench.threads)), p.transport.kind)
    env.console.print(table)
    for err in errors:
        env.console.print(f"[red]error:[/] {err}", markup=True, highlight=False)
    if errors:
        raise ConfigError(f"{len(errors)} invalid profile(s); fix the errors above")
    return loaded
