"""Row formats: detect which one a row is in, validate it, convert it to what TRL expects.

Pure functions over already-parsed rows (dicts); no file access. A row that cannot be used raises
`RowProblem` naming the field and what would be right.

Converted rows, by trainer:
- sft: `{"messages": [...]}` (messages, ShareGPT, Alpaca), `{"text": ...}` (text),
  `{"prompt": ..., "completion": ...}` (prompt/completion; preference pairs train on `chosen`);
- dpo: `{"prompt": ..., "chosen": ..., "rejected": ...}` (preference pairs only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.data.errors import RowProblem

FORMATS = ("messages", "sharegpt", "alpaca", "text", "prompt_completion", "preference")
ROLES = ("system", "user", "assistant")
ROLE_SET = frozenset(ROLES)
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}
REQUIRED_KEYS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "preference": ("chosen", "rejected"),
}
FORMAT_KEYS_HELP = {
    "messages": "messages: [{role, content}, ...]",
    "sharegpt": "conversations: [{from, value}, ...]",
    "alpaca": "instruction, input (optional), output",
    "text": "text",
    "prompt_completion": "prompt, completion",
    "preference": "prompt (optional), chosen, rejected",
}
EXPECTED_FORMATS = (
    "expected one of: messages; conversations (ShareGPT); instruction/input/output (Alpaca); "
    "text; prompt/completion; prompt/chosen/rejected"
)


@dataclass(slots=True)
class Example:
    """One usable row: `row` in TRL's shape plus what the checks look at."""

    row: dict[str, Any]
    prompt: str
    """Everything before the answer, as plain text (for contradictions and duplicates)."""
    answer: str
    """The trained answer: the last assistant turn, the completion, `chosen` or the text."""
    rejected: str | None
    turns: int
    """Messages in the conversation (1 for plain text and string prompt/completion rows)."""
    role_issue: str | None
    """A role-order problem worth a warning, e.g. `two user turns in a row`."""
    conversational: bool


def detect_format(row: Mapping[str, Any]) -> str | None:
    """The format a row is in, judged by its keys, or None when it matches none."""
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "chosen" in row and "rejected" in row:
        return "preference"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "text" in row:
        return "text"
    return None


