"""What the checks gather from each usable row, in fixed-size pieces that merge: the parallel
check fills one per worker and adds them up in file order."""

from __future__ import annotations

from collections import Counter
from hashlib import blake2b
from typing import Any

import orjson

from runner.data.formats import Example
from runner.data.stats import EXAMPLES, Labels, Lengths, Loc, PersonalData, RowHashes, squeeze
from runner.data.tokens import TokenCounter


def exact_hash(encoded: bytes) -> int:
    """A 64-bit hash of a row's canonical bytes that is the same in every process (eval rows
    hashed here are compared with training rows hashed in workers)."""
    return int.from_bytes(blake2b(encoded, digest_size=8).digest(), "little", signed=True)


class Examples:
    """A count with the first few locations (and details)."""

    def __init__(self) -> None:
        self.count = 0
        self.first: list[tuple[Loc, str]] = []

    def add(self, loc: Loc, detail: str = "") -> None:
        self.count += 1
        if len(self.first) < EXAMPLES:
            self.first.append((loc, detail))

    def merge(self, other: Examples) -> None:
        self.count += other.count
        self.first = (self.first + other.first)[:EXAMPLES]


class Accumulator:
    """Per-row facts for every check. Row hashes use Python's `hash`, so accumulators merged
    together must come from processes with the same PYTHONHASHSEED."""

    def __init__(self, tokenizer: Any = None) -> None:
        self.hashes = RowHashes()
        self.chars = Lengths()
        self.pii = PersonalData()
        self.labels = Labels()
        self.turns: Counter[int] = Counter()
        self.empty = Examples()
        self.roles = Examples()
        self.same_pair = Examples()
        self.tokens = TokenCounter(tokenizer) if tokenizer is not None else None
        self.peak_rss_bytes: int | None = None
        """Sum of the workers' peak RSS when the rows were read by worker processes."""

    def add(self, loc: Loc, example: Example, raw: bytes | None) -> None:
        answer = example.answer
        if not answer or answer.isspace():
            self.empty.add(loc)
        if example.role_issue:
            self.roles.add(loc, example.role_issue)
        if example.rejected is not None and example.rejected == answer:
            self.same_pair.add(loc)
        self.turns[example.turns] += 1
        self.chars.add(len(example.prompt) + len(answer))
        if example.prompt:  # plain text rows have no answer to read as a label
            self.labels.add(answer)
        encoded = orjson.dumps(example.row)
        prompt = example.prompt
        self.hashes.add(
            loc,
            exact_hash(encoded),
            hash(squeeze(encoded)),
            hash(prompt) if prompt else 0,
            hash(answer.strip()),
        )
        self.pii.scan(raw if raw is not None else encoded, loc)
        if self.tokens is not None:
            self.tokens.add(example)

    def merge(self, other: Accumulator) -> None:
        """Append `other`, which holds the rows after this one's."""
        self.hashes.extend(other.hashes)
        self.chars.extend(other.chars.values)
        self.pii.merge(other.pii)
        self.labels.merge(other.labels)
        self.turns.update(other.turns)
        self.empty.merge(other.empty)
        self.roles.merge(other.roles)
        self.same_pair.merge(other.same_pair)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["tokens"] = None  # a tokenizer does not travel between processes
        return state

    def turn_summary(self) -> dict[str, int] | None:
        """Min, median and max turns, from the counts (no per-row list)."""
        turns = self.turns
        if not turns:
            return None
        middle = sum(turns.values()) // 2
        seen = 0
        median = 0
        for value in sorted(turns):
            seen += turns[value]
            if seen > middle:
                median = value
                break
        return {"min": min(turns), "median": median, "max": max(turns)}
