"""A pure-PyTorch oracle of GradNormLoRP, written from SPEC section 1 for
clarity, not speed. It shares no code with the library or the package.

Math in `compute_dtype` (float32 by default, as the spec says; float64 to
measure how well-conditioned a test problem is); the SVD of a refresh in
float64; parameters are written back in their own dtype.
"""

from __future__ import annotations

import math

import torch

SIDES = {
    # proj_type -> function (m, n) -> (left?, right?)
    "std": lambda m, n: (False, True) if m >= n else (True, False),
    "reverse_std": lambda m, n: (True, False) if m >= n else (False, True),
    "right": lambda m, n: (False, True),
    "left": lambda m, n: (True, False),
    "full": lambda m, n: (True, True),
}


def sign_fix_columns(a: torch.Tensor) -> torch.Tensor:
    """Flip each column so that its entry of largest magnitude is positive
    (the first such entry on ties: torch.argmax returns the first)."""
    idx = a.abs().argmax(dim=0)
    sgn = torch.sign(a[idx, torch.arange(a.shape[1])])
    sgn[sgn == 0] = 1
    return a * sgn


def top_singular_vectors(dv: torch.Tensor, k: int, left: bool, right: bool):
    """P (m x k) and/or Q (k x n) from the float64 SVD of dv, sign-fixed."""
    u, _, vh = torch.linalg.svd(dv.double(), full_matrices=False)
    P = sign_fix_columns(u[:, :k]) if left else None
    Q = sign_fix_columns(vh[:k, :].T).T if right else None
    return P, Q


