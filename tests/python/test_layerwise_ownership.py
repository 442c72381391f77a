"""Layer-wise mode never leaves a trainable parameter silently un-updated:
a newer layer-wise optimizer on the same parameter takes it over (with a
warning), and a parameter unfrozen after construction is picked up."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from gradnormlorp import GradNormLoRP, LayerwiseGradNormLoRP


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def backward(m, x):
    m(x).square().sum().backward()


def test_newer_layerwise_optimizer_takes_over_with_a_warning():
    m = model()
    first = LayerwiseGradNormLoRP(m.parameters(), lr=1e-2)
    with pytest.warns(UserWarning, match="took over 1 parameter.*no longer updates them"):
        second = LayerwiseGradNormLoRP([m[2].weight], lr=1e-2)
    for _ in range(2):
        backward(m, torch.randn(4, 6))
        first.step()  # does not hook the parameter it gave away again
        second.step()
    assert second.state[m[2].weight]["step"] == 2 and m[2].weight not in first.state
    assert all(first.state[p]["step"] == 2 for p in m.parameters() if p is not m[2].weight)


def test_optimizer_not_kept_still_trains_and_is_taken_over():
    """The hooks hold the optimizer, so one built and not kept trains on (step()
    is a no-op anyway); building another, as a re-run notebook cell does, takes over."""
    m = model()
    LayerwiseGradNormLoRP(m.parameters(), lr=1e-2)
    gc.collect()
    before = m[0].weight.detach().clone()
    backward(m, torch.randn(4, 6))
    assert not torch.equal(m[0].weight.detach(), before) and m[0].weight.grad is None
    with pytest.warns(UserWarning, match="took over 4 parameter"):
        opt = LayerwiseGradNormLoRP(m.parameters(), lr=1e-2)
    backward(m, torch.randn(4, 6))
    assert all(opt.state[p]["step"] == 1 for p in m.parameters())


def test_failed_construction_leaves_no_hooks():
    m = model()
    with pytest.raises(ValueError, match="more than one parameter group"):
        LayerwiseGradNormLoRP([{"params": [m[0].weight]}, {"params": [m[0].weight]}])
    before = m[0].weight.detach().clone()
    backward(m, torch.randn(4, 6))
    assert torch.equal(m[0].weight.detach(), before) and m[0].weight.grad is not None


def test_parameter_unfrozen_after_construction_is_updated():
    """Frozen at construction, unfrozen later: the next step() updates it on
    the gradient its backward left, and hooks it; then backward updates it,
    exactly as normal mode does."""
    m, ref = model(), model()
    for net in (m, ref):
        net[0].weight.requires_grad_(False)
    opt = LayerwiseGradNormLoRP(m.parameters(), lr=1e-2)
    ref_opt = GradNormLoRP(ref.parameters(), lr=1e-2)
    xs = [torch.randn(4, 6, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    for i, x in enumerate(xs):
        if i == 1:
            m[0].weight.requires_grad_(True)
            ref[0].weight.requires_grad_(True)
        backward(m, x)
        opt.step()
        backward(ref, x)
        ref_opt.step()
        ref_opt.zero_grad()
        assert m[0].weight.grad is None
    assert opt.state[m[0].weight]["step"] == 3
    for p, q in zip(m.parameters(), ref.parameters()):
        assert torch.equal(p.detach(), q.detach())
