"""Ground truth for the planner's memory estimates, from tunedeck's own training stack, on the
CPU, without the memory.

Each configuration of the grid is built the way `tunedeck run` builds it, at full size on the
meta device (`planner_truth_step`), and trains two real steps (TRL's loss path, backward,
gradient clipping, the optimizer the preset names) while a `TorchDispatchMode` counts the live
bytes of every tensor by storage (`planner_truth_count`), with CUDA's kernels and autocast
stood in where meta tensors would run differently (`planner_truth_cuda`). The measured peak is
the one `torch.cuda.max_memory_allocated` reports; the CUDA context and the caching allocator's
slack are not in it (no CPU can show them) and stay separate terms of the plan. The planner is
asked the way `tunedeck plan` asks it for that preset.

    python benchmarks/planner_truth.py run [--grid quick|full] [--workers 2]
    python benchmarks/planner_truth.py summary [--markdown]
    python benchmarks/planner_truth.py check          # the counter against the CPU allocator

`run` writes each result into `benchmarks/results/planner_truth.json` as soon as it exists
(held-out architectures into `planner_truth_holdout.json`); `summary` plans every case again
with the current planner and prints the error of the allocated peak and of each component.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.planner_truth_case import GIB, Case  # noqa: E402
from benchmarks.planner_truth_grid import HOLDOUT, grid  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RESULTS_FILE = RESULTS / "planner_truth.json"
HOLDOUT_FILE = RESULTS / "planner_truth_holdout.json"
METHOD = {
    "measurement": "meta-device model at full size built as runner.train_build builds it; "
    "TRL's trainer; two steps through Trainer.training_step, gradient clipping and the "
    "optimizer; live tensor bytes by storage (benchmarks/planner_truth_count.py)",
    "cuda_stand_ins": "bf16 autocast with torch's CUDA cast lists (above autograd, weight "
    "cache); SDPA flash kernel, memory-efficient kernel with a mask; fused dropout's 1-byte "
    "mask; TRL's Triton LM-head kernels and fp32-output GEMM; bitsandbytes' paged states "
    "outside the pool; foreach AdamW (benchmarks/planner_truth_cuda.py)",
    "qlora": "bitsandbytes' 4-bit ops have meta implementations, so QLoRA is measured like "
    "the rest at full depth on the meta device: Linear4bit layers made the way transformers' "
    "bitsandbytes loader makes them (Params4bit._quantize). Checked against real tensors: a "
    "real from_pretrained(..., quantization_config=...) on the CPU at the demo's size and at "
    "Qwen2.5-0.5B's full width with two layers counts the same bytes as the meta build "
    "(benchmarks/results/planner_truth_counter.json); layers are identical, so depth adds the "
    "same bytes per layer",
    "batches": "unpadded: every row exactly seq_len tokens",
    "peak": "max_memory_allocated level: no CUDA context, no caching-allocator slack",
}
# Components the planner and the measurement both name (planner key -> measured key).
COMPARABLE = {
    "weights": "weights",
    "reference model": "reference model",
    "adapters": "adapters",
    "gradients": "gradients",
    "optimizer": "optimizer states",
}


def _case_from_json(data: dict[str, Any]) -> Case:
    data = dict(data)
    data["lora_targets"] = tuple(data["lora_targets"])
    data["overrides"] = tuple(sorted(data.get("overrides", {}).items()))
    return Case(**data)


# --------------------------------------------------------------------- measuring


def measure_one(case: Case, tokenizer: Any) -> dict[str, Any]:
    """Measure one case and plan it; a case the stack cannot train is recorded as such."""
    from benchmarks.planner_truth_case import planned
    from benchmarks.planner_truth_step import measure

    result: dict[str, Any] = {"name": case.name, "case": case.to_json()}
    try:
        m = measure(case, "meta", tokenizer)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        result["error"] = f"{type(exc).__name__}: {first}"[:400]
        return result
    t = m.tally
    result["measured"] = {
        "allocated_peak_gib": t.peak_bytes / GIB,
        "peak_region": t.peak_region,
        "region_peak_gib": {k: v / GIB for k, v in t.region_peak_bytes.items()},
        "at_peak_gib": {k: v / GIB for k, v in t.at_peak_bytes.items() if v},
        "component_peak_gib": {k: v / GIB for k, v in t.component_peak_bytes.items() if v},
        "params": m.params,
        "trainable_params": m.trainable_params,
        "seconds": round(m.seconds, 1),
    }
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result["planned"] = planned(case, Path(tmp) / "model")
    return result


def _worker(cases_file: Path) -> int:
    """Measure the cases listed in a file, one JSON line per case on stdout."""
    import warnings

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from runner.demo import ensure_demo

    warnings.simplefilter("ignore")
    hf_logging.set_verbosity_error()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(ensure_demo() / "model")
    for item in json.loads(cases_file.read_text()):
        result = measure_one(_case_from_json(item), tokenizer)
        print("RESULT " + json.dumps(result), flush=True)
    return 0


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes")
    return {name: version(name) for name in names}


def _write(path: Path, header: dict[str, Any], results: list[dict[str, Any]]) -> None:
    data = {**header, "cases": sorted(results, key=lambda r: r["name"])}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def run(grid_name: str, workers: int, only: str | None) -> int:
    """Measure the grid, `workers` processes at a time, each result written as it comes."""
    cases = grid(grid_name)
    if only:
        cases = [c for c in cases if only in c.name]
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = {
        "what": "peak allocated memory of one training process, measured on the meta device "
        "through tunedeck's training stack (benchmarks/planner_truth.py), and the planner's "
        "estimate for the same preset",
        "grid": grid_name,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, no GPU",
        "versions": _versions(),
        "method": METHOD,
    }
    # Results of earlier runs are kept unless measured again (a subset can be re-run).
    found: dict[Path, list[dict[str, Any]]] = {}
    names = {c.name for c in cases}
    for path in (RESULTS_FILE, HOLDOUT_FILE):
        old = json.loads(path.read_text())["cases"] if path.exists() else []
        found[path] = [r for r in old if r["name"] not in names]
    chunks = [cases[i::workers] for i in range(workers)]
    procs = []
    import tempfile

    tmpdir = Path(tempfile.mkdtemp(prefix="planner-truth-"))
    started = time.monotonic()
    for i, chunk in enumerate(chunks):
        if not chunk:
            continue
        listing = tmpdir / f"cases-{i}.json"
        listing.write_text(json.dumps([c.to_json() for c in chunk]))
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "worker", str(listing)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
            )
        )
    done = 0
    import selectors

    selector = selectors.DefaultSelector()
    for proc in procs:
        assert proc.stdout is not None
        selector.register(proc.stdout, selectors.EVENT_READ)
    open_streams = len(procs)
    while open_streams:
        for key, _ in selector.select():
            line = key.fileobj.readline()  # type: ignore[union-attr]
            if not line:
                selector.unregister(key.fileobj)
                open_streams -= 1
                continue
            if not line.startswith("RESULT "):
                continue
            result = json.loads(line[len("RESULT ") :])
            target = HOLDOUT_FILE if result["case"]["model"] in HOLDOUT else RESULTS_FILE
            found[target] = [r for r in found[target] if r["name"] != result["name"]]
            found[target].append(result)
            _write(target, header, found[target])
            done += 1
            elapsed = time.monotonic() - started
            status = result.get("error") or f"{result['measured']['allocated_peak_gib']:.2f} GiB"
            if target == HOLDOUT_FILE:
                status = "held out" if "error" not in result else "held out, failed"
            print(f"[{done}/{len(cases)} {elapsed:5.0f}s] {result['name']}: {status}", flush=True)
    for proc in procs:
        proc.wait()
    print(f"{done} cases in {time.monotonic() - started:.0f} s")
    return 0


# --------------------------------------------------------------------- comparing


def _replan(result: dict[str, Any]) -> dict[str, float]:
    """The current planner's estimate for a measured case."""
    import tempfile

    from benchmarks.planner_truth_case import planned

    with tempfile.TemporaryDirectory() as tmp:
        return planned(_case_from_json(result["case"]), Path(tmp) / "model")


