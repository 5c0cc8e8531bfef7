"""Planner estimates against published measurements, planned the way a person plans them.

Run by hand: `python benchmarks/planner_accuracy.py [--json | --markdown]`. Every case of
`../shared/calibration/published_peaks.json` (or TUNEDECK_CALIBRATION) is planned by running
`python -m tui.cli plan ... --json`, the command's real entry point, with the flags its
source's settings translate to and nothing else: a setting the source does not give is left
to the command's default, exactly as someone planning from that page would leave it. The
flags of every case are printed beside it.

Stacks: tunedeck plans two, `--stack trl` (its own training path, the default) and `--stack hf`
(a transformers model computing its own loss over the full logits). None of the sources ran
TRL; each is planned with `--stack hf`, the stack that, like all of them, builds the full
logits (LitGPT and torchtune keep them in bf16 chunks, which the planner does not model).

Like with like: the estimate compared is `allocated_peak_gib` where the source measured
`max_memory_allocated`, `torch_peak_gib` (the reserved peak) where it measured
`max_memory_reserved` or did not say; the sources exclude the CUDA context; GB (1e9 bytes)
are converted to GiB. Throughput: tokens per second per GPU, planned on the source's GPU.

Every figure is in-sample: the planner's terms were written and checked with these cases in
view, and there is no held-out set. Every case is reported; a case counts in the headline
MAPE unless its source is shown wrong (a measured peak below what the stated model's weights,
gradients and optimizer states alone take on one GPU).
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "calibration" / "published_peaks.json"
GIB = 1024**3

# Flags for the settings each source states for all its runs (its scripts' defaults).
SOURCE_FLAGS = {
    # LitGPT config_hub: torch.optim.AdamW (foreach), global batch above the micro-batch
    # (gradients kept across micro-batches), LoRA dropout 0.05.
    "litgpt": "--stack hf --optimizer adamw_torch --grad-accum 8 --lora-dropout 0.05",
    # PEFT's MetaMathQA method comparison: a transformers model's own loss, torch AdamW.
    "peft": "--stack hf --optimizer adamw_torch --lora-dropout 0",
    # torchtune's recipes: fused torch AdamW, no LoRA dropout.
    "torchtune": "--stack hf --optimizer adamw_torch_fused --lora-dropout 0",
    # LLaMA-Factory on the HF Trainer: torch AdamW, no LoRA dropout.
    "llamafactory": "--stack hf --optimizer adamw_torch --lora-dropout 0",
}
# Settings the shared file leaves null but the source states: LitGPT's
# config_hub/finetune/README.md table lists the micro-batch of every config it measured.
FROM_SOURCE: dict[str, dict[str, Any]] = {
    "litgpt-a10g-l2-7b-qlora": {"micro_batch": 2},
    "litgpt-a10g-mistral-7b-lora": {"micro_batch": 2},
    "litgpt-a10g-mistral-7b-qlora": {"micro_batch": 2},
    "litgpt-a10g-l32-3b-lora": {"micro_batch": 1},
    "litgpt-a10g-l32-3b-qlora": {"micro_batch": 2},
    # LLaMA-Factory turns gradient checkpointing on unless told not to
    "llamafactory-a100-l2-7b-lora": {"grad_ckpt": True},
    "llamafactory-a100-l2-7b-qlora": {"grad_ckpt": True},
}
# Throughput cases: the model and settings each source states. MPT-7B has Llama-2-7B's shape
# to within 1 % of parameters (no GQA, a plain 4h MLP where Llama has a gated 2.7h one).
THROUGHPUT_FLAGS = {
    # llm-foundry scripts/train/benchmarking/README.md, 7B at 2048 tokens: 8 GPUs, FSDP full
    # shard, amp_bf16, micro-batch 6 (accumulation 1 on H100, 2 on A100), no checkpointing.
    "llmfoundry-7b-h100": "--model meta-llama/Llama-2-7b-hf --method full --gpu 'H100 SXM'"
    " --num-gpus 8 --strategy fsdp --precision bf16-mixed --seq-len 2048 --micro-batch 6"
    " --no-grad-ckpt --stack hf",
    "llmfoundry-7b-a100-80": "--model meta-llama/Llama-2-7b-hf --method full --gpu 'A100 80GB'"
    " --num-gpus 8 --strategy fsdp --precision bf16-mixed --seq-len 2048 --micro-batch 6"
    " --grad-accum 2 --no-grad-ckpt --stack hf",
    # LLaMA-Factory wiki 'Performance Comparison': Llama-2-7B, LoRA r8 on q,v, batch 4, cutoff
    # 1024, one A100 (with the source's own flags, as for its memory cases).
    "llamafactory-a100-l2-7b-lora-tgs": "--model meta-llama/Llama-2-7b-hf --method lora"
    " --gpu 'A100 80GB' --lora-r 8 --lora-targets q,v --micro-batch 4 --seq-len 1024",
    "llamafactory-a100-l2-7b-qlora-tgs": "--model meta-llama/Llama-2-7b-hf --method qlora"
    " --gpu 'A100 80GB' --lora-r 8 --lora-targets q,v --micro-batch 4 --seq-len 1024",
}
GPU_NAMES = {"A10G": "A10G", "L40S": "L40S", "A100-80GB": "A100 80GB"}


def source_of(case_id: str) -> str:
    return case_id.split("-")[0]


def memory_flags(case: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(the flags for a memory case, the settings its source leaves unknown)."""
    case = {**case, **FROM_SOURCE.get(case["id"], {})}
    flags = ["--model", case["model"], "--method", case["method"]]
    if case.get("gpu"):
        flags += ["--gpu", GPU_NAMES.get(case["gpu"], case["gpu"])]
    unknown = [k for k in ("micro_batch", "seq_len", "grad_ckpt") if case.get(k) is None]
    for key, flag in (("micro_batch", "--micro-batch"), ("seq_len", "--seq-len")):
        if case.get(key) is not None:
            flags += [flag, str(case[key])]
    if case.get("grad_ckpt") is not None:
        flags.append("--grad-ckpt" if case["grad_ckpt"] else "--no-grad-ckpt")
    if case.get("lora_r"):
        flags += ["--lora-r", str(case["lora_r"])]
    if case.get("lora_targets"):
        flags += ["--lora-targets", case["lora_targets"]]
    if case.get("quant"):
        flags += ["--quant", case["quant"]]
    flags += shlex.split(SOURCE_FLAGS.get(source_of(case["id"]), ""))
    return flags, unknown


