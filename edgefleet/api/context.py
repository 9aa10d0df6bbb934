"""What every API call needs, injected rather than read from globals."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from edgefleet.console import make_console
from edgefleet.workspace import Workspace, open_workspace


@dataclass(frozen=True)
class Env:
    console: Console = field(default_factory=lambda: make_console())
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: Path = field(default_factory=Path.cwd)

    def workspace(self, root: Path | None = None) -> Workspace:
        return open_workspace(root or self.cwd)
