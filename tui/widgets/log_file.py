"""Reading a log file of any size by byte offsets, never all of it.

The log pane follows the end of `train.log` from the last offset it read, reads backwards in
blocks for scroll-back and searches in blocks, so a multi-GB log costs only what is on screen.
Runs of `\r` updates (progress bars) show as a terminal would: the text after the last `\r`.
All methods do file I/O: call them from a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BLOCK_BYTES = 64 * 1024
MAX_LINE_CHARS = 2000  # a longer line is cut for display; the file keeps it whole


@dataclass(frozen=True)
class LogLine:
    offset: int
    """Byte offset of the line's first byte in the file."""
    text: str


def _display(raw: bytes) -> str:
    text = raw.rstrip(b"\r").decode("utf-8", "replace")
    if "\r" in text:
        text = text.rsplit("\r", 1)[1]
    if len(text) > MAX_LINE_CHARS:
        text = text[:MAX_LINE_CHARS] + " …"
    return text.expandtabs(4)


class LogFile:
    """A text file read by byte offset."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def inode(self) -> int | None:
        try:
            return self.path.stat().st_ino
        except OSError:
            return None

    def read_forward(
        self, offset: int, max_bytes: int = 1024 * 1024
    ) -> tuple[list[LogLine], int, str]:
        """Complete lines starting at `offset` (a line start), at most about `max_bytes` of them.
        Returns the lines, the offset just after the last complete line, and the text of an
        unfinished last line (a progress bar still being drawn), which is not consumed."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read(max_bytes)
        except OSError:
            return [], offset, ""
        if not data:
            return [], offset, ""
        end = data.rfind(b"\n")
        if end < 0:
            # No newline yet: either an unfinished line or one longer than max_bytes.
            if len(data) >= max_bytes:
                return [LogLine(offset, _display(data))], offset + len(data), ""
            return [], offset, _display(data)
        lines: list[LogLine] = []
        pos = 0
        body = data[: end + 1]
        while pos <= end:
            nl = body.index(b"\n", pos)
            lines.append(LogLine(offset + pos, _display(body[pos:nl])))
            pos = nl + 1
        # Bytes after the last newline are an unfinished line only when the read hit the end.
        partial = data[end + 1 :] if len(data) < max_bytes else b""
        return lines, offset + end + 1, _display(partial) if partial else ""

    def read_backward(self, offset: int, max_lines: int) -> list[LogLine]:
        """Up to `max_lines` complete lines that end before `offset` (a line start), oldest
        first, reading blocks backwards from `offset`."""
        if offset <= 0 or max_lines <= 0:
            return []
        chunks: list[bytes] = []
        start = offset
        newlines = 0
        try:
            with self.path.open("rb") as fh:
                # One newline more than lines wanted marks where the oldest line starts.
                while start > 0 and newlines <= max_lines:
                    step = min(BLOCK_BYTES, start)
                    start -= step
                    fh.seek(start)
                    block = fh.read(step)
                    chunks.append(block)
                    newlines += block.count(b"\n")
        except OSError:
            return []
        data = b"".join(reversed(chunks))
        base = start
        # `data` covers [base, offset); its last byte is the newline ending the previous line.
        body = data[:-1] if data.endswith(b"\n") else data
        parts = body.split(b"\n")
        positions: list[int] = []
        pos = base
        for part in parts:
            positions.append(pos)
            pos += len(part) + 1
        if base > 0:
            parts, positions = parts[1:], positions[1:]  # the first part is cut by the block
        lines = [LogLine(p, _display(t)) for p, t in zip(positions, parts, strict=True)]
        return lines[-max_lines:]

    def line_start(self, offset: int) -> int:
        """The offset of the start of the line holding `offset`: just after the last newline
        before it."""
        pos = offset
        try:
            with self.path.open("rb") as fh:
                while pos > 0:
                    step = min(BLOCK_BYTES, pos)
                    fh.seek(pos - step)
                    nl = fh.read(step).rfind(b"\n")
                    if nl >= 0:
                        return pos - step + nl + 1
                    pos -= step
        except OSError:
            return 0
        return 0

    def tail_start(self, window_bytes: int = BLOCK_BYTES) -> int:
        """A line start about `window_bytes` before the end: where following begins."""
        size = self.size()
        if size <= window_bytes:
            return 0
        try:
            with self.path.open("rb") as fh:
                fh.seek(size - window_bytes)
                block = fh.read(window_bytes)
        except OSError:
            return 0
        nl = block.find(b"\n")
        return size - window_bytes + nl + 1 if nl >= 0 else size - window_bytes

    def find(self, needle: str, before: int | None = None, after: int | None = None) -> int | None:
        """Offset of the start of the line holding the nearest match of `needle` (case-
        insensitive): the last match starting before `before`, or the first one at or after
        `after`. Scans in blocks; None when there is none."""
        pattern = needle.lower().encode("utf-8")
        if not pattern:
            return None
        overlap = len(pattern) - 1
        size = self.size()
        try:
            with self.path.open("rb") as fh:
                if after is not None:
                    pos = after
                    while pos < size:
                        fh.seek(pos)
                        block = fh.read(BLOCK_BYTES * 16 + overlap).lower()
                        hit = block.find(pattern)
                        if hit >= 0:
                            return self.line_start(pos + hit)
                        if len(block) <= overlap:
                            break
                        pos += len(block) - overlap
                    return None
                end = size if before is None else before
                while end > 0:
                    start = max(0, end - BLOCK_BYTES * 16)
                    fh.seek(start)
                    block = fh.read(min(end - start + overlap, size - start)).lower()
                    hit = block.rfind(pattern, 0, end - start + overlap)
                    if hit >= 0 and start + hit < end:
                        return self.line_start(start + hit)
                    end = start
        except OSError:
            return None
        return None
