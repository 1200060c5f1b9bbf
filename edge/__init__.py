"""On-device runtime of the affect sensor. Must import and run without torch."""

__version__ = "0.2.0"