def describe(value: Any) -> str:
    """A short description of a JSON value for messages: `a number (42)`, `null`, `a list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({_clip(value)!r})"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    # OpenAI-style content parts: [{"type": "text", "text": "..."}]
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        parts = []
        for i, part in enumerate(value):
            text = part.get("text")
            if part.get("type", "text") != "text" or not isinstance(text, str):
                raise RowProblem(
                    "wrong type",
                    f"{field}[{i}] is a {part.get('type', 'non-text')!r} part; only text parts "
                    "are supported",
                )
            parts.append(text)
        return "".join(parts)
    if value is None:
        raise RowProblem("wrong type", f"{field} is null; expected a string")
    raise RowProblem("wrong type", f"{field} is {describe(value)}; expected a string")


def _string(row: Mapping[str, Any], key: str, optional: bool = False) -> str:
    value = row.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise RowProblem("wrong type", f"{key} is {describe(value)}; expected a string")
    return value


def _conversation(value: Any, field: str, sharegpt: bool = False) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise RowProblem(
            "wrong type",
            f"{field} is {describe(value)}; expected a list of "
            + ("{from, value} objects" if sharegpt else "{role, content} objects"),
        )
    if not value:
        raise RowProblem("empty conversation", f"{field} is an empty list")
    out = []
    for i, turn in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise RowProblem("wrong type", f"{where} is {describe(turn)}; expected an object")
        if sharegpt and "from" in turn:
            source = turn["from"]
            if not isinstance(source, str):
                raise RowProblem(
                    "wrong type", f"{where}.from is {describe(source)}; expected a string"
                )
            role = SHAREGPT_ROLES.get(source.lower())
            if role is None:
                raise RowProblem(
                    "unknown role",
                    f"{where}.from is {source!r}; expected one of human, gpt, system",
                )
            if "value" not in turn:
                raise RowProblem("missing key", f"{where} has no 'value'")
            content = _text(turn["value"], f"{where}.value")
        else:
            if "role" not in turn:
                keys = "from/value" if sharegpt else "role/content"
                raise RowProblem("missing key", f"{where} has no 'role' (expected {keys})")
            role = turn["role"]
            if not isinstance(role, str):
                raise RowProblem(
                    "wrong type", f"{where}.role is {describe(role)}; expected a string"
                )
            if role not in ROLE_SET:
                raise RowProblem(
                    "unknown role",
                    f"{where}.role is {role!r}; expected one of system, user, assistant",
                )
            if "content" not in turn:
                raise RowProblem("missing key", f"{where} has no 'content'")
            content = _text(turn["content"], f"{where}.content")
        out.append({"role": role, "content": content})
    return out


def _role_issue(conversation: list[dict[str, str]], completion: bool = False) -> str | None:
    previous = None
    has_assistant = False
    for i, turn in enumerate(conversation):
        role = turn["role"]
        if role == "system" and i > 0:
            return f"system turn at position {i}, not first"
        if role == previous and role != "system":
            return f"two {role} turns in a row (at {i - 1} and {i})"
        has_assistant = has_assistant or role == "assistant"
        previous = role
    if completion:
        return None
    if not has_assistant:
        return "no assistant turn (nothing to learn)"
    if previous != "assistant":
        return f"ends with a {previous} turn, not an assistant answer"
    return None


def _plain(conversation: list[dict[str, str]]) -> str:
    return "\n".join(f"{t['role']}: {t['content']}" for t in conversation)


def _split_last_answer(conversation: list[dict[str, str]]) -> tuple[str, str]:
    for i in range(len(conversation) - 1, -1, -1):
        if conversation[i]["role"] == "assistant":
            return _plain(conversation[:i]), conversation[i]["content"]
    return _plain(conversation), ""


def _chat_example(conversation: list[dict[str, str]]) -> Example:
    prompt, answer = _split_last_answer(conversation)
    return Example(
        row={"messages": conversation},
        prompt=prompt,
        answer=answer,
        rejected=None,
        turns=len(conversation),
        role_issue=_role_issue(conversation),
        conversational=True,
    )


def _text_or_conversation(row: Mapping[str, Any], key: str) -> str | list[dict[str, str]]:
    value = row.get(key)
    if isinstance(value, list):
        return _conversation(value, key)
    if not isinstance(value, str):
        raise RowProblem(
            "wrong type", f"{key} is {describe(value)}; expected a string or a list of messages"
        )
    return value


def _same_kind(values: dict[str, Any]) -> None:
    kinds = {k: isinstance(v, list) for k, v in values.items()}
    if len(set(kinds.values())) > 1:
        conv = ", ".join(k for k, is_list in kinds.items() if is_list)
        text = ", ".join(k for k, is_list in kinds.items() if not is_list)
        raise RowProblem(
            "mixed types",
            f"{conv} {'is a conversation' if ',' not in conv else 'are conversations'} but "
            f"{text} {'is a string' if ',' not in text else 'are strings'}; use strings "
            "throughout or conversations throughout",
        )


def _flat(value: str | list[dict[str, str]]) -> str:
    return value if isinstance(value, str) else _plain(value)


def _answer(value: str | list[dict[str, str]]) -> str:
    if isinstance(value, str):
        return value
    return "\n".join(t["content"] for t in value if t["role"] == "assistant")


def convert_row(row: Any, fmt: str, trainer: str = "sft") -> Example:
    """Validate one parsed row in format `fmt` and convert it for `trainer`.

    Raises RowProblem when the row is not an object, lacks a required key, has a wrong type or an
    unknown role, or is not usable by the trainer.
    """
    if not isinstance(row, dict):
        raise RowProblem("not an object", f"row is {describe(row)}; expected a JSON object")
    missing = [k for k in REQUIRED_KEYS[fmt] if k not in row]
    if missing:
        seen = detect_format(row)
        hint = f"; this row looks like {seen}" if seen else f"; keys are {_keys(row)}"
        raise RowProblem(
            "missing key",
            f"missing key {missing[0]!r} ({fmt} rows have {FORMAT_KEYS_HELP[fmt]}){hint}",
        )
    if trainer == "dpo" and fmt != "preference":
        raise RowProblem(
            "not a preference pair",
            f"trainer dpo needs preference rows (prompt, chosen, rejected); this row is {fmt}",
        )
    if fmt == "messages":
        return _chat_example(_conversation(row["messages"], "messages"))
    if fmt == "sharegpt":
        return _chat_example(_conversation(row["conversations"], "conversations", sharegpt=True))
    if fmt == "alpaca":
        return _alpaca(row)
    if fmt == "text":
        text = _string(row, "text")
        return Example({"text": text}, "", text, None, 1, None, False)
    if fmt == "prompt_completion":
        prompt = _text_or_conversation(row, "prompt")
        completion = _text_or_conversation(row, "completion")
        _same_kind({"prompt": prompt, "completion": completion})
        conversational = isinstance(prompt, list)
        turns = len(prompt) + len(completion) if isinstance(prompt, list) else 1
        issue = _role_issue(prompt + completion) if isinstance(prompt, list) else None  # type: ignore[operator]
        return Example(
            {"prompt": prompt, "completion": completion},
            _flat(prompt),
            _answer(completion),
            None,
            turns,
            issue,
            conversational,
        )
    return _preference(row, trainer)


def _keys(row: Mapping[str, Any]) -> str:
    keys = list(row)[:8]
    return ", ".join(map(str, keys)) if keys else "none (empty object)"


def _alpaca(row: Mapping[str, Any]) -> Example:
    instruction = _string(row, "instruction")
    extra = _string(row, "input", optional=True)
    output = _string(row, "output")
    system = _string(row, "system", optional=True)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    conversation = [{"role": "system", "content": system}] if system else []
    conversation += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return Example({"messages": conversation}, user, output, None, len(conversation), None, True)


def _preference(row: Mapping[str, Any], trainer: str) -> Example:
    values: dict[str, Any] = {}
    if row.get("prompt") is not None:
        values["prompt"] = _text_or_conversation(row, "prompt")
    values["chosen"] = _text_or_conversation(row, "chosen")
    values["rejected"] = _text_or_conversation(row, "rejected")
    _same_kind(values)
    chosen, rejected = values["chosen"], values["rejected"]
    conversational = isinstance(chosen, list)
    prompt = values.get("prompt", [] if conversational else "")
    if trainer == "dpo":
        out = values
    elif "prompt" in values:
        out = {"prompt": prompt, "completion": chosen}
    else:
        out = {"messages": chosen} if conversational else {"text": chosen}
    turns = len(prompt) + len(chosen) if conversational else 1
    issue = _role_issue(prompt + chosen) if conversational else None
    return Example(
        out, _flat(prompt), _answer(chosen), _answer(rejected), turns, issue, conversational
    )


def row_shape(row: Mapping[str, Any]) -> tuple[tuple[str, bool], ...]:
    """Keys and whether each is a conversation: every row of one dataset must share it."""
    return tuple((k, isinstance(v, list)) for k, v in row.items())


def shape_text(shape: tuple[tuple[str, bool], ...]) -> str:
    return ", ".join(f"{k} ({'conversation' if conv else 'string'})" for k, conv in shape)
