"""I/O adapters of the fleet server: MQTT clients and the embedded broker."""
