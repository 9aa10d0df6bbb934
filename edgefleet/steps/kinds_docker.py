"""Step kinds that come with the Docker builders, for the registry to import."""
from __future__ import annotations

from edgefleet.steps.registry import StepKind

KINDS = [
    StepKind("selftest.env", "tf", "edgefleet.steps.selftest:selftest_env"),
    StepKind("runtime.wheelhouse", "runtime", "edgefleet.steps.runtime:runtime_wheelhouse"),
    StepKind("android.aar", "android-aar", "edgefleet.steps.android:android_aar"),
]