def _error(estimate: float, measured: float) -> float:
    return (estimate - measured) / measured


def compare(results: list[dict[str, Any]], replan: bool = True) -> dict[str, Any]:
    """Per case: the error of the allocated peak and of each comparable component; overall:
    MAPE, worst case, per method."""
    rows = []
    for r in results:
        if "measured" not in r:
            continue
        plan = _replan(r) if replan else r["planned"]
        measured = r["measured"]
        comp = measured["component_peak_gib"]
        row = {
            "name": r["name"],
            "method": r["case"]["method"],
            "trainer": r["case"]["trainer"],
            "model": r["case"]["model"],
            "measured_gib": measured["allocated_peak_gib"],
            "planned_gib": plan["allocated"],
            "error": _error(plan["allocated"], measured["allocated_peak_gib"]),
            "components": {},
        }
        for planner_key, measured_key in COMPARABLE.items():
            m = comp.get(measured_key, 0.0)
            if planner_key == "optimizer":
                m += comp.get("paged optimizer states", 0.0)
            p = plan.get(planner_key, 0.0)
            if m > 1e-6 or p > 1e-6:
                row["components"][planner_key] = (p, m)
        static = sum(measured["at_peak_gib"].get(k, 0.0) for k in COMPARABLE.values())
        row["dynamic_measured_gib"] = measured["allocated_peak_gib"] - static
        rows.append(row)
    return {"rows": rows, "summary": _summarise(rows)}


