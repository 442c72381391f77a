"""GradNormLoRP under FSDP2: per-rank optimizer state and what a step communicates.

    PYTHONPATH=python python bench/sharding.py [--out bench/results/sharding.md]

1. Per-rank optimizer-state bytes for LLaMA-1B (rank 512) and LLaMA-7B
   (rank 1024), shapes as in python -m gradnormlorp.memory, at world sizes
   1, 2 and 8, from gnlp_shard_state_layout (rank 0, which holds the most
   rows), split into row-sharded and replicated buffers.
2. The collectives of a real 2-rank gloo run (a small LLaMA under
   fully_shard), counted in the collective callback: bytes each rank hands
   to torch.distributed per plain step and per refresh step, by proj_type,
   next to the same count predicted from the shapes, and next to FSDP2's own
   traffic for the same model (all-gather of the weights for forward and
   for backward, reduce-scatter of the gradients).
3. The prediction for LLaMA-1B and 7B at world size 8.

"Payload" is the tensor a rank hands to a collective (the whole buffer of a
sum, its own rows of a gather, padded to ceil(rows / world)); "ring" is
what a ring algorithm then sends per rank: 2 (w-1)/w of an all-reduce's
buffer, (w-1) blocks of an all-gather, (w-1)/w of a reduce-scatter's input.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gradnormlorp import GradNormLoRP, memory, sharded, target_param_groups

MODELS = {"llama-1b": 512, "llama-7b": 1024}  # GaLore's ranks for these sizes
WORLDS = (1, 2, 8)
BITS = (32, 8, 4)
PROJ_TYPES = ("std", "right", "left", "full")
# The measured run: a small LLaMA (hidden 256, MLP 688, 2 layers), rank 32.
SMALL = memory.LlamaShape(hidden=256, intermediate=688, layers=2, heads=4, vocab=512)
SMALL_RANK = 32
TARGETS = ["self_attn", "mlp"]
WORLD = 2
F32 = 4


# ------------------------------------------------------------- prediction


def projection(m: int, n: int, proj_type: str) -> str:
    if proj_type == "std":
        return "right" if m >= n else "left"
    return proj_type


def predicted(shape: memory.LlamaShape, rank: int, proj_type: str, world: int) -> dict[str, int]:
    """Payload bytes of the projection's collectives at 32 bits: per plain
    step (a sum of k x n per left-projected matrix, of k x k per full one)
    and at a refresh step (that plus a gather of every projected dV, m x n
    fp32; each rank hands over its ceil(m / w) rows). Without the two
    status agreements of each call (a few bytes)."""
    step = gather_rows = 0
    for t in shape.tensors():
        if not t.projected:
            continue
        m, n = t.shape
        k = min(rank, m, n)
        side = projection(m, n, proj_type)
        step += F32 * {"right": 0, "left": k * n, "full": k * k}[side]
        gather_rows += F32 * -(-m // world) * n
    return {"step": step, "refresh": step + gather_rows}


def fsdp_traffic(shape: memory.LlamaShape, world: int, param_bytes: int = F32) -> dict[str, float]:
    """FSDP2's own per-step collectives: all-gather of every weight for the
    forward and again for the backward, reduce-scatter of every gradient."""
    total = sum(t.numel for t in shape.tensors()) * param_bytes
    payload = 2 * total / world + total  # all-gather inputs are the shards, reduce-scatter's the whole gradient
    ring = 2 * (world - 1) / world * total + (world - 1) / world * total
    return {"payload": payload, "ring": ring}


def ring_bytes(traffic: dict[str, int], world: int) -> float:
    return sum(2 * (world - 1) / world * b if op in ("sum", "max") else (world - 1) * b for op, b in traffic.items())


# --------------------------------------------------------------- measured


def small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=SMALL.vocab,
        hidden_size=SMALL.hidden,
        intermediate_size=SMALL.intermediate,
        num_hidden_layers=SMALL.layers,
        num_attention_heads=SMALL.heads,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def worker(rank: int, init_file: str, out_file: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        ids = torch.randint(0, SMALL.vocab, (2, 32), generator=torch.Generator().manual_seed(rank))
        out = {}
        for proj_type in PROJ_TYPES:
            model = small_llama()
            for layer in model.model.layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            groups = target_param_groups(model, TARGETS, rank=SMALL_RANK, update_proj_gap=200, proj_type=proj_type)
            opt = GradNormLoRP(groups, lr=1e-3)
            counts = {}
            for name in ("refresh", "step"):  # step 1 refreshes, step 2 does not
                model(input_ids=ids, labels=ids).loss.backward()
                with sharded.count_traffic() as traffic:
                    opt.step()
                opt.zero_grad()
                counts[name] = dict(traffic.bytes)
            out[proj_type] = counts
        if rank == 0:
            torch.save(out, out_file)
    finally:
        dist.destroy_process_group()


def measure() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "traffic.pt")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        mp.spawn(worker, args=(os.path.join(tmp, "store"), out_file), nprocs=WORLD, join=True)
        return torch.load(out_file)


# ----------------------------------------------------------------- report


def mib(n: float) -> str:
    return f"{n / 2**20:,.2f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB" if n >= 1024 else f"{n:,.0f} B"


def state_table() -> list[str]:
    lines = [
        "## Optimizer state per rank (gnlp_shard_state_layout, rank 0, bf16 weights)",
        "",
        "| model | rank | bits | world | per rank | row-sharded | replicated |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, rank in MODELS.items():
        for bits in BITS:
            for world in WORLDS:
                st = memory.sharded_state(model, rank, bits, world)
                lines.append(
                    f"| {model} | {rank} | {bits} | {world} | {memory.human_bytes(st.total)} | "
                    f"{memory.human_bytes(st.row_sharded)} | {memory.human_bytes(st.replicated)} |"
                )
    return lines


def traffic_table(measured: dict) -> list[str]:
    fsdp = fsdp_traffic(SMALL, WORLD)
    lines = [
        f"## Measured: {WORLD} ranks, gloo, small LLaMA (hidden {SMALL.hidden}, MLP {SMALL.intermediate}, "
        f"{SMALL.layers} layers, {sum(t.numel for t in SMALL.tensors()):,} parameters), rank {SMALL_RANK}, 32-bit",
        "",
        "Bytes each rank hands to torch.distributed in one optimizer step (payload; ring: sent per rank), "
        "and the prediction from the shapes (without the status agreements).",
        "",
        "| proj_type | step payload | step ring | predicted step | refresh payload | refresh ring | "
        "predicted refresh | by op (refresh) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for proj_type, counts in measured.items():
        want = predicted(SMALL, SMALL_RANK, proj_type, WORLD)
        ops = ", ".join(f"{op} {mib(b)}" for op, b in sorted(counts["refresh"].items()))
        lines.append(
            f"| {proj_type} | {mib(sum(counts['step'].values()))} | {mib(ring_bytes(counts['step'], WORLD))} "
            f"| {mib(want['step'])} | {mib(sum(counts['refresh'].values()))} | "
            f"{mib(ring_bytes(counts['refresh'], WORLD))} | {mib(want['refresh'])} | {ops} |"
        )
    lines += [
        "",
        f"FSDP2's own per step for this model (fp32): payload {mib(fsdp['payload'])}, ring {mib(fsdp['ring'])}.",
    ]
    return lines


def prediction_table() -> list[str]:
    lines = [
        "## Predicted at world size 8 (32-bit, payload per rank; FSDP2's own traffic with bf16 weights)",
        "",
        "| model | rank | proj_type | per step | per refresh | FSDP2 per step (payload / ring) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for model, rank in MODELS.items():
        shape = memory.MODELS[model]
        fsdp = fsdp_traffic(shape, 8, param_bytes=2)
        for proj_type in PROJ_TYPES:
            want = predicted(shape, rank, proj_type, 8)
            lines.append(
                f"| {model} | {rank} | {proj_type} | {mib(want['step'])} | {mib(want['refresh'])} | "
                f"{mib(fsdp['payload'])} / {mib(fsdp['ring'])} |"
            )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the report (Markdown) to this file")
    args = parser.parse_args(argv)
    text = (
        "\n".join(
            [
                "# GradNormLoRP under FSDP2: state per rank and traffic per step",
                "",
                "Generated by `python bench/sharding.py`.",
                "",
                *state_table(),
                "",
                *traffic_table(measure()),
                "",
                *prediction_table(),
            ]
        )
        + "\n"
    )
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
