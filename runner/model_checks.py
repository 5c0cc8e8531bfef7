"""Pre-flight checks of the base model: a local folder holds whole weights and a tokenizer, a
gated hub model has a token to download it with, and a model too large for the CPU is not
trained on it by accident when no GPU is found.

Nothing here touches the network: the token and the hub cache are looked up on disk.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from presets.schema import Preset

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Any one of these is a tokenizer transformers can load (fast, SentencePiece, BPE or WordPiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
)
# The hub gates every repository of these: each account asks for access, then needs a token.
GATED_PREFIXES = ("meta-llama/", "google/gemma")
# Above this many parameters a CPU run of any real dataset takes days (the CPU trains in fp32 at
# tens of tokens per second for a 1 B model), so with no GPU found it is refused unless forced.
CPU_MAX_PARAMS = 1_000_000_000
GIB = 1024**3


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- a local model folder


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a .safetensors file's header (a torn or partial download), or None."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} is empty or cut short ({size} bytes)"
            (header_bytes,) = struct.unpack("<Q", head)
            if header_bytes > size - 8:
                return f"{path.name} is cut short (its header runs past the end of the file)"
            header = json.loads(fh.read(header_bytes))
    except OSError as exc:
        return f"{path.name}: cannot read ({exc.strerror})"
    except (ValueError, UnicodeDecodeError):
        return f"{path.name} is not a safetensors file (its header does not parse)"
    end = max(
        (t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
        default=0,
    )
    if 8 + header_bytes + end > size:
        return (
            f"{path.name} is cut short: {size:,} bytes, its tensors need "
            f"{8 + header_bytes + end:,} (an unfinished download?)"
        )
    return None


def _weights_problem(folder: Path) -> str | None:
    for index_name in INDEX_FILES:
        index = folder / index_name
        if not index.is_file():
            continue
        try:
            shards = sorted(
                set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index_name} is unreadable or has no weight_map"
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            shown = ", ".join(missing[:3]) + (
                f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            )
            return f"{len(missing)} of the {len(shards)} weight shards are missing ({shown})"
        for shard in shards:
            if shard.endswith(".safetensors"):
                problem = _safetensors_problem(folder / shard)
                if problem:
                    return problem
        return None
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            if name.endswith(".safetensors"):
                return _safetensors_problem(path)
            return f"{name} is empty" if path.stat().st_size == 0 else None
    return (
        "no weights (model.safetensors, model.safetensors.index.json with its shards, or "
        "pytorch_model.bin); is the download complete?"
    )


def local_model_problems(folder: Path) -> list[str]:
    """What keeps a folder that has a config.json from loading as a model and tokenizer."""
    problems = []
    weights = _weights_problem(folder)
    if weights:
        problems.append(f"model: {folder}: {weights}")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        problems.append(
            f"model: {folder}: no tokenizer ({', '.join(TOKENIZER_FILES[:2])} or the like); "
            "save it next to the weights (tokenizer.save_pretrained)"
        )
    return problems


def not_a_model_hint(folder: Path) -> str:
    """Why a folder without config.json is not a model, when it can tell."""
    if (folder / "adapter_config.json").is_file():
        return (
            " (it holds a LoRA adapter: give its base model, or merge it first with "
            "`tunedeck merge`)"
        )
    if any(folder.glob("checkpoint-*")):
        return " (it holds checkpoint-N folders: give one of them)"
    return ""


# ---------------------------------------------------------------- a hub model id


def _hub_token_and_cache(model_id: str) -> tuple[bool, bool | None]:
    """(a token is available, the model's config.json is in the local hub cache or None when
    that cannot be told), all from disk."""
    try:
        import huggingface_hub
    except ImportError:
        return bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")), None
    token = huggingface_hub.get_token() is not None
    try:
        cached = huggingface_hub.try_to_load_from_cache(model_id, "config.json")
    except ValueError:  # not a valid repository id
        return token, None
    return token, isinstance(cached, str)


def hub_model_findings(model_id: str) -> Findings:
    """A gated model without a token, or an offline box without the model cached."""
    found = Findings()
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    token, cached = _hub_token_and_cache(model_id)
    if cached:
        return found
    if offline:
        if cached is False:
            found.problems.append(
                f"model {model_id}: HF_HUB_OFFLINE is set and the model is not in the local "
                "hub cache; download it first, or unset HF_HUB_OFFLINE"
            )
        else:
            found.warnings.append(
                f"model {model_id}: a hub id, and HF_HUB_OFFLINE=1: must be cached"
            )
        return found
    if token:
        return found
    login = "set HF_TOKEN or run `hf auth login`"
    if model_id.startswith(GATED_PREFIXES):
        found.problems.append(
            f"model {model_id}: gated on the Hugging Face hub and no token found; request "
            f"access on its page, then {login}"
        )
    else:
        found.warnings.append(
            f"model {model_id}: not in the local hub cache and no Hugging Face token found; if "
            f"it is gated the download fails at the start of the run ({login})"
        )
    return found


# ---------------------------------------------------------------- no GPU: the CPU


@dataclass(frozen=True)
class CpuVerdict:
    problem: str | None
    """Why the run should not start on the CPU (refused unless forced)."""
    warning: str | None
    fit_check: str


def cpu_run_verdict(preset: Preset, no_gpu_reason: str, ram_available_bytes: int) -> CpuVerdict:
    """With no GPU found, whether to train on the CPU: refused (unless forced) for a model over
    `CPU_MAX_PARAMS` or a plan larger than the free RAM, or of unknown size while the preset
    names a GPU; said loudly when the preset names a GPU."""
    from planner import PlanError, plan, request_from_preset

    planned_for = f"; the preset is planned for {preset.gpu}" if preset.gpu else ""
    advice = "check the NVIDIA driver (nvidia-smi), or --force to train on the CPU anyway"
    ram_gib = ram_available_bytes / GIB
    try:
        # The CPU trains in fp32 (runner.train_build.load_dtype); RAM stands in for the device.
        request = replace(
            request_from_preset(preset),
            gpu=None,
            gpu_memory_gib=max(ram_gib, 0.01),
            precision="fp32",
        )
        report = plan(request)
    except PlanError:
        if preset.gpu:
            return CpuVerdict(
                f"no GPU found ({no_gpu_reason}){planned_for}, and the size of {preset.model} "
                f"is not known here; {advice}",
                None,
                "no GPU: model size unknown",
            )
        return CpuVerdict(
            None,
            f"no GPU found ({no_gpu_reason}): training runs on the CPU",
            "no GPU: not checked",
        )
    params = report.model.total_params
    option = report.option(preset.method)
    need_gib = option.device_peak_gib * preset.launch.num_gpus if option else 0.0
    if params > CPU_MAX_PARAMS:
        return CpuVerdict(
            f"no GPU found ({no_gpu_reason}){planned_for}: {preset.model} has "
            f"{params / 1e9:.1f} B parameters, too many to train on the CPU (days per epoch, "
            f"about {need_gib:.0f} GiB of RAM); {advice}",
            None,
            "no GPU: too large for the CPU",
        )
    if option is not None and option.fits is False:
        return CpuVerdict(
            f"no GPU found ({no_gpu_reason}){planned_for}: on the CPU the run needs about "
            f"{need_gib:.1f} GiB of RAM, {ram_gib:.1f} GiB is free; {advice}",
            None,
            "no GPU: does not fit in RAM",
        )
    warning = (
        f"no GPU found ({no_gpu_reason}){planned_for}: training runs on the CPU"
        if preset.gpu
        else None
    )
    return CpuVerdict(None, warning, "no GPU: not checked")
