"""The compensation="residual" option (core/compensation.go) against the
oracle (tests/python/oracle.py), with the trajectory protocol of
test_trajectory.py: Fira-style compensation of the direction gradient
outside the subspace, and its norm-growth limiter."""

from __future__ import annotations

import pytest
import torch

from gradnormlorp import GradNormLoRP, GradNormLoRPError
from oracle import Oracle
from problems import GradSeq, init_weight, record, rel
from test_trajectory import (
    DW_BOUND_F32,
    PROJ_TYPES,
    SHAPES,
    STEP_W_BOUND_F32,
    W_BOUND_F32,
    hyper,
    run_free,
    sync_oracle,
)


def residual_hyper(proj_type, wd=0.0):
    return dict(hyper(proj_type, 4, wd), compensation="residual")


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("proj_type", PROJ_TYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_residual_trajectory(shape, proj_type, wd):
    kw = residual_hyper(proj_type, wd)
    W0, ours, ref, opt, orc, p, q = run_free(shape, torch.float32, kw)
    name = f"{shape} {proj_type} wd={wd} residual"
    e_w = record("f32 W, 40 steps, residual", rel(ours, ref), W_BOUND_F32, name)
    e_dw = record("f32 W-W0, 40 steps, residual", rel(ours - W0, ref - W0), DW_BOUND_F32, name)
    assert e_w <= W_BOUND_F32, f"{name}: W differs from the oracle's by {e_w:.3e}"
    assert e_dw <= DW_BOUND_F32, f"{name}: W - W0 differs from the oracle's by {e_dw:.3e}"
    got, want = opt.state[p]["compensation_norm"], orc.state[q]["compensation_norm"]
    assert got.shape == (1,) and got.dtype == torch.float32
    assert rel(got, want) <= 1e-4, f"{name}: compensation_norm {got.item()} vs the oracle's {want.item()}"


@pytest.mark.parametrize("proj_type", PROJ_TYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_residual_step_by_step(shape, proj_type):
    """Each of 40 steps, from identical state, agrees with the oracle."""
    kw = residual_hyper(proj_type)
    m, n = shape
    W0, grads = init_weight(m, n, 5), GradSeq(m, n, 5)
    p, q = torch.nn.Parameter(W0.clone()), torch.nn.Parameter(W0.clone())
    opt, orc = GradNormLoRP([p], **kw), Oracle([q], **kw)
    worst = 0.0
    for t in range(1, 41):
        if t > 1:
            sync_oracle(opt, p, orc, q)
        p.grad = grads(t)
        q.grad = p.grad.clone()
        opt.step()
        orc.step()
        worst = max(worst, rel(p.detach(), q.detach()))
    record("f32 W after one step (resync), residual", worst, STEP_W_BOUND_F32, f"{shape} {proj_type}")
    assert worst <= STEP_W_BOUND_F32


def test_residual_changes_the_step_and_none_is_spec():
    """The option does something: the two modes differ, and "none" is SPEC
    section 1's step (the oracle without compensation)."""
    kw = hyper("std", 4, 0.0)
    _, none, ref, *_ = run_free((24, 16), torch.float32, kw)
    _, residual, *_ = run_free((24, 16), torch.float32, dict(kw, compensation="residual"))
    assert rel(none, ref) <= W_BOUND_F32
    assert rel(residual, none) > 1e-3


def test_limiter_caps_growth_at_1_01():
    """A gradient 100x larger than the last lets the compensation's norm grow
    by exactly 1.01x; a smaller one is not limited."""
    m, n = 24, 16
    p = torch.nn.Parameter(init_weight(m, n, 2))
    opt = GradNormLoRP([p], **residual_hyper("std"))
    grads = GradSeq(m, n, 2)
    norms = []
    for t, factor in enumerate([1, 1, 100, 0.01], start=1):
        p.grad = grads(t) * factor
        opt.step()
        norms.append(opt.state[p]["compensation_norm"].item())
    assert norms[0] > 0
    assert norms[2] == pytest.approx(1.01 * norms[1], rel=1e-6)
    assert norms[3] < norms[2]


def test_state_and_memory():
    """One float of state per projected matrix, none for AdamW parameters;
    the memory the layout reports counts it."""
    w, b = torch.nn.Parameter(torch.randn(24, 16)), torch.nn.Parameter(torch.randn(24))
    for p in (w, b):
        p.grad = torch.randn_like(p)
    plain = GradNormLoRP([dict(params=[w], rank=4), dict(params=[b])])
    comp = GradNormLoRP([dict(params=[w], rank=4), dict(params=[b])], compensation="residual")
    plain.step()
    comp.step()
    assert "compensation_norm" not in plain.state[w]
    assert set(comp.state[w]) - set(plain.state[w]) == {"compensation_norm"}
    assert set(comp.state[b]) == set(plain.state[b])

    def nbytes(opt):
        return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))

    assert nbytes(comp) - nbytes(plain) == 4


def test_checkpoint_round_trip():
    """compensation_norm is saved and restored: a resumed run continues
    bit for bit."""
    m, n = 24, 16
    grads = GradSeq(m, n, 9)
    p = torch.nn.Parameter(init_weight(m, n, 9))
    opt = GradNormLoRP([p], **residual_hyper("std"))
    for t in range(1, 4):
        p.grad = grads(t)
        opt.step()
    q = torch.nn.Parameter(p.detach().clone())
    resumed = GradNormLoRP([q], **residual_hyper("std"))
    resumed.load_state_dict(opt.state_dict())
    for t in range(4, 8):
        p.grad, q.grad = grads(t), grads(t)
        opt.step()
        resumed.step()
    assert torch.equal(p, q)


def test_bad_values_are_refused():
    p = torch.nn.Parameter(torch.randn(24, 16))
    with pytest.raises(ValueError, match="invalid compensation: 'fira'"):
        GradNormLoRP([p], rank=4, compensation="fira")
    with pytest.raises(ValueError, match="invalid compensation: 1"):
        GradNormLoRP([dict(params=[p], rank=4, compensation=1)])
    opt = GradNormLoRP([p], rank=4, compensation="residual")
    p.grad = torch.randn_like(p)
    opt.step()
    before = p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
    opt.state[p]["compensation_norm"].fill_(float("nan"))
    with pytest.raises(GradNormLoRPError, match="compensation_norm holds NaN"):
        opt.step()
    assert torch.equal(p, before[0])
    for k, v in before[1].items():
        if k != "compensation_norm":
            assert torch.equal(opt.state[p][k], v), f"state {k} changed by a refused step"
    assert opt.state[p]["step"] == 1
