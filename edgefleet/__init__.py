"""edgefleet: build, ship and measure ML models on edge devices, as one declarative matrix."""

__version__ = "0.1.0"
