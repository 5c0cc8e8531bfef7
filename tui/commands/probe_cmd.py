"""`tunedeck probe PRESET`: the preset's real training for a few steps on this box, measured, with
the plan corrected by what was measured; and `tunedeck run --probe`, which probes first."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tui.commands.common import EXIT_FAILED, console, fail, print_json

if TYPE_CHECKING:
    from presets.schema import Preset

GpuMemoryOption = Annotated[
    float | None,
    typer.Option(
        "--gpu-memory-gib",
        help="Judge (and cap) the probe as if the GPU had this much memory, in GiB "
        "(default: the GPU it runs on; on a CPU nothing is judged without it).",
    ),
]
StepsOption = Annotated[
    int | None,
    typer.Option("--steps", help="Steps per measured micro-batch, the first one warm-up [4]."),
]
TimeoutOption = Annotated[
    float | None,
    typer.Option("--timeout-s", help="Give up on the probe after this many seconds [1800]."),
]


def _load(preset_name: str, overrides: list[str] | None) -> Preset:
    from presets.store import PresetError, load_preset

    try:
        preset = load_preset(preset_name, overrides or [])
    except PresetError as exc:
        fail(exc.lines)
    from runner.probe import ensure_inputs

    try:
        ensure_inputs(preset)
    except OSError as exc:
        fail([f"demo: cannot write the demo files ({exc})"])
    return preset


def _probe(
    preset: Preset,
    root: Path,
    gpu_memory_gib: float | None,
    steps: int | None,
    timeout_s: float | None,
    as_json: bool,
) -> dict[str, Any]:
    """Check, probe and return probe.json's content; bad input and a failed probe end the
    command with a clear message."""
    from runner.probe import (
        DEFAULT_STEPS,
        DEFAULT_TIMEOUT_S,
        ProbeError,
        check_probe,
        new_probe_dir,
        option_problems,
        run_probe,
    )

    steps = DEFAULT_STEPS if steps is None else steps
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s

    problems = option_problems(steps, gpu_memory_gib)
    if not problems and as_json:
        problems = check_probe(preset)
    elif not problems:
        with console.status("checking the preset and its data..."):
            problems = check_probe(preset)
    if problems:
        fail([*problems, "nothing probed"])
    try:
        probe_dir = new_probe_dir(root, preset.name)
        if as_json:
            return run_probe(preset, probe_dir, gpu_memory_gib, steps, timeout_s)
        with console.status("probe: starting") as status:
            return run_probe(
                preset,
                probe_dir,
                gpu_memory_gib,
                steps,
                timeout_s,
                on_status=lambda line: status.update(f"probe: {line}"),
            )
    except ProbeError as exc:
        fail(exc.lines, EXIT_FAILED)


def _show(result: dict[str, Any]) -> None:
    from tui.widgets.probe_view import probe_header, probe_notes, probe_table

    console.print(probe_header(result), soft_wrap=True)
    console.print(probe_table(result))
    for line in probe_notes(result):
        console.print(line, soft_wrap=True)
    console.print(f"folder  {result['probe_dir']}", markup=False, soft_wrap=True)


def probe(
    preset: Annotated[str, typer.Argument(help="Preset name or YAML file.")],
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a preset field, e.g. training.max_length=4096."),
    ] = None,
    runs_dir: Annotated[
        str | None,
        typer.Option("--runs-dir", help="Where the probe folder goes (default: the runs folder)."),
    ] = None,
    gpu_memory_gib: GpuMemoryOption = None,
    steps: StepsOption = None,
    timeout_s: TimeoutOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print probe.json.")] = False,
) -> None:
    """Run the preset's real training for a few steps over its longest examples, measure peak
    memory and speed, and say whether it fits, the largest micro-batch that does, the ETA and
    the cost. Exits 1 when it does not fit."""
    from presets import locations

    loaded = _load(preset, overrides)
    result = _probe(loaded, locations.runs_dir(runs_dir), gpu_memory_gib, steps, timeout_s, as_json)
    if as_json:
        print_json(result)
    else:
        _show(result)
    if result["fits"] is False:
        raise typer.Exit(EXIT_FAILED)


def probe_then_launch(
    preset_name: str,
    name: str | None,
    runs_dir: str | None,
    overrides: list[str] | None,
    force: bool,
    auto_resume: bool,
    as_json: bool,
    nnodes: int | None,
    node_rank: int,
    master_addr: str | None,
    master_port: int,
    gpu_memory_gib: float | None = None,
) -> None:
    """`tunedeck run --probe`: probe, refuse with the probe's verdict when it does not fit
    (unless forced), else launch; the probe is kept in the run folder (`RUN/probe/`). The probe
    is the measured answer, so a planner estimate that says "does not fit" does not refuse a
    run the probe saw fit. `gpu_memory_gib` judges the probe as `tunedeck probe
    --gpu-memory-gib` does (default: the GPU it runs on)."""
    from presets import locations
    from runner.launch import Distributed, launch
    from runner.probe import keep_in_run
    from runner.runs import RunError
    from tui.commands.run_cmd import _print_launched

    preset = _load(preset_name, overrides)
    dist = Distributed(nnodes or preset.launch.nnodes, node_rank, master_addr, master_port)
    if dist.nnodes > 1:
        fail(["--probe runs on this machine alone; a run over several machines cannot be probed"])
    root = locations.runs_dir(runs_dir)
    result = _probe(preset, root, gpu_memory_gib, None, None, as_json)
    if result["fits"] is False and not force:
        if as_json:
            print_json({"probe": result, "launched": False})
        else:
            _show(result)
        fail(
            [
                f"probe: {result['verdict']}",
                *([f"fix: {result['fix']}"] if result.get("fix") else []),
                "nothing launched; --force launches anyway",
            ],
            EXIT_FAILED,
        )
    probed_fit = result["fits"] is True
    try:
        # A fit the probe measured overrules the planner's estimate (and is recorded as such).
        measured = f"{result['measured_peak_gib']} GiB" if probed_fit else None
        launched = launch(
            root, preset, name, force, auto_resume or None, dist=dist, probed_fit=measured
        )
    except RunError as exc:
        fail(exc.lines)
    kept = keep_in_run(Path(result["probe_dir"]), launched.run_dir)
    result.update(probe_dir=str(kept), run_id=launched.run_id)
    if as_json:
        print_json({"probe": result, "launched": True, **launched.to_json()})
        return
    _show(result)
    _print_launched(launched, as_json, "started")


def register(app: typer.Typer) -> None:
    app.command("probe")(probe)
