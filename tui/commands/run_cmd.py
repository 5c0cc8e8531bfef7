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

from tui.commands.common import (
    EXIT_FAILED,
    console,
    fail,
    print_json,
    print_problem,
    print_warning,
)
from tui.widgets.format import one_line

if TYPE_CHECKING:
    from rich.console import RenderableType

    from presets.schema import Preset
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

    root = locations.runs_dir(runs_dir)
    if root.exists() and not root.is_dir():
        fail([f"runs folder {root}: not a folder; choose another with --runs-dir or TUNEDECK_RUNS"])
    return RunStore(root)


def _distributed_problems(nnodes: int, node_rank: int, master_port: int) -> list[str]:
    """The multi-machine flags checked before anything starts (torchrun would fail on them
    only after the run folder exists, or wait for a machine that is never coming)."""
    problems = []
    if nnodes < 1:
        problems.append(f"--nnodes must be 1 or more, got {nnodes}")
    elif not 0 <= node_rank < nnodes:
        problems.append(
            f"--node-rank must be from 0 to {nnodes - 1} with --nnodes {nnodes}, got {node_rank}"
        )
    if not 1 <= master_port <= 65535:
        problems.append(f"--master-port must be a TCP port from 1 to 65535, got {master_port}")
    return problems


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
    _ensure_demo_files(preset, as_json)
    dist = Distributed(
        nnodes=preset.launch.nnodes if nnodes is None else nnodes,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
    )
    problems = _distributed_problems(dist.nnodes, dist.node_rank, dist.master_port)
    if problems:
        fail(problems)
    root = locations.runs_dir(runs_dir)
    try:
        if as_json:
            result = launch(root, preset, name, force, auto_resume or None, dist)
        else:
            with console.status("checking the preset, the data, TRL's arguments and the fit..."):
                result = launch(root, preset, name, force, auto_resume or None, dist)
    except RunError as exc:
        fail(exc.lines)
    _print_launched(result, as_json, f"started {result.run_id}")


def _ensure_demo_files(preset: Preset, quiet: bool) -> None:
    """Make the demo model and data when the preset trains on them and they are missing: they
    are built here, with no download, so there is nothing to refuse."""
    from runner.demo import demo_ready, ensure_demo, uses_demo

    if not uses_demo(preset) or demo_ready():
        return
    try:
        if quiet:
            ensure_demo()
        else:
            with console.status("building the demo model and data (once, nothing downloaded)..."):
                ensure_demo()
    except OSError as exc:
        fail([f"demo: cannot write the demo files ({exc})"])


def _print_launched(result: LaunchResult, as_json: bool, headline: str) -> None:
    if as_json:
        print_json(result.to_json())
        return
    for line in result.warnings:
        print_warning(line)
    console.print(f"{headline}  (pid {result.pid})", markup=False)
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
    bool,
    typer.Option(
        "--force",
        help="Launch even when the planner says it does not fit, or when no GPU is found and "
        "the model is too large for the CPU.",
    ),
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
    probe: Annotated[
        bool,
        typer.Option(
            "--probe",
            help="Probe first (`tunedeck probe`): a few measured steps on this box; refuse "
            "when they do not fit (unless --force), launch on the measured plan otherwise.",
        ),
    ] = False,
) -> None:
    """Check a preset and its data, then start the training detached and return at once."""
    if probe:
        from tui.commands.probe_cmd import probe_then_launch

        probe_then_launch(
            preset, name, runs_dir, overrides, force, auto_resume, as_json,
            nnodes, node_rank, master_addr, master_port,
        )  # fmt: skip
        return
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
    _launch(
        "demo", name, runs_dir, overrides, force, auto_resume, as_json,
        nnodes, node_rank, master_addr, master_port,
    )  # fmt: skip


# ---------------------------------------------------------------- runs / logs


RUNS_COLUMNS = ("run", "status", "step", "loss", "elapsed", "ETA", "cost", "mirror")
# On a narrow terminal these columns go first, in this order: the run id is never cut or wrapped
# (two runs of one preset differ only in their last characters).
RUNS_DROP_ORDER = ("elapsed", "mirror", "cost", "ETA", "loss")
COLUMN_GAP = 2  # the table's padding: one space each side of a column, none at the edges


