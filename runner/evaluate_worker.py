"""The evaluation process: `python -m runner.evaluate_worker RUN_DIR OPTIONS_JSON REPORT_FD`.

Started by `runner.evaluate.evaluate_run`. It builds the data, tokenizer and models exactly as
the training does (`runner.train_build`), so the base and the tuned model are scored with the
run's chat template, max length and loss masking; the loss is TRL's own `SFTTrainer.evaluate`,
the figure the training logged as `eval_loss`. Progress and refusals go to REPORT_FD as JSON
lines; everything the libraries print goes to eval.log. The training stack is imported inside
the functions, so importing this module stays light.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from presets import locations
from presets.schema import Preset
from runner.evaluate import (
    EXIT_REFUSED,
    EvalOptions,
    TunedModel,
    load_run_preset,
    perplexity,
    tuned_model,
    write_results,
)
from runner.evaluate_metrics import task_metrics
from runner.runs import RunError, now_iso

# A sentinel answer: what the chat template puts after it is the end-of-turn marker, where a
# generated answer stops.
_SENTINEL = "\u2063tunedeck-answer\u2063"


class Reporter:
    """JSON lines to the parent through an inherited pipe."""

    def __init__(self, fd: int):
        self._fh = os.fdopen(fd, "w", encoding="utf-8", buffering=1)

    def send(self, **event: Any) -> None:
        # The parent may be gone (interrupted); the results still land in the run folder.
        with contextlib.suppress(BrokenPipeError):
            self._fh.write(json.dumps(event) + "\n")

    def progress(self, what: str) -> None:
        self.send(event="progress", what=what)


def sft_view(preset: Preset) -> Preset:
    """The preset as an SFT run: a DPO run is scored on its chosen answers with the SFT loss,
    keeping only the training arguments SFTConfig knows (max_length among them)."""
    if preset.trainer == "sft":
        return preset
    from presets.trl_fields import trl_fields

    known = trl_fields()["sft"]
    training = {k: v for k, v in preset.training.items() if k in known}
    return preset.model_copy(update={"trainer": "sft", "training": training})


def eval_data(view: Preset, data_path: str | None) -> tuple[Any, str]:
    """The rows to score and where they came from: the run's eval split (the same seeded split
    the training evaluated on), or every row of `data_path` (its eval files for a folder that
    has them)."""
    from runner.train_build import BuildFailure, load_data

    if data_path is None:
        _, evaluation = load_data(view)
        if evaluation is None:
            raise RunError(
                [
                    "this run has no eval data (dataset.eval_path, eval_fraction or eval files); "
                    "give one with --data PATH"
                ]
            )
        return evaluation, "the run's eval split"
    spec = view.dataset.model_copy(
        update={
            "path": str(Path(data_path).expanduser()),
            "eval_path": None,
            "eval_split": None,
            "eval_fraction": None,
            "format": "auto",
        }
    )
    try:
        train, evaluation = load_data(view.model_copy(update={"dataset": spec}))
    except BuildFailure as exc:
        raise RunError([f"--data {data_path}: {str(exc).removeprefix('data: ')}"]) from None
    return (evaluation if evaluation is not None else train), str(data_path)


def held_out_prompts(data: Any, count: int) -> list[dict[str, Any]]:
    """The first `count` rows that have a prompt and an answer: the prompt (a conversation or
    a string), its plain text and the reference answer. Plain `text` rows have neither."""
    out: list[dict[str, Any]] = []
    for index, row in enumerate(data):
        if len(out) >= count:
            break
        if row.get("messages"):
            messages = row["messages"]
            last = max(
                (i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None
            )
            if not last:
                continue
            prompt: Any = messages[:last]
            reference = messages[last]["content"]
        elif row.get("prompt") is not None and row.get("completion") is not None:
            prompt, completion = row["prompt"], row["completion"]
            reference = (
                completion
                if isinstance(completion, str)
                else "\n".join(m["content"] for m in completion if m["role"] == "assistant")
            )
        else:
            continue
        text = prompt if isinstance(prompt, str) else _last_user(prompt)
        out.append({"index": index, "prompt": prompt, "prompt_text": text, "reference": reference})
    return out


def _last_user(messages: list[dict[str, str]]) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            return str(message["content"])
    return str(messages[-1]["content"]) if messages else ""


def end_of_turn(tokenizer: Any) -> str | None:
    """What the chat template writes after an assistant answer (`<|eot_id|>`, `<|im_end|>`), or
    None when it writes nothing there (EOS alone then ends an answer)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    from jinja2 import TemplateError

    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "?"}, {"role": "assistant", "content": _SENTINEL}],
            tokenize=False,
        )
    except (TemplateError, ValueError):  # a template may refuse this shape of conversation
        return None
    after = rendered.split(_SENTINEL, 1)[1].strip() if _SENTINEL in rendered else ""
    return after.split()[0] if after else None


