"""Which rows run together: an epoch's optimizer steps, and batches of similar length.

    step_groups        one epoch's shuffled example indices as [[micro-batch, …] per optimizer step]
    length_chunks      a training micro-batch cut into sub-batches of similar length (CPU)
    batches_by_length  evaluation rows in batches, longest first (the order is free there)

A batch is padded to its longest row, and on a CPU a padded position costs as much as a
real one: rows whose lengths vary 2-3x spend a third or more of their work on padding.
Training keeps its shuffled micro-batches (the gradient must not depend on lengths) and only
splits each into sub-batches, which gives the same summed loss and gradient; evaluation,
whose sums do not depend on the order, sorts all rows by length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def step_groups(n: int, batch_size: int, grad_accum: int, generator: torch.Generator | None):
    """One epoch's example indices as [[micro-batch, …] per optimizer step]; shuffled with
    `generator` (None keeps the order). The last step may be short."""
    order = torch.randperm(n, generator=generator).tolist() if generator is not None else list(range(n))
    per_step = batch_size * grad_accum
    groups = []
    for start in range(0, n, per_step):
        chunk = order[start:start + per_step]
        groups.append([chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)])
    return groups


# The cost of one more forward and backward, in padded token positions, that length_chunks
# weighs against the padding a split saves: per-call work (hooks, kernels) that small CPU
# batches do not amortise. Measured (scripts/bench_chunks.py, SmolLM2, batch 8, 2 cores): of
# 0, 16, 64, 256, 64 is the fastest on PIQA rows (0.846x the whole batch's step; 0 is 1.072x)
# and ties the whole batch on short constraint rows (0.995x; 0 is 1.452x).
CHUNK_OVERHEAD_TOKENS = 64


def length_chunks(rows: list[int], lengths, overhead: int = CHUNK_OVERHEAD_TOKENS) -> list[list[int]]:
    """`rows` (example indices, lengths[i] tokens each; lengths a list or dict) partitioned
    into sub-batches of similar length that minimise Σ_chunks (overhead + |chunk| · max length
    in the chunk), the padded positions a CPU computes: rows sorted by length (ties in input
    order), cut into runs by dynamic programming. One chunk when rows are of one length."""
    order = [i for _, _, i in sorted((lengths[i], k, i) for k, i in enumerate(rows))]
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: the cost of order[:j]
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # the last chunk is order[i:j]; its longest row is order[j − 1]
            cost = best[i] + overhead + (j - i) * lengths[order[j - 1]]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks, j = [], n
    while j > 0:
        chunks.append(order[cut[j]:j])
        j = cut[j]
    return chunks[::-1]


def batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of `batch_size`, longest rows first (ties in input order), so
    each batch pads to a length close to its rows' own (evaluation, where order is free)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
