"""Build steps: the code that produces artifacts. Same code in every backend.

``registry.py`` names each step kind's implementation and the builder image it runs in (the
only place that says so); ``process.py`` is the step process both backends run
(``python -m edgefleet.steps.process SPEC.json``); ``base.py`` is the contract between them.
"""
