"""Streaming statistics in bounded memory: hash-based duplicates and contradictions, personal-data
patterns, length percentiles, label balance.

Per row only fixed-size numbers are kept (64-bit hashes and lengths in `array`s, under 50 bytes a
row), so a million rows cost tens of megabytes whatever the rows hold.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from collections.abc import Iterable
from itertools import pairwise

Loc = tuple[int, int]
"""(file index, line number) of a row."""

EXAMPLES = 3


def _sorted_repeats(values: array) -> set[int]:
    """Values that occur more than once."""
    ordered = sorted(values)
    return {b for a, b in pairwise(ordered) if a == b}


class RowHashes:
    """Row hashes for exact and normalised duplicates and for contradictions."""

    def __init__(self) -> None:
        self.exact = array("q")
        self.normal = array("q")
        self.prompt = array("q")
        self.answer = array("q")
        self.file_index = array("H")
        self.line = array("I")

    def add(self, loc: Loc, exact: int, normal: int, prompt: int, answer: int) -> None:
        self.exact.append(exact)
        self.normal.append(normal)
        self.prompt.append(prompt)
        self.answer.append(answer)
        self.file_index.append(loc[0])
        self.line.append(loc[1])

    def extend(self, other: RowHashes) -> None:
        for mine, theirs in (
            (self.exact, other.exact),
            (self.normal, other.normal),
            (self.prompt, other.prompt),
            (self.answer, other.answer),
            (self.file_index, other.file_index),
            (self.line, other.line),
        ):
            mine.extend(theirs)

    def _loc(self, i: int) -> Loc:
        return self.file_index[i], self.line[i]

    def duplicates(self, hashes: array) -> tuple[int, list[tuple[Loc, Loc]]]:
        """How many rows repeat an earlier row, with a few (repeat, first) examples."""
        repeated = _sorted_repeats(hashes)
        first: dict[int, int] = {}
        count = 0
        examples: list[tuple[Loc, Loc]] = []
        if not repeated:
            return 0, examples
        for i, value in enumerate(hashes):
            if value not in repeated:
                continue
            if value in first:
                count += 1
                if len(examples) < EXAMPLES:
                    examples.append((self._loc(i), self._loc(first[value])))
            else:
                first[value] = i
        return count, examples

    def contradictions(self) -> tuple[int, list[tuple[Loc, Loc]]]:
        """Prompts that appear with different answers: the count of such prompts and examples."""
        repeated = _sorted_repeats(self.prompt)
        repeated.discard(0)  # rows without a prompt (plain text)
        seen: dict[int, tuple[int, int, bool]] = {}
        examples: list[tuple[Loc, Loc]] = []
        count = 0
        if not repeated:
            return 0, examples
        for i, value in enumerate(self.prompt):
            if value not in repeated:
                continue
            known = seen.get(value)
            if known is None:
                seen[value] = (self.answer[i], i, False)
            elif known[0] != self.answer[i] and not known[2]:
                count += 1
                seen[value] = (known[0], known[1], True)
                if len(examples) < EXAMPLES:
                    examples.append((self._loc(i), self._loc(known[1])))
        return count, examples


WHITESPACE = b" \t\r\n"


def squeeze(encoded: bytes) -> bytes:
    """A row's JSON with (ASCII) case and all spacing dropped: rows that read the same to a
    person squeeze to the same bytes. Bytes methods only, about a microsecond a row."""
    return encoded.lower().replace(b"\\n", b"").replace(b"\\t", b"").translate(None, WHITESPACE)


class Lengths:
    """Unsigned lengths with percentiles at the end."""

    def __init__(self) -> None:
        self.values = array("I")

    def add(self, value: int) -> None:
        self.values.append(min(value, 0xFFFFFFFF))

    def extend(self, values: Iterable[int]) -> None:
        self.values.extend(values)

    def summary(self) -> dict[str, int] | None:
        if not self.values:
            return None
        ordered = sorted(self.values)
        n = len(ordered)
        return {
            "min": ordered[0],
            "median": ordered[n // 2],
            "p95": ordered[min(n - 1, int(n * 0.95))],
            "max": ordered[-1],
        }

    def above(self, limit: int) -> int:
        return sum(1 for v in self.values if v > limit)


class Labels:
    """Answers that look like class labels: few distinct, each short. Gives up (and forgets) as
    soon as the answers stop looking like labels, so memory stays small."""

    MAX_CLASSES = 20
    MAX_CHARS = 32

    def __init__(self) -> None:
        self.counts: Counter[str] | None = Counter()

    def add(self, answer: str) -> None:
        counts = self.counts
        if counts is None:
            return
        label = answer.strip()
        if len(label) > self.MAX_CHARS or label.count(" ") > 3:
            self.counts = None
            return
        counts[label] += 1
        if len(counts) > self.MAX_CLASSES:
            self.counts = None

    def merge(self, other: Labels) -> None:
        if self.counts is None or other.counts is None:
            self.counts = None
            return
        self.counts.update(other.counts)
        if len(self.counts) > self.MAX_CLASSES:
            self.counts = None

    def balance(self, rows: int) -> dict[str, int] | None:
        counts = self.counts
        # Labels repeat: on average at least five rows per distinct answer.
        if not counts or len(counts) < 2 or rows < 10 or len(counts) * 5 > rows:
            return None
        return dict(counts.most_common())


# Personal data. Scanned on the raw bytes of each row. A regex pass over a kilobyte costs about
# 5 us here, so each pattern runs only where a cheap byte test (memchr speed) says it could match.
EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
DASH_KEYS = (b"sk-", b"xox", b"-----BEGIN")
UNDERSCORE_KEYS = (b"ghp_", b"github_pat_", b"hf_")
API_KEY = re.compile(
    rb"sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{30,}"
    rb"|github_pat_[A-Za-z0-9_]{22,}|hf_[A-Za-z0-9]{30,}|xox[abpr]-[A-Za-z0-9-]{10,}"
    rb"|AIza[0-9A-Za-z_-]{35}|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
# Runs of digits with the separators phone and card numbers use; classified in Python after.
# Starts with a plain digit class so the regex engine can skip ahead fast (a leading `\+?` made it
# try every position, 8x slower); a `+` before the run is looked up by hand.
NUMBER_RUN = re.compile(rb"\d[\d ().-]{7,}\d")
NON_DIGIT = re.compile(rb"\D")
DIGIT_BYTES = b"0123456789"
PHONE_DIGITS = range(9, 16)
CARD_DIGITS = range(13, 20)


def _luhn(digits: bytes) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ch - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _may_hold_key(raw: bytes) -> bool:
    if b"-" in raw and any(m in raw for m in DASH_KEYS):
        return True
    if b"_" in raw and any(m in raw for m in UNDERSCORE_KEYS):
        return True
    return b"AKIA" in raw or b"AIza" in raw


def classify_number(run: bytes) -> str | None:
    """`card-like number`, `phone number` or None for a run of digits and separators."""
    digits = NON_DIGIT.sub(b"", run)
    separators = len(run) - len(digits) - run.startswith(b"+")
    if len(digits) in CARD_DIGITS and b"(" not in run and _luhn(digits):
        return "card-like number"
    # A phone number is written in groups; a bare digit string is more likely an id or a count.
    if len(digits) in PHONE_DIGITS and (separators >= 1 or run.startswith(b"+")):
        if b"." in run and separators == run.count(b".") and len(digits) < 10:
            return None  # 1.234.567 is a number, not a phone
        return "phone number"
    return None


class PersonalData:
    """Counts of likely personal data, with a few example rows of each kind."""

    KINDS = ("e-mail address", "phone number", "card-like number", "API-key-like string")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[Loc]] = {k: [] for k in self.KINDS}

    def _hit(self, kind: str, loc: Loc, n: int = 1) -> None:
        self.counts[kind] += n
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(loc)

    def merge(self, other: PersonalData) -> None:
        self.counts.update(other.counts)
        for kind in self.KINDS:
            self.examples[kind] = (self.examples[kind] + other.examples[kind])[:EXAMPLES]

    def scan(self, raw: bytes, loc: Loc) -> None:
        if b"@" in raw:
            found = len(EMAIL.findall(raw))
            if found:
                self._hit("e-mail address", loc, found)
        if _may_hold_key(raw):
            found = len(API_KEY.findall(raw))
            if found:
                self._hit("API-key-like string", loc, found)
        # Phone and card numbers have at least 9 digits; most text rows have fewer.
        if len(raw) - len(raw.translate(None, DIGIT_BYTES)) < 9:
            return
        for match in NUMBER_RUN.finditer(raw):
            start = match.start()
            plus = b"+" if start and raw[start - 1] == 43 else b""  # 43 is "+"
            kind = classify_number(plus + match.group().strip(b" .-("))
            if kind:
                self._hit(kind, loc)
