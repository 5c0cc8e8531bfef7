"""Token lengths with the model's own tokenizer, when it is on this machine.

`transformers` is imported only when a model is given. Rows are rendered the way TRL will see them
(the chat template for conversations) and tokenised in batches by the fast (Rust) tokenizer.
"""

from __future__ import annotations

from typing import Any

from runner.data.formats import Example
from runner.data.stats import Lengths

BATCH_ROWS = 1024


def load_tokenizer(model: str) -> tuple[Any | None, str | None]:
    """`(tokenizer, None)`, or `(None, why not)` when it is not available without a download."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None, "token lengths skipped: transformers is not installed"
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError and others here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, (
            f"token lengths skipped: the tokenizer of {model!r} is not a local folder nor in the "
            f"Hugging Face cache ({reason[:160]})"
        )
    return tokenizer, None


def _compiled_template(tokenizer: Any) -> Any:
    """The tokenizer's chat template compiled once, as `apply_chat_template` renders it (half
    the time per row); None when this transformers version does not offer it."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return None
    try:
        template = _compile_jinja_template(tokenizer.chat_template)
    except Exception:  # a template transformers itself would reject: keep the public path
        return None
    variables = dict(getattr(tokenizer, "special_tokens_map", {}))

    def render(conversation: list[dict[str, str]]) -> str:
        return str(template.render(messages=conversation, add_generation_prompt=False, **variables))

    return render


class TokenCounter:
    """Collects rows and tokenises them a batch at a time."""

    def __init__(self, tokenizer: Any, batch_rows: int = BATCH_ROWS):
        self.tokenizer = tokenizer
        self.batch_rows = batch_rows
        self.lengths = Lengths()
        self.template = bool(getattr(tokenizer, "chat_template", None))
        self.note: str | None = None
        if not self.template:
            self.note = "the tokenizer has no chat template: conversations counted as plain text"
        self._compiled: Any = None
        self._verify = _compiled_template(tokenizer) if self.template else None
        # Rendered chat templates carry their own special tokens; plain text gets the
        # tokenizer's (as TRL tokenises them).
        self._add_special: bool | None = None
        self._texts: list[str] = []
        self._per_row: list[int] = []  # texts per row: 2 for preference pairs (the longer counts)

    def _render(self, conversation: list[dict[str, str]]) -> str:
        if self.template:
            try:
                if self._compiled is not None:
                    return str(self._compiled(conversation))
                text = str(self.tokenizer.apply_chat_template(conversation, tokenize=False))
                if self._compiled is None and self._verify is not None:
                    # Use the fast path only if it renders the first row exactly as the public one.
                    fast, self._verify = self._verify, None
                    if fast(conversation) == text:
                        self._compiled = fast
                return text
            except Exception as exc:  # a template may reject a role order; count plain text
                self.template = False
                self.note = f"the chat template failed ({exc}); conversations counted as plain text"
        return "\n".join(t["content"] for t in conversation)

    def _join(self, prompt: Any, answer: Any) -> str:
        if isinstance(prompt, list) or isinstance(answer, list):
            return self._render(list(prompt or []) + list(answer))
        return f"{prompt}{answer}"

    def add(self, example: Example) -> None:
        row = example.row
        if self._add_special is None:
            self._add_special = not (example.conversational and self.template)
        if "messages" in row:
            texts = [self._render(row["messages"])]
        elif "text" in row:
            texts = [row["text"]]
        elif "completion" in row:
            texts = [self._join(row["prompt"], row["completion"])]
        else:
            prompt = row.get("prompt", "")
            texts = [self._join(prompt, row["chosen"]), self._join(prompt, row["rejected"])]
        self._texts.extend(texts)
        self._per_row.append(len(texts))
        if len(self._per_row) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if not self._texts:
            return
        special = bool(self._add_special)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and hasattr(backend, "encode_batch_fast"):
            # The Rust tokenizer without offsets: about a third faster than the full call.
            sizes = [
                len(e) for e in backend.encode_batch_fast(self._texts, add_special_tokens=special)
            ]
        else:
            encoded = self.tokenizer(
                self._texts,
                add_special_tokens=special,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
            sizes = [len(ids) for ids in encoded]
        at = 0
        for count in self._per_row:
            self.lengths.add(max(sizes[at : at + count]))
            at += count
        self._texts.clear()
        self._per_row.clear()
