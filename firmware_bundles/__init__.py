"""Firmware bundle format: manifest, build, inspect and verify (``fleet-bundle``)."""

__version__ = "0.1.0"
