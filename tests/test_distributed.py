"""train() inside a torch.distributed process group: 2 CPU processes (gloo) on a tiny Llama
train the same adapter as one process with the same global batch; bad input stops every
rank before anything is written; `torchrun --nproc_per_node 2 -m minireft train` writes
the adapter of a one-process `minireft train`.

One launch of 2 processes (torch.multiprocessing, gloo on localhost) runs every case in turn,
each in a fresh process group of its own, and the tests read what each case left behind:
most of a launch is importing torch and transformers in the children, so one launch instead
of one per case saves ~10 s a case. MINIREFT_TEST_BACKEND=nccl runs the processes on cuda:0
and cuda:1 instead (2 GPUs; scripts/gpu_check.sh does).
"""

from __future__ import annotations

import json
import os
import socket
import traceback
import warnings
from datetime import timedelta

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available in this torch build", allow_module_level=True)

from test_train import reft, tiny_llama, tiny_tokenizer

from minireft.hf.distributed import shard
from minireft.hf.training import train
from minireft.io import load_adapter

pytestmark = pytest.mark.filterwarnings("ignore:this run takes:UserWarning")

# 11 examples, completions of different lengths: with batch_size 4 and grad_accum 2 an epoch
# is a step of 2 micro-batches of 4 and a short step of one micro-batch of 3 (shards 2 + 1).
EXAMPLES = [{"prompt": f"word {i}:", "completion": "xyz"[: 1 + i % 3] * (1 + i % 2)} for i in range(11)]
BACKEND = os.environ.get("MINIREFT_TEST_BACKEND", "gloo")
RUN = {"batch_size": 4, "grad_accum": 2, "epochs": 3, "lr": 2e-2, "warmup_ratio": 0.0, "seed": 3,
       "progress": False}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every case of the launch: {"all": run overrides for every rank, "<rank>": for one rank}.
BAD_INPUT = {
    "batch_not_divisible": ({"all": {"batch_size": 3}},
                            "batch_size=3 (the global micro-batch) is not divisible by the 2"),
    "ranks_disagree": ({"1": {"lr": 1e-2}}, "ranks disagree on the run (lr: rank 0 0.02, rank 1 0.01)"),
    "one_rank_fails": ({"1": {"batch_size": -1}},
                       "rank 1 of 2 stopped before training (ValueError: batch_size must be"),
}
CASES = {"same_as_one_process": {}, **{name: overrides for name, (overrides, _) in BAD_INPUT.items()}}


def _worker(rank: int, world: int, ports: list, folder: str, cases: dict) -> None:
    """One rank: for each case, in its own folder and its own gloo group, train and save its
    parameters (or its error)."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", "this run takes")
    if BACKEND == "nccl":
        torch.cuda.set_device(rank)
    for port, (name, overrides) in zip(ports, cases.items()):
        # a fresh group per case: a case that leaves the ranks out of step cannot hang the next
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group(BACKEND, rank=rank, world_size=world, timeout=timedelta(minutes=5))
        try:
            _run_case(rank, os.path.join(folder, name), overrides)
        finally:
            dist.destroy_process_group()


def _run_case(rank: int, folder: str, overrides: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    try:
        run = {**RUN, **overrides.get("all", {}), **overrides.get(str(rank), {})}
        model = reft(_on_device(tiny_llama()), layers=(0, 1), positions="f1+l2", seed=rank)  # rank 0's init wins
        result = train(model, tiny_tokenizer(), EXAMPLES, output_dir=os.path.join(folder, "adapter"), **run)
        torch.save({n: p.detach().cpu().clone() for n, p in model.named_trainable_parameters()},
                   os.path.join(folder, f"rank{rank}.pt"))
        with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
            json.dump(result.losses, f)
    except Exception as exc:  # noqa: BLE001 - the parent reads it
        with open(os.path.join(folder, f"rank{rank}.err"), "w") as f:
            f.write(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")


def _on_device(model):
    return model.cuda() if BACKEND == "nccl" else model


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The folder of one 2-process launch that ran every case of CASES (a subfolder each)."""
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("two_processes")
    ports = [_free_port() for _ in CASES]
    mp.spawn(_worker, args=(2, ports, str(folder), CASES), nprocs=2, join=True)
    return folder


