#!/usr/bin/env bash
# The CUDA checks of minireft in one go, for a machine with an NVIDIA GPU (under 8 minutes on
# one GPU). Run from anywhere, after `bash scripts/setup.sh` (it needs the packaged SmolLM2):
#
#     bash scripts/gpu_check.sh
#
#   1. the CUDA tests: every test whose name says cuda (a skipped one counts as a failure
#      here), among them the count of host syncs per training step on CUDA;
#   2. scripts/bench_overhead.py on CUDA with a bfloat16 SmolLM2: the paper, 3-block and
#      long (8 x 512, with and without gradient checkpointing) configurations, and the host
#      syncs of 8 steps of train() under torch.cuda.set_sync_debug_mode("warn");
#   3. with two or more GPUs: the DDP tests with nccl (2 processes, cuda:0 and cuda:1);
#   4. serving on vLLM's CUDA build (issue 18): scripts/serve_check.py (greedy completions of
#      3 adapters and the bare model equal ReftModel.generate's) and scripts/bench_serve.py,
#      with SERVE_PY, a python whose environment has vllm (CUDA) and minireft[serve]
#      (default .venv-serve/bin/python); skipped, and said so, where vllm cannot be imported.
#
# Every part runs (a failure does not hide the next one's output); the script exits non-zero,
# naming the parts that failed, if any did, and 2 at once without a CUDA device.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=$(mktemp -d)
FAILED=()

part() { printf '\n=== %s\n' "$1"; }
fail() { echo "FAILED: $1" >&2; FAILED+=("$1"); }

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device visible to torch ($("$PY" -c 'import torch; print(torch.__version__)' 2>&1)); nothing checked" >&2
    exit 2
fi
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
"$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "|",
    ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))'

part "1/4 CUDA tests"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -rs -k cuda tests 2>&1 | tee "$LOG/tests.txt"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
    fail "CUDA tests (pytest exit $status)"
elif grep -Eq '[0-9]+ skipped' "$LOG/tests.txt"; then
    fail "CUDA tests (some skipped on a CUDA machine: see SKIPPED above)"
elif ! grep -Eq '[0-9]+ passed' "$LOG/tests.txt"; then
    fail "CUDA tests (none ran)"
fi

part "2/4 bench_overhead on CUDA, bfloat16 SmolLM2"
timeout 210 "$PY" scripts/bench_overhead.py --device cuda --dtype bfloat16 \
    --configs paper,3-block,long --pairs 10 --long-pairs 4 --decode-pairs 3 --new-tokens 32 \
    --sync-steps 8 2>&1 | grep -v '^USDT' | tee "$LOG/bench.txt"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
    fail "bench (exit $status)"
else
    for label in '\[paper\]' '\[3-block\]' '\[long\]' 'gradient checkpointing: peak' 'host syncs in train()'; do
        grep -q "$label" "$LOG/bench.txt" || fail "bench (no line matching $label)"
    done
fi

part "3/4 DDP with nccl"
if [ "$NGPU" -ge 2 ]; then
    MINIREFT_TEST_BACKEND=nccl timeout 120 "$PY" -m pytest -q -p no:cacheprovider -rs \
        tests/test_distributed.py -k "single_process_adapter or bad_input" 2>&1 | tee "$LOG/ddp.txt"
    status=${PIPESTATUS[0]}
    [ "$status" -eq 0 ] || fail "DDP tests with nccl (pytest exit $status)"
else
    echo "one GPU: the nccl DDP test needs two (the gloo one runs on the CPU in the test suite)"
fi

part "4/4 serving on vLLM (CUDA)"
SERVE_PY=${SERVE_PY:-.venv-serve/bin/python}
if [ -x "$SERVE_PY" ] && "$SERVE_PY" -c 'import vllm, minireft.serve' 2>/dev/null; then
    timeout 600 "$SERVE_PY" scripts/serve_check.py --json "$LOG/serve.json" 2>&1 | tail -20
    status=${PIPESTATUS[0]}
    [ "$status" -eq 0 ] || fail "serve_check (exit $status)"
    timeout 600 "$SERVE_PY" scripts/bench_serve.py 2>&1 | tail -25
    status=${PIPESTATUS[0]}
    [ "$status" -eq 0 ] || fail "bench_serve (exit $status)"
else
    echo "skipped: $SERVE_PY cannot import vllm and minireft.serve (set SERVE_PY to an environment with vLLM's CUDA build)"
fi

echo
if [ "${#FAILED[@]}" -ne 0 ]; then
    printf 'gpu_check FAILED: %s\n' "${FAILED[@]}" >&2
    exit 1
fi
echo "gpu_check: all parts passed (logs in $LOG)"
