"""Firmware bundle format: manifest, build, inspect and verify (``fleet-bundle``); and
:mod:`.files`, the durable writes and streaming sha256 the agent and the server share."""

__version__ = "0.1.0"