def run_plan(flags: list[str]) -> dict[str, Any]:
    """`tunedeck plan FLAGS --json`, in its own process, as a person runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "plan", *flags, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise SystemExit(f"tunedeck plan {shlex.join(flags)} failed:\n{out.stderr}")
    return dict(json.loads(out.stdout))


def measured_gib(case: dict[str, Any]) -> float:
    value = float(case["measured"])
    return value * 1e9 / GIB if case.get("unit", "GB") == "GB" else value


def memory_rows(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        flags, unknown = memory_flags(case)
        option = run_plan(flags)["options"][0]
        metric = case["metric"]
        est = option["allocated_peak_gib"] if metric == "allocated" else option["torch_peak_gib"]
        b = option["breakdown"]
        floor = sum(b.get(k, 0.0) for k in ("weights", "adapters", "gradients", "optimizer"))
        meas = measured_gib(case)
        notes = []
        if unknown:
            notes.append("unknown: " + ", ".join(unknown) + " (the command's default)")
        if metric == "unknown":
            notes.append("metric unknown: compared with the reserved peak")
        shown_wrong = meas < floor
        if shown_wrong:
            notes.append(
                f"source shown wrong: below the {floor:.1f} GiB its weights, gradients and "
                "optimizer states take on one GPU"
            )
        rows.append(
            {
                "id": case["id"],
                "source": source_of(case["id"]),
                "metric": metric,
                "flags": shlex.join(flags),
                "estimate_gib": round(est, 2),
                "measured_gib": round(meas, 2),
                "error_pct": round(100 * (est - meas) / meas, 1),
                "counted": not shown_wrong,
                "notes": "; ".join(notes),
            }
        )
    return rows


def throughput_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for item in items:
        command = THROUGHPUT_FLAGS.get(item["id"])
        if command is None:
            rows.append({"id": item["id"], "source": source_of(item["id"]), "flags": None})
            continue
        flags = shlex.split(command) + shlex.split(SOURCE_FLAGS.get(source_of(item["id"]), ""))
        data = run_plan(flags)
        est = data["options"][0]["tokens_per_s"] / data["request"]["num_gpus"]
        measured = float(item["tokens_per_s_per_gpu"])
        rows.append(
            {
                "id": item["id"],
                "source": source_of(item["id"]),
                "flags": shlex.join(flags),
                "estimate_tokens_per_s": round(est),
                "measured_tokens_per_s": measured,
                "error_pct": round(100 * (est - measured) / measured, 1),
                "bound": data["options"][0]["bound"],
                "counted": True,
            }
        )
    return rows


def mape(rows: list[dict[str, Any]]) -> float:
    values = [abs(r["error_pct"]) for r in rows if r.get("error_pct") is not None]
    return statistics.fmean(values) if values else float("nan")


def summary(rows: list[dict[str, Any]]) -> list[tuple[str, int, float]]:
    """(group, cases, MAPE): per source, then overall, counted cases only, then all."""
    counted = [r for r in rows if r.get("counted")]
    out = []
    for source in sorted({r["source"] for r in counted}):
        part = [r for r in counted if r["source"] == source]
        out.append((source, len(part), mape(part)))
    out.append(("overall", len(counted), mape(counted)))
    if len(counted) != len(rows):
        out.append(("every case, the shown-wrong ones too", len(rows), mape(rows)))
    return out


def markdown(memory: list[dict[str, Any]], speed: list[dict[str, Any]]) -> str:
    lines = [
        "| case | metric | estimate GiB | measured GiB | error | notes |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in memory:
        lines.append(
            f"| {r['id']} | {r['metric']} | {r['estimate_gib']:.2f} | {r['measured_gib']:.2f} | "
            f"{r['error_pct']:+.1f} % | {r['notes'] or '-'} |"
        )
    lines += ["", "| peak memory, in-sample | cases | MAPE |", "|---|---:|---:|"]
    lines += [f"| {g} | {n} | {m:.1f} % |" for g, n, m in summary(memory)]
    lines += [
        "",
        "| case | estimate tok/s/GPU | measured | error | bound |",
        "|---|---:|---:|---:|---|",
    ]
    for r in speed:
        if r["flags"] is None:
            lines.append(f"| {r['id']} | - | - | - | no settings known |")
            continue
        lines.append(
            f"| {r['id']} | {r['estimate_tokens_per_s']:,} | {r['measured_tokens_per_s']:,.0f} | "
            f"{r['error_pct']:+.1f} % | {r['bound']} |"
        )
    lines += ["", "| tokens/s, in-sample | cases | MAPE |", "|---|---:|---:|"]
    lines += [f"| {g} | {n} | {m:.1f} % |" for g, n, m in summary(speed)]
    lines += ["", "Flags of each case (`tunedeck plan ... --json`):", ""]
    lines += [f"- {r['id']}: `{r['flags']}`" for r in memory + speed if r["flags"]]
    return "\n".join(lines)


def main() -> int:
    path = Path(os.environ.get("TUNEDECK_CALIBRATION", DEFAULT))
    data = json.loads(path.read_text())
    memory = memory_rows(list(data["cases"]))
    speed = throughput_rows(list(data.get("throughput", [])))
    if "--json" in sys.argv:
        result = {
            "memory": memory,
            "memory_mape": summary(memory),
            "throughput": speed,
            "throughput_mape": summary(speed),
        }
        print(json.dumps(result, indent=2))
        return 0
    if "--markdown" in sys.argv:
        print(markdown(memory, speed))
        return 0
    print(f"{'case':34s} {'metric':9s} {'est GiB':>8s} {'meas GiB':>8s} {'err %':>7s}  notes")
    for r in memory:
        print(
            f"{r['id']:34s} {r['metric']:9s} {r['estimate_gib']:8.2f} {r['measured_gib']:8.2f} "
            f"{r['error_pct']:+7.1f}  {r['notes']}"
        )
    print("\npeak memory MAPE (in-sample):")
    for group, n, value in summary(memory):
        print(f"  {group:38s} ({n:2d}): {value:5.1f} %")
    print()
    for r in speed:
        if r["flags"] is None:
            print(f"{r['id']:34s} no settings known for this case")
            continue
        print(
            f"{r['id']:34s} est {r['estimate_tokens_per_s']:7,d} tok/s/GPU  measured "
            f"{r['measured_tokens_per_s']:7,.0f}  {r['error_pct']:+6.1f} %  {r['bound']}-bound"
        )
    print("\ntokens/s MAPE (in-sample):")
    for group, n, value in summary(speed):
        print(f"  {group:38s} ({n:2d}): {value:5.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
