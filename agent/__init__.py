"""The Edgefleet device agent: health reporting, fault flags, offline buffering, updates.

A pure core (decisions from observations, time and bytes) plus thin adapters (MQTT,
psutil, files, slots). It must never import ``fleet_server``.
"""

__version__ = "0.1.0"
