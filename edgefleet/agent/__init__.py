"""The on-device benchmark agent. Everything here but bundle.py runs on Python 3.6+ (see agent.py)."""
