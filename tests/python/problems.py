"""Deterministic test problems shared by the test files."""

from __future__ import annotations

from collections import defaultdict

import torch

# Worst errors measured, per category: category -> (value, bound, case).
# conftest.py prints them at the end of the run.
WORST: dict = {}
COUNT: dict = defaultdict(int)


def record(category: str, value: float, bound: float, case: str) -> float:
    """Remember an error measured in `case` (the worst one per category)."""
    COUNT[category] += 1
    if category not in WORST or value > WORST[category][0]:
        WORST[category] = (value, bound, case)
    return value


class GradSeq:
    """Gradients G_t = (U + d E_t) diag(sigma) (V + d F_t)^T with
    geometrically spaced sigma (well separated singular values) and a small
    seeded per-step perturbation, so the top subspace moves a little."""

    def __init__(self, m, n, seed, ratio=0.6, delta=0.02, scale=1.0):
        gen = torch.Generator().manual_seed(seed)
        r = min(m, n)
        self.U, _ = torch.linalg.qr(torch.randn(m, r, generator=gen, dtype=torch.float64))
        self.V, _ = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))
        self.sigma = scale * ratio ** torch.arange(r, dtype=torch.float64)
        self.seed, self.delta, self.m, self.n = seed, delta, m, n

    def __call__(self, t, dtype=torch.float32):
        gen = torch.Generator().manual_seed(self.seed * 7919 + t)
        r = self.sigma.numel()
        E = torch.randn(self.m, r, generator=gen, dtype=torch.float64)
        F = torch.randn(self.n, r, generator=gen, dtype=torch.float64)
        G = (self.U + self.delta * E) @ torch.diag(self.sigma) @ (self.V + self.delta * F).T
        return G.to(dtype)


def init_weight(m, n, seed, dtype=torch.float32, std=0.5):
    gen = torch.Generator().manual_seed(10_000 + seed)
    return (std * torch.randn(m, n, generator=gen)).to(dtype)


def rel(a, b):
    """||a - b|| / ||b|| in float64 (0 if both are 0)."""
    a, b = a.double(), b.double()
    nb = b.norm().item()
    d = (a - b).norm().item()
    if nb == 0:
        return 0.0 if d == 0 else float("inf")
    return d / nb


def run_pair(make_a, make_b, W0, grads, steps, lr_schedule=None):
    """Run two optimizers (factories taking a param list) from the same W0 on
    the same gradient sequence; return final params and the lists of them."""
    pa = torch.nn.Parameter(W0.clone())
    pb = torch.nn.Parameter(W0.clone())
    oa, ob = make_a([pa]), make_b([pb])
    for t in range(1, steps + 1):
        if lr_schedule is not None:
            for o in (oa, ob):
                for gr in o.param_groups:
                    gr["lr"] = lr_schedule(t)
        g = grads(t, W0.dtype)
        pa.grad = g.clone()
        pb.grad = g.clone()
        oa.step()
        ob.step()
    return pa.detach(), pb.detach(), oa, ob
