"""What does running through tunedeck cost? The same tiny training two ways, side by side:

- `tunedeck run`: detached launch, the run folder, metrics.jsonl every step, state heartbeats,
  checkpoint markers and fsync, the stop-on-signal all-reduce check;
- a plain TRL script: the same model, data, LoRA and SFTConfig, `trainer.train()`, nothing else.

Throughput is TRL's own token count over the trainer's own `train_runtime` for both, so the ratio
isolates the per-step overhead. Pairs alternate to share the machine's noise. Run by hand:

    .venv/bin/python benchmarks/runner_overhead.py --steps 300 --repeats 5
    .venv/bin/python benchmarks/runner_overhead.py --steps 300 --repeats 5 --together
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PLAIN_SCRIPT = r"""
import json, sys, time
import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

demo, out_dir, args_json = sys.argv[1], sys.argv[2], sys.argv[3]
args = json.loads(args_json)
train = load_dataset("json", data_files=f"{demo}/chat.jsonl", split="train")
tok = AutoTokenizer.from_pretrained(f"{demo}/model")
model = AutoModelForCausalLM.from_pretrained(f"{demo}/model", dtype=torch.float32)
lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear",
                  task_type="CAUSAL_LM")
config = SFTConfig(output_dir=out_dir, use_cpu=True, **args)
trainer = SFTTrainer(model=model, args=config, train_dataset=train, processing_class=tok,
                     peft_config=lora)
result = trainer.train()
tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h][-1]
print("RESULT", json.dumps({"train_runtime": result.metrics["train_runtime"], "tokens": tokens}))
"""


def training_args(steps: int) -> dict[str, object]:
    return {
        "max_steps": steps,
        "per_device_train_batch_size": 4,
        "learning_rate": 0.01,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 5,
        "max_length": 128,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "eval_strategy": "no",
        "save_strategy": "steps",
        "save_steps": 50,
        "save_total_limit": 3,
        "seed": 42,
        "report_to": "none",
        "disable_tqdm": True,
    }


def run_tunedeck(home: Path, steps: int, name: str, env: dict[str, str]) -> dict[str, float]:
    sets: list[str] = []
    for key, value in training_args(steps).items():
        sets += ["--set", f"training.{key}={json.dumps(value)}"]
    sets += ["--set", "dataset.eval_path=null"]
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "demo", "--name", name, "--json", *sets],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    while True:
        state = json.loads((run_dir / "state.json").read_text())
        if state["status"] in ("completed", "failed", "interrupted"):
            break
        time.sleep(0.2)
    wall_s = time.monotonic() - started
    if state["status"] != "completed":
        raise SystemExit(f"tunedeck run {name} ended {state['status']}: {state['failure_reason']}")
    runtime_s = None
    for line in (run_dir / "train.log").read_text().splitlines():
        if line.startswith("{'train_runtime'"):
            runtime_s = float(ast.literal_eval(line)["train_runtime"])
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tokens = [r["num_tokens"] for r in records if "num_tokens" in r][-1]
    assert runtime_s is not None
    return {"tokens_per_s": tokens / runtime_s, "wall_s": wall_s, "tokens": tokens}


def run_plain(demo: Path, steps: int, env: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "plain.py"
        script.write_text(PLAIN_SCRIPT)
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, str(script), str(demo), str(Path(tmp) / "out"),
             json.dumps(training_args(steps))],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        wall_s = time.monotonic() - started
    return _plain_result(out.stdout, wall_s)


def _plain_result(stdout: str, wall_s: float) -> dict[str, float]:
    line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    return {
        "tokens_per_s": result["tokens"] / result["train_runtime"],
        "wall_s": wall_s,
        "tokens": result["tokens"],
    }


def run_together(
    home: Path, demo: Path, steps: int, name: str, env: dict[str, str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Both ways at once: the plain script in a thread while tunedeck's run goes."""
    import threading

    box: dict[str, dict[str, float]] = {}

    def plain() -> None:
        box["plain"] = run_plain(demo, steps, env)

    thread = threading.Thread(target=plain)
    thread.start()
    ours = run_tunedeck(home, steps, name, env)
    thread.join()
    return ours, box["plain"]


