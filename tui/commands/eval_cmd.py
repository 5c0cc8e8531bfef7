"""`tunedeck eval RUN`: the tuned model against its base on held-out data, in a separate process."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from tui.commands.common import EXIT_FAILED, console, err_console, fail, print_json

RunsDirOption = Annotated[
    str | None,
    typer.Option("--runs-dir", help="Runs folder (default: TUNEDECK_RUNS, else the data dir)."),
]


def evaluate(
    run_id: Annotated[
        str, typer.Argument(help="Run id (a unique prefix is enough) or run folder.")
    ],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Data file or folder to score on (any supported format); default: "
            "the run's eval split.",
        ),
    ] = None,
    samples: Annotated[
        int, typer.Option("--samples", help="Held-out prompts both models answer (0: none).")
    ] = 8,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Longest generated answer, in tokens.")
    ] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampled answers.")] = 0,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Temperature of the sampled answers.")
    ] = 0.7,
    runs_dir: RunsDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print eval.json.")] = False,
) -> None:
    """Score the base and the tuned model on the same held-out data (loss, perplexity, exact
    match, ROUGE-L, BLEU) and show their answers side by side; results go to RUN/eval.json and
    RUN/samples.jsonl."""
    from presets import locations
    from runner.evaluate import EVAL_FILE, SAMPLES_FILE, EvalOptions, evaluate_run
    from runner.runs import RunError, RunStore

    store = RunStore(locations.runs_dir(runs_dir))
    options = EvalOptions(
        data=data,
        samples=samples,
        max_new_tokens=max_new_tokens,
        seed=seed,
        temperature=temperature,
    )
    try:
        run_dir = store.resolve(run_id)
    except RunError as exc:
        fail(exc.lines)
    try:
        if as_json:
            result = evaluate_run(run_dir, options)
        else:
            with console.status("starting the evaluation...") as status:
                result = evaluate_run(
                    run_dir, options, on_progress=lambda what: status.update(Text(what + "..."))
                )
    except RunError as exc:
        fail(exc.lines, EXIT_FAILED)
    if as_json:
        print_json(result)
        return
    from tui.widgets.eval_view import headline, samples_group, scores_table, unavailable_notes

    console.print(headline(result))
    console.print(scores_table(result))
    for note in unavailable_notes(result):
        err_console.print(Text.assemble(("note: ", "yellow"), note), soft_wrap=True)
    console.print(samples_group(result))
    console.print(Text(f"results in {run_dir / EVAL_FILE}, samples in {run_dir / SAMPLES_FILE}"))


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