def _single(tmp_path):
    torch.set_num_threads(1)
    model = reft(_on_device(tiny_llama()), layers=(0, 1), positions="f1+l2", seed=0)
    result = train(model, tiny_tokenizer(), EXAMPLES, output_dir=tmp_path / "single", **RUN)
    return {n: p.detach().cpu().clone() for n, p in model.named_trainable_parameters()}, result.losses


def test_two_processes_train_the_single_process_adapter(launched, tmp_path):
    ran = launched / "same_as_one_process"
    errors = sorted(ran.glob("*.err"))
    assert not errors, errors[0].read_text()
    ranks = [torch.load(ran / f"rank{r}.pt") for r in range(2)]
    want, want_losses = _single(tmp_path)
    for name in want:
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between the ranks"
    err = max((ranks[0][n] - want[n]).abs().max().item() for n in want)
    assert err <= 1e-6, f"2 processes vs 1: max |Δ| = {err:.2e}"
    assert any(not torch.equal(ranks[0][n], reft(tiny_llama(), layers=(0, 1), positions="f1+l2").interventions
                               .get_parameter(n)) for n in want), "nothing trained"
    losses = json.loads((ran / "rank0.json").read_text())
    assert len(losses) == len(want_losses) == RUN["epochs"] * -(-len(EXAMPLES) // 8)
    assert max(abs(a - b) for a, b in zip(losses, want_losses)) <= 1e-6
    _, saved = load_adapter(ran / "adapter")  # written by rank 0
    for name, p in ranks[0].items():
        assert torch.equal(torch.from_numpy(saved[name]), p), name
    print(f"\n2 gloo processes vs 1 process: max |Δ parameter| = {err:.3e}")


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_stops_every_rank_and_writes_nothing(launched, case):
    ran, words = launched / case, BAD_INPUT[case][1]
    for rank in range(2):
        assert (ran / f"rank{rank}.err").exists(), f"rank {rank} went on training"
    messages = [(ran / f"rank{r}.err").read_text().splitlines()[0] for r in range(2)]
    assert any(words in m for m in messages), messages
    assert not (ran / "adapter").exists() and not list(ran.glob("adapter*"))


def test_shards_are_disjoint_and_cover_the_batch():
    for n in range(9):
        for world in (1, 2, 3, 4):
            parts = [shard(list(range(n)), r, world) for r in range(world)]
            assert [i for part in parts for i in part] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_torchrun_cli_writes_the_single_process_adapter(tmp_path):
    """torchrun --nproc_per_node 2 -m minireft train == minireft train, on a tiny model folder."""
    import subprocess
    import sys

    from minireft.cli import main

    folder = tmp_path / "tiny"
    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    args = ["train", "--model", str(folder), "--data", str(data), "--layers", "0,1", "--rank", "2",
            "--positions", "f1+l2", "--batch-size", "4", "--grad-accum", "2", "--epochs", "2",
            "--lr", "2e-2", "--seed", "3", "--quiet", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), "-m", "minireft", *args,
                           "--output", str(tmp_path / "two")],
                          check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("adapter saved to") == 1, done.stdout  # rank 0 alone prints
    torch.set_num_threads(1)
    assert main([*args, "--output", str(tmp_path / "one")]) == 0
    _, two = load_adapter(tmp_path / "two")
    _, one = load_adapter(tmp_path / "one")
    err = max(float(abs(two[n] - one[n]).max()) for n in one)
    assert err <= 1e-6, f"torchrun 2 processes vs 1: max |Δ| = {err:.2e}"
