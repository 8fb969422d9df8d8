"""Signed updates on the server: the TUF repository, its keys, and its HTTP routes."""
