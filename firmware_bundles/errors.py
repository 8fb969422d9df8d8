"""The one error a bundle operation raises, with a stable reason code."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a bundle (or a bundle source) was refused; stable codes for scripts and metrics."""

    NOT_A_BUNDLE = "not_a_bundle"
    BAD_MANIFEST = "bad_manifest"
    BAD_SBOM = "bad_sbom"
    MANIFEST_NOT_FIRST = "manifest_not_first"
    UNSAFE_PATH = "unsafe_path"
    UNSUPPORTED_MEMBER = "unsupported_member"
    DUPLICATE_MEMBER = "duplicate_member"
    UNEXPECTED_FILE = "unexpected_file"
    MISSING_FILE = "missing_file"
    SIZE_MISMATCH = "size_mismatch"
    HASH_MISMATCH = "hash_mismatch"
    TOO_LARGE = "too_large"
    BAD_SOURCE = "bad_source"
    DESTINATION_NOT_EMPTY = "destination_not_empty"


class BundleError(Exception):
    """A bundle or bundle source is invalid or hostile; ``reason`` says why.

    The message is meant for people; ``reason`` is meant for code.
    """

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.reason.value}]"
