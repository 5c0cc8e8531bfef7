"""The log pane: follows the end of train.log, scrolls back through any size of file, searches.

The pane holds a window of lines (a few thousand at most) with their byte offsets. Scrolling
above the window or searching asks the screen, by message, to read more in a worker; the pane
itself never touches the file.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widget import Widget

from tui.widgets.format import log_text
from tui.widgets.log_file import LogLine

MAX_LINES = 5000
PAGE_LOAD_LINES = 500


class LogPane(Widget, can_focus=True):
    """A pager over a window of a log file."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "scroll(-1)", "up", show=False),
        Binding("down,j", "scroll(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown,space", "page(1)", "page down", show=False),
        Binding("home,g", "top", "top", show=False),
        Binding("end,G", "follow", "follow", show=False),
        Binding("f", "toggle_follow", "follow"),
    ]

    class NeedOlder(Message):
        """The pane scrolled to the top of its window; lines before `offset` are wanted."""

        def __init__(self, offset: int) -> None:
            super().__init__()
            self.offset = offset

    class NeedNewer(Message):
        """The pane scrolled to the bottom of a window that does not reach the end."""

        def __init__(self, offset: int) -> None:
            super().__init__()
            self.offset = offset

    class NeedStart(Message):
        """Jump to the first line of the file."""

    class FollowResumed(Message):
        """Following was switched back on: the screen re-reads the end of the file."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.lines: list[LogLine] = []
        self.pending = ""
        self.follow = True
        self.top = 0
        """Index in `lines` of the first line shown when not following."""
        self.at_tail = True
        """Whether the window reaches the end of what was read of the file."""
        self.highlight: str | None = None
        self.loading = False
        self.path_label = "train.log"
        self._update_title()

    # ------------------------------------------------------------------ data in

    def append(self, lines: list[LogLine], pending: str, reset: bool) -> None:
        """New lines from the end of the file."""
        if reset:
            if self.follow or not self.lines:
                self.lines = list(lines)
                self.at_tail = True
            else:
                self.at_tail = False  # the window stays where the reader is
        elif self.at_tail:
            self.lines.extend(lines)
        self.pending = pending
        if len(self.lines) > MAX_LINES:
            drop = len(self.lines) - MAX_LINES
            if self.follow or self.top >= drop:
                self.lines = self.lines[drop:]
                self.top = max(0, self.top - drop)
        self.refresh()

    def prepend(self, lines: list[LogLine]) -> None:
        """Older lines, read backwards from the top of the window."""
        self.loading = False
        if not lines:
            return
        self.lines = lines + self.lines
        self.top += len(lines)
        if len(self.lines) > MAX_LINES:
            self.lines = self.lines[:MAX_LINES]
            self.at_tail = False
        self.top = max(0, self.top - self._page())
        self.refresh()

    def extend_window(self, lines: list[LogLine], reaches_end: bool) -> None:
        """Newer lines after a window that had been cut off from the end."""
        self.loading = False
        if lines and self.lines and lines[0].offset <= self.lines[-1].offset:
            lines = [line for line in lines if line.offset > self.lines[-1].offset]
        self.lines.extend(lines)
        self.at_tail = reaches_end
        if len(self.lines) > MAX_LINES:
            drop = len(self.lines) - MAX_LINES
            self.lines = self.lines[drop:]
            self.top = max(0, self.top - drop)
        self.refresh()

    def show_window(self, lines: list[LogLine], first_index: int, highlight: str | None) -> None:
        """Replace the window (a search result) and stop following."""
        self.loading = False
        self.lines = list(lines)
        self.top = max(0, first_index)
        self.follow = False
        self.at_tail = False
        self.highlight = highlight
        self._update_title()
        self.refresh()

    # ------------------------------------------------------------------ movement

    def _page(self) -> int:
        return max(1, self.content_size.height - 1)

    def _last_top(self) -> int:
        return max(0, len(self.lines) + (1 if self.pending else 0) - self.content_size.height)

    def _move(self, delta: int) -> None:
        if self.follow:
            self.follow = False
            self.top = self._last_top()
            self._update_title()
        self.top = max(0, min(self.top + delta, self._last_top()))
        if self.lines and not self.loading:
            if self.top == 0 and delta < 0 and self.lines[0].offset > 0:
                self.loading = True
                self.post_message(self.NeedOlder(self.lines[0].offset))
            elif self.top >= self._last_top() and delta > 0 and not self.at_tail:
                self.loading = True
                self.post_message(self.NeedNewer(self.lines[-1].offset))
        self.refresh()

    def action_scroll(self, delta: int) -> None:
        self._move(delta)

    def action_page(self, direction: int) -> None:
        self._move(direction * self._page())

    def action_top(self) -> None:
        if self.lines and self.lines[0].offset > 0:
            if not self.loading:
                self.loading = True
                self.post_message(self.NeedStart())
            return
        self._move(-len(self.lines) - 1)

    def action_follow(self) -> None:
        self.follow = True
        self.highlight = None
        self._update_title()
        self.post_message(self.FollowResumed())
        self.refresh()

    def action_toggle_follow(self) -> None:
        if self.follow:
            self._move(0)
        else:
            self.action_follow()

    def _update_title(self) -> None:
        mode = "following" if self.follow else "scrolled · end follows"
        if self.highlight:
            mode += f" · /{self.highlight}"
        # A str title is read as markup; the search text is whatever was typed.
        self.border_title = Text(f"{self.path_label} ({mode})")

    # ------------------------------------------------------------------ drawing

    def visible(self) -> list[str]:
        """The lines on screen now, oldest first."""
        height = max(1, self.content_size.height)
        texts = [line.text for line in self.lines]
        if self.pending:
            texts.append(self.pending)
        if self.follow:
            return texts[-height:]
        return texts[self.top : self.top + height]

    def render(self) -> Text:
        shown = self.visible()
        if not shown:
            return Text("(the log is empty so far)", style="dim")
        out = Text(no_wrap=True, overflow="ellipsis")
        needle = (self.highlight or "").lower()
        for i, raw in enumerate(shown):
            line = log_text(raw)
            if i:
                out.append("\n")
            if needle and needle in line.lower():
                start = len(out)
                out.append(line)
                pos = line.lower().find(needle)
                while pos >= 0:
                    out.stylize("reverse", start + pos, start + pos + len(needle))
                    pos = line.lower().find(needle, pos + 1)
            else:
                out.append(line)
        return out
