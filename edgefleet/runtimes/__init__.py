"""The host-side runtime registry. See base.py; one module per runtime registers itself here."""
from __future__ import annotations

from edgefleet.runtimes.base import DelegateSpec, Distribution, RuntimeSpec
from edgefleet.runtimes.registry import (all_runtimes, delegate_names, device_templates, get_runtime,
                                         runtime_for_profile, ships_wheels)

__all__ = ["DelegateSpec", "Distribution", "RuntimeSpec", "all_runtimes", "delegate_names", "device_templates", "get_runtime",
           "runtime_for_profile", "ships_wheels"]
