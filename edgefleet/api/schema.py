"""`invoke schema`: JSON Schemas of profiles and recipes, for editors."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgefleet.api.context import Env
from edgefleet.profiles.model import Profile
from edgefleet.recipes.model import Recipe


@dataclass(frozen=True)
class SchemaOptions:
    out_dir: Path | None = None  # default: <workspace>/schema
    workspace: Path | None = None


def write_schemas(options: SchemaOptions, env: Env | None = None) -> list[Path]:
    env = env or Env()
    ws = env.workspace(options.workspace)
    out_dir = options.out_dir or ws.root / "schema"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in (("profile", Profile), ("recipe", Recipe)):
        path = out_dir / f"{name}.schema.json"
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        env.console.print(f"wrote {path}")
        written.append(path)
    return written
