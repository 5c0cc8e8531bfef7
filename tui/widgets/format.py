"""Short text for numbers (GiB, durations, money, bars), preset paths, and user or file text made
safe for a terminal. Pure functions, no Textual."""

from __future__ import annotations

import re

GIB = 1024**3

# C0 and C1 control characters; an escape sequence in a run's failure reason or a log line
# would otherwise clear the screen, retitle the terminal or draw a fake line.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_IN_LINES = {**_CONTROLS, ord("\t"): " ", ord("\n"): "\n"}
_ONE_LINE = {**_CONTROLS, ord("\t"): " ", ord("\n"): "\\n", ord("\r"): "\\r"}
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])"
)


def one_line(text: str) -> str:
    """Text for one line of the screen: every control character (line breaks included) shown
    as an escape such as `\\x1b` or `\\n`."""
    return text.translate(_ONE_LINE)


def printable(text: str) -> str:
    """Text that may run over several lines: line breaks kept, other control characters shown
    as escapes."""
    return text.translate(_IN_LINES)


def log_text(line: str) -> str:
    """A log line for the screen: terminal escape sequences (a library's colours) dropped,
    other control characters shown as escapes."""
    return _ESCAPE_SEQUENCE.sub("", line).translate(_ONE_LINE)


def gib(value_bytes: int | float | None, digits: int = 1) -> str:
    """Bytes as GiB text, or a dash when unknown."""
    if value_bytes is None:
        return "-"
    return f"{value_bytes / GIB:.{digits}f}"


def duration(seconds: float | None) -> str:
    """`2h31m`, `4m05s`, `12s`; a dash when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def money(usd: float | None) -> str:
    """`$4.12`, a dash when unknown."""
    if usd is None:
        return "-"
    return f"${usd:,.2f}" if usd < 1000 else f"${usd:,.0f}"


def number(value: float | None, digits: int = 3) -> str:
    """A loss or a rate with a fixed count of significant digits; a dash when unknown."""
    if value is None:
        return "-"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.{max(digits - 1, 1)}e}"
    return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}"


def bar(fraction: float | None, width: int) -> str:
    """A text bar of `width` cells, eighth-cell resolution; `fraction` above 1 is clipped and
    unknown draws a light track only."""
    if width <= 0:
        return ""
    if fraction is None:
        return "░" * width
    clipped = min(max(fraction, 0.0), 1.0)
    eighths = round(clipped * width * 8)
    full, part = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[part] if part else ""
    text = "█" * full + partial
    return text + "░" * (width - len(text))


def count(value: int | float | None) -> str:
    """An integer with thousands separators, a dash when unknown."""
    if value is None:
        return "-"
    return f"{int(value):,}"


def size_text(value_bytes: int | float | None) -> str:
    """`412 GiB`, `1.2 TiB`; a dash when unknown."""
    if value_bytes is None:
        return "-"
    if value_bytes >= 1024**4:
        return f"{value_bytes / 1024**4:.1f} TiB"
    return f"{value_bytes / GIB:.0f} GiB"


def fit_variants(
    parts: list[tuple[int | tuple[int, ...], list[str]]], width: int, gap: int = 2
) -> list[str | None]:
    """Choose, for each part of a one-line text, one of its variants (longest first) or none,
    so that the chosen texts joined by `gap` cells fit `width` cells. The part whose current
    variant has the highest rank gives way first (the later of equal ranks), one variant at a
    time; a rank is one number for every variant of a part, or one per variant. Rank 0 stays.
    Nothing is cut: each part is shown whole or not at all."""
    from rich.cells import cell_len

    chosen = [0] * len(parts)

    def rank(k: int) -> int:
        ranks, variants = parts[k]
        if chosen[k] >= len(variants):
            return 0  # already gone
        return ranks[chosen[k]] if isinstance(ranks, tuple) else ranks

    def line_w() -> int:
        texts = [v[i] for (_, v), i in zip(parts, chosen, strict=True) if i < len(v)]
        return sum(cell_len(t) for t in texts) + gap * max(0, len(texts) - 1)

    while line_w() > width:
        movable = [k for k in range(len(parts)) if rank(k) > 0]
        if not movable:
            break
        chosen[max(movable, key=lambda k: (rank(k), k))] += 1
    return [v[i] if i < len(v) else None for (_, v), i in zip(parts, chosen, strict=True)]


def shown_path(value: str) -> str:
    """A preset's model or data path as a person reads it: `{data_dir}` and `~` expanded, then
    the home folder written as `~`. Hub ids pass through unchanged."""
    from pathlib import Path

    from presets.locations import expand

    expanded = expand(value)
    home = str(Path.home())
    if expanded == home or expanded.startswith(home.rstrip("/") + "/"):
        return "~" + expanded[len(home.rstrip("/")) :]
    return expanded
