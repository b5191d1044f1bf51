"""Small file helpers shared across packages."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name ``path`` in an OSError raised inside without a file name: a full or read-only disk fails a ``write()``,
    which names no file, and the user's one-line error must say where (a cache, a run folder)."""
    try:
        yield
    except OSError as e:
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror or os.strerror(e.errno or 0), str(path)) from None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename: a reader
    never sees half a file, and writers in other processes or threads never write into each other's."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with writing(path):
            tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def swap_in_dir(part: Path, folder: Path) -> None:
    """Put the finished folder ``part`` in the place of ``folder``: the old one is renamed aside first and removed
    last, so at every moment one whole copy exists (``folder``, or ``.<name>.old`` if a kill lands between the two
    renames: :func:`recover_dir` puts it back)."""
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(part, folder)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(folder: Path) -> None:
    """Undo a :func:`swap_in_dir` cut between its renames: the previous copy goes back in place."""
    old = folder.with_name(f".{folder.name}.old")
    if not folder.exists() and old.is_dir():
        os.replace(old, folder)


def publish_dir(tmp: Path, root: Path) -> Path:
    """Rename the finished folder ``tmp`` to ``root``, or drop it when another process finished first (``root``
    exists: theirs is identical). Returns ``root``."""
    try:
        tmp.rename(root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def folder_name(name: str, fallback: str) -> str:
    """``name`` as one path component, for names that come with a file from others (a model's class names):
    path separators and anything but letters, digits, ``_ - .`` and spaces become ``_``; a name left empty or
    made of dots only (``..``) gives ``fallback``."""
    clean = re.sub(r"[^\w .-]+", "_", str(name)).strip()
    return fallback if not clean.strip(".") else clean
