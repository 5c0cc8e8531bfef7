"""One plan request for every front end: the command line's flags and the app's form come from
its fields, and the same inputs give the same plan in `tunedeck plan --json` (a real
subprocess) and in the app's planner screen (driven by keys)."""

from __future__ import annotations

import json
import shlex
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from fake_nvml import FakeNvml
from test_tui_helpers import make_app, wait_for

from planner import PlanRequest, plan
from planner.request import request_fields
from runner.data.size import size_dataset
from tui.screens.planner import ASSUMED_DATA, FORM_FIELDS, PlannerScreen, widget_id

MODEL = "meta-llama/Llama-3.1-8B"


def normalised(data: dict[str, Any]) -> dict[str, Any]:
    """JSON as it travels (tuples become lists, floats print the same)."""
    return json.loads(json.dumps(data))


def chat_file(path: Path, rows: int = 100) -> Path:
    """A JSONL chat file whose rows differ in length."""
    with path.open("w") as fh:
        for i in range(rows):
            row = {
                "messages": [
                    {"role": "user", "content": "What is " + "very " * (i % 7) + f"{i}?"},
                    {"role": "assistant", "content": "It is " + "quite " * (i % 5) + str(i)},
                ]
            }
            fh.write(json.dumps(row) + "\n")
    return path


def test_every_request_field_has_a_flag_a_help_and_a_place_on_the_form() -> None:
    specs = request_fields()
    assert [s.name for s in specs] == [f.name for f in fields(PlanRequest)]
    flags = [s.info.flag for s in specs]
    assert len(set(flags)) == len(flags)
    for spec in specs:
        assert spec.info.flag.startswith("--") and spec.info.help and spec.info.label
    # the form shows every field but none twice
    assert sorted(FORM_FIELDS) == sorted(s.name for s in specs)


