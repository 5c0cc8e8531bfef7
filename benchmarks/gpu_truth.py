"""Ground truth: tunedeck's own training path against the planner, on this machine's GPU.

Real architectures (the planner catalogue's config.json numbers) are built with random
weights, no download, and trained for a few steps through exactly what `tunedeck run`
launches (a run folder, `python -m runner.train RUN_DIR`, detached) on generated data whose
every sequence is exactly `max_length` tokens. Three sections:

- `grid`: method (full where the planner says it fits, LoRA, QLoRA) x micro-batch x sequence
  length x gradient checkpointing x optimizer x SFT/DPO. Per case: torch's
  max_memory_reserved / max_memory_allocated (the run writes them to metrics.jsonl), the
  device's peak in use (NVML, minus what was in use before), step time and tokens/s, beside
  the planner's estimate for the same preset; then the MAPE of each (targets: peaks <= 5 %,
  tokens/s <= 15 %). A case the planner says does not fit is skipped with its reason.
- `presets`: tokens/s of the shipped default LoRA and QLoRA presets against a plain TRL
  script with TRL's defaults, same model, data and machine.
- `sigterm`: SIGTERM in the middle of a LoRA and a QLoRA run: seconds until its checkpoint is
  complete and until the process is gone, then a resume, compared loss by loss with an
  uninterrupted run of the same seed.

Without a CUDA GPU everything that runs on the CPU runs (the demo model and a catalogue model
shrunk to 2 layers); QLoRA and the paged 8-bit optimizer are recorded as skipped ("needs
CUDA"), GPU fields as null, and the host memory of the run as `measured_rss_peak_gib`.

    .venv/bin/python benchmarks/gpu_truth.py --quick            # CPU: about 6 min on 2 cores
    python benchmarks/gpu_truth.py --quick --budget-s 420       # on a GPU box, see gpu_truth.sh
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_truth_measure import GIB, measured_fields, run_preset, tokens_per_step  # noqa: E402
from gpu_truth_sections import (  # noqa: E402
    LORA_PRESET,
    QLORA_PRESET,
    presets_section,
    sigterm_section,
)

from runner.gpu import GpuSource  # noqa: E402

CUDA_MODELS = (
    "Qwen/Qwen2.5-0.5B",
    "meta-llama/Llama-3.2-1B",
    "meta-llama/Llama-3.2-3B",
    "meta-llama/Llama-3.1-8B",
)
DEMO = "demo"
TINY_PREFIX = "tiny:"
CPU_MODELS = (DEMO, TINY_PREFIX + "Qwen/Qwen2.5-0.5B")
TARGETS_PCT = {"torch_peak": 5.0, "device_peak": 5.0, "tokens_per_s": 15.0}
ADAMW = "adamw_torch_fused"
PAGED = "paged_adamw_8bit"


@dataclass(frozen=True)
class Case:
    """One training configuration of the grid."""

    model: str
    method: str
    trainer: str = "sft"
    micro_batch: int = 1
    seq_len: int = 512
    grad_ckpt: bool = True
    optimizer: str = ADAMW

    @property
    def case_id(self) -> str:
        ckpt = "ckpt" if self.grad_ckpt else "no-ckpt"
        return (
            f"{short_name(self.model)}/{self.method}/{self.trainer}/mb{self.micro_batch}/"
            f"seq{self.seq_len}/{ckpt}/{self.optimizer}"
        )


def short_name(model: str) -> str:
    tiny = model.startswith(TINY_PREFIX)
    name = model.removeprefix(TINY_PREFIX).split("/")[-1].lower()
    return f"tiny-{name}" if tiny else name


# ---------------------------------------------------------------- the grid


def grid(models: list[str], size: str, cuda: bool) -> list[Case]:
    """The cases to run: `smoke` (the test's), `quick` (fits a 9-minute GPU lease, or a few
    minutes on two CPU cores), `full` (every axis around a base case, per model and method)."""
    if size == "smoke":
        m = models[0]
        return [Case(m, "lora"), Case(m, "qlora")]
    cases: list[Case] = []
    if size == "quick" and cuda:
        for i, m in enumerate(models):
            cases += [
                Case(m, "lora"),
                Case(m, "lora", micro_batch=4, seq_len=2048, grad_ckpt=False),
                Case(m, "qlora", micro_batch=4, seq_len=2048, optimizer=PAGED),
            ]
            if i < 2:
                cases.append(Case(m, "full", seq_len=2048))
            if i == 0:
                cases += [
                    Case(m, "lora", trainer="dpo"),
                    Case(m, "lora", seq_len=2048, optimizer=PAGED),
                    Case(m, "full", micro_batch=4, grad_ckpt=False),
                ]
        return cases
    if size == "quick":
        for m in models:
            cases += [
                Case(m, "lora"),
                Case(m, "lora", micro_batch=4, grad_ckpt=False),
                Case(m, "lora", seq_len=2048),
                Case(m, "full", micro_batch=4),
                Case(m, "lora", trainer="dpo"),
                Case(m, "qlora"),
                Case(m, "lora", optimizer=PAGED),
            ]
        return cases
    for m in models:
        for method in ("full", "lora", "qlora"):
            cases += [
                Case(m, method),
                Case(m, method, micro_batch=4),
                Case(m, method, seq_len=2048),
                Case(m, method, micro_batch=4, seq_len=2048),
                Case(m, method, grad_ckpt=False),
                Case(m, method, seq_len=2048, grad_ckpt=False),
                Case(m, method, optimizer=PAGED),
                Case(m, method, trainer="dpo"),
                Case(m, method, trainer="dpo", micro_batch=4),
            ]
    return cases


# ---------------------------------------------------------------- context


@dataclass
class Context:
    work: Path
    runs: Path
    cuda: bool
    gpu_name: str | None
    gpu_gib: float | None
    source: GpuSource | None
    env: dict[str, str]
    steps: int
    warmup_steps: int
    timeout_s: float
    deadline: float | None
    built: dict[str, str]
    """Model id -> folder, for models already built."""
    data: dict[tuple[str, int], str]
    """(trainer, tokens) -> JSON Lines file."""

    def over_budget(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


def detect_gpu() -> tuple[GpuSource | None, str | None, float | None]:
    source = GpuSource(with_processes=True)
    snap = source.snapshot()
    if not snap.available or not snap.gpus:
        source.close()
        return None, None, None
    return source, snap.gpus[0].name, snap.gpus[0].memory_total_gib


def build(ctx: Context, models: list[str], datasets: list[tuple[str, int, int]]) -> None:
    """Make the model folders and datasets not made yet (in a separate process)."""
    todo_models = []
    for model in models:
        if model in ctx.built:
            continue
        if model == DEMO:
            continue  # the builder makes the demo first (its tokenizer serves every model)
        folder = ctx.work / "models" / short_name(model)
        todo_models.append(
            {
                "id": model.removeprefix(TINY_PREFIX),
                "folder": str(folder),
                "tiny": model.startswith(TINY_PREFIX),
            }
        )
    todo_data = []
    for trainer, tokens, rows in datasets:
        if (trainer, tokens) in ctx.data:
            continue
        path = ctx.work / "data" / f"{trainer}-{tokens}.jsonl"
        todo_data.append({"path": str(path), "trainer": trainer, "tokens": tokens, "rows": rows})
    if not todo_models and not todo_data and (DEMO not in models or DEMO in ctx.built):
        return
    spec = ctx.work / f"build-{time.time_ns()}.json"
    spec.write_text(json.dumps({"models": todo_models, "datasets": todo_data}))
    script = Path(__file__).resolve().parent / "gpu_truth_build.py"
    out = subprocess.run(
        [sys.executable, str(script), str(spec)],
        capture_output=True,
        text=True,
        env=ctx.env,
        timeout=1800,
    )
    if out.returncode != 0:
        raise SystemExit(f"building models/data failed:\n{out.stdout}\n{out.stderr[-3000:]}")
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            item = json.loads(line)
            if "folder" in item:
                key = (TINY_PREFIX if item["tiny"] else "") + item["model"]
                ctx.built[key] = item["folder"]
                print(f"  built {key}: {item['params'] / 1e6:,.1f} M params in {item['build_s']} s")
            else:
                ctx.data[(item["trainer"], item["tokens"])] = item["dataset"]
    if DEMO in models:
        from runner.demo import demo_dir

        ctx.built[DEMO] = str(demo_dir() / "model")


# ---------------------------------------------------------------- presets and the planner


def case_preset(ctx: Context, case: Case, name: str) -> Any:
    from presets.store import validate

    init: dict[str, Any] = {"attn_implementation": "sdpa"}
    if case.method == "full":
        # Said explicitly: the runner loads a full fine-tune in fp32 under bf16 autocast, and
        # the planner reads that precision from the preset (see docs/benchmarks/gpu.md).
        init["dtype"] = "float32"
    training: dict[str, Any] = {
        "max_steps": ctx.steps,
        "per_device_train_batch_size": case.micro_batch,
        "gradient_accumulation_steps": 1,
        "max_length": case.seq_len,
        "gradient_checkpointing": case.grad_ckpt,
        "optim": case.optimizer,
        "bf16": True,  # dropped by the runner on a CPU, which trains in fp32
        "learning_rate": 1e-4 if case.method != "full" else 1e-5,
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "seed": 42,
        "model_init_kwargs": init,
    }
    data = {
        "name": name,
        "model": ctx.built[case.model],
        "dataset": {"path": ctx.data[(case.trainer, case.seq_len)]},
        "trainer": case.trainer,
        "method": case.method,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "training": training,
    }
    return validate(data, f"gpu_truth case {case.case_id}")


def planned_fields(ctx: Context, preset: Any, tokens: int) -> dict[str, Any]:
    """The planner's estimate for the preset as `tunedeck run` plans it, on this GPU."""
    from planner import plan, request_from_preset
    from planner.arch import load_model, parse_targets
    from planner.core import _settings
    from planner.memory import estimate_memory

    request = request_from_preset(
        preset, gpu=ctx.gpu_name, gpu_memory_gib=ctx.gpu_gib, avg_tokens=tokens
    )
    report = plan(request)
    option = report.option(preset.method)
    assert option is not None
    mem = estimate_memory(
        load_model(request.model),
        _settings(request, preset.method, parse_targets(request.lora_targets)),
    )
    return {
        "planned_torch_peak_gib": round(option.torch_peak_gib, 3),
        "planned_allocated_peak_gib": round(mem.allocated_peak_bytes / GIB, 3),
        "planned_device_peak_gib": round(option.device_peak_gib, 3),
        # The planner models GPUs only: no speed figure for a CPU run.
        "planned_tokens_per_s": round(option.tokens_per_s, 1) if ctx.cuda else None,
        "planned_step_time_s": round(option.step_time_s, 4) if ctx.cuda else None,
        "planned_fits": option.fits,
        "planned_fix": option.fix,
        "planner_precision": request.precision,
    }


