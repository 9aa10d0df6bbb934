"""The backend interface. A backend runs ``python -m edgefleet.steps.process`` for one step."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class StepRequest:
    kind: str
    builder: str                  # builders/<builder>/ names the image the step needs
    inputs: Mapping[str, Path]    # host paths, read-only to the step
    params: Mapping[str, Any]
    out_dir: Path                 # host path, fresh and empty; holds the outputs and .step-result.json after
    timeout_s: float = 3600.0


LogSink = Callable[[str], None]


class Backend(Protocol):
    name: str

    def run_step(self, request: StepRequest, log: LogSink) -> None:
        """Run the step to completion, or raise BuildError with the log's tail."""
        ...

    def set_jobs(self, jobs: int) -> int:
        """Run at most ``jobs`` steps at once on each machine the backend uses; return how many may run at
        once over all of them."""
        ...
