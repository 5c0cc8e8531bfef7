"""Notifications (`launch.notify`): a message through apprise when a run completes, fails or is
interrupted, and for whatever else the runner reports through `notify_event` (a watchdog's
finding, a spot notice).

Each message carries the run id, the step, the last loss, the time trained and the money spent.
Sending happens in a daemon thread with apprise's connect and read timeouts, so it never holds
a training step; a URL that cannot be reached costs only its timeouts, is reported in train.log
by its scheme and host (apprise's privacy form), and never fails the run.

URLs may hold `${VARIABLE}`s, read from the environment when sending: webhook tokens then stay
in the environment, out of config.yaml (and out of the mirror, which copies it).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any

from runner.runs import CONFIG_FILE, read_state, summarize

# apprise's per-URL connect and read timeouts, in seconds (its URL options `cto` and `rto`).
CONNECT_TIMEOUT_S = 4.0
READ_TIMEOUT_S = 4.0
# The training process waits at most this long for its last message before it exits.
END_WAIT_S = 20.0

LEVELS = {"completed": "success", "failed": "failure", "interrupted": "warning"}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def configured_urls(run_dir: Path) -> list[str]:
    """The run's `launch.notify` URLs, as written in its config.yaml (variables unexpanded)."""
    import yaml

    try:
        data = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    launch = data.get("launch") if isinstance(data, dict) else None
    urls = launch.get("notify") if isinstance(launch, dict) else None
    return [u for u in urls if isinstance(u, str)] if isinstance(urls, list) else []


def expand(url: str, environ: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """`url` with its `${VARIABLE}`s filled in, and the names of those that are not set."""
    env = os.environ if environ is None else environ
    missing = [name for name in _VARIABLE.findall(url) if name not in env]
    return _VARIABLE.sub(lambda m: env.get(m.group(1), ""), url), missing


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, sec = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


def compose(run_dir: Path, kind: str, reason: str | None = None) -> tuple[str, str]:
    """The title and body of a message about `kind` for the run in `run_dir`."""
    state = read_state(run_dir)
    run_id = state.run_id if state else run_dir.name
    title = f"tunedeck: {run_id} {kind}"
    if state is None:
        return title, f"run {run_id}: {kind}" + (f"\n{reason}" if reason else "")
    summary = summarize(run_dir, state)
    total = f"/{state.max_steps}" if state.max_steps else ""
    lines = [f"run {run_id} {kind} at step {state.step}{total} on {socket.gethostname()}"]
    loss = f"loss {summary.last_loss:.4f}" if summary.last_loss is not None else "loss -"
    if summary.last_eval_loss is not None:
        loss += f", eval loss {summary.last_eval_loss:.4f}"
    lines.append(loss)
    spent = (
        f"spent ${summary.cost_usd:.2f}"
        if summary.cost_usd is not None
        else "spent ? (no price_usd_per_h)"
    )
    lines.append(f"elapsed {_duration(summary.elapsed_s)}, {spent}")
    if reason:
        lines.append(reason)
    return title, "\n".join(lines)


def notify_event(
    run_dir: Path | str, kind: str, reason: str | None = None
) -> threading.Thread | None:
    """Tell the run's `launch.notify` URLs about `kind` (completed, failed, interrupted, or any
    other event such as `watchdog` or `preemption`) with `reason` as a last line. Sends from a
    daemon thread and returns it (join it to wait for the sending), or None when the run has no
    URLs. Never raises and never blocks."""
    run_dir = Path(run_dir)
    urls = configured_urls(run_dir)
    if not urls:
        return None
    from runner.redact import redact, secret_values

    title, body = compose(run_dir, kind, reason)
    body = redact(body, secret_values())
    thread = threading.Thread(
        target=_send, args=(urls, title, body, LEVELS.get(kind, "info")), daemon=True
    )
    thread.name = "tunedeck-notify"
    thread.start()
    return thread


def _say(message: str) -> None:
    with contextlib.suppress(OSError):  # train.log on a full disk takes nothing more
        print(f"tunedeck: notify: {message}", flush=True)


def _send(urls: list[str], title: str, body: str, level: str) -> None:
    import logging

    import apprise

    # apprise's own log lines can quote a whole URL, token included: its errors are reported
    # here instead, by the URL's privacy form.
    logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)
    for number, raw in enumerate(urls, start=1):
        url, missing = expand(raw)
        if missing:
            _say(f"URL {number}: {', '.join(missing)} not set in the environment; not sent")
            continue
        plugin: Any = apprise.Apprise.instantiate(url)
        if not plugin:
            scheme = raw.partition("://")[0]
            _say(f"URL {number}: apprise does not know {scheme}:// URLs of this form; not sent")
            continue
        plugin.socket_connect_timeout = CONNECT_TIMEOUT_S
        plugin.socket_read_timeout = READ_TIMEOUT_S
        try:
            sent = plugin.notify(body=body, title=title, notify_type=level)
        except Exception as exc:  # a plugin's own failure must not reach the training
            _say(f"{plugin.url(privacy=True)}: {type(exc).__name__}; not sent")
            continue
        if not sent:
            _say(f"{plugin.url(privacy=True)}: not delivered")
