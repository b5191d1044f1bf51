"""torch: every private name of it the project uses, in one place (tests/test_compat.py checks each against the
installed release)."""

from __future__ import annotations

import io


def globals_in_pickle(data: bytes) -> set[str] | None:
    """The globals (``module.name``) a pickle stream names, read without unpickling it; ``None`` when this torch
    no longer has the scanner. Private: ``torch._weights_only_unpickler.get_globals_in_pkl``, the scanner torch's
    own ``get_unsafe_globals_in_checkpoint`` uses (which lists only the globals outside the allow-list, and so
    stops listing classes a restricted load registered as safe).

    Raises:
        Exception: a damaged pickle stream (whatever the scanner raises).
    """
    try:
        from torch._weights_only_unpickler import get_globals_in_pkl
    except ImportError:
        return None
    return set(get_globals_in_pkl(io.BytesIO(data)))
