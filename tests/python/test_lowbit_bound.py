"""A low-bit step is bounded like Adam's: about lr per element, whatever
the gradients (sparse, tiny, or zero after a large one)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradnormlorp import GradNormLoRP

LR, WD = 1e-3, 1e-2


def masked(shape, gen):
    return torch.randn(shape, generator=gen) * (torch.rand(shape, generator=gen) < 0.1)


def tiny(shape, gen):
    return torch.randn(shape, generator=gen) * 1e-30


def zero(shape, gen):
    return torch.zeros(shape)


SHAPES = [(64, 64), (5000,), (100, 70)]  # >= 4096 elements: quantised moments


@pytest.mark.parametrize(
    "bits",
    [
        8,
        4,
    ],
)
@pytest.mark.parametrize("second", [masked, tiny, zero], ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_adamw_step_bounded(bits, second, shape, dtype):
    gen = torch.Generator().manual_seed(0)
    p = nn.Parameter(torch.randn(shape, generator=gen).to(dtype))
    opt = GradNormLoRP([p], lr=LR, weight_decay=WD, optim_bits=bits)
    for grad in (torch.randn(shape, generator=gen), second(shape, gen)):
        before = p.detach().float().clone()
        p.grad = grad.to(dtype)
        opt.step()
        moved = (p.detach().float() - before).abs()
        # Adam moves an element by at most ~lr on these steps; decay adds lr*wd*|w|;
        # bf16 rounding of the weight adds up to half an ulp of it.
        slack = LR * WD * before.abs() + (before.abs() * 2**-8 if dtype == torch.bfloat16 else 0)
        worst = (moved - slack).max().item()
        assert worst <= 1.5 * LR, f"an element moved by {worst:.3g} (lr {LR})"
