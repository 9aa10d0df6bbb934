"""Helpers that make test models locally (no downloads); used by the test suite and demos."""