def generate_answer(
    model: Any,
    tokenizer: Any,
    prompt: Any,
    max_length: int,
    max_new_tokens: int,
    stop: str | None,
    sample: tuple[int, float, float] | None = None,
) -> str:
    """The model's answer to `prompt` (a conversation through the chat template, or a string),
    greedy, or sampled when `sample` gives (seed, temperature, top_p); cut at `stop`."""
    import torch

    if isinstance(prompt, str):
        inputs = tokenizer(prompt, return_tensors="pt")
    else:
        inputs = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    ids = inputs["input_ids"][:, -max_length:]
    mask = inputs["attention_mask"][:, -max_length:]
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "do_sample": sample is not None,
    }
    if sample is not None:
        seed, temperature, top_p = sample
        torch.manual_seed(seed)
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if stop:
        kwargs.update(stop_strings=[stop], tokenizer=tokenizer)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **kwargs
        )
    text = tokenizer.decode(out[0][ids.shape[1] :], skip_special_tokens=True)
    if stop and stop in text:
        text = text.split(stop, 1)[0]
    return str(text).strip()


class Evaluator:
    """Loss and generations of one model after another, on the same data and arguments."""

    def __init__(self, view: Preset, tokenizer: Any, data: Any, options: EvalOptions, work: Path):
        from runner.train_build import training_arguments

        self.view = view
        self.tokenizer = tokenizer
        self.data = data
        self.options = options
        args = training_arguments(view, work, world_size=1)
        args.report_to = []  # an evaluation logs to no tracker
        args.eval_strategy = "no"
        args.load_best_model_at_end = False
        args.gradient_checkpointing = False  # no backward pass here
        self.args = args
        self.max_length = int(args.max_length or 1024)
        self.stop = end_of_turn(tokenizer)

    def loss(self, model: Any) -> dict[str, Any]:
        import warnings

        from trl import SFTTrainer

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pin_memory.*")
            trainer = SFTTrainer(
                model=model,
                args=self.args,
                # SFTTrainer wants training rows; one is enough, it is never trained on.
                train_dataset=self.data.select([0]),
                eval_dataset=self.data,
                processing_class=self.tokenizer,
            )
            metrics = trainer.evaluate()
        loss = float(metrics["eval_loss"])
        return {
            "eval_loss": loss,
            "perplexity": perplexity(loss),
            "mean_token_accuracy": metrics.get("eval_mean_token_accuracy"),
            "rows_scored": len(trainer.eval_dataset),
        }

    def generate(self, model: Any, prompt: Any, seed: int, sample: bool) -> str:
        return generate_answer(
            model,
            self.tokenizer,
            prompt,
            max_length=self.max_length,
            max_new_tokens=self.options.max_new_tokens,
            stop=self.stop,
            sample=(seed, self.options.temperature, self.options.top_p) if sample else None,
        )

    def generations(
        self, model: Any, prompts: list[dict[str, Any]], label: str, report: Reporter
    ) -> list[dict[str, str]]:
        model.eval()
        out = []
        for n, item in enumerate(prompts, 1):
            report.progress(f"{label}: generating answer {n} of {len(prompts)}")
            seed = self.options.seed + item["index"]
            out.append(
                {
                    "greedy": self.generate(model, item["prompt"], seed, sample=False),
                    "sampled": self.generate(model, item["prompt"], seed, sample=True),
                }
            )
        return out


