"""The optimizer in a training loop: mixed groups, LR schedulers, closures,
state accounting."""

from __future__ import annotations

import copy

import torch
from torch import nn

from gradnormlorp import GradNormLoRP
from oracle import Oracle
from problems import record, rel


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 20), nn.Tanh(), nn.Linear(20, 4))


def groups_of(model, **proj):
    mats = [m.weight for m in model if isinstance(m, nn.Linear)]
    rest = [m.bias for m in model if isinstance(m, nn.Linear)]
    return [{"params": mats, **proj}, {"params": rest, "weight_decay": 0.0}]


def data(seed=1, n=64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=gen)
    y = torch.sin(x[:, :4] * 2) + 0.1 * x[:, 4:8]
    return x, y


def test_mixed_groups_with_lr_scheduler_match_oracle():
    x, y = data()
    proj = dict(rank=4, update_proj_gap=7, scale=0.25, proj_type="std")
    hp = dict(lr=2e-2, weight_decay=0.05)
    runs = []
    for cls in (GradNormLoRP, Oracle):
        model = mlp()
        opt = cls(groups_of(model, **proj), **hp)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-2, total_steps=40, pct_start=0.25)
        lrs, losses = [], []
        for _ in range(40):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
            losses.append(loss.item())
        runs.append((model, lrs, losses, opt))
    (m1, lr1, l1, opt), (m2, lr2, l2, _) = runs
    assert lr1 == lr2 and len(set(lr1)) > 30, "the schedule must change lr every step"
    assert l1[-1] < 0.5 * l1[0], "training should reduce the loss"
    for (n, a), b in zip(m1.named_parameters(), m2.parameters()):
        e = record("MLP + OneCycleLR, 40 steps", rel(a.detach(), b.detach()), 1e-5, n)
        assert e <= 1e-5, f"{n}: differs from the oracle by {e:.3e}"
    # Projected matrices carry GradNormLoRP state, biases AdamW state.
    assert "magnitude" in opt.state[m1[0].weight] and "magnitude" not in opt.state[m1[0].bias]


def test_step_with_closure():
    x, y = data()
    ma, mb = mlp(), mlp()
    oa = GradNormLoRP(groups_of(ma, rank=3), lr=1e-2)
    ob = GradNormLoRP(groups_of(mb, rank=3), lr=1e-2)
    for _ in range(5):

        def closure():
            oa.zero_grad()
            loss = nn.functional.mse_loss(ma(x), y)
            loss.backward()
            return loss

        with torch.no_grad():  # the closure must run with grad enabled anyway
            got = oa.step(closure)
        loss = nn.functional.mse_loss(mb(x), y)
        ob.zero_grad()
        loss.backward()
        ob.step()
        assert torch.is_tensor(got) and torch.equal(got.detach(), loss.detach())
    for a, b in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(a, b)


def test_state_bytes_is_exact():
    model = mlp()
    opt = GradNormLoRP(groups_of(model, rank=4, proj_type="full"))
    assert opt.state_bytes() == 0
    x, y = data()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    expect = 0
    for st in opt.state.values():
        for k, v in st.items():
            if k != "step":
                expect += v.numel() * v.element_size()
    assert opt.state_bytes() == expect
    # By hand for the first layer (24 x 16, rank 4, full): moments 4x4 x2,
    # P 24x4, Q 4x16, four per-row vectors of 24; its bias: 2 x 24.
    w_bytes = 4 * (2 * 16 + 24 * 4 + 4 * 16 + 4 * 24)
    st = opt.state[model[0].weight]
    assert sum(v.numel() * v.element_size() for k, v in st.items() if k != "step") == w_bytes


def test_add_param_group_later_and_hooks():
    x, y = data()
    model = mlp()
    opt = GradNormLoRP([{"params": [model[0].weight, model[2].weight], "rank": 4}])
    opt.add_param_group({"params": [model[4].weight], "rank": 2, "proj_type": "left"})
    opt.add_param_group({"params": [m.bias for m in model if isinstance(m, nn.Linear)]})
    assert opt.param_groups[1]["lr"] == 1e-3 and opt.param_groups[2]["rank"] is None
    calls = []
    opt.register_step_post_hook(lambda o, a, k: calls.append(1))
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert calls == [1]
    assert opt.state[model[4].weight]["proj_left"].shape == (4, 2)


def test_deepcopy_and_zero_grad():
    x, y = data()
    model = mlp()
    opt = GradNormLoRP(groups_of(model, rank=4))
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    opt2 = copy.deepcopy(opt)
    assert opt2.state_bytes() == opt.state_bytes()


def test_bf16_model_trains():
    x, y = data()
    model = mlp().to(torch.bfloat16)
    opt = GradNormLoRP(groups_of(model, rank=4, update_proj_gap=10), lr=1e-2)
    first = None
    for _ in range(40):
        loss = nn.functional.mse_loss(model(x.bfloat16()).float(), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    for st in opt.state.values():
        assert all(v.dtype == torch.float32 for k, v in st.items() if k != "step")
