"""Data problems: the exception the loaders raise and a bounded log of row problems.

A file with a million bad lines must not print a million messages nor hold them in memory: the log
keeps the first few messages word for word and counts the rest by kind.
"""

from __future__ import annotations

from collections import Counter


class DataError(Exception):
    """Data that cannot be used; `lines` are the messages, one problem each, each naming the file,
    the line and the field (`train.jsonl:12: messages[2].role is 'assitant'; expected ...`)."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


class RowProblem(Exception):
    """One row that cannot be used; `kind` groups problems in summaries, `message` names the field
    and what would be right (without the location, which the caller knows)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class ProblemLog:
    """Keeps the first `keep` messages and counts every problem by kind."""

    def __init__(self, keep: int = 20):
        self.keep = keep
        self.messages: list[str] = []
        self.kinds: Counter[str] = Counter()
        self.total = 0

    def add(self, kind: str, message: str) -> None:
        self.total += 1
        self.kinds[kind] += 1
        if len(self.messages) < self.keep:
            self.messages.append(message)

    def merge(self, other: ProblemLog) -> None:
        """Append `other`'s problems, which come after this log's."""
        self.total += other.total
        self.kinds.update(other.kinds)
        room = self.keep - len(self.messages)
        self.messages.extend(other.messages[: max(0, room)])

    def __bool__(self) -> bool:
        return self.total > 0

    def lines(self) -> list[str]:
        """The kept messages, then one line summing up those not shown."""
        out = list(self.messages)
        hidden = self.total - len(self.messages)
        if hidden > 0:
            kinds = ", ".join(f"{n:,} {kind}" for kind, n in self.kinds.most_common(5))
            out.append(f"... and {hidden:,} more not shown ({self.total:,} in all: {kinds})")
        return out
