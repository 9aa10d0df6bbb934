"""Local records of deploys: which run went to which device, so collect knows where to look."""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    target: str
    model: str
    device: str
    workdir: str
    emulated: bool
    started: str
    connection: dict[str, Any]
    agent: str              # the agent's path on the device
    python: str             # the interpreter that runs it there
    eval: bool = False


def new_run_id(target: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{target}-{secrets.token_hex(3)}"


def runs_dir(state_dir: Path) -> Path:
    return state_dir / "runs"


def save_run(state_dir: Path, record: RunRecord) -> Path:
    folder = runs_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record.run_id}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def load_runs(state_dir: Path) -> list[RunRecord]:
    folder = runs_dir(state_dir)
    if not folder.is_dir():
        return []
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            records.append(RunRecord(**json.loads(path.read_text())))
        except (ValueError, TypeError):
            continue  # a half-written record from a crashed deploy; its run was never started
    return records
