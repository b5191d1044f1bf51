"""Collects problems found while reading a dataset: fail on the first (strict) or skip and count; strict text
decoding shared by the readers."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from training.cli import DataError

log = logging.getLogger(__name__)

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def utf8_problem(data: bytes) -> str | None:
    """Why ``data`` is not UTF-8 text (one line naming the first bad byte and its offset), or None.

    Decoding with ``errors="replace"`` instead would turn a Latin-1 ``café.jpg`` into ``caf\ufffd.jpg`` and
    report a missing image, and a UTF-16 file into "malformed JSON at line 1 column 1": both point the
    user at the wrong problem. NUL bytes are valid UTF-8 but never occur in JSON, YAML or label text; they
    are what a UTF-16 file without a byte-order mark looks like.
    """
    if data.startswith(_UTF16_BOMS):
        return "UTF-16 text, not UTF-8 (save it as UTF-8)"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = e.start
    else:
        bad = data.find(b"\x00")
        if bad < 0:
            return None
    line = data.count(b"\n", 0, bad) + 1
    return f"not UTF-8 text (byte 0x{data[bad]:02x} at offset {bad}, line {line})"


def read_bytes(path: Path) -> bytes:
    """The bytes of ``path``; an unreadable file (permissions, a folder) is a ``DataError`` naming it."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e.__class__.__name__})") from None


def read_utf8(path: Path) -> str:
    """Text of ``path``; ``DataError`` naming the file and the first bad byte if it is not UTF-8.

    A leading UTF-8 byte-order mark (what some Windows editors write) is accepted and dropped.
    """
    data = read_bytes(path)
    problem = utf8_problem(data)
    if problem:
        raise DataError(f"{path}: {problem}")
    return data.decode("utf-8-sig")


@dataclass(frozen=True)
class Issue:
    file: str
    entry: str
    message: str
    kind: str

    def __str__(self) -> str:
        return f"{self.file}: {self.entry}: {self.message}"


class IssueLog:
    """Strict mode raises ``DataError`` on the first issue; lenient mode records it and the caller skips the entry."""

    def __init__(self, strict: bool = True):
        self.strict = strict
        self.issues: list[Issue] = []

    def add(self, file: object, entry: str, message: str, kind: str = "invalid") -> None:
        issue = Issue(str(file), entry, message, kind)
        if self.strict:
            raise DataError(f"{issue} (set data.strict=false to skip bad entries)")
        self.issues.append(issue)

    def warn(self, what: str) -> None:
        if not self.issues:
            return
        counts = ", ".join(f"{n} {k}" for k, n in sorted(Counter(i.kind for i in self.issues).items()))
        log.warning(
            "%s: skipped %d bad entries (%s); first: %s", what, len(self.issues), counts, self.issues[0]
        )
