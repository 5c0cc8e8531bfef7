#!/usr/bin/env bash
# Ground truth on a GPU box with no network, in one command that ends within 9 minutes:
#
#     bash benchmarks/gpu_truth.sh
#
# Wheels in .whl/ (see docs/benchmarks/gpu.md for the `pip download` line) are installed into
# /tmp/site first, so a box whose image lacks TRL, bitsandbytes or datasets needs no network.
# Results (the JSON, the log, nvidia-smi and the library versions) go to $OUT when set, else
# benchmarks/results/. Environment knobs, for splitting the work over two leases:
#   GPU_TRUTH_SECTIONS  default sigterm,presets,grid
#   GPU_TRUTH_MODELS    default: gpu_truth.py's four (Qwen2.5-0.5B, Llama-3.2-1B/3B, Llama-3.1-8B)
#   GPU_TRUTH_BUDGET_S  no new case starts after this many seconds of the benchmark (default 400)
#   GPU_TRUTH_LIMIT_S   hard stop for the benchmark (default 495; the JSON is written per case)
#   PYTHON              the interpreter with torch (default python3, as on the lent GPU box)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TUNEDECK_HOME="${TUNEDECK_HOME:-/tmp/tunedeck-home}"
{
    nvidia-smi
    "$py" -c 'import importlib.metadata as m
for n in ("torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate",
          "huggingface_hub", "pyarrow", "fsspec", "pydantic", "platformdirs", "orjson"):
    print(n, m.version(n))
import torch; print("cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
} >"$out/gpu_truth_env.txt" 2>&1
args=(--quick --sections "${GPU_TRUTH_SECTIONS:-sigterm,presets,grid}"
      --budget-s "${GPU_TRUTH_BUDGET_S:-400}" --out-dir "$out" --work /tmp/gpu-truth)
if [ -n "${GPU_TRUTH_MODELS:-}" ]; then
    args+=(--models "$GPU_TRUTH_MODELS")
fi
timeout -k 15 "${GPU_TRUTH_LIMIT_S:-495}" "$py" benchmarks/gpu_truth.py "${args[@]}" 2>&1 |
    tee "$out/gpu_truth.log"
status=${PIPESTATUS[0]}
df -h /tmp >>"$out/gpu_truth_env.txt" 2>&1
exit "$status"
