"""`tunedeck run/demo/runs/logs/stop/resume/merge/autostart`: launch and control runs."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from tui.commands.common import EXIT_FAILED, console, err_console, fail, print_json

if TYPE_CHECKING:
    from runner.launch import LaunchResult
    from runner.runs import RunStore, RunSummary

RunsDirOption = Annotated[
    str | None,
    typer.Option("--runs-dir", help="Runs folder (default: TUNEDECK_RUNS, else the data dir)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
RunArg = Annotated[str, typer.Argument(help="Run id (a unique prefix is enough) or run folder.")]


def _store(runs_dir: str | None) -> RunStore:
    from presets import locations
    from runner.runs import RunStore

    return RunStore(locations.runs_dir(runs_dir))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# ---------------------------------------------------------------- run / demo


def _launch(
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
) -> None:
    from presets import locations
    from presets.store import PresetError, load_preset
    from runner.launch import Distributed, launch
    from runner.runs import RunError

    try:
        preset = load_preset(preset_name, overrides or [])
    except PresetError as exc:
        fail(exc.lines)
    dist = Distributed(
        nnodes=nnodes or preset.launch.nnodes,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
    )
    root = locations.runs_dir(runs_dir)
    try:
        if as_json:
            result = launch(root, preset, name, force, auto_resume or None, dist)
        else:
            with console.status("checking the preset, the data and the fit..."):
                result = launch(root, preset, name, force, auto_resume or None, dist)
    except RunError as exc:
        fail(exc.lines)
    _print_launched(result, as_json, "started")


def _print_launched(result: LaunchResult, as_json: bool, verb: str) -> None:
    if as_json:
        print_json(result.to_json())
        return
    for line in result.warnings:
        err_console.print(f"[yellow]warning:[/] {line}", markup=True, soft_wrap=True)
    console.print(f"{verb} {result.run_id}  (pid {result.pid})")
    console.print(f"folder  {result.run_dir}")
    console.print(f"follow  tunedeck watch {result.run_id}  (or: tunedeck logs {result.run_id} -f)")
    console.print(f"stop    tunedeck stop {result.run_id}")


NameOption = Annotated[
    str | None, typer.Option("--name", help="Run id (default: <preset>-<YYYYmmdd-HHMMSS>).")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a preset field, e.g. training.max_steps=40. Repeatable."),
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Launch even when the planner says it does not fit.")
]
AutoResumeOption = Annotated[
    bool,
    typer.Option("--auto-resume", help="Let `tunedeck autostart` resume this run after a reboot."),
]
NnodesOption = Annotated[
    int | None, typer.Option("--nnodes", help="Machines taking part (torchrun --nnodes).")
]
NodeRankOption = Annotated[int, typer.Option("--node-rank", help="This machine's rank.")]
MasterAddrOption = Annotated[
    str | None, typer.Option("--master-addr", help="Address of the rank-0 machine.")
]
MasterPortOption = Annotated[int, typer.Option("--master-port", help="Port on the rank-0 machine.")]


def run(
    preset: Annotated[str, typer.Argument(help="Preset name or YAML file.")],
    name: NameOption = None,
    runs_dir: RunsDirOption = None,
    overrides: SetOption = None,
    force: ForceOption = False,
    auto_resume: AutoResumeOption = False,
    as_json: JsonOption = False,
    nnodes: NnodesOption = None,
    node_rank: NodeRankOption = 0,
    master_addr: MasterAddrOption = None,
    master_port: MasterPortOption = 29500,
) -> None:
    """Check a preset and its data, then start the training detached and return at once."""
    _launch(
        preset, name, runs_dir, overrides, force, auto_resume, as_json,
        nnodes, node_rank, master_addr, master_port,
    )  # fmt: skip


def demo(
    name: NameOption = None,
    runs_dir: RunsDirOption = None,
    overrides: SetOption = None,
    force: ForceOption = False,
    auto_resume: AutoResumeOption = False,
    as_json: JsonOption = False,
    nnodes: NnodesOption = None,
    node_rank: NodeRankOption = 0,
    master_addr: MasterAddrOption = None,
    master_port: MasterPortOption = 29500,
) -> None:
    """Make a tiny model and chat set locally (no download) and train on them: under a minute
    on a laptop CPU."""
    from runner.demo import ensure_demo

    try:
        if as_json:
            ensure_demo()
        else:
            with console.status("building the demo model and data (once)..."):
                ensure_demo()
    except OSError as exc:
        fail([f"demo: cannot write the demo files ({exc})"])
    _launch(
        "demo", name, runs_dir, overrides, force, auto_resume, as_json,
        nnodes, node_rank, master_addr, master_port,
    )  # fmt: skip


# ---------------------------------------------------------------- runs / logs


def _row(s: RunSummary) -> list[str]:
    st = s.state
    step = f"{st.step}/{st.max_steps}" if st.max_steps else str(st.step)
    status: str = st.status
    if status == "interrupted" and st.stopped_by_user:
        status = "interrupted (stopped)"
    elif status in ("interrupted", "failed") and st.failure_reason:
        status = f"{status}: {st.failure_reason[:40]}"
    elif s.alert:
        status = f"{status}: {s.alert[:40]}"
    return [
        s.run_id,
        status,
        step,
        f"{s.last_loss:.4f}" if s.last_loss is not None else "-",
        _duration(s.elapsed_s),
        _duration(s.eta_s),
        f"${s.cost_usd:.2f}" if s.cost_usd is not None else "-",
    ]


def runs(runs_dir: RunsDirOption = None, as_json: JsonOption = False) -> None:
    """List runs, newest first (a run whose process is gone shows as interrupted)."""
    store = _store(runs_dir)
    summaries = store.list()
    if as_json:
        print_json({"runs_dir": str(store.root), "runs": [s.to_json() for s in summaries]})
        return
    if not summaries:
        console.print(f"no runs under {store.root}; start one with `tunedeck demo`")
        return
    table = Table(box=None, pad_edge=False)
    for col in ("run", "status", "step", "loss", "elapsed", "ETA", "cost"):
        table.add_column(col, overflow="fold")
    for s in summaries:
        table.add_row(*_row(s))
    console.print(table)


def logs(
    run_id: RunArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines from the end.")] = 40,
    runs_dir: RunsDirOption = None,
) -> None:
    """Print a run's train.log (the end of it; -f follows until the run ends)."""
    from runner.runs import ACTIVE, LOG_FILE, RunError, effective_status, read_state

    store = _store(runs_dir)
    try:
        run_dir = store.resolve(run_id)
    except RunError as exc:
        fail(exc.lines)
    path = run_dir / LOG_FILE
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 256 * 1024))
            tail = fh.read().splitlines(keepends=True)[-lines:] if lines > 0 else []
            sys.stdout.write(b"".join(tail).decode("utf-8", errors="replace"))
            sys.stdout.flush()
            if not follow:
                return
            fh.seek(size)
            idle_s = 0.0
            while True:
                chunk = fh.read()
                if chunk:
                    sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                    sys.stdout.flush()
                    idle_s = 0.0
                    continue
                state = read_state(run_dir)
                ended = state is None or effective_status(state) not in ACTIVE
                if ended and idle_s > 0.5:  # let the last lines land
                    return
                time.sleep(0.25)
                idle_s += 0.25
    except FileNotFoundError:
        fail([f"{path}: no log yet"], EXIT_FAILED)
    except KeyboardInterrupt:
        return


