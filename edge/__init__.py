"""On-device runtime of the affect sensor. Must import and run without torch."""

__version__ = "0.1.0"
