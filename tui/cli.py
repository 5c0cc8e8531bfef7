"""The `tunedeck` command: the app with no arguments, headless subcommands otherwise."""

from __future__ import annotations

from typing import Annotated

import typer

from tui.commands import data_cmd, gpus_cmd, plan_cmd, presets_cmd, run_cmd, watch_cmd

app = typer.Typer(
    name="tunedeck",
    help="Plan, launch and watch LLM fine-tuning runs (full, LoRA, QLoRA; TRL SFT and DPO).",
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"tunedeck {version('tunedeck')}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    runs_dir: Annotated[
        str | None,
        typer.Option(
            "--runs-dir", help="Runs folder the app shows (default: TUNEDECK_RUNS or the data dir)."
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """With no command, open the app."""
    if ctx.invoked_subcommand is not None:
        return
    from tui.app import run_app  # the app is only imported when it is opened

    run_app(runs_dir=runs_dir)


for _module in (gpus_cmd, presets_cmd, plan_cmd, data_cmd, run_cmd, watch_cmd):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