def _free(model: Any) -> None:
    import torch

    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def evaluate(run_dir: Path, options: EvalOptions, report: Reporter) -> dict[str, Any]:
    """Everything eval.json holds."""
    started_s = time.time()
    preset = load_run_preset(run_dir)
    tuned: TunedModel = tuned_model(run_dir, preset)
    report.progress("loading the training libraries")
    import datasets
    import torch
    import transformers

    from runner.train_build import BuildFailure, build_model, load_tokenizer

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # as the training does on a shared CPU
    view = sft_view(preset)
    base_path = locations.expand(preset.model)
    report.progress("reading the eval data")
    try:
        data, source = eval_data(view, options.data)
        tokenizer = load_tokenizer(base_path)
    except BuildFailure as exc:
        raise RunError([str(exc)]) from None
    except OSError as exc:
        raise RunError([f"tokenizer of {base_path}: cannot load ({exc})"]) from None
    prompts = held_out_prompts(data, options.samples)
    results: dict[str, dict[str, Any]] = {}
    generated: dict[str, list[dict[str, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="tunedeck-eval-") as work:
        evaluator = Evaluator(view, tokenizer, data, options, Path(work))
        try:
            report.progress("loading the base model")
            base = build_model(preset, base_path)
            report.progress("base model: scoring the eval data")
            results["base"] = {"model": base_path, **evaluator.loss(base)}
            generated["base"] = evaluator.generations(base, prompts, "base model", report)
            report.progress("loading the tuned model")
            if tuned.kind == "adapter":
                from peft import PeftModel

                model = PeftModel.from_pretrained(base, str(tuned.path))
            else:
                _free(base)
                model = build_model(preset, str(tuned.path))
        except BuildFailure as exc:
            raise RunError([str(exc)]) from None
        report.progress("tuned model: scoring the eval data")
        results["tuned"] = {"model": str(tuned.path), "kind": tuned.kind, **evaluator.loss(model)}
        generated["tuned"] = evaluator.generations(model, prompts, "tuned model", report)
    report.progress("scoring the answers")
    references = [p["reference"] for p in prompts]
    for name in ("base", "tuned"):
        greedy = [g["greedy"] for g in generated[name]]
        results[name]["metrics"] = task_metrics(greedy, references)
    samples = [
        {
            **item,
            "base": generated["base"][i],
            "tuned": generated["tuned"][i],
        }
        for i, item in enumerate(prompts)
    ]
    return {
        "run_id": run_dir.name,
        "evaluated_at": now_iso(),
        "elapsed_s": round(time.time() - started_s, 3),
        "device": _device_name(),
        "data": {"source": source, "rows": len(data)},
        "max_length": evaluator.max_length,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "generation": {
            "max_new_tokens": options.max_new_tokens,
            "seed": options.seed,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "stop": evaluator.stop,
        },
        "base": results["base"],
        "tuned": results["tuned"],
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print("usage: python -m runner.evaluate_worker RUN_DIR OPTIONS_JSON REPORT_FD")
        return 2
    run_dir = Path(argv[0])
    options = EvalOptions(**json.loads(argv[1]))
    report = Reporter(int(argv[2]))
    try:
        result = evaluate(run_dir, options, report)
    except RunError as exc:
        report.send(event="refused", lines=exc.lines)
        print("tunedeck: evaluation refused: " + "; ".join(exc.lines), flush=True)
        return EXIT_REFUSED
    report.progress("writing eval.json and samples.jsonl")
    write_results(run_dir, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