def needs_cuda(method: str, optimizer: str) -> bool:
    return method == "qlora" or "8bit" in optimizer or optimizer.startswith("paged_")


def pct_error(planned: float | None, measured: float | None) -> float | None:
    if planned is None or measured is None or measured <= 0:
        return None
    return round(100 * (planned - measured) / measured, 1)


def run_case(ctx: Context, case: Case, index: int) -> dict[str, Any]:
    row: dict[str, Any] = {"id": case.case_id, **asdict(case), "max_steps": ctx.steps}
    if not ctx.cuda and needs_cuda(case.method, case.optimizer):
        return {**row, "status": "skipped", "reason": "needs CUDA (bitsandbytes)"}
    if ctx.over_budget():
        return {**row, "status": "skipped", "reason": "time budget spent"}
    build(ctx, [case.model], [(case.trainer, case.seq_len, rows_needed(ctx, case))])
    preset = case_preset(ctx, case, f"truth-{index:03d}")
    try:
        planned = planned_fields(ctx, preset, case.seq_len)
    except Exception as exc:  # a plan refused is a finding of this case, not a crash
        return {**row, "status": "skipped", "reason": f"planner: {exc}"}
    row.update(planned)
    if planned["planned_fits"] is False:
        reason = (
            f"planner: needs {planned['planned_device_peak_gib']:.1f} GiB, the GPU has "
            f"{ctx.gpu_gib:.1f}; fix: {planned['planned_fix']}"
        )
        return {**row, "status": "skipped", "reason": reason}
    from runner.runs import RunError

    try:
        run = run_preset(ctx.runs, preset, preset.name, ctx.steps, ctx.source, ctx.timeout_s)
    except RunError as exc:
        return {**row, "status": "failed", "reason": "; ".join(exc.lines)}
    tokens = tokens_per_step(case.trainer, case.micro_batch, 1, case.seq_len)
    row.update(measured_fields(run, ctx.warmup_steps, tokens))
    row["status"] = "ok" if run.outcome in ("measured", "completed") else "failed"
    if run.failure:
        row["reason"] = f"{run.outcome}: {run.failure}"
    row["error_torch_peak_pct"] = pct_error(
        row["planned_torch_peak_gib"], row["measured_torch_peak_gib"]
    )
    row["error_allocated_peak_pct"] = pct_error(
        row["planned_allocated_peak_gib"], row["measured_allocated_peak_gib"]
    )
    row["error_device_peak_pct"] = pct_error(
        row["planned_device_peak_gib"], row["measured_device_peak_gib"]
    )
    row["error_tokens_per_s_pct"] = pct_error(
        row["planned_tokens_per_s"], row["measured_tokens_per_s"]
    )
    shutil.rmtree(run.run_dir / "checkpoints", ignore_errors=True)
    return row