# ---------------------------------------------------------------- stop / resume


def stop(
    run_id: RunArg,
    now: Annotated[bool, typer.Option("--now", help="Kill at once (no checkpoint).")] = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Return once signalled; do not wait.")
    ] = False,
    runs_dir: RunsDirOption = None,
) -> None:
    """Stop a run: it writes a checkpoint at the next step and ends as interrupted."""
    from runner.launch import settle_stopped, wait_until_gone
    from runner.launch import stop as stop_run
    from runner.runs import RunError

    store = _store(runs_dir)
    try:
        run_dir = store.resolve(run_id)
        before = store.get(run_dir)
        warnings = stop_run(run_dir, now=now)
    except RunError as exc:
        fail(exc.lines)
    for line in warnings:
        err_console.print(Text.assemble(("warning: ", "yellow"), line), soft_wrap=True)
    if now:
        from runner import checkpoints as ckpt
        from runner.runs import CHECKPOINTS_DIR

        latest = ckpt.latest_complete(run_dir / CHECKPOINTS_DIR)
        console.print(
            Text(
                f"killed {before.run_id}; "
                + (
                    f"resume continues from checkpoint-{latest.step}"
                    if latest
                    else "no checkpoint was written yet: a resume starts from step 0"
                )
            )
        )
        return
    if no_wait:
        console.print(Text(f"asked {before.run_id} to stop (checkpoint first)"))
        return
    with console.status(f"{before.run_id}: writing a checkpoint and stopping..."):
        wait_until_gone(before.state, run_dir, timeout_s=900)
    for line in settle_stopped(run_dir):
        err_console.print(Text.assemble(("warning: ", "yellow"), line), soft_wrap=True)
    after = store.get(run_dir)
    console.print(
        Text(
            f"{after.run_id}: {after.state.status} at step {after.state.step}"
            + (
                f"; resume with: tunedeck resume {after.run_id}"
                if after.state.status == "interrupted"
                else ""
            )
        )
    )


