"""No leak: creating, stepping (also a refused step) and deleting an
optimizer 10^4 times keeps the process's resident memory flat."""

from __future__ import annotations

import gc
import os

import pytest
import torch
from torch import nn

from gradnormlorp import GradNormLoRP, GradNormLoRPError, LayerwiseGradNormLoRP

CYCLES = 10_000
WARMUP = 1_000
# A leak of 1 KiB per cycle would add 9 MiB over the measured cycles; the
# allocator's own noise is well under this.
BOUND_MIB = 4.0


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cycle(i: int, W: nn.Parameter, b: nn.Parameter, g: torch.Tensor, nan: torch.Tensor) -> None:
    """One life of an optimizer, alternating the two modes: a step, a
    refused step (NaN gradient), a state dict."""
    cls = LayerwiseGradNormLoRP if i % 2 else GradNormLoRP
    opt = cls([{"params": [W], "rank": 2, "update_proj_gap": 2}, {"params": [b]}], lr=1e-3)
    ((W * g).sum() + (b * g[:, 0]).sum()).backward()  # layer-wise: steps here
    opt.step()
    opt.zero_grad()
    try:
        (W * nan).sum().backward()
        opt.step()
    except GradNormLoRPError:
        pass
    else:
        raise AssertionError("a NaN gradient must be refused")
    opt.zero_grad()
    opt.state_dict()
    if cls is LayerwiseGradNormLoRP:
        opt.remove_hooks()  # its hooks hold it; detached, it goes with its last reference
    del opt


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc (Linux)")
def test_create_step_delete_cycles_keep_rss_flat():
    W, b = nn.Parameter(torch.randn(16, 12)), nn.Parameter(torch.randn(16))
    g, nan = torch.randn(16, 12), torch.full((16, 12), float("nan"))
    for i in range(WARMUP):
        cycle(i, W, b, g, nan)
    gc.collect()
    start = rss_mib()
    for i in range(CYCLES - WARMUP):
        cycle(i, W, b, g, nan)
    gc.collect()
    grown = rss_mib() - start
    print(f"\nRSS after {WARMUP} warm-up cycles {start:.1f} MiB; after {CYCLES} cycles {start + grown:.1f} MiB "
          f"(+{grown:.2f} MiB, {grown * 2**20 / (CYCLES - WARMUP):.0f} B/cycle)")
    assert grown < BOUND_MIB, f"RSS grew by {grown:.2f} MiB over {CYCLES - WARMUP} cycles"