def rows_needed(ctx: Context, case: Case) -> int:
    return max(16, ctx.steps * case.micro_batch + 8)


def mape(cases: list[dict[str, Any]], key: str) -> tuple[float | None, int]:
    errors = [abs(c[key]) for c in cases if c.get("status") == "ok" and c.get(key) is not None]
    return (round(statistics.fmean(errors), 1) if errors else None), len(errors)


def grid_summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, key in (
        ("torch_peak", "error_torch_peak_pct"),
        ("allocated_peak", "error_allocated_peak_pct"),
        ("device_peak", "error_device_peak_pct"),
        ("tokens_per_s", "error_tokens_per_s_pct"),
    ):
        value, count = mape(cases, key)
        target = TARGETS_PCT.get(name)
        out[f"mape_{name}_pct"] = value
        out[f"mape_{name}_cases"] = count
        if target is not None:
            out[f"target_{name}_pct"] = target
            out[f"meets_{name}"] = None if value is None else value <= target
    out["cases_ok"] = sum(1 for c in cases if c.get("status") == "ok")
    out["cases_skipped"] = sum(1 for c in cases if c.get("status") == "skipped")
    out["cases_failed"] = sum(1 for c in cases if c.get("status") == "failed")
    return out


# ---------------------------------------------------------------- report


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in load] if load else None,
    }


