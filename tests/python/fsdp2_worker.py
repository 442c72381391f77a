"""The processes of tests/python/test_fsdp2.py: a small LLaMA under FSDP2
(fully_shard per layer and at the root, CPU, gloo) trained by GradNormLoRP,
many configurations per spawned group to pay the start-up once.

Each phase writes what the test compares to OUT/<phase>.rank<r>.pt."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

from gradnormlorp import GradNormLoRP, GradNormLoRPError, LayerwiseGradNormLoRP, sharded, target_param_groups
from tiny_llama import SEQ, TARGETS, VOCAB, batches

STEPS = 20
RESUME_AT = 10  # checkpoint after this many steps, then continue to STEPS
GLOBAL_BATCH = 6  # divisible by 2 and 3: every rank gets the same number of samples
HP = dict(lr=1e-3, weight_decay=0.1)
RANK = 16
GAP = 7  # refreshes at steps 1, 8 and 15
PROJ_TYPES = ("std", "reverse_std", "right", "left", "full")
CONFIGS = [(proj_type, bits) for bits in (32, 8) for proj_type in PROJ_TYPES]
# Checkpointed configs: one per kind of replicated state (right: none, left and full: projected moments).
DATA_PARALLEL = ("std", 32)  # trained on each rank's share of the batch too
RESUMED = [("std", 32), ("left", 32), ("full", 8), ("std", 8)]


def model(seed: int = 0) -> LlamaForCausalLM:
    """hidden 64, MLP 256, rank 16: the MLP's low-rank moments have 4096
    values (16 blocks), so 8-bit runs quantise row-sharded (gate, up: right
    projection) and replicated (down: left) moments, and the 128 x 64
    embedding and head quantise row-sharded AdamW moments, with blocks split
    between ranks at world size 3. Row counts 32, 64, 128, 256 split unevenly over 3 ranks."""
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def optimizer(m: torch.nn.Module, proj_type: str, bits: int) -> GradNormLoRP:
    groups = target_param_groups(m, TARGETS, rank=RANK, update_proj_gap=GAP, proj_type=proj_type)
    return GradNormLoRP(groups, optim_bits=bits, **HP)


def shard(m: torch.nn.Module, world: int) -> torch.nn.Module:
    mesh = init_device_mesh("cpu", (world,))
    for layer in m.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(m, mesh=mesh)
    return m


def train(m, opt, rank: int, world: int, steps: range, split: bool = False, nudge: int = 0) -> None:
    """Steps `steps` of the fixed sequence of global batches. Each rank takes
    the whole batch, so FSDP2's average of the ranks' gradients is the
    single-process gradient (bit for bit at world size 2, within a rounding
    at 3) and a comparison sees the optimizer's sharded math alone; with
    `split`, each rank takes its share (data parallel: the gradients then
    differ from one process's by rounding, which 8-bit codes and
    near-degenerate refreshes can amplify). With `nudge` (a seed), each
    gradient element is moved by one float32 rounding (a relative 2^-23, up
    or down at random) before each step, to see how far rounding alone
    moves the run. (Scaling all gradients alike would not do: Adam hardly
    sees a common scale.)"""
    data = batches(STEPS, GLOBAL_BATCH)
    n = GLOBAL_BATCH // world if split else GLOBAL_BATCH
    for t in steps:
        batch = data[t]
        start = rank * n if split else 0
        m(**{k: v[start : start + n] for k, v in batch.items()}).loss.backward()
        if nudge:
            noise = torch.Generator().manual_seed(nudge * 1000 + t)
            for p in m.parameters():
                signs = torch.randint(0, 2, p.grad.shape, generator=noise).to(p.grad.dtype) * 2 - 1
                p.grad.mul_(1 + 2**-23 * signs)
        opt.step()
        opt.zero_grad()


def full_params(m) -> dict[str, torch.Tensor]:
    return {n: (p.full_tensor() if sharded.is_dtensor(p) else p).detach().clone() for n, p in m.named_parameters()}


def replicated_state(opt) -> dict[str, torch.Tensor]:
    """The buffers every rank holds whole (plain tensors in the sharded state dict)."""
    sd = opt.state_dict()
    return {
        f"{pid}.{k}": v.clone()
        for pid, st in sd["state"].items()
        for k, v in st.items()
        if isinstance(v, torch.Tensor) and not sharded.is_dtensor(v)
    }


def fresh(world: int, proj_type: str, bits: int):
    m = shard(model(), world)
    return m, optimizer(m, proj_type, bits)


def save(path: str, m, opt) -> None:
    dcp.save({"model": get_model_state_dict(m), "optim": get_optimizer_state_dict(m, opt)}, checkpoint_id=path)


def load(path: str, m, opt) -> None:
    state = {"model": get_model_state_dict(m), "optim": get_optimizer_state_dict(m, opt)}
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(m, state["model"])
    set_optimizer_state_dict(m, opt, state["optim"])


def error_of(fn) -> str | None:
    try:
        fn()
    except (GradNormLoRPError, RuntimeError) as e:
        return str(e)
    return None


# ---------------------------------------------------------------- phases


def run_configs(rank: int, world: int, out: dict) -> None:
    """Every config, STEPS steps: full weights, replicated state, traffic."""
    for proj_type, bits in CONFIGS:
        m, opt = fresh(world, proj_type, bits)
        with sharded.count_traffic() as first:
            train(m, opt, rank, world, range(1))  # step 1 refreshes
        with sharded.count_traffic() as plain:
            train(m, opt, rank, world, range(1, 2))  # step 2 does not
        train(m, opt, rank, world, range(2, STEPS))
        out[(proj_type, bits)] = {
            "params": full_params(m),
            "replicated": replicated_state(opt),
            "traffic": {"refresh": dict(first.bytes), "step": dict(plain.bytes)},
        }
    m, opt = fresh(world, *DATA_PARALLEL)
    train(m, opt, rank, world, range(STEPS), split=True)
    out["data parallel"] = full_params(m)


def run_checkpoints(rank: int, world: int, ckpt_dir: str, out: dict) -> None:
    """Train to RESUME_AT, save, continue: the run a resumed one must equal."""
    for proj_type, bits in RESUMED:
        m, opt = fresh(world, proj_type, bits)
        train(m, opt, rank, world, range(RESUME_AT))
        save(os.path.join(ckpt_dir, f"{proj_type}-{bits}-w{world}"), m, opt)
        train(m, opt, rank, world, range(RESUME_AT, STEPS))
        out[("straight", proj_type, bits)] = full_params(m)


def run_resumed(rank: int, world: int, ckpt_dir: str, saved_world: int, out: dict) -> None:
    """Fresh model and optimizer, load the checkpoint, continue to STEPS."""
    for proj_type, bits in RESUMED:
        m, opt = fresh(world, proj_type, bits)
        before = full_params(m)
        out[("probe keeps weights", proj_type, bits)] = all(
            torch.equal(v, before[k]) for k, v in full_params(_after_state_probe(m, opt)).items()
        )
        try:
            load(os.path.join(ckpt_dir, f"{proj_type}-{bits}-w{saved_world}"), m, opt)
        except (GradNormLoRPError, ValueError) as e:
            out[("resumed", proj_type, bits)] = str(e)
            continue
        train(m, opt, rank, world, range(RESUME_AT, STEPS))
        out[("resumed", proj_type, bits)] = full_params(m)


def _after_state_probe(m, opt):
    """torch.distributed.checkpoint's _init_optim_state: it must create state without moving a weight."""
    get_optimizer_state_dict(m, opt)
    return m