def _clip(text: str, width: int) -> str:
    """At most `width` characters, cut at a space where one is near the end, else mid-word."""
    if len(text) <= width:
        return text
    cut = text.rfind(" ", width // 2, width)
    return text[: cut if cut > 0 else width - 1].rstrip() + "…"


def _row(s: RunSummary) -> dict[str, str]:
    st = s.state
    step = f"{st.step}/{st.max_steps}" if st.max_steps else str(st.step)
    status: str = st.status
    if status == "interrupted" and st.stopped_by_user:
        status = "interrupted (stopped)"
    elif status in ("interrupted", "failed") and st.failure_reason:
        status = f"{status}: {_clip(one_line(st.failure_reason), 40)}"
    elif s.alert:
        status = f"{status}: {_clip(one_line(s.alert), 40)}"
    from runner.mirror import mirror_text
    from runner.on_finish import finish_text, read_finish

    pending = read_finish(s.run_dir)
    if pending is not None and pending.status == "waiting":
        status += f" ({finish_text(pending)})"
    cells = (
        one_line(s.run_id),
        status,
        step,
        f"{s.last_loss:.4f}" if s.last_loss is not None else "-",
        _duration(s.elapsed_s),
        _duration(s.eta_s),
        f"${s.cost_usd:.2f}" if s.cost_usd is not None else "-",
        one_line(mirror_text(st) or "-"),
    )
    return dict(zip(RUNS_COLUMNS, cells, strict=True))


def runs_columns(rows: list[dict[str, str]], width: int) -> list[str] | None:
    """The columns that fit `width` with every cell whole (the status may wrap between words);
    None when not even the run id, status and step fit side by side."""
    from rich.cells import cell_len

    def needed(column: str) -> int:
        cells = [row[column] for row in rows]
        if column == "status":  # wraps between words
            cells = [word for cell in cells for word in cell.split()]
        return max(cell_len(text) for text in [column, *cells])

    # The mirror's column only where some run has a mirror.
    columns = [c for c in RUNS_COLUMNS if c != "mirror" or any(r[c] != "-" for r in rows)]
    drops = iter(d for d in RUNS_DROP_ORDER if d in columns)
    while sum(needed(c) for c in columns) + COLUMN_GAP * (len(columns) - 1) > width:
        dropped = next(drops, None)
        if dropped is None:
            return None
        columns.remove(dropped)
    return columns


def runs_table(summaries: list[RunSummary], width: int) -> RenderableType:
    """The runs as a table that fits `width`, or, narrower than the essentials, one block a run
    (its id on a line of its own)."""
    rows = [_row(s) for s in summaries]
    columns = runs_columns(rows, width)
    if columns is None:
        from rich.console import Group
        from rich.padding import Padding

        blocks: list[RenderableType] = []
        for row in rows:
            rest = (f"{c} {row[c]}" for c in RUNS_COLUMNS[2:] if row[c] != "-")
            blocks.append(Text(row["run"], style="bold"))
            blocks.append(Padding(Text(" · ".join([row["status"], *rest])), (0, 0, 0, 2)))
        return Group(*blocks)
    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=column != "status", overflow="fold")
    for row in rows:
        table.add_row(*(Text(row[c]) for c in columns))  # a failure reason is not markup
    return table