def gpu_slug(name: str | None) -> str:
    if name is None:
        return "cpu"
    from planner.gpus import find_gpu

    spec = find_gpu(name)
    text = (spec.name if spec else name).lower()
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def print_grid(cases: list[dict[str, Any]], summary: dict[str, Any], cuda: bool) -> None:
    def num(value: Any, fmt: str) -> str:
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    print()
    print(
        f"{'case':58s} {'torch':>6s} {'plan':>6s} {'device':>6s} {'plan':>6s} "
        f"{'tok/s':>8s} {'plan':>8s} {'rss':>5s}"
    )
    for c in cases:
        if c.get("status") != "ok":
            print(f"{c['id']:58s} {c.get('status')}: {c.get('reason', '')}"[:160])
            continue
        print(
            f"{c['id']:58s} {num(c.get('measured_torch_peak_gib'), '6.2f')} "
            f"{num(c.get('planned_torch_peak_gib'), '6.2f')} "
            f"{num(c.get('measured_device_peak_gib'), '6.2f')} "
            f"{num(c.get('planned_device_peak_gib'), '6.2f')} "
            f"{num(c.get('measured_tokens_per_s'), '8.0f')} "
            f"{num(c.get('planned_tokens_per_s'), '8.0f')} "
            f"{num(c.get('measured_rss_peak_gib'), '5.2f')}"
        )
    print()
    for name in ("torch_peak", "allocated_peak", "device_peak", "tokens_per_s"):
        value = summary.get(f"mape_{name}_pct")
        target = summary.get(f"target_{name}_pct")
        count = summary.get(f"mape_{name}_cases")
        if value is None:
            why = "needs a CUDA GPU" if not cuda else "no case measured"
            print(f"MAPE {name}: n/a ({why})")
        else:
            verdict = "" if target is None else f" (target <= {target:g} %)"
            print(f"MAPE {name}: {value:.1f} % over {count} cases{verdict}")


