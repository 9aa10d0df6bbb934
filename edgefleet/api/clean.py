"""`invoke clean`: remove built artifacts (and, with all_state, every cache)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from edgefleet.api.context import Env


@dataclass(frozen=True)
class CleanOptions:
    all_state: bool = False  # also downloads, wheelhouses and results
    workspace: Path | None = None


def clean(options: CleanOptions, env: Env | None = None) -> list[Path]:
    env = env or Env()
    ws = env.workspace(options.workspace)
    targets = [ws.state_dir] if options.all_state else [ws.artifacts_dir]
    removed = []
    for path in targets:
        if path.exists():
            env.console.print(f"+ rm -rf {path}", markup=False, style="dim")
            shutil.rmtree(path)
            removed.append(path)
    return removed
