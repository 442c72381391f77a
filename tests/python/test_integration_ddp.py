"""GradNormLoRP under DistributedDataParallel: 2 CPU processes with the gloo
backend stay bit-identical and follow the single-process run on the whole
batch; layer-wise mode refuses DDP."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from gradnormlorp import GradNormLoRP, LayerwiseGradNormLoRP
from problems import record, rel
from tiny_llama import batches, param_groups, snapshot, tiny_llama

WORLD = 2
STEPS = 20
PER_RANK = 2  # samples per rank and step; the single-process run takes WORLD * PER_RANK
HP = dict(lr=1e-2, weight_decay=0.1)
# DDP vs one process on the whole batch, after STEPS steps, relative per
# parameter: the gradients differ by float rounding (a mean of two halves'
# means against one mean), which Adam's normalisation amplifies a little.
# About 2.3e-6 measured.
BOUND = 2e-5


def train(model, opt, rank: int, world: int) -> None:
    """Rank `rank` of `world` trains on its slice of each global batch. The
    loss is a mean, so DDP's gradient average is the whole batch's gradient."""
    for batch in batches(STEPS, WORLD * PER_RANK):
        n = len(batch["input_ids"]) // world
        model(**{k: v[rank * n : (rank + 1) * n] for k, v in batch.items()}).loss.backward()
        opt.step()
        opt.zero_grad()


def worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    early = tiny_llama()
    early_opt = LayerwiseGradNormLoRP(param_groups(early), **HP)  # before torch.distributed exists
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = tiny_llama()
        train(DistributedDataParallel(model), GradNormLoRP(param_groups(model), **HP), rank, WORLD)

        errors = {
            "created under DDP": error_of(lambda: LayerwiseGradNormLoRP(param_groups(model), **HP)),
            "created before, then DDP": error_of(
                lambda: train(DistributedDataParallel(early), early_opt, rank, WORLD)
            ),
        }
        torch.save({"params": snapshot(model), "errors": errors}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def error_of(fn) -> str | None:
    try:
        fn()
    except RuntimeError as e:
        return str(e)
    return None


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Runs the workers once; the results of each rank."""
    tmp = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as mpatch:
        mpatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the spawned processes
        mp.spawn(worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_ranks_stay_identical_and_match_a_single_process(ranks):
    first = ranks[0]["params"]
    for r in ranks[1:]:
        for name, p in r["params"].items():
            assert torch.equal(p, first[name]), f"{name} differs between ranks"

    model = tiny_llama()
    train(model, GradNormLoRP(param_groups(model), **HP), rank=0, world=1)
    single = snapshot(model)
    worst = max(rel(first[n], single[n]) for n in single)
    abs_diff = max((first[n] - single[n]).abs().max().item() for n in single)
    print(f"DDP x{WORLD} vs one process, {STEPS} steps: relative {worst:.2e}, max |diff| {abs_diff:.2e}")
    assert record(f"DDP x{WORLD} vs single process, {STEPS} steps", worst, BOUND, "tiny LLaMA") <= BOUND
    initial = snapshot(tiny_llama())
    assert all(not torch.equal(first[n], initial[n]) for n in initial), "training must move every parameter"


def test_layerwise_mode_refuses_ddp(ranks):
    for r in ranks:
        for case, message in r["errors"].items():
            assert message is not None, f"{case}: no error"
            assert "torch.distributed is initialised" in message and "DistributedDataParallel" in message, case
