"""Training on more than one process: every rank a disjoint shard of every global batch.

With W processes (ranks 0..W−1, one torch.distributed process group), a micro-batch of
B = batch_size examples (the global micro-batch: the same examples a single process would
see) is cut into W contiguous shards; rank k runs rows shard_k. Each rank backpropagates

    (Σ_{targets i in its shard} ℓ_i) / N        N = the targets of the whole step (all ranks)

and one all-reduce (sum) of the adapter's gradients and the loss sums gives every rank

    ∇ (1/N) Σ_{all targets} ℓ_i

the gradient of the single-process run, up to summation order. Every rank then takes the
same optimizer step from the same parameters (broadcast from rank 0 at the start), so the
parameters stay identical on every rank. N is counted on the host from the examples (every
rank holds the whole data set and the same shuffled order: the seed and the global batch
size define the run, not W), so it costs no communication.

`torchrun --nproc_per_node N -m minireft train ...` sets RANK/WORLD_SIZE/LOCAL_RANK;
`init_from_env` starts the group (nccl on CUDA, gloo on CPU). `train()` inside an already
initialised group uses it as is.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(cuda: bool | None = None) -> bool:
    """Start the default process group from torchrun's environment (WORLD_SIZE > 1, RANK,
    LOCAL_RANK, MASTER_ADDR/PORT): nccl with cuda:LOCAL_RANK as the current device when
    training runs on CUDA (`cuda`; default: when CUDA is there), else gloo. True if this call
    started it (the caller then ends it with `destroy`); False when there is nothing to start
    or a group already runs."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if torch.cuda.is_available() if cuda is None else cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(rows: list, rank: int, world: int) -> list:
    """Rank `rank`'s contiguous share of `rows`: sizes differ by at most one (a short last
    micro-batch), earlier ranks first; the shards of all ranks, in rank order, are `rows`."""
    size, extra = divmod(len(rows), world)
    start = rank * size + min(rank, extra)
    return rows[start:start + size + (rank < extra)]


def check_batch(batch_size: int, world: int) -> None:
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} (the global micro-batch) is not divisible by the "
                         f"{world} processes; choose a batch_size that is a multiple of {world} (each "
                         f"rank runs batch_size / {world} rows)")


def fingerprint(obj) -> str:
    """sha256 of obj's JSON (sorted keys): what ranks compare instead of the whole object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()


def agree(settings: dict, error: BaseException | None) -> None:
    """Every rank calls this before training: raise on EVERY rank if any rank's checks failed
    (`error`) or the ranks' `settings` (a JSON-able dict) differ. A failing rank re-raises its
    own error; the others raise RuntimeError naming that rank and its message."""
    world = rank_and_world()[1]
    if world == 1:
        if error is not None:
            raise error
        return
    mine = (settings, None if error is None else f"{type(error).__name__}: {error}")
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    failed = [(r, msg) for r, (_, msg) in enumerate(gathered) if msg is not None]
    if error is not None:
        raise error
    if failed:
        r, msg = failed[0]
        raise RuntimeError(f"rank {r} of {world} stopped before training ({msg}); nothing was written")
    differ = sorted(k for k in set().union(*(s for s, _ in gathered))
                    if len({json.dumps(s.get(k), sort_keys=True, default=repr) for s, _ in gathered}) > 1)
    if differ:
        detail = "; ".join(f"{k}: " + ", ".join(f"rank {r} {s.get(k)!r}" for r, (s, _) in enumerate(gathered))
                           for k in differ[:4])
        raise ValueError(f"the {world} ranks disagree on the run ({detail}); start every rank with the "
                         f"same arguments, data and model; nothing was written")


def broadcast_parameters(params) -> None:
    """Rank 0's values into every rank's `params` (same order and shapes on every rank)."""
    if rank_and_world()[1] == 1:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def all_reduce_step(params, loss_sum: torch.Tensor) -> torch.Tensor:
    """Sum every rank's gradients of `params` and its loss sum (0-d) over the ranks, one
    all-reduce per dtype, no host sync; returns the summed loss. Every p.grad becomes the sum
    (a rank whose shard was empty contributes zeros: in training every parameter of an edited
    block gets a gradient, zero where no position was edited, so none is ever None)."""
    if rank_and_world()[1] == 1:
        return loss_sum
    groups: dict = {}
    for p in params:
        groups.setdefault(p.dtype, []).append(p)
    groups.setdefault(loss_sum.dtype, [])
    total = loss_sum
    for dtype, ps in groups.items():
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps]
        with_loss = dtype == loss_sum.dtype
        if with_loss:
            parts.append(loss_sum.reshape(1))
        flat = torch.cat(parts)
        dist.all_reduce(flat)
        pieces = flat.split([p.numel() for p in ps] + [1] * with_loss)
        for p, g in zip(ps, pieces):
            p.grad = g.view_as(p)
        if with_loss:
            total = pieces[-1].reshape(())
    return total