def write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated catalogue hub ids; `demo` and "
                        "`tiny:<hub id>` also work (default: four real models on CUDA, the demo "
                        "and a shrunk Qwen2.5-0.5B on a CPU)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a small grid")
    parser.add_argument("--smoke", action="store_true", help="the smallest run (the test's)")
    parser.add_argument("--out", type=Path, help="results file (default "
                        "benchmarks/results/gpu_truth_<gpu>.json)")  # fmt: skip
    parser.add_argument("--out-dir", type=Path, help="folder for the results file, under its "
                        "default name")  # fmt: skip
    parser.add_argument("--sections", default="grid,presets,sigterm")
    parser.add_argument("--steps", type=int, help="optimizer steps per grid case")
    parser.add_argument("--budget-s", type=float, help="start no new case after this many seconds")
    parser.add_argument("--work", type=Path, help="folder for models, data and runs "
                        "(default: a temporary one, removed at the end)")  # fmt: skip
    parser.add_argument("--summarise", type=Path, nargs="+", metavar="RESULTS",
                        help="print the grid and MAPE over results files (several leases' "
                        "runs together) and exit")  # fmt: skip
    opts = parser.parse_args(argv)
    if opts.summarise:
        return summarise(opts.summarise)
    started = time.monotonic()
    sections = [s.strip() for s in opts.sections.split(",") if s.strip()]
    unknown = set(sections) - {"grid", "presets", "sigterm"}
    if unknown:
        parser.error(f"--sections: unknown {', '.join(sorted(unknown))}")
    source, gpu_name, gpu_gib = detect_gpu()
    cuda = source is not None
    models = opts.models.split(",") if opts.models else list(CUDA_MODELS if cuda else CPU_MODELS)
    size = "smoke" if opts.smoke else "quick" if opts.quick else "full"
    steps = opts.steps or (4 if size == "smoke" else 8 if cuda else 6)
    work = opts.work or Path(tempfile.mkdtemp(prefix="gpu-truth-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")})
    ctx = Context(
        work=work,
        runs=work / "runs",
        cuda=cuda,
        gpu_name=gpu_name,
        gpu_gib=gpu_gib,
        source=source,
        env=env,
        steps=steps,
        warmup_steps=1 if size == "smoke" else 2,
        timeout_s=600 if cuda else 300,
        deadline=started + opts.budget_s if opts.budget_s else None,
        built={},
        data={},
    )
    out_dir = opts.out_dir or ROOT / "benchmarks" / "results"
    out_path = opts.out or out_dir / f"gpu_truth_{gpu_slug(gpu_name)}.json"
    result: dict[str, Any] = {
        "gpu": gpu_name or "cpu",
        "gpu_memory_gib": None if gpu_gib is None else round(gpu_gib, 2),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "versions": versions(),
        "grid": size,
        "models": models,
        "steps_per_case": steps,
        "warmup_steps": ctx.warmup_steps,
        "notes": notes(cuda, models),
        "cases": [],
    }
    print(f"gpu_truth: {gpu_name or 'no CUDA GPU: CPU run'}; grid {size}; models {models}")
    if not cuda:
        print("  on a CPU: the demo model and catalogue models shrunk to 2 layers, hidden 128, "
              "vocabulary 4096; QLoRA and paged optimizers skipped (need CUDA)")  # fmt: skip
    try:
        for section in sections:
            if section == "grid":
                cases = grid(models, size, cuda)
                print(f"grid: {len(cases)} cases, {steps} steps each")
                for i, case in enumerate(cases):
                    row = run_case(ctx, case, i)
                    result["cases"].append(row)
                    print(f"  {row['id']}: {row['status']} {_brief(row)}", flush=True)
                    result["summary"] = grid_summary(result["cases"])
                    write(out_path, result)
                print_grid(result["cases"], result["summary"], cuda)
            elif section == "presets":
                model = models[0] if not cuda or size != "full" else "meta-llama/Llama-3.1-8B"
                print(f"presets: {LORA_PRESET} and {QLORA_PRESET} vs plain TRL on {model}")
                result["presets"] = presets_section(ctx, model, build, smoke=size == "smoke")
                for entry in result["presets"]["results"]:
                    print(f"  {entry['preset']}: {entry['status']} ratio "
                          f"{entry.get('tokens_per_s_ratio')} {entry.get('reason', '')}")  # fmt: skip
            elif section == "sigterm":
                model = DEMO if not cuda else models[0]
                print(f"sigterm: LoRA and QLoRA on {model}")
                result["sigterm"] = sigterm_section(ctx, model, build, smoke=size == "smoke")
                for entry in result["sigterm"]["results"]:
                    print(f"  {entry['method']}: {entry['status']} "
                          f"checkpoint {entry.get('checkpoint_s')} s, exit {entry.get('exit_s')} s, "
                          f"largest loss difference {entry.get('max_abs_loss_diff')} "
                          f"{entry.get('reason', '')}")  # fmt: skip
            result["machine"] = machine()
            result["elapsed_s"] = round(time.monotonic() - started, 1)
            write(out_path, result)
    finally:
        if source is not None:
            source.close()
        if opts.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out_path} in {time.monotonic() - started:.0f} s")
    return 0


