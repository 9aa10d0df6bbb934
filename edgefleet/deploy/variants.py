"""The variants a build left in the store, as deploy ships them: each primary file with the files the device
needs beside it. Deploy plans from these, and build reports which of them are the same artifact."""
from __future__ import annotations

from pathlib import Path

from edgefleet.deploy.plan import LocalFile, Variant
from edgefleet.digest import sha256_file
from edgefleet.errors import DeployError
from edgefleet.plan.model import Plan
from edgefleet.store import ArtifactStore


def local_file(path: Path) -> LocalFile:
    return LocalFile(path, sha256_file(path), path.stat().st_size)


def built_variants(plan: Plan, store: ArtifactStore, say) -> list[Variant]:
    variants = []
    for step in plan.variants:
        if not store.has(step.key):
            say(f"[yellow]not deployed:[/] {step.variant} was not built here")
            continue
        manifest = store.manifest(step.key)
        primary = store.primary_file(step.key)
        if not primary.is_file():
            say(f"[yellow]not deployed:[/] {step.variant} is a folder artifact; the agent runs single-file models")
            continue
        # Files named like the primary (OpenVINO's model.bin beside model.xml), and those the step says the
        # device needs (a TF-TRT variant's conversion script).
        beside = {p for p in primary.parent.glob(f"{primary.stem}.*") if p != primary and p.is_file()}
        beside |= {primary.parent / name for name in manifest.get("device_files", [])}
        companions = tuple(local_file(p) for p in sorted(beside))
        if step.runtime is None:  # the planner names a runtime for every variant it makes
            raise DeployError(f"variant {step.variant} (step {step.id}) names no runtime; this is a planner bug")
        variants.append(Variant(step.variant or step.id, step.runtime, step.key, local_file(primary),
                                bool(manifest.get("valid", True)), companions))
    return variants
