"""The fleet server's REST API (FastAPI): ``create_app(settings)`` builds it."""

from fleet_server.api.app import create_app

__all__ = ["create_app"]