CALLBACK_SCRIPT = r"""
import json, sys, tempfile, time
from pathlib import Path
from transformers import TrainerControl, TrainerState
from runner.runs import RunState, now_iso, update_state, write_state
from runner.train_callbacks import CheckpointMarker, MetricsWriter, StopOnSignal

steps = int(sys.argv[1])
run_dir = Path(tempfile.mkdtemp())
write_state(run_dir, RunState(run_id="bench", started_at=now_iso()))
progress = lambda step, max_steps, extra: update_state(run_dir, durable=False, step=step)
callbacks = [StopOnSignal(), CheckpointMarker(run_dir / "checkpoints"),
             MetricsWriter(run_dir / "metrics.jsonl", progress, secrets=[])]
state, control = TrainerState(), TrainerControl()
state.max_steps = steps * 10
callbacks[2].on_train_begin(None, state, control)
logs = {"loss": 2.5, "grad_norm": 0.4, "learning_rate": 1e-4, "entropy": 5.0,
        "mean_token_accuracy": 0.4, "num_tokens": 1000.0, "epoch": 0.1}
started = time.perf_counter()
for step in range(1, steps + 1):
    state.global_step = step
    for cb in callbacks:
        cb.on_step_end(None, state, control)
    logs["num_tokens"] += 100
    callbacks[2].on_log(None, state, control, logs=logs)
per_step_s = (time.perf_counter() - started) / steps
started = time.perf_counter()
for step in range(200):
    progress(step, None, {})
heartbeat_s = (time.perf_counter() - started) / 200
print("RESULT", json.dumps({"per_step_s": per_step_s, "heartbeat_s": heartbeat_s}))
"""


def callback_cost_s(steps: int, env: dict[str, str]) -> tuple[float, float]:
    """Seconds tunedeck's callbacks add to one training step (metrics line, stop and checkpoint
    checks), and seconds of one state.json heartbeat (written at most once a second), timed
    alone: free of the noise of whole runs."""
    out = subprocess.run(
        [sys.executable, "-c", CALLBACK_SCRIPT, str(steps)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    return float(result["per_step_s"]), float(result["heartbeat_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--together",
        action="store_true",
        help="run each pair at the same time, one core each (both single-threaded), so load "
        "from other processes on a shared machine hits both alike",
    )
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {**os.environ, "TUNEDECK_HOME": str(home), "OMP_NUM_THREADS": "1"}
        env.pop("TUNEDECK_RUNS", None)
        env["PYTHONPATH"] = str(ROOT)
        subprocess.run(
            [sys.executable, "-c", "from runner.demo import ensure_demo; ensure_demo()"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        demo = home / "data" / "demo"
        ours, plain = [], []
        for i in range(opts.repeats):
            if opts.together:
                o, p = run_together(home, demo, opts.steps, f"bench-{i}", env)
                ours.append(o)
                plain.append(p)
            # Alternate which goes first, so drift on a shared machine hits both alike.
            elif i % 2 == 0:
                ours.append(run_tunedeck(home, opts.steps, f"bench-{i}", env))
                plain.append(run_plain(demo, opts.steps, env))
            else:
                plain.append(run_plain(demo, opts.steps, env))
                ours.append(run_tunedeck(home, opts.steps, f"bench-{i}", env))
            print(
                f"pair {i + 1}: tunedeck {ours[-1]['tokens_per_s']:.0f} tok/s "
                f"({ours[-1]['wall_s']:.1f} s wall), plain TRL {plain[-1]['tokens_per_s']:.0f} "
                f"tok/s ({plain[-1]['wall_s']:.1f} s wall)",
                flush=True,
            )
        assert all(o["tokens"] == p["tokens"] for o, p in zip(ours, plain, strict=True)), (
            "both ways must train on the same tokens"
        )
    ours_tps = statistics.median(r["tokens_per_s"] for r in ours)
    plain_tps = statistics.median(r["tokens_per_s"] for r in plain)
    ratios = [o["tokens_per_s"] / p["tokens_per_s"] for o, p in zip(ours, plain, strict=True)]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"steps per run: {opts.steps}, tokens per run: {int(ours[0]['tokens'])}")
    print(f"tunedeck run   median {ours_tps:.0f} tok/s")
    print(f"plain TRL      median {plain_tps:.0f} tok/s")
    print(f"ratio of medians {ours_tps / plain_tps:.3f}; median of pair ratios "
          f"{statistics.median(ratios):.3f} (target >= 0.98)")  # fmt: skip
    step_s = int(ours[0]["tokens"]) / plain_tps / opts.steps
    cost_s, heartbeat_s = callback_cost_s(5000, env)
    bound = 1.0 / (1.0 + cost_s / step_s + heartbeat_s)  # heartbeats: one per second at most
    print(
        f"tunedeck callbacks alone: {cost_s * 1e6:.0f} us per step ({cost_s / step_s:.2%} of "
        f"this model's {step_s * 1e3:.1f} ms step) + a {heartbeat_s * 1e3:.2f} ms heartbeat per "
        f"second ({heartbeat_s:.2%}); throughput ratio bound {bound:.4f}"
    )
    print(
        f"wall time, launch to done: tunedeck median "
        f"{statistics.median(r['wall_s'] for r in ours):.1f} s, plain script median "
        f"{statistics.median(r['wall_s'] for r in plain):.1f} s"
    )


if __name__ == "__main__":
    main()
