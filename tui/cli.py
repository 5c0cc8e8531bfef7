"""The `tunedeck` command: the app with no arguments, headless subcommands otherwise.

Each subcommand's module is imported only when that command runs (or when the full help is
shown), so a command pays for its own imports only. `tunedeck plan` skips typer altogether: it
parses its own flags, and answering in a fraction of a second is its job.
"""

# No `from __future__ import annotations` here: typer reads the callback's annotations, which
# must be real objects since typer is imported inside build_app().
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

# Command name -> the module whose `register(app)` defines it, in the order the help lists them.
COMMAND_MODULES: dict[str, str] = {
    "gpus": "tui.commands.gpus_cmd",
    "presets": "tui.commands.presets_cmd",
    "plan": "tui.commands.plan_cmd",
    "data": "tui.commands.data_cmd",
    "probe": "tui.commands.probe_cmd",
    "run": "tui.commands.run_cmd",
    "demo": "tui.commands.run_cmd",
    "runs": "tui.commands.run_cmd",
    "logs": "tui.commands.run_cmd",
    "stop": "tui.commands.run_cmd",
    "resume": "tui.commands.run_cmd",
    "merge": "tui.commands.run_cmd",
    "eval": "tui.commands.eval_cmd",
    "compare": "tui.commands.compare_cmd",
    "autostart": "tui.commands.run_cmd",
    "cancel-finish": "tui.commands.run_cmd",
    "watch": "tui.commands.watch_cmd",
}


def build_app() -> "typer.Typer":
    """The typer application with every command (their modules load on first lookup)."""
    import importlib
    from typing import Annotated

    import click
    import typer
    from typer.core import TyperGroup

    class LazyCommands(TyperGroup):
        """A click group that imports a command's module the first time it is looked up."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._loaded: set[str] = set()

        def list_commands(self, ctx: click.Context) -> list[str]:
            return list(COMMAND_MODULES)

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            module_name = COMMAND_MODULES.get(cmd_name)
            if module_name is not None and module_name not in self._loaded:
                self._loaded.add(module_name)
                holder = typer.Typer()
                importlib.import_module(module_name).register(holder)
                for name, command in typer.main.get_group(holder).commands.items():
                    self.add_command(command, name)
            return super().get_command(ctx, cmd_name)

    application = typer.Typer(
        name="tunedeck",
        cls=LazyCommands,
        help="Plan, launch and watch LLM fine-tuning runs (full, LoRA, QLoRA; TRL SFT and DPO).",
        invoke_without_command=True,
        no_args_is_help=False,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    def show_version(value: bool) -> None:
        if value:
            from importlib.metadata import version

            typer.echo(f"tunedeck {version('tunedeck')}")
            raise typer.Exit()

    @application.callback()
    def main_callback(
        ctx: typer.Context,
        runs_dir: Annotated[
            str | None,
            typer.Option(
                "--runs-dir",
                help="Runs folder the app shows (default: TUNEDECK_RUNS or the data dir).",
            ),
        ] = None,
        version: Annotated[
            bool,
            typer.Option(
                "--version", callback=show_version, is_eager=True, help="Print the version."
            ),
        ] = False,
    ) -> None:
        """With no command, open the app."""
        if ctx.invoked_subcommand is not None:
            return
        from tui.app import run_app  # the app is only imported when it is opened

        run_app(runs_dir=runs_dir)

    return application


def __getattr__(name: str) -> Any:
    """`tui.cli.app`, the typer application, is built on first access."""
    if name == "app":
        application = build_app()
        globals()["app"] = application
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["plan"]:
        from tui.commands.plan_cmd import run_plan

        run_plan(args[1:])
        return
    runs_dir = _only_runs_dir(args)
    if runs_dir is not False:
        # Opening the app needs none of typer's set-up either: first paint comes sooner.
        from tui.app import run_app

        run_app(runs_dir=runs_dir)
        return
    __getattr__("app")(args=args, prog_name="tunedeck")


def _only_runs_dir(args: list[str]) -> str | bool | None:
    """The --runs-dir value when `args` only opens the app (None when it is not given), False
    when `args` asks for anything else."""
    if not args:
        return None
    if len(args) == 1 and args[0].startswith("--runs-dir=") and len(args[0]) > len("--runs-dir="):
        return args[0].split("=", 1)[1]
    if len(args) == 2 and args[0] == "--runs-dir" and not args[1].startswith("-"):
        return args[1]
    return False


if __name__ == "__main__":
    main()
