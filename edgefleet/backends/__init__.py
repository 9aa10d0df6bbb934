"""Build backends: where a step's process runs (this host's venv, or a builder container)."""
