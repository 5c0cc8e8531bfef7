"""Pre-flight of the base model: whole weights and a tokenizer in a local folder, a token for a
gated hub model, and no silent CPU run of a large model when no GPU is found. No test sends a
packet: the token and the hub cache are looked up on disk, under a temporary HF_HOME."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from fake_nvml import no_driver

from presets import load_preset
from runner.gpu import GpuSource
from runner.launch import launch, preflight
from runner.model_checks import CPU_MAX_PARAMS, cpu_run_verdict
from runner.runs import RunError

GIB = 1024**3


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face home: no stored token, nothing cached."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    return home


def model_problems(model: Path, demo_home: Path) -> list[str]:
    pf = preflight(load_preset("demo", [f"model={model}"]), check_data=False)
    return [p for p in pf.problems if p.startswith("model")]


def copy_demo_model(demo_home: Path, tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(demo_home / "data" / "demo" / "model", model)
    return model


# ---------------------------------------------------------------- local folders


def test_a_folder_with_only_config_json_is_refused(demo_home: Path, tmp_path: Path) -> None:
    model = tmp_path / "only-config"
    model.mkdir()
    shutil.copy(demo_home / "data" / "demo" / "model" / "config.json", model)
    problems = model_problems(model, demo_home)
    assert any("no weights (model.safetensors" in p and str(model) in p for p in problems)
    assert any("no tokenizer (tokenizer.json, tokenizer.model" in p for p in problems)


def test_the_whole_demo_model_passes(demo_home: Path) -> None:
    assert model_problems(demo_home / "data" / "demo" / "model", demo_home) == []


def test_a_cut_short_safetensors_file_is_refused(demo_home: Path, tmp_path: Path) -> None:
    model = copy_demo_model(demo_home, tmp_path)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    (problem,) = model_problems(model, demo_home)
    assert "model.safetensors is cut short" in problem and "unfinished download" in problem
    weights.write_bytes(b"")
    (problem,) = model_problems(model, demo_home)
    assert "model.safetensors is empty or cut short (0 bytes)" in problem


def test_a_sharded_model_with_a_missing_shard_is_refused(demo_home: Path, tmp_path: Path) -> None:
    model = copy_demo_model(demo_home, tmp_path)
    weights = model / "model.safetensors"
    (header_bytes,) = struct.unpack("<Q", weights.read_bytes()[:8])
    names = [
        k for k in json.loads(weights.read_bytes()[8 : 8 + header_bytes]) if k != "__metadata__"
    ]
    weights.rename(model / "model-00001-of-00002.safetensors")
    weight_map = {n: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, n in enumerate(names)}
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (problem,) = model_problems(model, demo_home)
    assert "1 of the 2 weight shards are missing (model-00002-of-00002.safetensors)" in problem


def test_an_adapter_folder_is_named_as_such(demo_home: Path, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (problem,) = model_problems(adapter, demo_home)
    assert "no config.json in it" in problem and "holds a LoRA adapter" in problem


# ---------------------------------------------------------------- hub ids


def hub_findings(model: str, **env: str) -> tuple[list[str], list[str]]:
    """Preflight of a hub model in a fresh interpreter, as each command runs: huggingface_hub
    reads where its token and cache live once, at import."""
    code = (
        "import json, sys\n"
        "from fake_nvml import FakeGpu, FakeNvml\n"
        "from presets import load_preset\n"
        "from runner.gpu import GpuSource\n"
        "from runner.launch import preflight\n"
        "preset = load_preset('lora-llama3.1-8b-80gb', [f'model={sys.argv[1]}'])\n"
        "pf = preflight(preset, check_data=False, gpu_source=GpuSource(nvml=FakeNvml([FakeGpu()])))\n"
        "print(json.dumps([pf.problems, pf.warnings]))\n"
    )
    tests = Path(__file__).resolve().parent
    full_env = {**os.environ, **env}
    full_env["PYTHONPATH"] = os.pathsep.join([str(tests.parent), str(tests)])
    out = subprocess.run(
        [sys.executable, "-c", code, model],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    problems, warnings = json.loads(out.stdout.strip().splitlines()[-1])
    return problems, warnings


def test_a_gated_model_without_a_token_is_refused(
    hf_home: Path, monkeypatch: pytest.MonkeyPatch, tunedeck_home: Path
) -> None:
    problems, _ = hub_findings("meta-llama/Llama-3.1-8B")
    assert any(
        "meta-llama/Llama-3.1-8B: gated on the Hugging Face hub and no token found" in p
        and "HF_TOKEN" in p
        for p in problems
    ), problems
    # With a token in the environment, or stored by `hf auth login`, it goes ahead.
    problems, _ = hub_findings("meta-llama/Llama-3.1-8B", HF_TOKEN="hf_" + "x" * 34)
    assert not any("gated" in p for p in problems)
    hf_home.mkdir(parents=True, exist_ok=True)
    (hf_home / "token").write_text("hf_" + "y" * 34)
    problems, _ = hub_findings("meta-llama/Llama-3.1-8B")
    assert not any("gated" in p for p in problems)


def test_a_cached_gated_model_needs_no_token(
    hf_home: Path, monkeypatch: pytest.MonkeyPatch, tunedeck_home: Path
) -> None:
    # The hub cache's layout: models--org--name/snapshots/<rev>/ and refs/main naming <rev>.
    repo = hf_home / "hub" / "models--meta-llama--Llama-3.1-8B"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    problems, warnings = hub_findings("meta-llama/Llama-3.1-8B")
    assert not any("meta-llama" in line for line in problems + warnings)


def test_offline_without_the_model_cached_is_refused(
    hf_home: Path, monkeypatch: pytest.MonkeyPatch, tunedeck_home: Path
) -> None:
    problems, _ = hub_findings("Qwen/Qwen2.5-7B", HF_HUB_OFFLINE="1")
    assert any(
        "HF_HUB_OFFLINE is set and the model is not in the local hub cache" in p for p in problems
    )


def test_an_ungated_model_without_a_token_is_a_warning(
    hf_home: Path, monkeypatch: pytest.MonkeyPatch, tunedeck_home: Path
) -> None:
    problems, warnings = hub_findings("Qwen/Qwen2.5-7B")
    assert not any("Qwen" in p for p in problems)
    assert any("no Hugging Face token found; if it is gated" in w for w in warnings)


# ---------------------------------------------------------------- no GPU found


def test_no_gpu_and_a_large_model_is_refused_unless_forced(
    hf_home: Path, monkeypatch: pytest.MonkeyPatch, demo_home: Path
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    preset = load_preset(
        "lora-llama3.1-8b-80gb", [f"dataset.path={demo_home / 'data' / 'demo' / 'chat.jsonl'}"]
    )
    pf = preflight(preset, check_data=False, gpu_source=GpuSource(nvml=no_driver()))
    assert pf.fit_check == "no GPU: too large for the CPU"
    assert pf.fit_problem is not None
    assert pf.fit_problem.startswith("no GPU found (no NVIDIA driver found)")
    assert "the preset is planned for H100 SXM" in pf.fit_problem
    assert "8.0 B parameters" in pf.fit_problem and "--force" in pf.fit_problem
    root = demo_home / "runs"
    with pytest.raises(RunError) as err:
        launch(root, preset, name="cpu-8b", gpu_source=GpuSource(nvml=no_driver()))
    assert any("too many to train on the CPU" in line for line in err.value.lines)
    assert any("--force launches anyway" in line for line in err.value.lines)
    assert not (root / "cpu-8b").exists()


def test_no_gpu_and_a_tiny_model_warns_when_the_preset_names_a_gpu(demo_home: Path) -> None:
    plain = preflight(load_preset("demo"), check_data=False, gpu_source=GpuSource(nvml=no_driver()))
    assert plain.fit_problem is None and plain.fit_check == "no GPU: not checked"
    assert not any("no GPU found" in w for w in plain.warnings)
    named = preflight(
        load_preset("demo", ["gpu=RTX 4090"]),
        check_data=False,
        gpu_source=GpuSource(nvml=no_driver()),
    )
    assert named.fit_problem is None
    assert any(
        "the preset is planned for RTX 4090: training runs on the CPU" in w for w in named.warnings
    )


def test_a_small_model_larger_than_the_free_ram_is_refused(tunedeck_home: Path) -> None:
    # Qwen2.5-0.5B is under the parameter bound; a full fine-tune in fp32 needs ~8 GiB or more.
    preset = load_preset("full-llama3.2-1b", ["model=Qwen/Qwen2.5-0.5B", "gpu=null"])
    verdict = cpu_run_verdict(preset, "no NVIDIA driver found", ram_available_bytes=2 * GIB)
    assert verdict.problem is not None and "GiB of RAM, 2.0 GiB is free" in verdict.problem
    assert verdict.fit_check == "no GPU: does not fit in RAM"
    roomy = cpu_run_verdict(preset, "no NVIDIA driver found", ram_available_bytes=512 * GIB)
    assert roomy.problem is None
    assert CPU_MAX_PARAMS == 1_000_000_000
