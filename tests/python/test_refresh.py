"""The refresh="subspace" option: projector refresh by subspace iteration
warm-started from the previous projector (core/refresh.go), against the
exact SVD refresh."""

from __future__ import annotations

import pytest
import torch

from gradnormlorp import GradNormLoRP


def low_rank_stream(m, n, r, steps, seed=0, drift=0.05, noise=1e-3):
    """Gradients A_t diag(0.7^l) B_t^T + noise whose factors drift slowly,
    like real gradients between refreshes."""
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(m, r, generator=gen), torch.randn(n, r, generator=gen)
    sigma = 0.7 ** torch.arange(r, dtype=torch.float32)
    out = []
    for _ in range(steps):
        a += drift * torch.randn(m, r, generator=gen)
        b += drift * torch.randn(n, r, generator=gen)
        out.append((a * sigma) @ b.T + noise * torch.randn(m, n, generator=gen))
    return out


def run(shape, refresh, grads, proj_type="std", rank=6, gap=4):
    gen = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.randn(shape, generator=gen))
    opt = GradNormLoRP(
        [dict(params=[p], rank=rank, update_proj_gap=gap, proj_type=proj_type)], lr=1e-2, weight_decay=0.0,
        refresh=refresh,
    )
    projs = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        st = opt.state[p]
        projs.append({k: st[k].clone() for k in ("proj_left", "proj_right") if k in st})
    return p.detach().clone(), projs, opt


def subspace_overlap(x, y):
    """||X^T Y||_F^2 / k for two orthonormal bases (columns): 1 when equal."""
    return float((x.double().T @ y.double()).pow(2).sum() / x.shape[1])


@pytest.mark.parametrize("proj_type", ["std", "reverse_std", "full"])
@pytest.mark.parametrize("shape", [(48, 36), (36, 48)])
def test_subspace_refresh_spans_the_exact_subspace(shape, proj_type):
    grads = low_rank_stream(*shape, r=8, steps=13)
    w_svd, p_svd, _ = run(shape, "svd", grads, proj_type)
    w_sub, p_sub, _ = run(shape, "subspace", grads, proj_type)
    for step in range(0, 13, 4):  # refresh steps 1, 5, 9, 13
        for name in p_svd[step]:
            e, f = p_svd[step][name], p_sub[step][name]
            if name == "proj_right":
                e, f = e.T, f.T
            if step == 0:
                assert torch.equal(e, f), "the first refresh is exact"
                continue
            assert not torch.equal(e, f), "the subspace iteration ran"
            assert subspace_overlap(e, f) > 0.999, f"step {step + 1} {name}"
            assert subspace_overlap(f, f) == pytest.approx(1, abs=1e-5), "orthonormal"
            # Ordered like the exact singular vectors, with the same signs.
            for v in range(3):
                assert float(e[:, v] @ f[:, v]) > 0.99, f"step {step + 1} {name} vector {v}"
    rel = float((w_sub - w_svd).norm() / w_svd.norm())
    assert rel < 1e-3, f"trajectories part by {rel:.2e}"


def test_refresh_option_is_validated_and_saved():
    p = torch.nn.Parameter(torch.randn(8, 6))
    with pytest.raises(ValueError, match="refresh"):
        GradNormLoRP([p], rank=2, refresh="qr")
    with pytest.raises(ValueError, match="refresh"):
        GradNormLoRP([dict(params=[p], rank=2, refresh=1)])
    opt = GradNormLoRP([dict(params=[p], rank=2)], refresh="subspace")
    assert opt.param_groups[0]["refresh"] == "subspace"
    p.grad = torch.randn(8, 6)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["refresh"] == "subspace"
    opt2 = GradNormLoRP([dict(params=[p], rank=2)])
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["refresh"] == "subspace"


def test_subspace_refresh_is_deterministic_and_resumes_exactly():
    shape = (40, 30)
    grads = low_rank_stream(*shape, r=6, steps=10, seed=3)
    w1, _, _ = run(shape, "subspace", grads, gap=3)
    w2, _, _ = run(shape, "subspace", grads, gap=3)
    assert torch.equal(w1, w2)
    # Stop after 5 steps, save, restore into a new optimizer, go on.
    gen = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.randn(shape, generator=gen))
    opt = GradNormLoRP([dict(params=[p], rank=6, update_proj_gap=3)], lr=1e-2, weight_decay=0.0, refresh="subspace")
    for g in grads[:5]:
        p.grad = g.clone()
        opt.step()
    sd = opt.state_dict()
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = GradNormLoRP([dict(params=[q], rank=6, update_proj_gap=3)], lr=1e-2, weight_decay=0.0)
    opt2.load_state_dict(sd)
    for g in grads[5:]:
        q.grad = g.clone()
        opt2.step()
    assert torch.equal(q.detach(), w1)
