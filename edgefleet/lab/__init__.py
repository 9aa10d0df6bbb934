"""Shared labs: boards that live in a lab manager (labgrid) and are reserved before each use.

``config`` holds the profile/inventory shape and needs nothing installed; ``labgrid`` is the one module
that talks to a labgrid coordinator, and imports labgrid only when a lab is used.
"""