def _mape(errors: list[float]) -> float:
    return 100 * statistics.fmean(abs(e) for e in errors) if errors else float("nan")


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"cases": len(rows)}
    out["mape"] = _mape([r["error"] for r in rows])
    if rows:
        worst = max(rows, key=lambda r: abs(r["error"]))
        out["worst"] = {"name": worst["name"], "error_percent": 100 * worst["error"]}
    out["within_8_percent"] = sum(1 for r in rows if abs(r["error"]) <= 0.08)
    by: dict[str, dict[str, float]] = {}
    for key in ("method", "trainer"):
        for value in sorted({r[key] for r in rows}):
            errors = [r["error"] for r in rows if r[key] == value]
            by[f"{key}={value}"] = {"cases": len(errors), "mape": _mape(errors)}
    out["by"] = by
    components: dict[str, dict[str, float]] = {}
    for key in COMPARABLE:
        pairs = [r["components"][key] for r in rows if key in r["components"]]
        errors = [_error(p, m) for p, m in pairs if m > 1e-6]
        if errors:
            components[key] = {
                "cases": len(errors),
                "mape": _mape(errors),
                "worst_percent": 100 * max(errors, key=abs),
            }
    out["components"] = components
    return out


def markdown_summary(report: dict[str, Any], failed: list[dict[str, Any]]) -> str:
    """The summary as Markdown tables: overall, per method and trainer, per component."""
    s = report["summary"]
    lines = [
        "| cases | MAPE | within 8 % | worst case | worst error |",
        "|---:|---:|---:|---|---:|",
        f"| {s['cases']} | {s['mape']:.1f} % | {s['within_8_percent']} "
        f"| {s['worst']['name']} | {s['worst']['error_percent']:+.1f} % |",
        "",
        "| group | cases | MAPE |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {v['cases']} | {v['mape']:.1f} % |" for k, v in s["by"].items()]
    lines += ["", "| component | cases | MAPE | worst |", "|---|---:|---:|---:|"]
    lines += [
        f"| {k} | {v['cases']} | {v['mape']:.1f} % | {v['worst_percent']:+.1f} % |"
        for k, v in s["components"].items()
    ]
    if failed:
        lines += ["", f"Not trainable as configured ({len(failed)}):", ""]
        reasons: dict[str, list[str]] = {}
        for r in failed:
            reasons.setdefault(r["error"].split(".")[0][:140], []).append(r["name"])
        lines += [f"- {len(names)} x {reason}" for reason, names in reasons.items()]
    return "\n".join(lines)


def summary(
    markdown: bool, holdout: bool, replan: bool, cases: bool, path: Path | None = None
) -> int:
    path = path or (HOLDOUT_FILE if holdout else RESULTS_FILE)
    data = json.loads(path.read_text())
    report = compare(data["cases"], replan=replan)
    failed = [r for r in data["cases"] if "error" in r]
    if cases:
        print("| case | measured GiB | planned GiB | error |")
        print("|---|---:|---:|---:|")
        for r in sorted(report["rows"], key=lambda r: -abs(r["error"])):
            print(
                f"| {r['name']} | {r['measured_gib']:.2f} | {r['planned_gib']:.2f} "
                f"| {100 * r['error']:+.1f} % |"
            )
    if markdown:
        print(markdown_summary(report, failed))
    else:
        print(json.dumps(report["summary"], indent=1))
        for r in failed:
            print(f"not trainable: {r['name']}: {r['error'][:160]}")
    return 0


def check() -> int:
    """The counter against the CPU allocator (see planner_truth_check)."""
    from benchmarks.planner_truth_check import check_counter
    from benchmarks.planner_truth_grid import counter_checks

    out = []
    for case, autocast in counter_checks():
        result = check_counter(case, cpu_autocast=autocast)
        row = {"name": case.name, "cpu_autocast": autocast, **result.to_json()}
        out.append(row)
        print(json.dumps(row), flush=True)
    (RESULTS / "planner_truth_counter.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("--grid", default="full", choices=("quick", "full"))
    p_run.add_argument("--workers", type=int, default=2)
    p_run.add_argument("--only", default=None, help="only cases whose name contains this")
    p_sum = sub.add_parser("summary")
    p_sum.add_argument("--markdown", action="store_true", help="Markdown tables")
    p_sum.add_argument("--cases", action="store_true", help="every case, worst first")
    p_sum.add_argument("--holdout", action="store_true")
    p_sum.add_argument("--as-measured", action="store_true", help="the estimates stored then")
    p_sum.add_argument("--file", type=Path, default=None, help="another results file")
    sub.add_parser("check")
    p_worker = sub.add_parser("worker")
    p_worker.add_argument("cases", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.grid, args.workers, args.only)
    if args.command == "summary":
        return summary(args.markdown, args.holdout, not args.as_measured, args.cases, args.file)
    if args.command == "check":
        return check()
    return _worker(args.cases)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
