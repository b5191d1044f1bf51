"""Progress bars of the long loops (training epochs, classifier phases, model selection, prediction).

One switch for all of them: quiet when the ``CI`` environment variable is set to a true value (``CI=true``, as
GitHub Actions and most CI services set it) or when ``SIGDET_PROGRESS=0``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tqdm.auto import tqdm

_FALSE = {"", "0", "false", "no", "off"}


def quiet() -> bool:
    """Whether progress bars are off (``CI`` set to a true value, or ``SIGDET_PROGRESS=0``)."""
    return (
        os.environ.get("CI", "").strip().lower() not in _FALSE
        or os.environ.get("SIGDET_PROGRESS", "1").strip().lower() in _FALSE
    )


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None, unit: str = "it"):
    """``tqdm`` over ``iterable`` (on stderr, cleared when done), disabled by :func:`quiet`."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, disable=quiet(), dynamic_ncols=True)
