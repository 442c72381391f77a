"""Non-contiguous parameters (transposed views, channels_last conv weights,
strided slices) are stepped exactly as their contiguous copies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradnormlorp import GradNormLoRP, GradNormLoRPError, LayerwiseGradNormLoRP, _lib


def transposed(shape, gen):
    return torch.randn(shape[::-1], generator=gen).t()


def channels_last(shape, gen):
    return torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)


def every_other_column(shape, gen):
    return torch.randn(shape[0], 2 * shape[1], generator=gen)[:, ::2]


CASES = [
    ("transposed", transposed, (24, 16), dict(rank=4, update_proj_gap=2)),
    ("transposed-full", transposed, (24, 16), dict(rank=4, update_proj_gap=2, proj_type="full")),
    ("transposed-adamw", transposed, (24, 16), dict()),
    ("channels_last", channels_last, (8, 4, 3, 3), dict(rank=4)),
    ("strided-slice", every_other_column, (20, 12), dict(rank=3, update_proj_gap=2)),
    ("bf16-transposed", transposed, (24, 16), dict(rank=4, dtype=torch.bfloat16)),
]


@pytest.mark.parametrize("make,shape,kw", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_same_as_contiguous(make, shape, kw):
    kw = dict(kw)
    dtype = kw.pop("dtype", torch.float32)
    gen = torch.Generator().manual_seed(0)
    strided = nn.Parameter(make(shape, gen).to(dtype))
    assert not strided.is_contiguous()
    dense = nn.Parameter(strided.detach().contiguous())
    opt_s, opt_d = GradNormLoRP([strided], lr=1e-2, **kw), GradNormLoRP([dense], lr=1e-2, **kw)
    layout_before = strided.stride()
    for _ in range(5):
        g = torch.randn(shape, generator=gen).to(dtype)
        strided.grad, dense.grad = g.clone(), g.clone()
        opt_s.step()
        opt_d.step()
    assert strided.stride() == layout_before, "the parameter keeps its memory layout"
    assert torch.equal(strided.detach(), dense.detach())
    assert not torch.equal(dense.detach(), make(shape, torch.Generator().manual_seed(0)).to(dtype))
    for name, t in opt_d.state[dense].items():
        assert torch.equal(torch.as_tensor(opt_s.state[strided][name]), torch.as_tensor(t)), name


def test_view_into_a_larger_tensor_updates_that_tensor():
    base = torch.zeros(10, 30)
    W = nn.Parameter(base[:, 5:25])  # shares base's memory, rows 30 apart
    assert not W.is_contiguous()
    opt = GradNormLoRP([W], rank=2)
    W.grad = torch.randn(10, 20)
    opt.step()
    assert torch.equal(base[:, 5:25], W.detach()) and base[:, 5:25].abs().sum() > 0
    assert base[:, :5].abs().sum() == 0 and base[:, 25:].abs().sum() == 0


def test_layerwise_non_contiguous():
    lin = nn.Linear(16, 24)
    lin.weight = nn.Parameter(lin.weight.detach().t().contiguous().t())
    ref = nn.Linear(16, 24)
    ref.load_state_dict(lin.state_dict())
    opt = LayerwiseGradNormLoRP([{"params": [lin.weight], "rank": 4}, {"params": [lin.bias]}], lr=1e-2)
    ref_opt = GradNormLoRP([{"params": [ref.weight], "rank": 4}, {"params": [ref.bias]}], lr=1e-2)
    x = torch.randn(5, 16)
    for _ in range(3):
        lin(x).square().sum().backward()
        ref(x).square().sum().backward()
        ref_opt.step()
        ref_opt.zero_grad()
    assert torch.equal(lin.weight.detach(), ref.weight.detach()) and opt.state[lin.weight]["step"] == 3


def test_overlapping_parameter_refused():
    """An expand()ed parameter has one memory location for many elements:
    no element-wise update can be written back, so it is refused, unchanged."""
    W = nn.Parameter(torch.randn(6, 1).expand(6, 4))
    before = W.detach().clone()
    opt = GradNormLoRP([W])
    W.grad = torch.randn(6, 4)
    with pytest.raises(GradNormLoRPError, match="share memory") as ei:
        opt.step()
    assert ei.value.status == _lib.GNLP_ERR_NOT_CONTIGUOUS
    assert torch.equal(W.detach(), before) and not opt.state
