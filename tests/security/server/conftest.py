"""Fleet-server fixtures (defined in tests/server_fixtures.py)."""

from tests.server_fixtures import api, db_url, engine, sessions  # noqa: F401
