"""Fleet-server fixtures (defined in tests/server_fixtures.py)."""
