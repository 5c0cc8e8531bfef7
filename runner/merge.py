"""Merging a finished LoRA run's adapter into its base model.

The training stack is imported inside `merge_adapter` only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from runner.runs import CONFIG_FILE, OUTPUT_DIR, RunError, ensure_private_dir

MERGED_DIR = "merged"


def merge_adapter(run_dir: Path, target: Path | None = None) -> Path:
    """Load the base model, apply the run's adapter from `output/`, merge it into the weights
    and save the merged model and tokenizer to `target` (default `RUN/merged`)."""
    from presets import locations
    from presets.store import PresetError, read_yaml, validate

    try:
        preset = validate(read_yaml(run_dir / CONFIG_FILE), str(run_dir / CONFIG_FILE))
    except PresetError as exc:
        raise RunError(exc.lines) from None
    adapter_dir = run_dir / OUTPUT_DIR
    if preset.method == "full":
        raise RunError([f"{run_dir.name} is a full fine-tune: {adapter_dir} is already a model"])
    if not (adapter_dir / "adapter_config.json").is_file():
        raise RunError(
            [f"{adapter_dir}: no adapter yet; merge works on a completed run (see tunedeck runs)"]
        )
    base = locations.expand(preset.model)
    target = (target or run_dir / MERGED_DIR).absolute()
    _check_target(target)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    try:
        # The base in 16/32-bit even for QLoRA: merging into 4-bit weights would lose precision.
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise RunError([f"base model {base}: cannot load ({exc})"]) from None
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    # Written beside the target under a name of its own, then renamed into place: a merge cut
    # short leaves no half model where the target should be, and only this folder is removed.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        ensure_private_dir(staging)
        merged.save_pretrained(staging)
        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(staging)
        _check_target(target)  # someone may have made it while the model was merging
        os.rename(staging, target)  # replaces only an empty folder
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise RunError([f"--out {target}: cannot write the merged model ({exc})"]) from None
    return target


def _check_target(target: Path) -> None:
    """A merge writes a new folder (or fills an empty one); it never replaces what is there."""
    if target.is_dir():
        try:
            empty = not any(target.iterdir())
        except OSError as exc:
            raise RunError([f"--out {target}: cannot read it ({exc.strerror})"]) from None
        if not empty:
            raise RunError(
                [
                    f"--out {target}: the folder is not empty; give a new folder (nothing was written)"
                ]
            )
    elif target.exists() or target.is_symlink():
        raise RunError(
            [f"--out {target}: a file is there; give a new folder (nothing was written)"]
        )
    parent = target.parent
    if not parent.is_dir():
        raise RunError([f"--out {target}: its parent folder {parent} does not exist"])
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunError([f"--out {target}: cannot write into {parent}"])


# ---------------------------------------------------------------- pushing to the Hub


def hub_token_and_user(action: str) -> tuple[str, str]:
    """The Hugging Face token (HF_TOKEN, or one saved by `hf auth login`) and the account it
    belongs to, checked with the Hub before anything is merged; RunError saying why not."""
    import httpx2
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        raise RunError(
            [f"HF_HUB_OFFLINE is set: {action} needs the network; unset it (nothing was done)"]
        )
    token = huggingface_hub.get_token()
    if not token:
        raise RunError(
            [
                f"no Hugging Face token: {action} needs HF_TOKEN set to a token with write "
                "access (huggingface.co/settings/tokens); nothing was done"
            ]
        )
    try:
        user = huggingface_hub.whoami(token=token)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise RunError(
            [f"the Hub at {constants.ENDPOINT} refused the token (HTTP {status}); nothing was done"]
        ) from None
    except (OSError, httpx2.TransportError) as exc:  # no route, refused, timed out, DNS
        raise RunError(
            [f"cannot reach the Hub at {constants.ENDPOINT} ({exc}); nothing was done"]
        ) from None
    return token, str(user.get("name") or "?")


def push_folder(folder: Path, repo_id: str, token: str, private: bool) -> str:
    """Upload a model folder to a Hub model repo (made if missing); its URL."""
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    api = huggingface_hub.HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message="Upload model trained with tunedeck",
        )
    except HfHubHTTPError as exc:
        first = (str(exc).strip().splitlines() or ["?"])[0]
        raise RunError([f"--push {repo_id}: the Hub refused the upload ({first})"]) from None
    except (OSError, httpx2.TransportError) as exc:
        raise RunError([f"--push {repo_id}: the upload was cut off ({exc})"]) from None
    return str(url)