def runs(runs_dir: RunsDirOption = None, as_json: JsonOption = False) -> None:
    """List runs, newest first (a run whose process is gone shows as interrupted)."""
    from runner.curves import run_signals

    store = _store(runs_dir)
    summaries = store.list()
    signals = {s.run_id: run_signals(s.run_dir, s.state) for s in summaries}
    if as_json:
        listed = [{**s.to_json(), **signals[s.run_id]} for s in summaries]
        print_json({"runs_dir": str(store.root), "runs": listed})
        return
    if not summaries:
        console.print(f"no runs under {store.root}; start one with `tunedeck demo`", markup=False)
        return
    console.print(runs_table(summaries, console.width), crop=False)
    for s in summaries:
        found = signals[s.run_id]
        run_id = one_line(s.run_id)
        if found["early_stopped"]:
            console.print(Text(f"{run_id}: {found['early_stopped']}"), soft_wrap=True)
        if found["overfitting"]:
            console.print(
                Text.assemble((f"{run_id}: warning: ", "yellow"), found["overfitting"]["message"]),
                soft_wrap=True,
            )


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
        fail(exc.lines + _finish_hint(store, run_id))
    for line in warnings:
        print_warning(line)
    if now:
        from tui.run_messages import killed_text, newest_complete_checkpoint

        start = newest_complete_checkpoint(run_dir)
        console.print(killed_text(before.run_id, before.state.step, start), soft_wrap=True)
        return
    if no_wait:
        console.print(Text(f"asked {before.run_id} to stop (checkpoint first)"))
        return
    # A status given a str reads it as markup whatever the console says.
    with console.status(Text(f"{before.run_id}: writing a checkpoint and stopping...")):
        wait_until_gone(before.state, run_dir, timeout_s=900)
    for line in settle_stopped(run_dir):
        print_warning(line)
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
    from_url: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Recreate the run here from its mirror, URL/<run id> (launch.mirror), and "
            "resume it from the newest checkpoint that checks out.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="With --from: take over a run whose box seems alive."),
    ] = False,
    runs_dir: RunsDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Continue an interrupted run from its newest complete checkpoint, detached."""
    from runner.runs import RunError
    from tui.run_messages import resumed_text

    store = _store(runs_dir)
    if [all_interrupted, run_id is not None, from_url is not None].count(True) != 1:
        fail(["give a run id, --from URL/<run id> or --all-interrupted (one of them)"])
    if from_url is not None:
        from runner.launch import resume_from

        try:
            if as_json:
                result = resume_from(store.root, from_url, force=force)
            else:
                with console.status("fetching the run from its mirror..."):
                    result = resume_from(store.root, from_url, force=force)
        except RunError as exc:
            fail(exc.lines)
        _print_launched(result, as_json, "resumed")
        return
    if run_id is not None:
        try:
            result = store.resume(run_id)
        except RunError as exc:
            fail(exc.lines)
        verb = resumed_text(result.run_id, result.start_step, result.start_checkpoint)
        _print_launched(result, as_json, verb)
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
            line = resumed_text(r.run_id, r.start_step, r.start_checkpoint)
            console.print(f"{line} (pid {r.pid})", markup=False)
        if not results:
            console.print("no interrupted runs to resume")
        for line in problems:
            print_problem(line)
    if problems:
        raise typer.Exit(EXIT_FAILED)


# ---------------------------------------------------------------- merge / autostart


def merge(
    run_id: RunArg,
    out: Annotated[
        str | None, typer.Option("--out", help="Folder for the merged model (default: RUN/merged).")
    ] = None,
    push: Annotated[
        str | None,
        typer.Option(
            "--push",
            help="Also upload the model to this Hugging Face Hub repo (user/name); the token "
            "comes from HF_TOKEN.",
        ),
    ] = None,
    private: Annotated[
        bool, typer.Option("--private", help="Make the pushed repo private when it is new.")
    ] = False,
    runs_dir: RunsDirOption = None,
) -> None:
    """Merge a LoRA run's adapter into its base model and save the merged model; --push also
    uploads it (a full fine-tune's model as it is) to the Hugging Face Hub."""
    from runner.merge import hub_token_and_user, merge_adapter, push_folder
    from runner.runs import RunError

    store = _store(runs_dir)
    try:
        run_dir = store.resolve(run_id)
        token = None
        if push is not None:
            if push.count("/") != 1 or not all(push.split("/")):
                raise RunError([f"--push {push}: give the repo as user/name (or org/name)"])
            with console.status("checking the Hugging Face token..."):
                token, user = hub_token_and_user(f"--push {push}")
            console.print(Text(f"pushing as {user}"))
        target = Path(out).expanduser() if out else None
        folder = _model_to_push(run_dir, target) if push is not None else None
        if folder is None:
            with console.status("loading the base model and merging the adapter..."):
                folder = merge_adapter(run_dir, target)
            console.print(Text(f"merged model saved to {folder}"))
        else:
            console.print(Text(f"pushing the model already in {folder}"))
        if push is not None and token is not None:
            with console.status(f"uploading {folder} to {push}..."):
                url = push_folder(folder, push, token, private)
            console.print(Text(f"pushed to {url}"))
    except RunError as exc:
        fail(exc.lines)


def _model_to_push(run_dir: Path, target: Path | None) -> Path | None:
    """A model that needs no merge before a push: a full fine-tune's output, or a merged folder
    already there (the default one when --out is not given); None when a merge must come first."""
    from runner.merge import MERGED_DIR
    from runner.runs import CONFIG_FILE, OUTPUT_DIR

    output = run_dir / OUTPUT_DIR
    import yaml

    try:
        method = (yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8")) or {}).get(
            "method"
        )
    except (OSError, yaml.YAMLError, AttributeError):
        method = None
    if method == "full" and (output / "config.json").is_file():
        return output
    merged = target if target is not None else run_dir / MERGED_DIR
    return merged if (merged / "config.json").is_file() else None


def autostart(
    cron: Annotated[bool, typer.Option("--cron", help="Print an @reboot crontab line.")] = False,
    from_url: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="For a fresh box: resume this run from its mirror, URL/<run id>, at boot "
            "(or from its own folder once it is here).",
        ),
    ] = None,
    runs_dir: RunsDirOption = None,
) -> None:
    """Print a systemd unit (or a cron line) that resumes interrupted runs when the box comes
    back with the same volume, or (--from) brings a run back from its mirror on a new box."""
    import shlex

    from presets import locations

    root = locations.runs_dir(runs_dir).expanduser().absolute()
    exe = shutil.which("tunedeck") or f"{sys.executable} -m tui.cli"
    command = f"{exe} resume --all-interrupted --runs-dir {root}"
    # With --from, the unit runs at every boot: a run that has completed since is no failure.
    ignore_failure = ""
    if from_url is not None:
        command = f"{exe} resume --from {shlex.quote(from_url)} --runs-dir {root}"
        ignore_failure = "-"
    if cron:
        console.print(
            "# add with `crontab -e`; "
            + (
                "the run comes back from its mirror"
                if from_url
                else "runs launched with --auto-resume are resumed"
            )
            + " at boot\n"
            f"@reboot sleep 30 && {command} >> {root}/autostart.log 2>&1",
            soft_wrap=True,
            markup=False,
        )
        return
    user = os.environ.get("USER") or "root"
    console.print(
        "# save as /etc/systemd/system/tunedeck-resume.service, then:\n"
        "#   systemctl daemon-reload && systemctl enable tunedeck-resume.service\n"
        "# Put HF_TOKEN, AWS_* (an s3:// mirror) and the like in an EnvironmentFile if the "
        "runs need them.\n"
        "[Unit]\n"
        "Description=Resume interrupted tunedeck runs after a reboot\n"
        "Wants=network-online.target\n"
        "After=network-online.target local-fs.target remote-fs.target\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"User={user}\n"
        f"ExecStart={ignore_failure}{command}\n"
        "# The runs are detached children: keep them when this one-shot unit finishes.\n"
        "RemainAfterExit=yes\n"
        "KillMode=process\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target",
        soft_wrap=True,
        markup=False,
    )


