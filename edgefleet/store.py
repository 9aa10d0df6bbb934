"""The content-addressed artifact store: ``.edgefleet/artifacts/<key>/`` with a manifest.json.

A step writes into a staging folder that is renamed into place only when the
step succeeded, so a failed or interrupted step never leaves an entry behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.errors import BuildError
from edgefleet.recipes.sources import sha256_file

MANIFEST = "manifest.json"
BUILD_LOG = "build.log"
STAGING_PREFIX = ".staging-"


@dataclass(frozen=True)
class Staging:
    key: str
    root: Path

    @property
    def out_dir(self) -> Path:
        return self.root / "out"

    @property
    def log_path(self) -> Path:
        return self.root / BUILD_LOG


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return (self.root / key / MANIFEST).is_file()

    def manifest(self, key: str) -> dict[str, Any]:
        try:
            return json.loads((self.root / key / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise BuildError(f"artifact {key[:12]} has no readable manifest ({exc}); run `invoke clean`") from None

    def primary_file(self, key: str) -> Path:
        manifest = self.manifest(key)
        names = manifest.get("primary") or [f["name"] for f in manifest.get("files", [])]
        if not names:
            raise BuildError(f"artifact {key[:12]} ({manifest.get('step')}) has no files")
        return self.path(key) / names[0]

    def entries(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST).is_file())

    @contextmanager
    def staging(self, key: str) -> Iterator[Staging]:
        """A private folder for one step's outputs. Removed unless committed."""
        self.root.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{key[:12]}-", dir=self.root))
        staging = Staging(key, root)
        staging.out_dir.mkdir()
        try:
            yield staging
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def commit(self, staging: Staging, manifest: dict[str, Any]) -> Path:
        """Describe the staged files, write the manifest, and rename the folder into place."""
        files = []
        out = staging.out_dir
        primary = manifest.pop("primary_files", [])
        for rel in primary:
            if not (out / rel).exists():
                raise BuildError(f"step {manifest.get('step')} reported {rel!r} but did not write it")
        for reserved in (MANIFEST, BUILD_LOG):
            if (out / reserved).exists():
                raise BuildError(f"step {manifest.get('step')} wrote {reserved}, a name the artifact store keeps for "
                                 "its own file; the step must name its output otherwise")
        for item in sorted(p for p in out.rglob("*") if p.is_file()):
            rel = item.relative_to(out).as_posix()
            files.append({"name": rel, "size": item.stat().st_size, "sha256": sha256_file(item)})
        # The step's declared primary file comes first; directory artifacts list their top folder.
        order = {name: i for i, name in enumerate(primary)}
        files.sort(key=lambda f: (order.get(f["name"], len(order)), f["name"]))
        manifest["files"] = files
        manifest["primary"] = primary
        manifest["size_bytes"] = sum(f["size"] for f in files)
        if staging.log_path.exists():
            shutil.copyfile(staging.log_path, out / BUILD_LOG)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        with open(out / MANIFEST, "rb") as fh:
            os.fsync(fh.fileno())
        final = self.path(staging.key)
        try:
            os.rename(out, final)
        except OSError:
            if not self.has(staging.key):  # another process committed the same key first: theirs is as good
                raise
        return final

    def remove_stale_staging(self, older_than_s: float = 0.0) -> int:
        if not self.root.is_dir():
            return 0
        now = time.time()
        removed = 0
        for item in self.root.glob(f"{STAGING_PREFIX}*"):
            if now - item.stat().st_mtime >= older_than_s:
                shutil.rmtree(item, ignore_errors=True)
                removed += 1
        return removed
