"""Adapters: the agent core's connections to MQTT, psutil, files and boot slots."""
