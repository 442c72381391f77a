"""GradNormLoRP's math (SPEC section 1) written in PyTorch for speed: the
baseline "the same math in PyTorch" of bench/step.py.

Unlike tests/python/oracle.py (written for clarity, float64-capable) this
uses in-place ops, fused addmm/addcmul/lerp and no per-step allocations
beyond what PyTorch needs, as a careful PyTorch user would write it. The
refresh uses torch.linalg.svd in float32 (as GaLore does) with the sign
rule. Parameters that are not projected get single-tensor AdamW with the
library's Adam form (eps added to sqrt(m2), bias correction in the step
size).
"""

from __future__ import annotations

import math

import torch


def _sign_fix_rows(q: torch.Tensor) -> torch.Tensor:
    idx = q.abs().argmax(dim=1)
    s = torch.sign(q[torch.arange(q.shape[0]), idx])
    s[s == 0] = 1
    return q.mul_(s[:, None])


class TorchGradNormLoRP(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        rank=None,
        update_proj_gap=200,
        scale=1.0,
        proj_type="std",
    ):
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
            update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["rank"] is not None and p.dim() == 2:
                    self._gnlp(p, group)
                else:
                    self._adamw(p, group)

    @staticmethod
    def _scalars(group, t):
        b1, b2 = group["betas"]
        lr = group["lr"]
        step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        return b1, b2, step_size, 1 - lr * group["weight_decay"]

    def _adamw(self, p, group):
        st = self.state[p]
        if not st:
            st["step"] = 0
            st["exp_avg"] = torch.zeros_like(p)
            st["exp_avg_sq"] = torch.zeros_like(p)
        st["step"] += 1
        b1, b2, step_size, decay = self._scalars(group, st["step"])
        g = p.grad
        m1, m2 = st["exp_avg"], st["exp_avg_sq"]
        m1.lerp_(g, 1 - b1)
        m2.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = m2.sqrt().add_(group["eps"])
        p.mul_(decay).addcdiv_(m1, denom, value=-step_size)

    def _gnlp(self, p, group):
        m, n = p.shape
        k = min(group["rank"], m, n)
        right = m >= n if group["proj_type"] == "std" else group["proj_type"] == "right"
        st = self.state[p]
        if not st:
            norms = torch.linalg.vector_norm(p, dim=1)
            st["step"] = 0
            st["magnitude"] = norms.clone()
            st["direction_norm"] = norms.clone()
            shape = (m, k) if right else (k, n)
            st["exp_avg"] = torch.zeros(shape)
            st["exp_avg_sq"] = torch.zeros(shape)
            st["proj"] = None
            st["magnitude_exp_avg"] = torch.zeros(m)
            st["magnitude_exp_avg_sq"] = torch.zeros(m)
        st["step"] += 1
        t = st["step"]
        b1, b2, step_size, decay = self._scalars(group, t)
        eps = group["eps"]
        g, s = st["magnitude"], st["direction_norm"]
        if bool((g == 0).any()) or bool((s == 0).any()):
            raise NotImplementedError("zero rows: see tests/python/oracle.py")
        G = p.grad
        inv = g.reciprocal()
        D = p * inv[:, None]  # unit rows
        dg = torch.linalg.vecdot(G, D, dim=1)
        dV = torch.addcmul(G, D, dg[:, None], value=-1).mul_((g / s)[:, None])
        if (t - 1) % group["update_proj_gap"] == 0:
            u, _, vh = torch.linalg.svd(dV, full_matrices=False)
            st["proj"] = _sign_fix_rows(vh[:k].contiguous()) if right else _sign_fix_rows(u[:, :k].T.contiguous())
        Q = st["proj"]  # right: k x n; left: P^T, k x m
        R = dV @ Q.T if right else Q @ dV
        m1, m2 = st["exp_avg"], st["exp_avg_sq"]
        m1.lerp_(R, 1 - b1)
        m2.mul_(b2).addcmul_(R, R, value=1 - b2)
        N = m1 / m2.sqrt().add_(eps)
        a1, a2 = st["magnitude_exp_avg"], st["magnitude_exp_avg_sq"]
        a1.lerp_(dg, 1 - b1)
        a2.mul_(b2).addcmul_(dg, dg, value=1 - b2)
        Ng = a1 / a2.sqrt().add_(eps)
        # V' = s D - step_size * scale * project_back(N)
        V = D.mul_(s[:, None])
        alpha = -step_size * group["scale"]
        if right:
            V.addmm_(N, Q, alpha=alpha)
        else:
            V.addmm_(Q.T, N, alpha=alpha)
        g_new = g.sub_(Ng, alpha=step_size).mul_(decay)
        s_new = torch.linalg.vector_norm(V, dim=1)
        p.copy_(V.mul_((g_new / s_new)[:, None]))
        s.copy_(s_new)
