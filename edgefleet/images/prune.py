"""Stale builder images: every change to a builder's template, pins or edgefleet's own code gives the
image a new tag (build.py), and the old ones stay in the engine, gigabytes each. Pruning keeps the
newest image of each builder and removes the others."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgefleet.images.build import IMAGE_PREFIX

if TYPE_CHECKING:
    import docker

Log = Callable[[str], None]


@dataclass
class PruneResult:
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (tag, why), e.g. a container uses it

    def merged(self, other: PruneResult) -> PruneResult:
        return PruneResult(self.kept + other.kept, self.removed + other.removed, self.failed + other.failed)


def builder_tags(client: docker.DockerClient, prefix: str = IMAGE_PREFIX) -> dict[str, list[tuple[str, str]]]:
    """Per builder repository, its (created, tag) pairs, newest first."""
    found: dict[str, list[tuple[str, str]]] = {}
    for image in client.images.list():
        created = str(image.attrs.get("Created", ""))
        for tag in image.tags:
            repository = tag.rpartition(":")[0]
            if repository.startswith(prefix):
                found.setdefault(repository, []).append((created, tag))
    return {repo: sorted(tags, reverse=True) for repo, tags in sorted(found.items())}


def prune_builder_images(client: docker.DockerClient, *, prefix: str = IMAGE_PREFIX,
                         log: Log = print) -> PruneResult:
    """Remove every builder image tag but the newest of each builder (by creation time)."""
    import docker.errors

    result = PruneResult()
    for _repository, tags in builder_tags(client, prefix).items():
        newest, *older = tags
        result.kept.append(newest[1])
        for _created, tag in older:
            log(f"+ docker rmi {tag}")
            try:
                client.images.remove(tag)
            except docker.errors.APIError as exc:
                result.failed.append((tag, _reason(exc)))
                continue
            result.removed.append(tag)
    return result


def _reason(exc: Any) -> str:
    return str(getattr(exc, "explanation", None) or exc)
