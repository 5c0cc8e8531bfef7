"""TRL's and transformers' own checks of a preset's `training:` arguments, before launching.

The preset schema checks names, types and ranges without importing anything heavy. What TRL and
transformers check themselves (strategies that must match, an optimizer whose package is missing,
a scheduler missing its arguments, a seed numpy refuses) is found only by building the real
`SFTConfig` / `DPOConfig`, which imports torch and takes seconds. That happens here, in a child
process, so neither the app nor the planner ever loads torch:

    python -m runner.config_check [PRESET.yaml]      # the resolved preset, or YAML on stdin

prints one JSON object, `{"problems": [{"field": ..., "message": ...}], "notes": [...],
"checked_with": ...}`, built from the very arguments `runner.train_build` gives the config class.
`check_training_config(preset)` runs it for the launcher; without the training stack installed
it says so in a warning and checks nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from presets.schema import Preset

# Importing torch, transformers and TRL takes 5-10 s on a loaded machine; give it room.
CHILD_TIMEOUT_S = 240.0
TRAINING_STACK = ("torch", "transformers", "trl")
# Errors the libraries raise for arguments they refuse.
_REFUSALS = (ValueError, TypeError, ImportError, RuntimeError, OverflowError, KeyError)


class _Findings(Protocol):
    problems: list[str]
    warnings: list[str]


@dataclass(frozen=True)
class ConfigReport:
    """What the check found: `problems` refuse the launch, `warnings` do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add_to(self, findings: _Findings) -> None:
        """Append to a preflight's problems and warnings."""
        findings.problems.extend(self.problems)
        findings.warnings.extend(self.warnings)


# ---------------------------------------------------------------- launcher side (no torch)

_cache: dict[str, ConfigReport] = {}
# One child at a time: an app flicking through presets must not start a dozen torch imports.
_lock = threading.Lock()


def missing_training_stack() -> list[str]:
    """The packages of the training stack that are not installed (found without importing)."""
    return [name for name in TRAINING_STACK if find_spec(name) is None]


def check_training_config(preset: Preset) -> ConfigReport:
    """Build the run's real TRL config in a child process and report what it refuses. The
    same resolved preset is checked once per process."""
    missing = missing_training_stack()
    if missing:
        return ConfigReport(
            warnings=[
                f"training: TRL's own checks skipped: {', '.join(missing)} not installed "
                "(pip install 'tunedeck[train]')"
            ]
        )
    from presets.store import preset_to_yaml

    text = preset_to_yaml(preset)
    with _lock:
        if text not in _cache:
            _cache[text] = _run_child(text)
        return _cache[text]


def _run_child(text: str) -> ConfigReport:
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["HF_HUB_OFFLINE"] = "1"  # nothing here needs the hub
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        out = subprocess.run(
            [sys.executable, "-m", "runner.config_check"],
            input=text,
            capture_output=True,
            text=True,
            env=env,
            timeout=CHILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return ConfigReport(
            warnings=[f"training: TRL's own checks took over {CHILD_TIMEOUT_S:.0f} s; skipped"]
        )
    except OSError as exc:
        return ConfigReport(warnings=[f"training: TRL's own checks could not start ({exc})"])
    try:
        data = json.loads(out.stdout)
        problems = [f"{p['field']}: {p['message']}" for p in data["problems"]]
    except (ValueError, KeyError, TypeError):
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return ConfigReport(warnings=[f"training: TRL's own checks failed to run ({last})"])
    return ConfigReport(problems=problems)


# ---------------------------------------------------------------- child side (imports torch)


def _field_of(message: str, training: dict[str, Any]) -> str:
    """The `training.<key>` a library message is about: the preset's key it names first, else
    the section."""
    found = []
    for key in training:
        hit = re.search(rf"(?<![A-Za-z0-9_]){re.escape(key)}(?![A-Za-z0-9_])", message)
        if hit:
            found.append((hit.start(), key))
    return f"training.{min(found)[1]}" if found else "training"


def _first_lines(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:400] + ("..." if len(text) > 400 else "")


def _one_rank_world(folder: Path) -> None:
    """Stand in for torchrun's process group with a one-process one, so a distributed run's
    arguments build here as they do in each of its ranks. The group meets through a file: no
    port is opened and nothing is sent."""
    import torch.distributed as dist

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=(folder / "process-group").as_uri(), rank=0, world_size=1
    )


def problems_of(preset: Preset) -> tuple[list[dict[str, str]], list[str]]:
    """Build the run's TRL config as the training will, then the optimizer class, the learning
    rate schedule and the seeds as the Trainer does; every refusal as {field, message}."""
    import tempfile

    import torch
    from transformers import Trainer, get_scheduler, set_seed

    from runner.train_build import config_class, training_argument_values

    world_size = preset.launch.num_gpus * preset.launch.nnodes
    problems: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="tunedeck-config-check-") as tmp:
        values, notes = training_argument_values(preset, Path(tmp), world_size)
        if world_size > 1:
            _one_rank_world(Path(tmp))
        try:
            args = config_class(preset.trainer)(**values)
        except _REFUSALS as exc:
            message = _first_lines(exc)
            return [{"field": _field_of(message, preset.training), "message": message}], notes
        try:
            Trainer.get_optimizer_cls_and_kwargs(args)
        except _REFUSALS as exc:
            message = _first_lines(exc)
            # GaLore, APOLLO and LOMO need the model itself; that waits for the run.
            if not re.search(r"pass a `?model`?", message):
                problems.append({"field": "training.optim", "message": message})
        steps = args.max_steps if args.max_steps > 0 else 1000
        try:
            weight = torch.nn.Parameter(torch.zeros(1))
            get_scheduler(
                args.lr_scheduler_type,
                torch.optim.SGD([weight], lr=args.learning_rate),
                num_warmup_steps=args.get_warmup_steps(steps),
                num_training_steps=steps,
                scheduler_specific_kwargs=args.lr_scheduler_kwargs,
            )
        except _REFUSALS as exc:
            problems.append({"field": "training.lr_scheduler_type", "message": _first_lines(exc)})
        for key in ("seed", "data_seed"):
            seed = getattr(args, key, None)
            if seed is None:
                continue
            try:
                set_seed(seed)
            except _REFUSALS as exc:
                problems.append({"field": f"training.{key}", "message": _first_lines(exc)})
    return problems, notes


def main(argv: list[str]) -> int:
    # The libraries print to stdout (bitsandbytes at import, for one): keep it for the JSON.
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import yaml

    from presets import yaml_io
    from presets.store import PresetError, read_yaml, validate

    notes: list[str] = []
    try:
        if argv:
            data = read_yaml(Path(argv[0]))
            where = argv[0]
        else:
            data = yaml_io.load(sys.stdin.read())
            where = "<stdin>"
        preset = validate(data, where)
    except PresetError as exc:
        problems = [{"field": "preset", "message": line} for line in exc.lines]
    except yaml.YAMLError as exc:
        problems = [{"field": "preset", "message": f"<stdin>: not valid YAML ({exc})"}]
    else:
        problems, notes = problems_of(preset)
    from importlib.metadata import version

    report = {
        "problems": problems,
        "notes": notes,
        "checked_with": f"trl {version('trl')}, transformers {version('transformers')}",
    }
    json_out.write(json.dumps(report) + "\n")
    json_out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