def run_nonfinite(rank: int, world: int, out: dict) -> None:
    """A NaN in one rank's gradient: every rank refuses, nothing changes."""
    m, opt = fresh(world, "std", 8)
    train(m, opt, rank, world, range(3))
    before, state = full_params(m), replicated_state(opt)
    steps = [st["step"] for st in opt.state.values()]
    m(**batches(STEPS, GLOBAL_BATCH)[3]).loss.backward()
    if rank == world - 1:
        m.model.layers[1].mlp.up_proj.weight.grad.to_local()[0, 0] = float("nan")
    error = error_of(opt.step)
    out["nonfinite"] = {
        "error": error,
        "unchanged": all(torch.equal(v, before[k]) for k, v in full_params(m).items())
        and [st["step"] for st in opt.state.values()] == steps
        and all(torch.equal(v, state[k]) for k, v in replicated_state(opt).items()),
    }


def run_refusals(rank: int, world: int, out: dict) -> None:
    fsdp1 = FullyShardedDataParallel(model(), use_orig_params=True, device_id=torch.device("cpu"))
    out["fsdp1"] = error_of(lambda: optimizer(fsdp1, "std", 32).step())
    sharded_model = shard(model(), world)
    out["layerwise"] = error_of(
        lambda: LayerwiseGradNormLoRP(target_param_groups(sharded_model, TARGETS, rank=RANK), **HP)
    )


def run_collectives(rank: int, world: int, out: dict) -> None:
    """The callback the library calls, called directly: what each op leaves in recv."""
    import ctypes

    from gradnormlorp import _lib

    collective = sharded._Collective(dist.group.WORLD)

    def call(op: int, send: torch.Tensor | None, recv: torch.Tensor) -> int:
        send_desc = ctypes.pointer(_lib.describe(send)) if send is not None else None
        return collective.fn(None, op, send_desc, ctypes.pointer(_lib.describe(recv)))

    summed, maxed = torch.full((2, 3), float(rank + 1)), torch.arange(4.0) * (rank + 1)
    rows = 7  # torch.chunk over 3 ranks: 3, 3, 1
    first, count = sharded._split(rows, world, rank)
    mine = torch.arange(first * 2, (first + count) * 2, dtype=torch.float32).view(count, 2)
    gathered = torch.empty(rows, 2)
    out["status"] = [
        call(_lib.GNLP_COLLECTIVE_SUM, None, summed),
        call(_lib.GNLP_COLLECTIVE_MAX, None, maxed),
        call(_lib.GNLP_COLLECTIVE_GATHER_ROWS, mine, gathered),
    ]
    out.update(summed=summed, maxed=maxed, gathered=gathered)
    out["unknown op"] = (call(99, None, summed), repr(collective.error))


PHASES = {
    "configs": lambda rank, world, ckpt, out: run_configs(rank, world, out),
    "checkpoints": lambda rank, world, ckpt, out: run_checkpoints(rank, world, ckpt, out),
    "resumed from 2": lambda rank, world, ckpt, out: run_resumed(rank, world, ckpt, 2, out),
    "nonfinite": lambda rank, world, ckpt, out: run_nonfinite(rank, world, out),
    "refusals": lambda rank, world, ckpt, out: run_refusals(rank, world, out),
    "collectives": lambda rank, world, ckpt, out: run_collectives(rank, world, out),
}


def worker(rank: int, world: int, phases: list[str], init_file: str, ckpt_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for phase in phases:
            out: dict = {}
            PHASES[phase](rank, world, ckpt_dir, out)
            torch.save(out, os.path.join(out_dir, f"{phase}.w{world}.rank{rank}.pt"))
            dist.barrier()
    finally:
        dist.destroy_process_group()
