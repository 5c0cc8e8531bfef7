"""The probe, for real on the CPU: `tunedeck probe` and `tunedeck run --probe` as subprocesses over
the demo model, the real trainer and real files; an out-of-memory through the probe's memory cap
(the CPU stand-in for a smaller card); the extrapolation of the largest micro-batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runner.gpu import GpuSource
from runner.probe import PROBE_FILE, PROBE_SUBDIR
from runner.probe_verdict import GIB, max_micro_batch

# Rows whose conversations are much longer than the demo's, at known places in the file.
LONG_ROWS = {57: 1, 143: 2, 201: 3, 288: 9}  # row -> times the sentence is repeated
SENTENCE = "the quick brown horse jumps over the river stone "


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TUNEDECK_RUNS"}
    env.update(TUNEDECK_HOME=str(home), COLUMNS="120")
    return env


def _cli(home: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        capture_output=True,
        text=True,
        env=_env(home),
        timeout=timeout,
    )


def _lengths(model_dir: Path, rows: list[dict[str, Any]], max_length: int) -> list[int]:
    """Each row's tokens as the tokenizer and its chat template give them, truncated."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return [
        min(
            max_length,
            len(
                tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)[
                    "input_ids"
                ]
            ),
        )
        for r in rows
    ]


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> dict[str, Any]:
    """One real `tunedeck probe demo --json` over the demo chat set with a few long rows put in
    at known places, judged against an 80 GiB card."""
    home = tmp_path_factory.mktemp("probe-home")
    (home / "data").mkdir()
    (home / "data" / "demo").symlink_to(demo_dir, target_is_directory=True)
    rows = [json.loads(line) for line in (demo_dir / "chat.jsonl").read_text().splitlines()]
    for row, times in LONG_ROWS.items():
        rows[row] = {
            "messages": [
                {"role": "user", "content": f"Say it {times} times."},
                {"role": "assistant", "content": SENTENCE * times},
            ]
        }
    data = home / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = _cli(
        home, "probe", "demo", "--set", f"dataset.path={data}", "--gpu-memory-gib", "80", "--json"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    return {
        "home": home,
        "rows": rows,
        "result": json.loads(out.stdout),
        "lengths": _lengths(demo_dir / "model", rows, 128),
    }


def test_probe_json_has_the_measured_figures_beside_the_planned_ones(probed: dict) -> None:
    result = probed["result"]
    assert result["device"] == "cpu" and result["device_kind"] == "cpu"
    for key in ("measured_peak_gib", "tokens_per_s", "step_time_s", "micro_step_time_s"):
        assert isinstance(result[key], float) and result[key] > 0, key
    for key in ("planned_peak_gib", "planned_tokens_per_s", "planned_step_time_s"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert "live-tensor count" in result["peak_source"]
    assert result["timed_steps"] == 3  # 4 steps, the warm-up one left out
    # The preset's micro-batch ran first and held more than micro-batch 1 did.
    own, small = result["phases"]
    assert (own["micro_batch"], small["micro_batch"]) == (4, 1)
    assert own["ok"] and small["ok"]
    assert own["torch_allocated_gib"] > small["torch_allocated_gib"] > 0
    assert result["measured_peak_gib"] == own["peak_gib"]
    # tokens/s is what the timed steps did: their tokens over their time.
    timed_tokens = sum(own["batch_tokens"][1:])
    assert result["tokens_per_s"] == pytest.approx(
        timed_tokens / sum(own["step_times_s"]), rel=1e-3
    )
    # probe.json in a run-like folder, the same as what was printed, with its train.log.
    folder = Path(result["probe_dir"])
    assert folder.parent == probed["home"] / "runs"
    assert json.loads((folder / PROBE_FILE).read_text()) == result
    log = (folder / "train.log").read_text()
    assert "tunedeck: probe: done" in log and "tunedeck: probe: micro-batch 4" in log
    assert not (folder / "state.json").exists()  # not a run: `tunedeck runs` leaves it out


def test_the_first_batch_holds_the_longest_examples(probed: dict) -> None:
    result, lengths = probed["result"], probed["lengths"]
    first = result["first_batch"]
    longest_first = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    assert first["micro_batch"] == 4
    assert first["rows"] == longest_first[:4] == [288, 201, 143, 57]
    assert first["tokens"] == [lengths[i] for i in first["rows"]]
    assert first["tokens"][0] == 128  # the longest is cut at max_length, as the run cuts it
    # What the collator actually built for the first step had exactly those lengths.
    assert first["collated_tokens"] == first["tokens"]
    assert result["data"] == {
        "rows": len(lengths),
        "mean_tokens": pytest.approx(sum(lengths) / len(lengths), abs=0.01),
        "max_tokens": 128,
    }


def test_the_plan_is_corrected_by_the_measurement(probed: dict) -> None:
    result = probed["result"]
    assert result["gpu_memory_gib"] == 80 and result["gpu_memory_source"] == "--gpu-memory-gib"
    assert result["fits"] is True
    assert result["usable_gib"] == pytest.approx(80 * (1 - result["headroom"]))
    # The largest micro-batch is the line through the measured peak at 4 with the measured
    # activation slope, capped at 8x the largest measured micro-batch.
    own, small = result["phases"]
    slope = (own["torch_allocated_gib"] - small["torch_allocated_gib"]) / 3
    assert result["activation_gib_per_example"] == pytest.approx(slope, abs=2e-4)
    assert result["max_micro_batch"] == 32 and "capped at 32" in result["max_micro_batch_how"]
    assert "activations linear" in result["max_micro_batch_how"]
    # ETA over the planner's step count (the demo's max_steps) from the measured step time.
    assert result["total_steps"] == 80
    assert result["eta_longest_s"] == pytest.approx(80 * result["step_time_s"], abs=0.06)
    assert 0 < result["eta_s"] <= result["eta_longest_s"]


def test_out_of_memory_is_a_verdict_and_run_probe_refuses(
    probed: dict, tunedeck_home: Path, demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A card smaller than the preset's micro-batch needs: the probe runs out of memory at 4,
    says so, finds what fits, and `run --probe` launches nothing."""
    from tui.commands.probe_cmd import probe_then_launch

    (tunedeck_home / "data").mkdir()
    (tunedeck_home / "data" / "demo").symlink_to(demo_dir, target_is_directory=True)
    own, small = probed["result"]["phases"]
    # Between what micro-batch 1 and micro-batch 4 held on the longest rows.
    cap_gib = (own["peak_gib"] + 2 * small["peak_gib"]) / 3
    data = probed["home"] / "long.jsonl"
    with pytest.raises(SystemExit) as ended:
        probe_then_launch(
            "demo", None, None, [f"dataset.path={data}"], False, False, True,
            None, 0, None, 29500, gpu_memory_gib=cap_gib,
        )  # fmt: skip
    assert ended.value.code == 1
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["launched"] is False
    result = out["probe"]
    assert result["fits"] is False and result["failed_micro_batch"] == 4
    assert result["phases"][0]["ok"] is False
    assert "out of memory" in result["phases"][0]["error"]
    assert result["measured_peak_gib"] is None
    assert 1 <= result["max_micro_batch"] <= 3
    assert "per_device_train_batch_size=" in result["fix"]
    assert "nothing launched; --force launches anyway" in captured.err
    # The speed still comes from the largest micro-batch that ran.
    assert result["timed_micro_batch"] in (1, 2) and result["tokens_per_s"] > 0
    # No run folder: only the probe's own.
    runs = tunedeck_home / "runs"
    assert [p for p in runs.iterdir() if (p / "state.json").exists()] == []
    assert (Path(result["probe_dir"]) / PROBE_FILE).is_file()


def test_run_probe_probes_then_launches(demo_home: Path) -> None:
    out = _cli(
        demo_home, "run", "--probe", "demo", "--name", "probed-run",
        "--set", "training.max_steps=4", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    printed = json.loads(out.stdout)
    assert printed["launched"] is True and printed["run_id"] == "probed-run"
    run_dir = Path(printed["run_dir"])
    kept = run_dir / PROBE_SUBDIR
    saved = json.loads((kept / PROBE_FILE).read_text())
    assert saved["run_id"] == "probed-run" and saved["probe_dir"] == str(kept)
    assert saved["tokens_per_s"] > 0 and (kept / "train.log").is_file()
    assert saved["total_steps"] == 4  # the plan of the run as launched
    # The probe folder moved into the run; nothing else is left under the runs root.
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["probed-run"]
    deadline = time.monotonic() + 180
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = json.loads((run_dir / "state.json").read_text())
        if state["status"] in ("completed", "failed", "interrupted"):
            break
        time.sleep(0.2)
    assert state["status"] == "completed", (run_dir / "train.log").read_text()[-2000:]
    if saved["fits"] is True:  # the measured fit is what the run records
        assert state["fit_check"].startswith("fits by the probe ("), state["fit_check"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["probe", "no-such-preset"], "no-such-preset"),
        (["probe", "demo", "--set", "dataset.path=/nowhere/chat.jsonl"], "/nowhere/chat.jsonl"),
        (["probe", "demo", "--steps", "1"], "--steps 1: give at least 2"),
        (["probe", "demo", "--gpu-memory-gib", "0"], "--gpu-memory-gib 0.0: give a size"),
    ],
)
def test_bad_input_gets_a_clear_message(demo_home: Path, args: list[str], expected: str) -> None:
    out = _cli(demo_home, *args, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "error:" in out.stderr and expected in out.stderr
    assert "Traceback" not in out.stderr
    runs = demo_home / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []  # nothing probed, nothing left


# ---------------------------------------------------------------- the extrapolation


def _phase(mb: int, peak_mib: float | None, alloc_mib: float | None = None) -> dict[str, Any]:
    if peak_mib is None:
        return {"micro_batch": mb, "ok": False, "fit_bytes": 0, "allocated_bytes": 0}
    alloc = peak_mib if alloc_mib is None else alloc_mib
    return {
        "micro_batch": mb,
        "ok": True,
        "fit_bytes": peak_mib * 2**20,
        "allocated_bytes": alloc * 2**20,
    }


def test_largest_micro_batch_follows_the_measured_slope() -> None:
    # 100 MiB at 1 and 160 at 4: 20 MiB per example; 300 MiB usable -> 160 + 20 * 7 = 300.
    phases = [_phase(4, 160), _phase(1, 100)]
    best, slope, how = max_micro_batch(phases, 300 * 2**20, limit=64)
    assert best == 11 and slope == pytest.approx(20 * 2**20)
    assert max_micro_batch(phases, 299 * 2**20, limit=64)[0] == 10
    assert "extrapolated from micro-batches 1 and 4" in how
    # The level comes from the device peak of the larger micro-batch, the slope from torch's
    # allocated peak: 40 MiB of context on top of the allocations (200 + 20 * 5 = 300).
    phases = [_phase(4, 200, alloc_mib=160), _phase(1, 140, alloc_mib=100)]
    assert max_micro_batch(phases, 300 * 2**20, limit=64)[0] == 9
    # A micro-batch that ran out of memory bounds it whatever the line says.
    phases = [_phase(8, None), _phase(1, 100), _phase(4, 160)]
    best, _, how = max_micro_batch(phases, 10 * GIB, limit=64)
    assert best == 7 and "micro-batch 8 ran out of memory" in how
    # Nothing ran: nothing fits.
    assert max_micro_batch([_phase(1, None)], GIB, limit=8)[0] == 0
    # The measured peak at 1 already past the card.
    assert max_micro_batch([_phase(2, 900), _phase(1, 800)], 700 * 2**20, limit=16)[0] == 0


def test_flat_activations_stop_at_the_limit() -> None:
    # Allocations that did not grow (a tiny model): capped, and said so.
    phases = [_phase(4, 100), _phase(1, 100)]
    best, slope, how = max_micro_batch(phases, GIB, limit=32)
    assert best == 32 and slope == 0 and "capped at 32" in how


# ---------------------------------------------------------------- on a real GPU

needs_cuda = pytest.mark.skipif(
    not GpuSource().snapshot().available, reason="no NVIDIA GPU on this machine"
)


@pytest.mark.gpu
@needs_cuda
def test_probe_on_cuda_reads_torch_and_the_device(demo_home: Path) -> None:
    out = _cli(demo_home, "probe", "demo", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["device_kind"] == "cuda" and result["device"].startswith("cuda:0 ")
    assert result["gpu_memory_source"] == "detected" and result["gpu_memory_gib"] > 1
    allocated, reserved = result["torch_peak_allocated_gib"], result["torch_peak_reserved_gib"]
    assert 0 < allocated <= reserved <= result["measured_peak_gib"]
    assert result["nvml_device_peak_gib"] is not None and result["fits"] is True
    # A cap below what micro-batch 4 allocates: the allocator runs out, and it is a verdict.
    cap_gib = allocated * 0.8
    out = _cli(demo_home, "probe", "demo", "--json", "--gpu-memory-gib", f"{cap_gib:.6f}")
    assert out.returncode == 1, out.stderr[-3000:]
    capped = json.loads(out.stdout)
    assert capped["fits"] is False and capped["failed_micro_batch"] == 4


def test_a_model_that_does_not_load_is_a_verdict(demo_home: Path, tmp_path: Path) -> None:
    """On a card smaller than the weights the probe process runs out of memory before any step
    (CUDA only: it is built here the way the probe process builds it)."""
    from presets import load_preset
    from runner.probe_memory import PhasePeak
    from runner.probe_verdict import Capacity, analyse
    from runner.probe_worker import _load_failure
    from tui.widgets.probe_view import probe_notes, probe_rows

    peak = PhasePeak(
        allocated_bytes=20 * GIB, reserved_bytes=22 * GIB, device_bytes=23 * GIB,
        rss_growth_bytes=GIB, context_bytes=GIB // 2,
    )  # fmt: skip
    error = "out of memory while loading the model: CUDA out of memory. Tried to allocate 2 GiB"
    measured = {
        "device": "cuda:0 NVIDIA GeForce RTX 4090", "device_kind": "cuda",
        "device_memory_total_bytes": 24 * GIB, "nvml_name": "NVIDIA GeForce RTX 4090",
        "micro_batch": 4, "steps": 4, "rows": 0, "mean_tokens": 0.0, "max_tokens": 0,
        "longest_tokens": [], "phases": [_load_failure(4, error, peak)],
    }  # fmt: skip
    result = analyse(load_preset("demo"), measured, Capacity(24.0, "detected"), tmp_path)
    assert result["fits"] is False and result["load_failed"] is True
    assert result["max_micro_batch"] == 0 and result["measured_peak_gib"] is None
    assert result["verdict"].startswith("does not fit: out of memory while loading the model")
    assert result["tokens_per_s"] is None and result["first_batch"]["rows"] == []
    assert result["fix"]  # the planner's change, or the general advice
    rows = dict((what, probed) for what, _, probed in probe_rows(result))
    assert rows["verdict"] == "does not fit"
    assert any("no step ran" in str(line) for line in probe_notes(result))
