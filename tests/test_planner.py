"""The plan: memory terms, fixes that really fit, the recommendation, presets, the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from planner import PlanError, PlanRequest, find_gpu, plan, request_from_preset
from planner.core import HEADROOM
from planner.gpus import gpu_catalogue
from presets.store import list_presets, load_preset

GPU_NAMES = {
    "H100": "H100 SXM",
    "NVIDIA H100 80GB HBM3": "H100 SXM",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "A100 40GB": "A100 40GB",
    "a100-40": "A100 40GB",
    "NVIDIA A100-SXM4-40GB": "A100 40GB",
    "NVIDIA A100-SXM4-80GB": "A100 80GB",
    "NVIDIA GeForce RTX 4090": "RTX 4090",
    "rtx3090": "RTX 3090",
    "Tesla T4": "T4",
    "NVIDIA L40S": "L40S",
    "NVIDIA L4": "L4",
    "NVIDIA L40": "L40",
    "NVIDIA A40": "A40",
    "NVIDIA A10G": "A10G",
    "NVIDIA H200": "H200",
    "NVIDIA B200": "B200",
    "Tesla V100-SXM2-16GB": "V100 16GB",
    "NVIDIA RTX A6000": "RTX A6000",
}


@pytest.mark.parametrize(("name", "expected"), sorted(GPU_NAMES.items()))
def test_gpu_spellings(name: str, expected: str) -> None:
    gpu = find_gpu(name)
    assert gpu is not None and gpu.name == expected


def test_gpu_catalogue_is_complete_and_sane() -> None:
    names = {g.name for g in gpu_catalogue()}
    assert len(names) >= 15
    for g in gpu_catalogue():
        assert 10 < g.memory_gib < 200 and 50 <= g.tflops <= 2500 and g.price_usd_per_h > 0
    assert not find_gpu("T4").bf16 and find_gpu("H100").bf16


def test_memory_terms_follow_the_settings() -> None:
    base = PlanRequest(model="meta-llama/Llama-3.1-8B", methods=("full", "lora", "qlora"))
    report = plan(base)
    full, lora, qlora = (report.option(m) for m in ("full", "lora", "qlora"))
    params = report.model.total_params
    gib = 1024**3
    # bf16 weights, bf16 gradients, two bf16 AdamW states: 2 + 2 + 4 bytes per parameter
    assert full.breakdown["weights"] == pytest.approx(2 * params / gib)
    assert full.breakdown["optimizer"] == pytest.approx(4 * params / gib)
    # NF4 with double quantisation: ~0.516 byte per linear weight, the rest stays bf16
    assert qlora.breakdown["weights"] < 0.4 * lora.breakdown["weights"]
    assert lora.trainable_params == 16 * 32 * (
        2 * (4096 + 4096) + 2 * (4096 + 1024) + 3 * (4096 + 14336)
    )
    assert full.device_peak_gib > lora.device_peak_gib > qlora.device_peak_gib
    # every option's parts add up to its device peak
    for option in report.options:
        assert sum(option.breakdown.values()) == pytest.approx(option.device_peak_gib, rel=1e-6)
        assert option.torch_peak_gib < option.device_peak_gib

    # longer sequences, bigger batches, no checkpointing and eager attention all cost memory
    def peak(**changes: object) -> float:
        return plan(replace(base, methods=("lora",), **changes)).options[0].device_peak_gib

    ref = peak()
    assert peak(seq_len=4096) > ref
    assert peak(micro_batch=4) > ref
    assert peak(grad_ckpt=False) > ref
    assert peak(attn="eager", seq_len=4096) > peak(seq_len=4096)
    assert peak(liger=True, grad_ckpt=False) < peak(grad_ckpt=False)
    assert peak(lora_targets="q,v") < ref
    # DPO puts chosen and rejected through together, and full DPO keeps a reference copy
    dpo = plan(replace(base, trainer="dpo"))
    assert dpo.option("lora").device_peak_gib > lora.device_peak_gib
    assert dpo.option("full").breakdown["reference model"] == pytest.approx(2 * params / gib)
    # sharding divides the weights, gradients and optimizer states over the GPUs
    sharded = plan(replace(base, methods=("full",), num_gpus=4, strategy="fsdp")).options[0]
    assert sharded.breakdown["optimizer"] == pytest.approx(full.breakdown["optimizer"] / 4)
    ddp = plan(replace(base, methods=("full",), num_gpus=4, strategy="ddp")).options[0]
    assert ddp.breakdown["optimizer"] == pytest.approx(full.breakdown["optimizer"])
    assert ddp.breakdown["DDP buckets"] == pytest.approx(full.breakdown["gradients"])
    eight_bit = plan(replace(base, methods=("full",), optimizer="adamw_8bit")).options[0]
    # bitsandbytes: two 1-byte states plus an fp32 absmax per 256, but 32-bit states for the
    # input embedding (the Trainer's override for nn.Embedding); Llama has no tensor under
    # bitsandbytes' 4096-element minimum (its norms have 4096)
    embed = report.model.embedding_params
    expected = 2 * (1 + 4 / 256) * (params - embed) + 8 * embed
    assert eight_bit.breakdown["optimizer"] == pytest.approx(expected / gib, rel=1e-9)


def test_time_and_cost() -> None:
    report = plan(
        PlanRequest(
            model="Qwen/Qwen2.5-7B",
            gpu="A100 80GB",
            examples=10_000,
            avg_tokens=500,
            epochs=2,
            micro_batch=4,
            grad_accum=4,
        )
    )
    assert report.total_tokens == 10_000 * 500 * 2
    for option in report.options:
        assert option.hours == pytest.approx(report.total_tokens / option.tokens_per_s / 3600)
        assert option.cost_usd == pytest.approx(option.hours * 1.79)
        assert option.step_time_s == pytest.approx(16 * 500 / option.tokens_per_s)
    priced = plan(replace(report.request, price_usd_per_h=1.0))
    assert priced.option("lora").cost_usd == pytest.approx(priced.option("lora").hours)


def test_recommendation_and_verified_fixes() -> None:
    report = plan(
        PlanRequest(
            model="meta-llama/Llama-3.1-8B",
            gpu="RTX 4090",
            micro_batch=2,
            grad_accum=8,
            examples=5000,
            avg_tokens=800,
        )
    )
    assert report.recommended == "lora"
    assert "LoRA fits with" in report.reason and "full fine-tuning needs" in report.reason
    if "room for micro-batch" in report.reason:  # a claim the plan must back
        mb = int(report.reason.split("room for micro-batch ")[1].split(")")[0])
        bigger = plan(replace(report.request, methods=("lora",), micro_batch=mb)).options[0]
        assert bigger.fits
        too_big = plan(replace(report.request, methods=("lora",), micro_batch=2 * mb)).options[0]
        assert mb == 8 * report.request.micro_batch or not too_big.fits
    full = report.option("full")
    assert full.fits is False and full.fix is not None
    # the fix is real: planning what it says fits
    assert "4x RTX 4090 with FSDP" in full.fix or "2x RTX 4090 with FSDP" in full.fix
    count = int(full.fix.split("x ")[0])
    mb = int(full.fix.split("micro-batch ")[1].split(" ")[0])
    ga = int(full.fix.split("accumulation ")[1].split(" ")[0].rstrip(":"))
    assert mb * ga * count == 2 * 8  # the effective batch is kept
    fixed = plan(
        replace(
            report.request,
            methods=("full",),
            num_gpus=count,
            strategy="fsdp",
            micro_batch=mb,
            grad_accum=ga,
        )
    )
    assert fixed.options[0].fits
    assert f"{fixed.options[0].device_peak_gib:.1f} GiB per GPU" in full.fix
    # a micro-batch that does not fit gets the same effective batch with accumulation
    tight = plan(
        PlanRequest(
            model="meta-llama/Llama-3.1-8B",
            gpu="RTX 4090",
            methods=("lora",),
            micro_batch=8,
            grad_ckpt=True,
            seq_len=2048,
        )
    )
    option = tight.options[0]
    assert option.fits is False and option.fix.startswith("micro-batch")
    mb = int(option.fix.split("micro-batch ")[1].split(" ")[0])
    ga = int(option.fix.split("accumulation ")[1].split(" ")[0])
    assert mb * ga == 8
    again = plan(replace(tight.request, micro_batch=mb, grad_accum=ga)).options[0]
    assert again.fits and again.device_peak_gib <= 24.0 * (1 - HEADROOM)


def test_no_gpu_gives_estimates_and_the_renting_view() -> None:
    report = plan(PlanRequest(model="meta-llama/Llama-3.1-70B", examples=2000, avg_tokens=1000))
    assert report.gpu is None and report.recommended is None
    assert all(o.fits is None for o in report.options)
    assert {r.method for r in report.renting} == {"full", "lora", "qlora"}
    # 70B full fine-tuning needs several GPUs
    assert all(r.count > 1 for r in report.renting if r.method == "full")
    for rent in report.renting:
        gpu = find_gpu(rent.gpu)
        assert rent.device_peak_gib <= gpu.memory_gib * (1 - HEADROOM)
        # the box is paid from its start: setup and training at its price
        assert rent.cost_usd == pytest.approx(
            (rent.setup_hours + rent.hours) * rent.price_usd_per_h * rent.count
        )
    data = report.to_json()
    assert data["recommended"] is None and len(data["options"]) == 3
    for key in (
        "method",
        "fits",
        "torch_peak_gib",
        "device_peak_gib",
        "breakdown",
        "tokens_per_s",
        "step_time_s",
        "hours",
        "cost_usd",
        "fix",
    ):
        assert key in data["options"][0]
    json.dumps(data)


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        ({"model": "nobody/nothing"}, "not in the built-in catalogue"),
        ({"gpu": "H900"}, "not in the catalogue"),
        ({"seq_len": 0}, "seq_len: must be a positive integer"),
        ({"methods": ("full", "dora")}, "method: 'dora'"),
        ({"optimizer": "adamw_magic"}, "optimizer: 'adamw_magic' is not known"),
        ({"lora_targets": "q,zz"}, "zz not found"),
        ({"precision": "fp8"}, "precision: 'fp8'"),
        ({"gpu_memory_gib": -1.0}, "gpu_memory_gib: must be positive"),
    ],
)
def test_bad_input_is_a_plan_error(changes: dict, text: str) -> None:
    with pytest.raises(PlanError) as err:
        plan(replace(PlanRequest(model="Qwen/Qwen2.5-0.5B"), **changes))
    assert any(text in line for line in err.value.lines)


def test_custom_gpu() -> None:
    report = plan(
        PlanRequest(
            model="Qwen/Qwen2.5-0.5B",
            gpu="My Card",
            gpu_memory_gib=12.0,
            price_usd_per_h=0.2,
            methods=("lora",),
        )
    )
    assert report.gpu.custom and report.gpu.memory_gib == 12.0 and report.recommended == "lora"


def test_every_shipped_preset_plans() -> None:
    for entry in list_presets():
        if entry.preset is None or entry.name == "demo":
            continue
        request = request_from_preset(entry.preset)
        assert request.methods == (entry.preset.method,)
        report = plan(request)
        assert report.options[0].method == entry.preset.method
    preset = load_preset("qlora-llama3.1-8b-24gb")
    request = request_from_preset(preset, gpu="A100 80GB", num_gpus=2, examples=100)
    assert (request.seq_len, request.micro_batch, request.grad_accum) == (2048, 2, 8)
    assert (request.optimizer, request.quant, request.gpu, request.num_gpus) == (
        "paged_adamw_8bit",
        "nf4-dq",
        "A100 80GB",
        2,
    )
    assert request.precision == "bf16" and request.grad_ckpt


def test_plan_is_fast() -> None:
    request = PlanRequest(model="meta-llama/Llama-3.1-8B", gpu="RTX 4090", examples=1000)
    plan(request)
    start = time.perf_counter()
    for _ in range(20):
        plan(request)
    assert (time.perf_counter() - start) / 20 < 0.02


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    code = (
        "import json, sys\n"
        f"sys.argv = ['tunedeck', *{list(args)!r}]\n"
        "from tui.cli import main\n"
        "code = 0\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules]\n"
        "sys.stderr.write('HEAVY=' + json.dumps(heavy) + '\\n')\n"
        "sys.exit(code)\n"
    )
    full_env = {**os.environ, "COLUMNS": "80", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=full_env
    )


def test_plan_command_json_is_light() -> None:
    out = _cli(
        "plan",
        "--model",
        "meta-llama/Llama-3.1-8B",
        "--gpu",
        "A100 40GB",
        "--examples",
        "1000",
        "--avg-tokens",
        "600",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    assert "HEAVY=[]" in out.stderr
    data = json.loads(out.stdout)
    assert data["recommended"] in ("lora", "qlora")
    assert [o["method"] for o in data["options"]] == ["full", "lora", "qlora"]
    assert data["options"][0]["fix"]


def test_plan_command_with_a_preset_and_overrides(tmp_path: Path) -> None:
    dataset = tmp_path / "chat.jsonl"
    dataset.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "x" * 400},
                        {"role": "assistant", "content": "y" * 400},
                    ]
                }
            )
            + "\n"
            for _ in range(50)
        )
    )
    out = _cli(
        "plan",
        "qlora-llama3.1-8b-24gb",
        "--set",
        "training.max_length=1024",
        "--gpu",
        "RTX 4090",
        "--dataset",
        str(dataset),
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "seq 1024" in text and "QLoRA" in text and "fits" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    data = json.loads(
        _cli(
            "plan",
            "qlora-llama3.1-8b-24gb",
            "--method",
            "qlora",
            "--json",
            "--dataset",
            str(dataset),
            "--gpu",
            "RTX 4090",
        ).stdout
    )
    # "user: " + 400 characters of prompt and 400 of answer, / 4 characters a token, 1 epoch
    assert data["total_tokens"] == 50 * round(806 / 4) * 1.0


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["plan", "--model", "nobody/nothing"], "not in the built-in catalogue"),
        (["plan", "--model", "Qwen/Qwen2.5-7B", "--seq-len", "0"], "seq_len"),
        (["plan", "--model", "Qwen/Qwen2.5-7B", "--gpu", "H900"], "not in the catalogue"),
        (["plan", "no-such-preset"], "no-such-preset"),
        (["plan"], "give a model"),
        (["plan", "--model", "Qwen/Qwen2.5-7B", "--seq-len", "long"], "expected a whole number"),
        (["plan", "--model", "Qwen/Qwen2.5-7B", "--frobnicate"], "unrecognized arguments"),
        (["plan", "--model", "Qwen/Qwen2.5-7B", "--dataset", "/nonexistent.jsonl"], "no such file"),
    ],
)
def test_plan_command_bad_input_exits_2(args: list[str], text: str) -> None:
    out = _cli(*args)
    assert out.returncode == 2
    assert text in out.stderr and "Traceback" not in out.stderr


def test_plan_command_help_lists_the_flags() -> None:
    out = _cli("plan", "--help")
    assert out.returncode == 0
    for flag in (
        "--model",
        "--method",
        "--trainer",
        "--gpu",
        "--num-gpus",
        "--strategy",
        "--seq-len",
        "--micro-batch",
        "--grad-accum",
        "--grad-ckpt",
        "--no-grad-ckpt",
        "--attn",
        "--precision",
        "--optimizer",
        "--lora-r",
        "--lora-targets",
        "--quant",
        "--liger",
        "--examples",
        "--avg-tokens",
        "--dataset",
        "--epochs",
        "--price",
        "--set",
        "--json",
    ):
        assert flag in out.stdout, flag


def test_room_for_a_bigger_micro_batch_is_real() -> None:
    request = PlanRequest(model="meta-llama/Llama-3.1-8B", gpu="A100 40GB", micro_batch=2)
    report = plan(request)
    assert report.recommended == "lora"
    mb = int(report.reason.split("room for micro-batch ")[1].split(")")[0])
    assert mb > 2
    assert plan(replace(request, methods=("lora",), micro_batch=mb)).options[0].fits
    if mb < 16:
        assert not plan(replace(request, methods=("lora",), micro_batch=2 * mb)).options[0].fits


def test_download_is_refused_offline_with_a_clear_message() -> None:
    out = _cli("plan", "--model", "someone/not-here", "--download")
    assert out.returncode == 2
    assert "HF_HUB_OFFLINE is set" in out.stderr and "Traceback" not in out.stderr


def test_plan_command_lists_the_catalogues() -> None:
    out = _cli("plan", "--list-models", "--list-gpus", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data["models"]) >= 30 and len(data["gpus"]) >= 15
    assert {"model": "meta-llama/Llama-3.1-8B", "params": 8_030_261_248}.items() <= next(
        m for m in data["models"] if m["model"] == "meta-llama/Llama-3.1-8B"
    ).items()


def test_qlora_of_a_fused_moe_keeps_the_experts_16_bit() -> None:
    report = plan(PlanRequest(model="mistralai/Mixtral-8x7B-v0.1", methods=("lora", "qlora")))
    experts_gib = report.model.expert_params * 2 / 1024**3
    qlora = report.option("qlora")
    assert qlora.breakdown["weights"] > experts_gib
    assert qlora.breakdown["weights"] < report.option("lora").breakdown["weights"]
    assert "fused experts in bf16" in report.reason
