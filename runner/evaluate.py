"""Evaluating a run against its base model: what is compared, where the results go, and the
process that computes them.

`evaluate_run` starts `python -m runner.evaluate_worker` (the only part that imports the
training stack) and waits for it; the worker writes, atomically, into the run folder:

- `eval.json`     loss and perplexity of the base and the tuned model on the same data, with the
                  run's chat template and max length, task metrics over the sampled prompts and
                  the samples themselves;
- `samples.jsonl` one line per held-out prompt: prompt, reference answer, and the base and tuned
                  generations (greedy and seeded sampling) side by side;
- `eval.log`      what the libraries printed (the place to look when the evaluation fails).

During training, `evaluation.samples_every_steps` has the training process append its sample
answers to `train_samples.jsonl` (one line per prompt and step; `runner.train_eval_callbacks`).

This module names, reads and writes those files; it imports no training library.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.runs import CONFIG_FILE, OUTPUT_DIR, RunError, write_atomic

if TYPE_CHECKING:
    from presets.schema import Preset

EVAL_FILE = "eval.json"
SAMPLES_FILE = "samples.jsonl"
EVAL_LOG_FILE = "eval.log"
TRAIN_SAMPLES_FILE = "train_samples.jsonl"
MERGED_DIR = "merged"  # what `tunedeck merge` writes by default (runner.merge)

# Exit code of a worker that refused with a reason it reported (bad data, no model...).
EXIT_REFUSED = 1
# Upper bound on an evaluation; a model that takes longer to evaluate than this is not stuck,
# so this only ends a worker that has hung.
EVAL_TIMEOUT_S = 6 * 3600.0


@dataclass(frozen=True)
class EvalOptions:
    """What an evaluation compares and how it generates."""

    data: str | None = None
    """A data file or folder in any supported format; None: the run's own eval split."""
    samples: int = 8
    """Held-out prompts generated from, by both models, greedy and sampled."""
    max_new_tokens: int = 64
    """Longest generated answer, in tokens."""
    seed: int = 0
    """Seed of the sampled generations (the same for both models, prompt by prompt)."""
    temperature: float = 0.7
    """Temperature of the sampled generations."""
    top_p: float = 0.95
    """Nucleus of the sampled generations."""

    def problems(self) -> list[str]:
        out = []
        if self.samples < 0:
            out.append(f"--samples must be 0 or more, got {self.samples}")
        if self.max_new_tokens < 1:
            out.append(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            out.append(f"--temperature must be above 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            out.append(f"--top-p must be in (0, 1], got {self.top_p}")
        return out


@dataclass(frozen=True)
class TunedModel:
    """Where the tuned model of a run is and what it is."""

    kind: str
    """`adapter` (applied over the base), `full` (a whole model) or `merged`."""
    path: Path


def load_run_preset(run_dir: Path) -> Preset:
    """The run's config.yaml as a preset; RunError naming the file when it cannot be used."""
    from presets.store import PresetError, read_yaml, validate

    try:
        return validate(read_yaml(run_dir / CONFIG_FILE), str(run_dir / CONFIG_FILE))
    except PresetError as exc:
        raise RunError(exc.lines) from None


def tuned_model(run_dir: Path, preset: Preset) -> TunedModel:
    """The tuned model of a finished run: its adapter or full model in `output/`, else a merged
    model in `merged/`; RunError saying what is missing otherwise."""
    output = run_dir / OUTPUT_DIR
    if preset.method != "full" and (output / "adapter_config.json").is_file():
        return TunedModel("adapter", output)
    if preset.method == "full" and (output / "config.json").is_file():
        return TunedModel("full", output)
    merged = run_dir / MERGED_DIR
    if (merged / "config.json").is_file():
        return TunedModel("merged", merged)
    raise RunError(
        [
            f"{run_dir.name}: no tuned model yet ({output} is empty); evaluation compares a "
            "completed run with its base model (see tunedeck runs)"
        ]
    )


def evaluate_run(
    run_dir: Path,
    options: EvalOptions,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate base and tuned model of a run in a separate process; returns what it wrote to
    eval.json. RunError with the worker's reasons when it refuses or fails."""
    problems = options.problems()
    if problems:
        raise RunError(problems)
    preset = load_run_preset(run_dir)
    tuned_model(run_dir, preset)  # refuse before paying for a process and the imports
    if options.data is not None and not Path(options.data).expanduser().exists():
        raise RunError([f"--data {options.data}: no such file or folder"])
    read_fd, write_fd = os.pipe()
    command = [
        sys.executable,
        "-m",
        "runner.evaluate_worker",
        str(run_dir),
        json.dumps(asdict(options)),
        str(write_fd),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    log_path = run_dir / EVAL_LOG_FILE
    try:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                env=env,
            )
        finally:
            os.close(log_fd)
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise RunError([f"cannot start the evaluation ({exc})"]) from None
    os.close(write_fd)
    refusal: list[str] | None = None
    with os.fdopen(read_fd, "r", encoding="utf-8") as reports:
        for line in reports:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "progress" and on_progress is not None:
                on_progress(str(event.get("what", "")))
            elif event.get("event") == "refused":
                refusal = [str(x) for x in event.get("lines", [])]
    try:
        code = proc.wait(timeout=EVAL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RunError([f"the evaluation took over {EVAL_TIMEOUT_S:.0f} s and was ended"]) from None
    if refusal is not None:
        raise RunError(refusal)
    if code != 0:
        raise RunError(
            [
                f"the evaluation failed (exit {code}): {_last_line(log_path)}",
                f"details in {log_path}",
            ]
        )
    result = read_eval(run_dir)
    if result is None:
        raise RunError([f"the evaluation ended without writing {run_dir / EVAL_FILE}"])
    return result


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"


# ---------------------------------------------------------------- the files


def write_results(run_dir: Path, result: dict[str, Any]) -> None:
    """eval.json and samples.jsonl, each replaced atomically (samples first: an eval.json always
    has its samples beside it)."""
    samples = result.get("samples") or []
    lines = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
    write_atomic(run_dir / SAMPLES_FILE, lines)
    write_atomic(run_dir / EVAL_FILE, json.dumps(result, indent=2, ensure_ascii=False) + "\n")


def read_eval(run_dir: Path) -> dict[str, Any] | None:
    """The run's eval.json, None when there is none or it cannot be read as one."""
    try:
        data = json.loads((run_dir / EVAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("base"), dict):
        return None
    if not isinstance(data.get("tuned"), dict):
        return None
    return data


def perplexity(loss: float | None) -> float | None:
    """exp(loss), None when unknown or too large to be a number."""
    if loss is None or not math.isfinite(loss):
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return None
