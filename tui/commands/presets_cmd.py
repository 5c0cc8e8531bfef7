"""`tunedeck presets`: list, show and derive presets."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from tui.commands.common import console, fail, print_json
from tui.widgets.format import one_line

presets_app = typer.Typer(
    help="List, show and create run presets.", invoke_without_command=True, no_args_is_help=False
)

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a field with a dotted key and a YAML value, e.g. training.max_steps=40 "
        "or lora.r=32. Repeatable.",
    ),
]


@presets_app.callback()
def presets_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List shipped and user presets (user presets shadow shipped ones of the same name)."""
    if ctx.invoked_subcommand is not None:
        return
    from presets import list_presets
    from tui.widgets.format import shown_path

    entries = list_presets()
    if as_json:
        print_json(
            {
                "presets": [
                    {
                        "name": e.name,
                        "source": e.source,
                        "path": str(e.path),
                        "valid": e.preset is not None,
                        "errors": e.error.lines if e.error else [],
                        "description": e.preset.description if e.preset else "",
                        "model": e.preset.model if e.preset else None,
                        "trainer": e.preset.trainer if e.preset else None,
                        "method": e.preset.method if e.preset else None,
                        "num_gpus": e.preset.launch.num_gpus if e.preset else None,
                    }
                    for e in entries
                ]
            }
        )
        return
    wide = console.width >= 120
    table = Table(title="presets", title_justify="left", expand=wide, box=None, pad_edge=False)
    names_w = max((len(e.name) + (7 if e.source == "user" else 0) for e in entries), default=4)
    table.add_column("name", no_wrap=True, style="bold", min_width=names_w)  # never cut
    table.add_column("run", no_wrap=True)
    table.add_column("model", no_wrap=True, overflow="ellipsis")
    if wide:
        table.add_column("description", no_wrap=True, overflow="ellipsis", ratio=1)
    for e in entries:
        user = " (user)" if e.source == "user" else ""
        if e.preset is None:
            first = e.error.lines[0] if e.error else "invalid"
            name, problem = one_line(e.name + user), one_line(first)
            table.add_row(name, Text("invalid", "red"), problem, *([""] if wide else []))
            continue
        p = e.preset
        gpus = f" {p.launch.num_gpus}x {p.launch.strategy}" if p.launch.num_gpus > 1 else ""
        row = [p.name + user, f"{p.trainer} {p.method}{gpus}", one_line(shown_path(p.model))]
        table.add_row(*row, *([one_line(p.description)] if wide else []))
    console.print(table)


@presets_app.command("show")
def presets_show(
    name: Annotated[str, typer.Argument(help="Preset name or path to a YAML file.")],
    overrides: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a preset fully resolved (defaults filled in), as YAML."""
    from presets import PresetError, load_preset, preset_to_yaml

    try:
        preset = load_preset(name, overrides or [])
    except PresetError as exc:
        fail(exc.lines)
    if as_json:
        print_json(preset.model_dump(mode="json"))
        return
    text = preset_to_yaml(preset)
    if not console.is_terminal:
        # Piped or redirected: exactly the YAML, every line whole, to be saved or parsed.
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    # Coloured, and soft-wrapped: a long line is folded by the terminal, not cut or broken.
    syntax = Syntax(text, "yaml", theme="ansi_dark", background_color="default")
    console.print(syntax.highlight(text), soft_wrap=True, end="")


@presets_app.command("new")
def presets_new(
    name: Annotated[str, typer.Argument(help="Name of the new user preset.")],
    base: Annotated[str, typer.Option("--from", help="Preset to start from.")],
    overrides: SetOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a user preset of that name.")
    ] = False,
) -> None:
    """Create a user preset from another one, with overrides."""
    from presets import PresetError, derive_preset, save_user_preset

    try:
        preset = derive_preset(name, base, overrides or [])
        path = save_user_preset(preset, overwrite=force)
    except PresetError as exc:
        fail(exc.lines)
    console.print(Text.assemble("saved ", (preset.name, "bold"), f" to {path}"))


def register(app: typer.Typer) -> None:
    app.add_typer(presets_app, name="presets")
