"""Task metrics of generated answers against reference answers: exact match, ROUGE-L and BLEU.

ROUGE-L comes from `rouge-score` (Google's reimplementation of ROUGE-1.5.5) and BLEU from
`sacrebleu` (corpus BLEU with its standard 13a tokenisation), both in the `train` extra and
imported on use. A metric whose library is missing is reported as such, not replaced.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

_SPACE = re.compile(r"\s+")
_EDGE_PUNCT = ".,;:!?\"'`()[]{}"


def normalise(text: str) -> str:
    """Lower case, NFKC, runs of white space as one space, punctuation stripped at the ends:
    `Your apple is red.` and `your apple is red` match."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", text).strip().strip(_EDGE_PUNCT).strip()


def exact_match(predictions: list[str], references: list[str]) -> float | None:
    """Fraction of predictions equal to their reference after `normalise`; None for none."""
    if not references:
        return None
    hits = sum(normalise(p) == normalise(r) for p, r in zip(predictions, references, strict=True))
    return hits / len(references)


def rouge_l(predictions: list[str], references: list[str]) -> float | None:
    """Mean ROUGE-L F1 (0 to 1, with stemming); None for no pairs. ImportError without
    rouge-score."""
    if not references:
        return None
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [
        scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)
    ]
    return sum(scores) / len(scores)


def bleu(predictions: list[str], references: list[str]) -> float | None:
    """Corpus BLEU (0 to 100) of the predictions against one reference each; None for no
    pairs. ImportError without sacrebleu."""
    if not references:
        return None
    import sacrebleu

    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def task_metrics(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Every metric over the pairs; a missing library shows as a note in `unavailable`."""
    out: dict[str, Any] = {
        "pairs": len(references),
        "exact_match": exact_match(predictions, references),
    }
    unavailable = {}
    for name, fn, package in (("rouge_l", rouge_l, "rouge-score"), ("bleu", bleu, "sacrebleu")):
        try:
            out[name] = fn(predictions, references)
        except ImportError:
            out[name] = None
            unavailable[name] = f"{package} is not installed (pip install 'tunedeck[train]')"
    if unavailable:
        out["unavailable"] = unavailable
    return out
