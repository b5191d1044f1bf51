"""Collects problems found while reading a dataset: fail on the first (strict) or skip and count."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from training.errors import DataError

log = logging.getLogger(__name__)


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

    def summary(self) -> dict[str, int]:
        return dict(Counter(i.kind for i in self.issues))

    def warn(self, what: str) -> None:
        if not self.issues:
            return
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.summary().items()))
        log.warning(
            "%s: skipped %d bad entries (%s); first: %s", what, len(self.issues), counts, self.issues[0]
        )
