"""Keeping tokens out of run folders.

Tokens reach the training only through the environment (`HF_TOKEN` and the like). Their values
are never written by tunedeck, and whatever a library prints is filtered through `redact` before
it reaches train.log (see `runner.train`), state.json or metrics.jsonl.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

REDACTED = "<redacted>"
# Names of environment variables that hold secrets.
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|ACCESS_KEY|PRIVATE_KEY)")
# Shorter values are too likely to be ordinary words or numbers to blank out everywhere.
MIN_SECRET_CHARS = 8
# Hugging Face tokens have a recognisable shape even when not in the environment.
HF_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{30,}")


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first."""
    env = os.environ if environ is None else environ
    found = {
        value
        for name, value in env.items()
        if SECRET_NAME.search(name.upper()) and len(value.strip()) >= MIN_SECRET_CHARS
    }
    return sorted(found, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret value and anything shaped like a Hugging Face token blanked."""
    for value in secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    return HF_TOKEN_RE.sub(REDACTED, text)
