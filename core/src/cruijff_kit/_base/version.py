"""The version of cruijff-kit (one place)."""

__version__ = "0.1.0"
