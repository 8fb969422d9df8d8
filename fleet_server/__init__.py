"""The Edgefleet fleet server: device registry, ingest, rollouts, recalls and warranty.

Pure domain logic, services, and adapters (SQLAlchemy, MQTT, TUF) behind the FastAPI app.
"""

__version__ = "0.1.0"