def test_help_lists_each_field_with_its_default_and_choices(tunedeck) -> None:
    out = tunedeck("plan", "--help", env={"COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for spec in request_fields():
        assert spec.info.flag in text, spec.info.flag
        for choice in spec.info.choices or ():
            assert choice in text
    assert "--stack {trl,hf}" in text and "(default: trl)" in text
    assert "--lora-dropout" in text and "(default: 0.05)" in text
    assert "--no-grad-ckpt" in text


def test_stack_and_lora_dropout_change_the_plan(tunedeck) -> None:
    def option(*args: str) -> dict[str, Any]:
        out = tunedeck("plan", "--model", MODEL, "--method", "lora", "--json", *args)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        return {"request": data["request"], **data["options"][0]}

    trl = option()
    hf = option("--stack", "hf")
    assert trl["request"]["stack"] == "trl" and hf["request"]["stack"] == "hf"
    # a plain transformers loop builds the full logits (and their fp32 copies)
    # (the breakdown is what is alive at the peak: TRL's chunked loss may not be there at all)
    assert hf["breakdown"]["logits/loss"] > 5 * trl["breakdown"].get("logits/loss", 0.0)
    assert hf["torch_peak_gib"] > trl["torch_peak_gib"]
    no_dropout = option("--lora-dropout", "0")
    assert no_dropout["request"]["lora_dropout"] == 0.0
    # dropout keeps a dropped-out copy and a mask of every wrapped input
    assert no_dropout["breakdown"]["activations"] < trl["breakdown"]["activations"]
    bad = tunedeck("plan", "--model", MODEL, "--stack", "litgpt")
    assert bad.returncode == 2 and "--stack: 'litgpt' is not one of trl, hf" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_data_file_is_sized_once_for_everyone(tmp_path: Path, tunedeck) -> None:
    path = chat_file(tmp_path / "chat.jsonl")
    size = size_dataset(str(path))
    texts = [json.loads(line)["messages"] for line in path.read_text().splitlines()]
    # the text trained on: the prompt turns with their role, then the answer
    chars = sum(len("user: " + m[0]["content"]) + len(m[1]["content"]) for m in texts)
    assert (size.rows, size.tokens_per_row) == (100, round(chars / 100 / 4))
    out = tunedeck("plan", "--model", MODEL, "--dataset", str(path), "--json")
    assert out.returncode == 0, out.stderr
    request = json.loads(out.stdout)["request"]
    assert (request["examples"], request["avg_tokens"]) == (100, size.tokens_per_row)
    bad = tunedeck("plan", "--model", MODEL, "--dataset", str(tmp_path / "none.jsonl"))
    assert bad.returncode == 2 and "no such file or folder" in bad.stderr


# ----------------------------------------------------------------------------- CLI == app


async def set_field(pilot: Any, name: str, text: str) -> None:
    """Type into a field, or choose in a select, as a person does."""
    widget = pilot.app.screen.query_one(f"#{widget_id(name)}")
    if hasattr(widget, "cursor_position"):  # an Input
        widget.focus()
        await pilot.pause()
        await pilot.press("end", *["backspace"] * (len(widget.value) + 1), *text)
    else:
        widget.value = text
    await pilot.pause()


# The app's own inputs (its assumed data size included) and the flags a person types for the
# same plan.
CASES = [
    pytest.param(
        {"gpu": "RTX 4090"},
        f"--gpu 'RTX 4090' --examples {ASSUMED_DATA['examples']}"
        f" --avg-tokens {ASSUMED_DATA['avg_tokens']}",
        id="defaults-and-the-assumed-data",
    ),
    pytest.param(
        {
            "gpu": "none",
            "methods": "qlora",
            "seq_len": "4096",
            "micro_batch": "2",
            "lora_dropout": "0",
            "stack": "hf",
            "examples": "",
            "avg_tokens": "",
        },
        "--method qlora --seq-len 4096 --micro-batch 2 --lora-dropout 0 --stack hf",
        id="no-gpu-qlora-hf-no-data",
    ),
    pytest.param(
        {"model": "Qwen/Qwen2.5-0.5B", "gpu": "A100 40GB", "examples": "FILE", "epochs": "2"},
        "--model Qwen/Qwen2.5-0.5B --gpu 'A100 40GB' --dataset FILE --epochs 2",
        id="a-data-file",
    ),
    pytest.param(
        {
            "model": "Qwen/Qwen2.5-7B",
            "gpu": "H100 SXM",
            "methods": "full",
            "num_gpus": "2",
            "strategy": "fsdp",
            "precision": "bf16-mixed",
            "optimizer": "adamw_8bit",
            "grad_accum": "4",
            "examples": "5000",
            "avg_tokens": "600",
            "price_usd_per_h": "2.5",
        },
        "--model Qwen/Qwen2.5-7B --gpu 'H100 SXM' --method full --num-gpus 2 --strategy fsdp"
        " --precision bf16-mixed --optimizer adamw_8bit --grad-accum 4 --examples 5000"
        " --avg-tokens 600 --price 2.5",
        id="two-gpus-full-mixed-precision",
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("form", "command"), CASES)
async def test_the_command_line_and_the_app_give_the_same_plan(
    form: dict[str, str], command: str, tmp_path: Path, tunedeck, monkeypatch
) -> None:
    monkeypatch.setenv("TUNEDECK_HOME", str(tmp_path / "home"))
    data = str(chat_file(tmp_path / "train.jsonl"))
    form = {k: data if v == "FILE" else v for k, v in form.items()}
    flags = [data if v == "FILE" else v for v in shlex.split(command)]
    if "--model" not in flags:
        flags = ["--model", MODEL, *flags]
    # no GPU visible to the command (the app below has none either): no detection
    out = tunedeck(
        "plan", *flags, "--json", env={"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    )
    assert out.returncode == 0, out.stderr
    expected = json.loads(out.stdout)

    app = make_app(FakeNvml([]), tmp_path / "runs", plan_fn=plan)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: app.telemetry is not None)
        await pilot.press("p")
        screen = app.screen
        assert isinstance(screen, PlannerScreen)
        assert await wait_for(pilot, lambda: screen.report is not None, timeout_s=20)
        for name, text in form.items():
            await set_field(pilot, name, text)

        def same() -> bool:
            report = screen.report
            return report is not None and normalised(report.to_json()) == expected

        if not await wait_for(pilot, same, timeout_s=30):
            got = normalised(screen.report.to_json())
            differing = {k: (got["request"][k], v) for k, v in expected["request"].items()}
            differing = {k: v for k, v in differing.items() if v[0] != v[1]}
            assert got == expected, f"request fields (app, command line): {differing}"


@pytest.mark.asyncio
async def test_use_this_plan_gives_a_preset_that_plans_the_same(
    tmp_path: Path, monkeypatch
) -> None:
    from planner import request_from_preset
    from presets.schema import Preset

    monkeypatch.setenv("TUNEDECK_HOME", str(tmp_path / "home"))
    form = {
        "gpu": "A100 80GB",
        "methods": "lora",
        "seq_len": "1024",
        "micro_batch": "4",
        "grad_accum": "2",
        "attn": "eager",
        "precision": "bf16-mixed",
        "optimizer": "adamw_8bit",
        "lora_r": "32",
        "lora_alpha": "64",
        "lora_targets": "q,v",
        "lora_dropout": "0.1",
        "epochs": "2",
    }
    app = make_app(FakeNvml([]), tmp_path / "runs", plan_fn=plan)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("p")
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.report is not None, timeout_s=20)
        for name, text in form.items():
            await set_field(pilot, name, text)
        assert await wait_for(
            pilot,
            lambda: screen.report.request.lora_dropout == 0.1 and screen.report.request.epochs == 2,
            timeout_s=30,
        )
        planned = screen.report.request
        preset = Preset(**screen.preset_data())
    again = request_from_preset(
        preset, gpu=planned.gpu, examples=planned.examples, avg_tokens=planned.avg_tokens
    )
    for name in (
        "methods", "trainer", "gpu", "num_gpus", "seq_len", "micro_batch", "grad_accum",
        "grad_ckpt", "attn", "precision", "optimizer", "lora_r", "lora_alpha", "lora_targets",
        "lora_dropout", "quant", "liger", "epochs", "examples", "avg_tokens",
    ):  # fmt: skip
        assert getattr(again, name) == getattr(planned, name), name
