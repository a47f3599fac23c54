"""vLLM settings that minireft serve and the offline entry share (CPU builds of vLLM).

Two of vLLM's CPU defaults suit a large server and starve a small machine:
- the KV cache takes 92% of the machine's memory (and vLLM refuses to start when other
  processes hold more than 8%): minireft asks for a fixed 2 GiB;
- one core is reserved for the scheduler process and the model's threads get the rest: on a
  2-core machine that halves the model's compute. With both cores bound to the model, 64
  concurrent requests to SmolLM2 ran at 306 against 251 generated tokens/s
  (scripts/bench_serve.py, both runs alone on 2 cores), so on machines of at most
  SMALL_MACHINE_CORES cores minireft binds every core and reserves none.
Either is the user's to override: a VLLM_CPU_* variable already set is left as it is.
"""

from __future__ import annotations

import os

KV_CACHE_BYTES = 2 << 30
SMALL_MACHINE_CORES = 2


def bind_all_cores(environ=os.environ, cpus=None) -> None:
    """On a machine of at most SMALL_MACHINE_CORES cores (cpus: the ids this process may run
    on), give vLLM's model threads every one (VLLM_CPU_OMP_THREADS_BIND "0,1",
    VLLM_CPU_NUM_OF_RESERVED_CPU "0"), unless either variable is set already. One model
    process is assumed (no tensor parallelism: a 2-core machine has nothing to split)."""
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if len(cpus) > SMALL_MACHINE_CORES or {"VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"} & set(environ):
        return
    environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cpus))
    environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