def _finish_hint(store: RunStore, run_id: str) -> list[str]:
    """For a refused stop: the run's on_finish action that is still waiting, if any."""
    from runner.on_finish import finish_text, read_finish
    from runner.runs import RunError

    try:
        pending = read_finish(store.resolve(run_id))
    except RunError:
        return []
    if pending is None or pending.status != "waiting":
        return []
    return [f"{finish_text(pending)}; cancel it with: tunedeck cancel-finish {run_id}"]


def cancel_finish(run_id: RunArg, runs_dir: RunsDirOption = None) -> None:
    """Cancel a finished run's on_finish action (shutdown or command) during its grace period."""
    from runner.on_finish import cancel
    from runner.runs import RunError

    store = _store(runs_dir)
    try:
        run_dir = store.resolve(run_id)
        info = cancel(run_dir)
    except RunError as exc:
        fail(exc.lines)
    what = "shutdown" if info.action == "shutdown" else info.action
    console.print(Text(f"{run_dir.name}: on_finish cancelled ({what} will not run)"))


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)
    app.command("runs")(runs)
    app.command("logs")(logs)
    app.command("stop")(stop)
    app.command("resume")(resume)
    app.command("merge")(merge)
    app.command("autostart")(autostart)
    app.command("cancel-finish")(cancel_finish)
