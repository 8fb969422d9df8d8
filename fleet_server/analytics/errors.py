"""Errors raised by the analytics functions for bad input."""

from __future__ import annotations


class AnalyticsInputError(ValueError):
    """Input the analytics cannot work with (too few failures, negative times, ...).

    The message says what is wrong and what is needed, so a CLI or an API handler can show it
    to the user as is (HTTP 422, or an error line without a traceback).
    """
