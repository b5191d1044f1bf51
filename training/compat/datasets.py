"""Hugging Face ``datasets``, where the project needs a private name of it (checked in tests/test_hub_sources.py)."""

from __future__ import annotations


def fingerprint(ds) -> str:
    """A ``datasets.Dataset``'s content fingerprint: what its own cache keys on, here the key of the materialised
    copy. ``datasets`` keeps it as the private ``_fingerprint`` (no public accessor as of 3.x / 4.x)."""
    return ds._fingerprint
