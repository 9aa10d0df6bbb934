"""Invoke entry point. No logic here: the tasks live in edgefleet.tasks."""
from edgefleet.tasks import namespace as ns  # noqa: F401
