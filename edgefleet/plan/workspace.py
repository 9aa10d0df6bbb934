"""A workspace's build plan for one (profile, recipe): the planner's inputs gathered from the workspace
(the source and calibration digests, builder versions, device templates, the device TensorFlow's op
registry). Build, deploy and study all plan through here, from values they loaded once."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from edgefleet.console import progress_line
from edgefleet.plan.model import Plan, SourceInput
from edgefleet.plan.planner import PlanInputs, plan_build
from edgefleet.profiles.load import load_profile
from edgefleet.profiles.model import Profile
from edgefleet.recipes.load import LoadedRecipe, load_recipe
from edgefleet.recipes.photos import calibration_data
from edgefleet.recipes.sources import resolve_source, sha256_tree
from edgefleet.runtimes import device_templates as runtime_templates
from edgefleet.tftrt import opregistry
from edgefleet.workspace import Workspace

Log = Callable[[str], None]


def builder_versions(ws: Workspace) -> dict[str, str]:
    """A builder's version is the digest of its builder.yaml (its pins)."""
    versions = {}
    if ws.builders_dir.is_dir():
        for spec in sorted(ws.builders_dir.glob("*/builder.yaml")):
            versions[spec.parent.name] = hashlib.sha256(spec.read_bytes()).hexdigest()[:16]
    return versions


def device_templates(ws: Workspace) -> dict[str, SourceInput]:
    found = {}
    for name, rel in runtime_templates().items():  # each runtime names the device templates it renders
        path = ws.templates_dir / rel
        if path.is_file():
            found[name] = SourceInput(path, sha256_tree(path))
    return found


def tf_op_registry_cache(ws: Workspace) -> Path:
    # One cache for several workspaces when asked (the test suite makes dozens of throwaway workspaces).
    override = os.environ.get(opregistry.CACHE_ENV)
    return Path(override) if override else ws.downloads_dir / opregistry.CACHE_DIR


def tf_op_registries(ws: Workspace, profile: Profile, log: Log = progress_line) -> dict[str, SourceInput]:
    """The op registry of the TensorFlow a tftrt target pins (fetched once from PyPI); none without tftrt."""
    tftrt = profile.formats.tftrt
    if tftrt is None:
        return {}
    path = opregistry.ensure_registry(tf_op_registry_cache(ws), tftrt.jetpack_tf_version, log)
    return {tftrt.jetpack_tf_version: SourceInput(path, sha256_tree(path))}


def plan_for(ws: Workspace, profile: Profile, recipe: LoadedRecipe, *, log: Log = progress_line) -> Plan:
    """``log`` gets the progress lines of a first-time fetch (the op registry)."""
    source = resolve_source(recipe, ws.downloads_dir, log=log)
    calibration = calibration_data(recipe, ws.downloads_dir, log)
    return plan_build(PlanInputs(
        recipe=recipe.recipe, profile=profile,
        source=SourceInput(source.path, source.sha256),
        calibration=SourceInput(calibration.path, calibration.sha256),
        calibration_images=calibration.provenance,
        builder_versions=builder_versions(ws),
        templates=device_templates(ws),
        tf_op_registries=tf_op_registries(ws, profile, log),
    ))


def load_plan(ws: Workspace, target: str, model: str | None) -> Plan:
    """Load the target's profile and the model's recipe (default: the workspace's) and plan them."""
    profile = load_profile(ws.targets_dir, target).profile
    return plan_for(ws, profile, load_recipe(ws.models_dir, model or ws.settings.default_model))
