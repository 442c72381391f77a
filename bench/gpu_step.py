"""GPU step benchmark: gradnormlorp's CUDA backend vs galore-torch GaLoreAdamW
vs torch.optim.AdamW(fused=True) on LLaMA-1B shapes in bf16 (hidden 2048,
intermediate 5461, 24 layers: q, k, v, o, gate, up, down per layer), rank 1024.

Usage: python bench/gpu_step.py [--layers 24] [--steps 5] [--warmup 2]

Needs GNLP_LIBRARY / GNLP_CUDA_LIBRARY (or the in-tree
libraries), galore-torch importable (scripts/gpu_check.sh installs it from
build/wheels; transformers and bitsandbytes, which it imports but this
benchmark does not use, are stubbed when absent).

Non-refresh steps are timed with CUDA events around whole optimizer steps
(host overhead included). Projectors are preset so that no optimizer runs an
SVD inside the timed steps; the refresh is timed separately, per matrix
shape, against torch.linalg.svd (float32, as GaLore calls it), with the
subspace agreement of the two reported. GNLP_CUDA_TF32=1 in the
environment makes our projections use TF32 tensor cores.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(ROOT, "python"), os.path.join(ROOT, "tests", "gpu")]

from gnlp_abi import Param, config  # noqa: E402
from gradnormlorp import _lib as L  # noqa: E402

HIDDEN, INTER, RANK = 2048, 5461, 1024
GiB = 2**30


def llama_shapes(layers: int):
    per_layer = [(HIDDEN, HIDDEN)] * 4 + [(INTER, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER)]
    return per_layer * layers


def load_galore():
    """galore_torch.GaLoreAdamW, stubbing transformers/bitsandbytes if absent."""
    try:
        import transformers.utils.versions  # noqa: F401
    except Exception:
        tr = types.ModuleType("transformers")
        tr.utils = types.ModuleType("transformers.utils")
        tr.utils.versions = types.ModuleType("transformers.utils.versions")
        tr.utils.versions.require_version = lambda *a, **k: None
        sys.modules.update({"transformers": tr, "transformers.utils": tr.utils, "transformers.utils.versions": tr.utils.versions})
    try:
        import bitsandbytes.optim.optimizer  # noqa: F401
    except Exception:
        bnb = types.ModuleType("bitsandbytes")
        bnb.optim = types.ModuleType("bitsandbytes.optim")
        bnb.optim.optimizer = types.ModuleType("bitsandbytes.optim.optimizer")
        bnb.optim.optimizer.Optimizer2State = torch.optim.Optimizer
        sys.modules.update({"bitsandbytes": bnb, "bitsandbytes.optim": bnb.optim, "bitsandbytes.optim.optimizer": bnb.optim.optimizer})
    from galore_torch import GaLoreAdamW
    from galore_torch.galore_projector import GaLoreProjector

    return GaLoreAdamW, GaLoreProjector


def timed(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(steps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return out


def fmt(ts: list[float]) -> str:
    ts = sorted(ts)
    return f"median {ts[len(ts) // 2]:8.2f} ms  (min {ts[0]:.2f}, max {ts[-1]:.2f})"


def bandwidth_gbs() -> float:
    x = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ts = timed(lambda: y.copy_(x), 5, 2)
    return 2 * x.numel() / (min(ts) / 1e3) / 1e9


def bench_ours(params, grads, steps, warmup):
    cfg = config(rank=RANK, proj_type="std", gap=10**9, lr=1e-4, eps=1e-8)
    before = torch.cuda.memory_allocated()
    ps = [Param(p, cfg) for p in params]
    state = torch.cuda.memory_allocated() - before
    items = (L.gnlp_step_item * len(ps))(*[p.item(g, 2) for p, g in zip(ps, grads)])
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    counter = [2]

    def step():
        counter[0] += 1  # never (t-1) % gap == 0: no refresh
        for it in items:
            it.step = counter[0]
        L.step_batch(items, stream)

    ts = timed(step, steps, warmup)
    must_move = 0
    for p, prm in zip(params, ps):
        must_move += 3 * p.numel() * p.element_size()  # read W and G, write W
        must_move += 2 * prm.state_bytes()  # read and write all state
    del ps
    return ts, state, must_move


def bench_galore(params, grads, steps, warmup):
    GaLoreAdamW, GaLoreProjector = load_galore()
    for p, g in zip(params, grads):
        p.grad = g
    opt = GaLoreAdamW([{"params": params, "rank": RANK, "update_proj_gap": 10**9, "scale": 1.0, "proj_type": "std"}], lr=1e-4, weight_decay=0.0)
    before = torch.cuda.memory_allocated()
    for p in params:  # preset projectors: no SVD in the timed steps
        st = opt.state[p]
        st["step"] = 1
        proj = GaLoreProjector(RANK, update_proj_gap=10**9, scale=1.0, proj_type="std")
        m, n = p.shape
        shape = (RANK, n) if m >= n else (m, RANK)
        proj.ortho_matrix = torch.linalg.qr(torch.randn(max(shape), min(shape), device="cuda"))[0].T.contiguous().to(p.dtype)
        if m < n:
            proj.ortho_matrix = proj.ortho_matrix.T.contiguous()
        st["projector"] = proj
    opt.step()  # allocates the moments
    torch.cuda.synchronize()
    state = torch.cuda.memory_allocated() - before
    ts = timed(opt.step, steps, warmup)
    del opt
    for p in params:
        p.grad = None
    return ts, state


def bench_adamw(params, grads, steps, warmup):
    for p, g in zip(params, grads):
        p.grad = g
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    before = torch.cuda.memory_allocated()
    opt.step()
    torch.cuda.synchronize()
    state = torch.cuda.memory_allocated() - before
    ts = timed(opt.step, steps, warmup)
    del opt
    for p in params:
        p.grad = None
    return ts, state


def bench_refresh(shapes, reps):
    print("\nProjector refresh (exact SVD) per matrix shape, float32:")
    for m, n in shapes:
        k = min(RANK, m, n)
        g = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        cfg_r = config(rank=RANK, proj_type="std", gap=1)
        cfg_n = config(rank=RANK, proj_type="std", gap=10**9)
        pr, pn = Param(w.clone(), cfg_r), Param(w.clone(), cfg_n)
        with_refresh = timed(lambda: pr.step(g, 1), reps, 1)
        without = timed(lambda: pn.step(g, 2), reps, 1)
        ours = min(with_refresh) - min(without)
        dv = g.float()
        svd = timed(lambda: torch.linalg.svd(dv, full_matrices=False), reps, 1)
        # subspace agreement with torch's top-k (dV differs from G only by
        # the weight-norm projection; compare on our own dV instead)
        side = "right" if m >= n else "left"
        name = "proj_right" if side == "right" else "proj_left"
        ours_basis = pr.state[[s[0] for s in pr.layout].index(name)].float()
        ours_basis = ours_basis if side == "right" else ours_basis.T
        print(f"  {m}x{n} k={k}: ours {ours:9.1f} ms, torch.linalg.svd {min(svd):9.1f} ms, ratio {min(svd) / max(ours, 1e-3):6.2f}x"
              f"  (orthonormality err {float((ours_basis @ ours_basis.T - torch.eye(k, device='cuda')).abs().max()):.1e})")
        pr = pn = None  # frees their device memory before the next shape


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--refresh-reps", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma list of: ours,galore,adamw,refresh")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    dev = torch.cuda.get_device_name()
    print(f"device: {dev}; torch {torch.__version__} (CUDA {torch.version.cuda}); library {L.library_version()}; "
          f"TF32 projections: {os.environ.get('GNLP_CUDA_TF32', '0') == '1'}")
    shapes = llama_shapes(args.layers)
    numel = sum(m * n for m, n in shapes)
    print(f"LLaMA-1B shapes: {args.layers} layers, {len(shapes)} matrices, {numel / 1e9:.3f} G params, bf16, rank {RANK}")
    torch.manual_seed(0)
    params = [torch.randn(m, n, device="cuda", dtype=torch.bfloat16) * 0.02 for m, n in shapes]
    grads = [torch.randn(m, n, device="cuda", dtype=torch.bfloat16) * 1e-3 for m, n in shapes]
    bw = bandwidth_gbs()
    print(f"measured copy bandwidth: {bw:.0f} GB/s")

    results = {}
    if "ours" not in skip:
        ts, state, must_move = bench_ours(params, grads, args.steps, args.warmup)
        results["gradnormlorp"] = ts
        floor = must_move / (bw * 1e9) * 1e3
        print(f"gradnormlorp (CUDA)        : {fmt(ts)}   state {state / GiB:6.2f} GiB")
        print(f"  memory-bandwidth floor   : {floor:8.2f} ms ({must_move / GiB:.2f} GiB must move) -> {min(ts) / floor:.2f}x the floor")
    if "galore" not in skip:
        ps = [torch.nn.Parameter(p) for p in params]
        ts, state = bench_galore(ps, grads, args.steps, args.warmup)
        results["galore"] = ts
        print(f"galore-torch GaLoreAdamW   : {fmt(ts)}   state {state / GiB:6.2f} GiB")
    if "adamw" not in skip:
        ps = [torch.nn.Parameter(p) for p in params]
        ts, state = bench_adamw(ps, grads, args.steps, args.warmup)
        results["adamw"] = ts
        print(f"torch AdamW(fused=True)    : {fmt(ts)}   state {state / GiB:6.2f} GiB")
    med = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
    if "gradnormlorp" in med:
        for other in ("galore", "adamw"):
            if other in med:
                print(f"speed-up vs {other:7s}: {med[other] / med['gradnormlorp']:.2f}x (target vs galore: >= 3x)")
    del params, grads
    torch.cuda.empty_cache()
    if "refresh" not in skip:
        bench_refresh([(HIDDEN, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER)], args.refresh_reps)
    t = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"done {t}")


if __name__ == "__main__":
    main()