def resume(
    run_id: Annotated[str | None, typer.Argument(help="Run id or folder.")] = None,
    all_interrupted: Annotated[
        bool,
        typer.Option(
            "--all-interrupted",
            help="Resume every interrupted run launched with --auto-resume "
            "(not those stopped with `tunedeck stop`).",
        ),
    ] = False,
    runs_dir: RunsDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Continue an interrupted run from its newest complete checkpoint, detached."""
    from runner.runs import RunError

    store = _store(runs_dir)
    if all_interrupted == (run_id is not None):
        fail(["give a run id or --all-interrupted (one of them)"])
    if run_id is not None:
        try:
            result = store.resume(run_id)
        except RunError as exc:
            fail(exc.lines)
        _print_launched(result, as_json, "resumed")
        return
    from runner.runs import STOP_REQUEST_FILE

    results, problems = [], []
    for s in store.list():
        if s.state.status != "interrupted" or not s.state.auto_resume or s.state.stopped_by_user:
            continue
        if s.state.watchdog_stopped:
            continue  # collapsed or non-finite: a person changes the run first
        if (s.run_dir / STOP_REQUEST_FILE).exists():
            continue  # stopped by the user before the run could record it
        try:
            results.append(store.resume(s.run_id))
        except RunError as exc:
            problems += [f"{s.run_id}: {line}" for line in exc.lines]
    if as_json:
        print_json({"resumed": [r.to_json() for r in results], "problems": problems})
    else:
        for r in results:
            console.print(f"resumed {r.run_id} (pid {r.pid})")
        if not results:
            console.print("no interrupted runs to resume")
        for line in problems:
            err_console.print(f"[bold red]error:[/] {line}", markup=True)
    if problems:
        raise typer.Exit(EXIT_FAILED)


# ---------------------------------------------------------------- merge / autostart


def merge(
    run_id: RunArg,
    out: Annotated[
        str | None, typer.Option("--out", help="Folder for the merged model (default: RUN/merged).")
    ] = None,
    runs_dir: RunsDirOption = None,
) -> None:
    """Merge a LoRA run's adapter into its base model and save the merged model."""
    from runner.merge import merge_adapter
    from runner.runs import RunError

    store = _store(runs_dir)
    try:
        run_dir = store.resolve(run_id)
        with console.status("loading the base model and merging the adapter..."):
            target = merge_adapter(run_dir, Path(out).expanduser() if out else None)
    except RunError as exc:
        fail(exc.lines)
    console.print(f"merged model saved to {target}")


def autostart(
    cron: Annotated[bool, typer.Option("--cron", help="Print an @reboot crontab line.")] = False,
    runs_dir: RunsDirOption = None,
) -> None:
    """Print a systemd unit (or a cron line) that resumes interrupted runs when the box comes
    back with the same volume."""
    from presets import locations

    root = locations.runs_dir(runs_dir).expanduser().absolute()
    exe = shutil.which("tunedeck") or f"{sys.executable} -m tui.cli"
    command = f"{exe} resume --all-interrupted --runs-dir {root}"
    if cron:
        console.print(
            "# add with `crontab -e`; runs launched with --auto-resume are resumed at boot\n"
            f"@reboot sleep 30 && {command} >> {root}/autostart.log 2>&1",
            soft_wrap=True,
            markup=False,
        )
        return
    user = os.environ.get("USER") or "root"
    console.print(
        "# save as /etc/systemd/system/tunedeck-resume.service, then:\n"
        "#   systemctl daemon-reload && systemctl enable tunedeck-resume.service\n"
        "# Put HF_TOKEN and the like in an EnvironmentFile if the runs need them.\n"
        "[Unit]\n"
        "Description=Resume interrupted tunedeck runs after a reboot\n"
        "Wants=network-online.target\n"
        "After=network-online.target local-fs.target remote-fs.target\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"User={user}\n"
        f"ExecStart={command}\n"
        "# The runs are detached children: keep them when this one-shot unit finishes.\n"
        "RemainAfterExit=yes\n"
        "KillMode=process\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target",
        soft_wrap=True,
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)
    app.command("runs")(runs)
    app.command("logs")(logs)
    app.command("stop")(stop)
    app.command("resume")(resume)
    app.command("merge")(merge)
    app.command("autostart")(autostart)
