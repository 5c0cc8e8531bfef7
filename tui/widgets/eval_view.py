"""Rich renderables of an evaluation (eval.json): the scores of base and tuned model side by
side and the sampled answers side by side. Shared by `tunedeck eval` and the app's eval screen.

Every prompt, answer and path is put in as `Text`, never parsed as markup; control characters a
model may generate are shown as visible symbols, so they cannot move the cursor or ring bells.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tui.widgets.format import duration, number

# C0 and C1 control characters other than tab and newline.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: Any) -> str:
    """`text` with control characters replaced by the Unicode replacement character."""
    return _CONTROL.sub("\ufffd", str(text))


def _fraction(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "-"
    pairs = metrics.get("pairs") or 0
    if key == "exact_match" and pairs:
        return f"{round(value * pairs)}/{pairs}"
    return f"{value:.3f}"


def headline(result: dict[str, Any]) -> Text:
    """`d1: tuned eval loss 5.596 against base 6.227 (-0.631) on the run's eval split ...`."""
    base, tuned = result["base"], result["tuned"]
    out = Text()
    b, t = base.get("eval_loss"), tuned.get("eval_loss")
    out.append(f"{result.get('run_id', '?')}: ", "bold")
    if isinstance(b, (int, float)) and isinstance(t, (int, float)):
        delta = t - b
        out.append(f"tuned eval loss {number(t, 4)} against base {number(b, 4)} ")
        out.append(f"({delta:+.3f})", "green" if delta < 0 else "red")
        out.append(" lower: better" if delta < 0 else " not lower: no better than the base")
    data = result.get("data") or {}
    out.append(
        f"\non {data.get('source', '?')} ({data.get('rows', '?')} rows, max length "
        f"{result.get('max_length', '?')}) · {result.get('device', '?')} · "
        f"{duration(result.get('elapsed_s'))} · {result.get('evaluated_at', '')}"
    )
    return out


def scores_table(result: dict[str, Any]) -> Table:
    """Loss, perplexity, token accuracy and the task metrics, base beside tuned."""
    base, tuned = result["base"], result["tuned"]
    table = Table(box=None, pad_edge=False, show_edge=False)
    table.add_column("")
    table.add_column("base", justify="right")
    table.add_column(f"tuned ({tuned.get('kind', '?')})", justify="right")
    bm, tm = base.get("metrics") or {}, tuned.get("metrics") or {}
    pairs = tm.get("pairs") or bm.get("pairs") or 0
    rows: list[tuple[str, str, str]] = [
        ("eval loss", number(base.get("eval_loss"), 4), number(tuned.get("eval_loss"), 4)),
        ("perplexity", number(base.get("perplexity")), number(tuned.get("perplexity"))),
        (
            "token accuracy",
            number(base.get("mean_token_accuracy")),
            number(tuned.get("mean_token_accuracy")),
        ),
        (f"exact match (n={pairs})", _fraction(bm, "exact_match"), _fraction(tm, "exact_match")),
        ("ROUGE-L F1", _fraction(bm, "rouge_l"), _fraction(tm, "rouge_l")),
        ("BLEU", number(bm.get("bleu"), 3), number(tm.get("bleu"), 3)),
    ]
    for label, left, right in rows:
        table.add_row(Text(label), Text(left), Text(right))
    return table


def unavailable_notes(result: dict[str, Any]) -> list[str]:
    """Metrics that could not be computed, and why."""
    notes = (result["tuned"].get("metrics") or {}).get("unavailable") or {}
    return [f"{name}: {why}" for name, why in notes.items()]


def sample_view(sample: dict[str, Any], number_: int, total: int) -> RenderableType:
    """One held-out prompt and its reference, then base beside tuned, greedy and sampled."""
    head = Text()
    head.append(f"sample {number_} of {total}\n", "bold")
    head.append("prompt     ", "bold")
    head.append(printable(sample.get("prompt_text", "")))
    head.append("\nreference  ", "bold")
    head.append(printable(sample.get("reference", "")))
    table = Table(show_lines=True, expand=True)
    table.add_column("", no_wrap=True, width=7)
    table.add_column("base", ratio=1, overflow="fold")
    table.add_column("tuned", ratio=1, overflow="fold")
    base, tuned = sample.get("base") or {}, sample.get("tuned") or {}
    for mode in ("greedy", "sampled"):
        table.add_row(
            Text(mode, "bold"),
            Text(printable(base.get(mode, ""))),
            Text(printable(tuned.get(mode, ""))),
        )
    return Group(head, table)


def samples_group(result: dict[str, Any]) -> RenderableType:
    samples = result.get("samples") or []
    if not samples:
        return Text("no samples (the data has no prompt/answer rows, or --samples 0)", "dim")
    return Group(*(sample_view(s, i, len(samples)) for i, s in enumerate(samples, 1)))
