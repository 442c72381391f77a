"""Real gradients for refresh-quality measurements: a small LLaMA
(transformers LlamaConfig, LLaMA-60M layer shapes by default) trained
byte-level on tinyshakespeare with torch AdamW; the weight-norm gradients
dV of its projected matrices at two points `gap` steps apart.

dV is SPEC step 2 at g = s = ||W_i|| (what the library computes from a
parameter whose magnitude and direction norm equal its row norms):
dV_i = G_i - <G_i, D_i> D_i with D_i = W_i / ||W_i||.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("GNLP_BENCH_TEXT", os.path.join(os.path.dirname(ROOT), "shared", "data", "tinyshakespeare.txt"))
if not os.path.exists(DATA):
    DATA = "/work/shared/data/tinyshakespeare.txt"

PROJECTED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Snapshot:
    """One projected matrix at the two points: weights W, gradients G and
    weight-norm gradients dV (float32, m x n)."""

    name: str
    w1: torch.Tensor
    g1: torch.Tensor
    dv1: torch.Tensor
    w2: torch.Tensor
    g2: torch.Tensor
    dv2: torch.Tensor


def weight_norm_grad(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    d = w / w.norm(dim=1, keepdim=True)
    return g - (g * d).sum(dim=1, keepdim=True) * d


def collect(
    hidden: int = 512,
    inter: int = 1376,
    layers: int = 2,
    warm: int = 20,
    gap: int = 50,
    batch: int = 8,
    seq: int = 128,
    seed: int = 0,
    log=print,
) -> list[Snapshot]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=seq,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    model.train()
    with open(DATA, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
    gen = torch.Generator().manual_seed(seed + 1)

    def batch_loss():
        idx = torch.randint(0, data.numel() - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[i : i + seq] for i in idx.tolist()])
        return model(input_ids=x, labels=x).loss

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    names = [n for n, p in model.named_parameters() if p.dim() == 2 and any(k in n for k in PROJECTED)]
    params = dict(model.named_parameters())

    def grads_now():
        model.zero_grad(set_to_none=True)
        batch_loss().backward()
        return {n: (params[n].detach().clone(), params[n].grad.detach().clone()) for n in names}

    t0 = time.perf_counter()
    loss = None
    snaps1 = None
    for step in range(warm + gap):
        if step == warm:
            snaps1 = grads_now()
        opt.zero_grad(set_to_none=True)
        loss = batch_loss()
        loss.backward()
        opt.step()
    snaps2 = grads_now()
    log(
        f"  real gradients: LLaMA {hidden}/{inter} x {layers} layers, byte-level tinyshakespeare, "
        f"batch {batch}x{seq}, AdamW; snapshots at steps {warm} and {warm + gap} "
        f"(loss {loss.item():.3f}; {time.perf_counter() - t0:.0f} s)"
    )
    out = []
    for n in names:
        w1, g1 = snaps1[n]
        w2, g2 = snaps2[n]
        out.append(Snapshot(n, w1, g1, weight_norm_grad(w1, g1), w2, g2, weight_norm_grad(w2, g2)))
    return out


def sign_fix_rows(q: torch.Tensor) -> torch.Tensor:
    idx = q.abs().argmax(dim=1)
    s = torch.sign(q[torch.arange(q.shape[0]), idx])
    s[s == 0] = 1
    return q * s[:, None]


def exact_projector(dv: torch.Tensor, k: int, right: bool) -> torch.Tensor:
    """Top-k singular vectors (float64 SVD), sign-fixed: Q (k x n) rows for
    the right side, P (m x k) columns for the left side."""
    u, _, vh = torch.linalg.svd(dv.double(), full_matrices=False)
    if right:
        return sign_fix_rows(vh[:k]).float()
    return sign_fix_rows(u[:, :k].T).T.float()


def captured_energy(dv: torch.Tensor, proj: torch.Tensor, right: bool) -> float:
    """||dV Q^T||^2 (right) or ||P^T dV||^2 (left) over the sum of the top-k
    squared singular values of dV."""
    d = dv.double()
    k = proj.shape[0] if right else proj.shape[1]
    sv = torch.linalg.svdvals(d)
    best = (sv[:k] ** 2).sum()
    got = (d @ proj.double().T).pow(2).sum() if right else (proj.double().T @ d).pow(2).sum()
    return float(got / best)


def subspace_mirror(dv: torch.Tensor, prev: torch.Tensor, right: bool, iters: int) -> torch.Tensor:
    """A torch mirror of core/refresh.go (float32): orthogonal iteration from
    the previous projector, Rayleigh-Ritz, sign rule."""
    a = dv if right else dv.T
    q0 = prev if right else prev.T  # k x (n of a)
    c = a @ q0.T
    v = None
    for _ in range(iters):
        c, _ = torch.linalg.qr(c)
        v, _ = torch.linalg.qr(a.T @ c)
        c = a @ v
    c, r = torch.linalg.qr(c)
    _, _, wh = torch.linalg.svd(r.double())
    if right:
        return sign_fix_rows(wh.float() @ v.T)
    # left: the basis of a = dv^T's right side is dv's left side
    return sign_fix_rows(wh.float() @ v.T).T