class Oracle(torch.optim.Optimizer):
    """GradNormLoRP per SPEC section 1, with the same hyperparameters and
    group semantics as gradnormlorp.GradNormLoRP (rank=None: plain AdamW;
    non-2-D parameters: plain AdamW)."""

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        rank=None,
        update_proj_gap=200,
        scale=0.25,  # GradNormLoRP's default
        proj_type="std",
        correct_bias=True,
        compensation="none",
        compute_dtype=torch.float32,
    ):
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            proj_type=proj_type,
            correct_bias=correct_bias,
            compensation=compensation,
        )
        self.compute_dtype = compute_dtype
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or p.numel() == 0:
                    continue
                if group["rank"] is not None and p.dim() == 2:
                    self._gnlp(p, group)
                else:
                    self._adamw(p, group)
        return loss

    # Adam pieces -------------------------------------------------------

    @staticmethod
    def _step_size(group, t):
        lr = float(group["lr"])
        b1, b2 = group["betas"]
        if group["correct_bias"]:
            return lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        return lr

    @staticmethod
    def _adam_direction(x, m1, m2, group):
        """Update moments in place from x; return m1 / (sqrt(m2) + eps)."""
        b1, b2 = group["betas"]
        m1.mul_(b1).add_(x, alpha=1 - b1)
        m2.mul_(b2).add_(x * x, alpha=1 - b2)
        return m1 / (m2.sqrt() + group["eps"])

    def _adamw(self, p, group):
        cd = self.compute_dtype
        st = self.state[p]
        if not st:
            st["step"] = 0
            st["exp_avg"] = torch.zeros(p.shape, dtype=cd)
            st["exp_avg_sq"] = torch.zeros(p.shape, dtype=cd)
        st["step"] += 1
        t = st["step"]
        w = p.to(cd)
        n = self._adam_direction(p.grad.to(cd), st["exp_avg"], st["exp_avg_sq"], group)
        decay = 1 - float(group["lr"]) * group["weight_decay"]
        p.copy_(w * decay - self._step_size(group, t) * n)

    # GradNormLoRP ------------------------------------------------------

    @staticmethod
    def _compensation(S, R, N, st):
        """Fira-style compensation of the residual S = dV - back(R): phi S,
        phi = ||N|| / ||R||, its norm allowed to grow at most 1.01x per step
        (no limit while the stored norm is 0)."""
        r = R.norm()
        comp = S * (N.norm() / r) if r > 0 else torch.zeros_like(S)
        norm, prev = comp.norm(), st["compensation_norm"]
        if prev > 0 and norm > 1.01 * prev:
            comp = comp * (1.01 * prev / norm)
            norm = 1.01 * prev
        st["compensation_norm"] = norm.reshape(1).to(prev.dtype)
        return comp

    def _gnlp(self, p, group):
        cd = self.compute_dtype
        m, n = p.shape
        k = min(group["rank"], m, n)
        left, right = SIDES[group["proj_type"]](m, n)
        st = self.state[p]
        if not st:
            # Initialisation: g_i = ||W_i||, s_i = g_i.
            norms = p.to(cd).norm(dim=1)
            st["step"] = 0
            st["magnitude"] = norms.clone()
            st["direction_norm"] = norms.clone()
            rows = k if left else m
            cols = k if right else n
            st["exp_avg"] = torch.zeros(rows, cols, dtype=cd)
            st["exp_avg_sq"] = torch.zeros(rows, cols, dtype=cd)
            st["proj_left"] = torch.zeros(m, k, dtype=cd) if left else None
            st["proj_right"] = torch.zeros(k, n, dtype=cd) if right else None
            st["magnitude_exp_avg"] = torch.zeros(m, dtype=cd)
            st["magnitude_exp_avg_sq"] = torch.zeros(m, dtype=cd)
            if group["compensation"] == "residual":
                st["compensation_norm"] = torch.zeros(1, dtype=cd)
        st["step"] += 1
        t = st["step"]

        W = p.to(cd)
        G = p.grad.to(cd)
        g, s = st["magnitude"], st["direction_norm"]
        nz = g != 0  # zero rows have no direction
        one = torch.ones((), dtype=cd)

        # 1. unit rows D_i = W_i / g_i
        D = torch.where(nz[:, None], W / torch.where(nz, g, one)[:, None], torch.zeros((), dtype=cd))
        # 2. weight-norm gradients
        dg = torch.where(nz, (G * D).sum(dim=1), torch.zeros((), dtype=cd))
        ratio = torch.where(nz, g / torch.where(nz, s, one), one)
        dV = torch.where(nz[:, None], ratio[:, None] * (G - dg[:, None] * D), G)

        # 3. projector refresh
        if (t - 1) % group["update_proj_gap"] == 0:
            P, Q = top_singular_vectors(dV, k, left, right)
            if left:
                st["proj_left"] = P.to(cd)
            if right:
                st["proj_right"] = Q.to(cd)
        P, Q = st["proj_left"], st["proj_right"]

        # 4. project
        R = dV
        if left:
            R = P.T @ R
        if right:
            R = R @ Q.T
        # 5. Adam in the low-rank space
        N = self._adam_direction(R, st["exp_avg"], st["exp_avg_sq"], group)
        step_size = self._step_size(group, t)
        # 6. project back, scaled
        def project_back(x):
            if right:
                x = x @ Q
            if left:
                x = P @ x
            return x

        back = project_back(N)
        if group["compensation"] == "residual":
            back = back + self._compensation(dV - project_back(R), R, N, st)
        dVlow = group["scale"] * back
        # 7. Adam on the magnitudes
        Ng = self._adam_direction(dg, st["magnitude_exp_avg"], st["magnitude_exp_avg_sq"], group)
        decay = 1 - float(group["lr"]) * group["weight_decay"]

        # 8.-9. rows with a direction
        V = s[:, None] * D - step_size * dVlow
        g_new = (g - step_size * Ng) * decay
        s_new = V.norm(dim=1)
        alive = nz & (s_new != 0)
        W_dir = torch.where(
            alive[:, None], g_new[:, None] * V / torch.where(alive, s_new, one)[:, None], torch.zeros((), dtype=cd)
        )
        # zero rows: plain low-rank update
        W_zero = W * decay - step_size * dVlow
        p.copy_(torch.where(nz[:, None], W_dir, W_zero))

        written = p.to(cd).norm(dim=1)
        zero_after = nz & ~alive  # a row whose direction vanished is now a zero row
        st["magnitude"] = torch.where(alive, g_new, torch.where(zero_after, torch.zeros((), dtype=cd), written))
        st["direction_norm"] = torch.where(alive, s_new, torch.where(zero_after, torch.zeros((), dtype=cd), written))
        return p