def summarise(paths: list[Path]) -> int:
    """The grid table and MAPE over the cases of several results files."""
    cases: list[dict[str, Any]] = []
    gpus = set()
    for path in paths:
        data = json.loads(path.read_text())
        gpus.add(data["gpu"])
        cases += data.get("cases", [])
    summary = grid_summary(cases)
    print(f"{len(paths)} files, GPU {', '.join(sorted(gpus))}, {len(cases)} cases")
    print_grid(cases, summary, cuda=gpus != {"cpu"})
    return 0


def _brief(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return row.get("reason", "")
    parts = [f"{row.get('measured_tokens_per_s')} tok/s"]
    if row.get("measured_torch_peak_gib") is not None:
        parts.append(
            f"torch {row['measured_torch_peak_gib']} GiB (plan {row['planned_torch_peak_gib']})"
        )
    if row.get("measured_device_peak_gib") is not None:
        parts.append(
            f"device {row['measured_device_peak_gib']} GiB (plan {row['planned_device_peak_gib']})"
        )
    parts.append(f"rss {row.get('measured_rss_peak_gib')} GiB")
    return ", ".join(parts)


def notes(cuda: bool, models: list[str]) -> list[str]:
    out = [
        "Every case runs tunedeck's own path: a run folder and `python -m runner.train RUN_DIR`, "
        "launched detached by runner.launch.launch as `tunedeck run` does; the process is ended "
        "after its last step is logged (the final save is not measured).",
        "Data: generated rows longer than max_length, so every sequence is exactly max_length "
        "tokens (tokens_per_step = micro-batch x accumulation x max_length, x2 for DPO).",
        "measured_torch_peak_gib / measured_allocated_peak_gib: torch.cuda.max_memory_reserved / "
        "max_memory_allocated, written by the run to metrics.jsonl; measured_device_peak_gib: "
        "NVML used memory of GPU 0 at its peak minus before the run (includes the CUDA context).",
        "Planned figures: planner.plan(request_from_preset(preset, gpu, gpu_memory)), what "
        "`tunedeck run` plans for the same preset.",
    ]
    if not cuda:
        out.append(
            "CPU run: no CUDA GPU. GPU fields are null; measured_rss_peak_gib is the resident "
            "host memory of the training process; the planned peaks are for a GPU with the same "
            "preset (bf16) and are not comparable with the CPU run's host memory; the planner "
            "has no CPU speed model (planned_tokens_per_s null)."
        )
    if any(m.startswith(TINY_PREFIX) for m in models):
        out.append(
            "tiny:<model>: the catalogue config shrunk to 2 layers, hidden 128, 4 heads (2 KV), "
            "intermediate 256, vocabulary 4096, random weights."
        )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
