"""Transports: how edgefleet reaches a device (run, put, get)."""
