"""The planner's one error type."""

from __future__ import annotations


class PlanError(Exception):
    """Input the planner cannot use; `lines` are the messages, one problem each."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines
