"""Parameters that are not projected get plain AdamW (SPEC section 1, last
paragraphs): against the oracle, and against torch.optim.AdamW."""

from __future__ import annotations

import pytest
import torch

from gradnormlorp import GradNormLoRP
from oracle import Oracle
from problems import record, rel

STEPS = 40


def grads_for(shape, seed, steps=STEPS, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(dtype) for _ in range(steps)]


def run(opt_factory, W0, grads, lr_at=None):
    p = torch.nn.Parameter(W0.clone())
    opt = opt_factory([p])
    for t, g in enumerate(grads, 1):
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(t)
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt, p


CASES = [
    # (shape, group kwargs): rank=None groups, and non-2-D params in a rank group
    ((24, 16), dict(rank=None)),
    ((16,), dict(rank=None)),
    ((16,), dict(rank=4)),  # 1-D params are never projected
    ((3, 4, 5), dict(rank=4)),  # >2-D: AdamW on the flat vector
    ((2, 3, 2, 2), dict(rank=None)),
    ((), dict(rank=None)),  # a scalar parameter
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "fp16"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("shape,kw", CASES, ids=lambda c: str(c))
def test_adamw_matches_oracle(shape, kw, wd, dtype):
    gen = torch.Generator().manual_seed(1)
    W0 = torch.randn(shape, generator=gen).to(dtype)
    grads = grads_for(shape, 2, dtype=dtype)
    hp = dict(lr=1e-2, weight_decay=wd, **kw)
    ours, opt, p = run(lambda ps: GradNormLoRP(ps, **hp), W0, grads)
    ref, _, _ = run(lambda ps: Oracle(ps, **hp), W0, grads)
    name = f"{tuple(shape)} {dtype} {kw} wd={wd}"
    assert ours.dtype == dtype and ours.shape == W0.shape
    state = opt.state[p]
    assert sorted(state) == ["exp_avg", "exp_avg_sq", "step"]
    assert state["step"] == STEPS
    assert state["exp_avg"].dtype == torch.float32
    assert state["exp_avg"].numel() == max(1, W0.numel())
    if dtype == torch.float32:
        e = record("AdamW f32 W, 40 steps", rel(ours, ref), 3e-7, name)
        assert e <= 3e-7, f"{name}: W differs from the oracle by {e:.3e}"
    else:
        # Same math; W rounded to the param dtype each step. Elementwise, so
        # the trajectories only part where a rounding flips.
        e = record(f"AdamW {str(dtype)[6:]} W, 40 steps", rel(ours, ref), 1e-3, name)
        assert e <= 1e-3, f"{name}: W differs from the oracle by {e:.3e}"


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_matches_torch_adamw_exactly_where_equal(wd):
    """With eps = 0, SPEC's form (eps on sqrt(M2), bias correction in the step
    size) equals torch.optim.AdamW's, and so does the decay W (1 - lr wd).
    W0 = 0 so that the result is the sum of the updates itself (no
    cancellation against W): differences are float rounding only."""
    shape = (24, 16)
    W0 = torch.zeros(shape)
    grads = grads_for(shape, 3, steps=20)
    sched = lambda t: 1e-2 * (1 + 0.5 * torch.cos(torch.tensor(t * 0.3)).item())  # noqa: E731
    hp = dict(lr=1e-2, betas=(0.9, 0.999), eps=0.0, weight_decay=wd)
    ours, _, _ = run(lambda ps: GradNormLoRP(ps, **hp), W0, grads, lr_at=sched)
    ref, _, _ = run(lambda ps: torch.optim.AdamW(ps, **hp), W0, grads, lr_at=sched)
    e = record("AdamW vs torch.optim.AdamW (eps=0, W0=0)", rel(ours, ref), 1e-6, f"wd={wd}")
    assert e <= 1e-6, (
        f"AdamW (eps=0) differs from torch.optim.AdamW by {e:.3e}; a systematic difference "
        f"here usually means the moments use (1 - beta) rounded in float32 after rounding beta"
    )


def test_adamw_close_to_torch_adamw_with_eps():
    """With eps > 0 the two forms differ by where eps sits (torch adds it to
    sqrt(v)/sqrt(1-b2^t)): close, not equal."""
    shape = (24, 16)
    gen = torch.Generator().manual_seed(4)
    W0 = torch.randn(shape, generator=gen)
    grads = grads_for(shape, 5)
    hp = dict(lr=1e-2, eps=1e-8, weight_decay=0.05)
    ours, _, _ = run(lambda ps: GradNormLoRP(ps, **hp), W0, grads)
    ref, _, _ = run(lambda ps: torch.optim.AdamW(ps, **hp), W0, grads)
    e = record("AdamW vs torch.optim.AdamW (eps=1e-8)", rel(ours - W0, ref - W0), 1e-4, "")
    assert e <= 1e-4


def test_correct_bias_false():
    shape = (16,)
    W0 = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    grads = grads_for(shape, 7, steps=10)
    hp = dict(lr=1e-2, weight_decay=0.1, correct_bias=False)
    ours, _, _ = run(lambda ps: GradNormLoRP(ps, **hp), W0, grads)
    ref, _, _ = run(lambda ps: Oracle(ps, **hp), W0, grads)
    assert rel(ours, ref) <= 1e-6
    # And it differs from the bias-corrected run.
    other, _, _ = run(lambda ps: GradNormLoRP(ps, lr=1e-2, weight_decay=0.1), W0, grads)
    assert rel(ours, other) > 1e-4
