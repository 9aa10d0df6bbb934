"""Shared test setup.

Under CI (``CI`` set), a skipped test that needs a real component (docker, ssh,
the converters) is turned into a failure: a green run must mean they ran.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Fixture modules shared by several test files; their asserts get pytest's rewriting too.
for _module in ("fleet_fixtures", "agent_fixtures", "convert_fixtures", "docker_fixtures"):
    pytest.register_assert_rewrite(_module)
REAL_COMPONENT_MARKERS = ("docker", "ssh", "convert")
# Root filesystems of the qemu-user fleet take minutes to build: every test workspace shares the repository's.
os.environ.setdefault("EDGEFLEET_ROOTFS_CACHE", str(REPO / ".edgefleet" / "rootfs"))
# ... and so do the venvs that check artifacts load in a profile's pinned runtime version.
os.environ.setdefault("EDGEFLEET_COMPAT_CACHE", str(REPO / ".edgefleet" / "runtime-compat"))
# ... and so does the TensorFlow op registry a tftrt target's frozen graphs are checked against.
os.environ.setdefault("EDGEFLEET_TF_OPREGISTRY_CACHE", str(REPO / ".edgefleet" / "tf-opregistry"))
# ... and so do the wheels recipe sources take a model from (mediapipe's is ~35 MB).
os.environ.setdefault("EDGEFLEET_PACKAGE_SOURCE_CACHE", str(REPO / ".edgefleet" / "package-sources"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not os.environ.get("CI") or not report.skipped:
        return
    needed = [m for m in REAL_COMPONENT_MARKERS if item.get_closest_marker(m)]
    if needed:
        report.outcome = "failed"
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"CI requires {'/'.join(needed)} tests to run, but this one skipped: {reason}"


@pytest.fixture
def workspace_copy(tmp_path: Path) -> Path:
    """A throwaway workspace with the repo's targets, models and builders."""
    root = tmp_path / "ws"
    root.mkdir()
    for name in ("targets", "builders", "templates"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, root / name)
    if (REPO / "models").exists():
        shutil.copytree(REPO / "models", root / "models")
    for name in ("edgefleet.yaml", "tasks.py"):
        shutil.copy(REPO / name, root / name)
    return root
