"""`invoke clean`: remove built artifacts (and, with all_state, every cache; with images, stale builder images)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from edgefleet.api.context import Env
from edgefleet.images.prune import PruneResult
from edgefleet.workspace import Workspace


@dataclass(frozen=True)
class CleanOptions:
    all_state: bool = False  # also downloads, wheelhouses and results
    images: bool = False     # also builder images older than the newest of each builder (Docker engine)
    workspace: Path | None = None


def clean(options: CleanOptions, env: Env | None = None) -> list[Path]:
    env = env or Env()
    ws = env.workspace(options.workspace)
    targets = [ws.state_dir] if options.all_state else [ws.artifacts_dir]
    if options.all_state:
        # The fleet's devices have bind mounts of /dev and /sys in their roots: never delete through them.
        from edgefleet.deploy.devices import fleet_dir
        from edgefleet.fleet import fleet_down
        fleet_down(fleet_dir(ws.state_dir))
    removed = []
    for path in targets:
        if path.exists():
            env.console.print(f"+ rm -rf {path}", markup=False, style="dim")
            shutil.rmtree(path)
            removed.append(path)
    if options.images:
        prune_images(ws, env)
    return removed


def prune_images(ws: Workspace, env: Env) -> PruneResult:
    """Prune builder images on every engine builds run on (the local one, or each build host)."""
    from edgefleet.backends.engines import connect
    from edgefleet.images.prune import prune_builder_images

    total = PruneResult()
    for url in ws.settings.docker_hosts or (None,):
        client = connect(url, env.environ)
        result = prune_builder_images(client, log=lambda line: env.console.print(line, markup=False, style="dim"))
        for tag, why in result.failed:
            env.console.print(f"[yellow]kept[/] {escape(tag)}: {escape(why)}")
        where = f" on {url}" if url else ""
        env.console.print(f"builder images{where}: {len(result.removed)} removed, {len(result.kept)} kept (the "
                          f"newest of each builder){f', {len(result.failed)} in use' if result.failed else ''}")
        total = total.merged(result)
    return total
