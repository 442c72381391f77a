"""Resuming from a checkpoint: switching from torch.optim.AdamW, refusing
corrupt state, and torch's load_state_dict hook contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradnormlorp import GradNormLoRP


def adamw_run(params, steps=3, seed=0):
    """Train params with torch AdamW for a few steps; return its state dict."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([{"params": [p]} for p in params], lr=1e-2)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        opt.step()
    return opt.state_dict()


def projected_opt(W, b, **kw):
    return GradNormLoRP([{"params": [W], "rank": 4, "update_proj_gap": 5}, {"params": [b]}], lr=1e-2, **kw)


def test_adamw_checkpoint_keeps_projection_settings():
    """The AdamW checkpoint's groups have no rank: the receiving groups keep theirs."""
    W, b = nn.Parameter(torch.randn(24, 16)), nn.Parameter(torch.randn(24))
    sd = adamw_run([W, b])
    opt = projected_opt(W, b, optim_bits=8, refresh="subspace")
    opt.load_state_dict(sd)
    g0, g1 = opt.param_groups
    assert (g0["rank"], g0["update_proj_gap"], g0["optim_bits"], g0["refresh"]) == (4, 5, 8, "subspace")
    assert g1["rank"] is None
    assert g0["lr"] == 1e-2 and g0["params"] == [W]


def test_adamw_moments_carry_over_or_start_fresh():
    """A projected matrix starts fresh (step 0, its own buffers); a plain
    AdamW parameter keeps the checkpoint's moments and step."""
    W, b = nn.Parameter(torch.randn(24, 16)), nn.Parameter(torch.randn(24))
    sd = adamw_run([W, b], steps=3)
    opt = projected_opt(W, b)
    opt.load_state_dict(sd)
    assert opt.state[W]["step"] == 0 and "magnitude" in opt.state[W]
    assert opt.state[W]["exp_avg"].shape == (24, 4)  # std projection of a tall matrix: from the right
    assert opt.state[b]["step"] == 3
    assert torch.equal(opt.state[b]["exp_avg"], sd["state"][1]["exp_avg"])
    assert torch.equal(opt.state[b]["exp_avg_sq"], sd["state"][1]["exp_avg_sq"])

    # And it trains on from there as a fresh projected parameter would.
    fresh_W = nn.Parameter(W.detach().clone())
    fresh = GradNormLoRP([{"params": [fresh_W], "rank": 4, "update_proj_gap": 5}], lr=1e-2)
    g = torch.randn(24, 16)
    W.grad, b.grad, fresh_W.grad = g.clone(), torch.randn(24), g.clone()
    opt.step()
    fresh.step()
    assert opt.state[W]["step"] == 1 and opt.state[b]["step"] == 4
    assert torch.equal(W.detach(), fresh_W.detach())


def test_adamw_moments_of_bf16_and_conv_parameters_carry_over():
    """torch saves moments in the parameter's dtype and shape; ours are float32 and flat for 4-D."""
    conv = nn.Parameter(torch.randn(4, 3, 2, 2))
    b16 = nn.Parameter(torch.randn(10).bfloat16())
    sd = adamw_run([conv, b16])
    opt = GradNormLoRP([{"params": [conv]}, {"params": [b16]}])
    opt.load_state_dict(sd)
    assert opt.state[conv]["exp_avg"].shape == (48,)
    assert torch.equal(opt.state[conv]["exp_avg"], sd["state"][0]["exp_avg"].reshape(48))
    assert opt.state[b16]["exp_avg_sq"].dtype == torch.float32
    assert torch.equal(opt.state[b16]["exp_avg_sq"], sd["state"][1]["exp_avg_sq"].float())


def test_gradnormlorp_state_into_torch_adamw():
    """The reverse switch, as the README gives it: keep the state of the
    parameters stored as float32 AdamW moments; the rest start fresh in AdamW."""
    W, b = nn.Parameter(torch.randn(24, 16)), nn.Parameter(torch.randn(24))
    opt = projected_opt(W, b)
    for _ in range(2):
        W.grad, b.grad = torch.randn(24, 16), torch.randn(24)
        opt.step()
    sd = opt.state_dict()
    sd["state"] = {
        i: s for i, s in sd["state"].items() if set(s) == {"step", "exp_avg", "exp_avg_sq"}
    }
    adamw = torch.optim.AdamW([{"params": [W]}, {"params": [b]}], lr=1e-2)
    adamw.load_state_dict(sd)
    assert set(adamw.state) == {b} and float(adamw.state[b]["step"]) == 2
    W.grad, b.grad = torch.randn(24, 16), torch.randn(24)
    adamw.step()
    assert float(adamw.state[W]["step"]) == 1 and float(adamw.state[b]["step"]) == 3


def trained():
    torch.manual_seed(0)
    W, b = nn.Parameter(torch.randn(80, 64)), nn.Parameter(torch.randn(80))
    opt = projected_opt(W, b)
    for _ in range(2):
        W.grad, b.grad = torch.randn(80, 64), torch.randn(80)
        opt.step()
    return W, b, opt


def corrupt(sd, pid, name, where, value):
    sd = {**sd, "state": {i: dict(s) for i, s in sd["state"].items()}}
    t = sd["state"][pid][name].clone()
    t.view(-1)[where] = value
    sd["state"][pid][name] = t
    return sd


BAD_VALUES = [
    (0, "exp_avg", 3, float("nan"), r"'exp_avg' holds 1 non-finite"),
    (0, "proj_right", 0, float("inf"), r"'proj_right' holds 1 non-finite"),
    (0, "magnitude", 5, float("-inf"), r"'magnitude' holds 1 non-finite"),
    (0, "exp_avg_sq", 7, -1.0, r"'exp_avg_sq' holds 1 negative"),
    (0, "magnitude_exp_avg_sq", 0, -1e-3, r"'magnitude_exp_avg_sq' holds 1 negative"),
    (0, "direction_norm", 2, -2.0, r"'direction_norm' holds 1 negative"),
    (1, "exp_avg_sq", 1, float("nan"), r"parameter 0 of param group 1: .*'exp_avg_sq' holds 1 non-finite"),
]


@pytest.mark.parametrize("pid,name,where,value,msg", BAD_VALUES, ids=[f"{n}={v}" for _, n, _, v, _ in BAD_VALUES])
def test_corrupt_state_refused_and_nothing_changes(pid, name, where, value, msg):
    W, b, opt = trained()
    sd = opt.state_dict()
    before = {p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()} for p, s in opt.state.items()}
    opt.param_groups[0]["lr"] = 0.5  # a load would overwrite it
    with pytest.raises(ValueError, match=msg):
        opt.load_state_dict(corrupt(sd, pid, name, where, value))
    assert opt.param_groups[0]["lr"] == 0.5
    for p, s in opt.state.items():
        for k, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(before[p][k])), k


def test_corrupt_absmax_of_codes_refused():
    p = nn.Parameter(torch.randn(5000))  # >= 4096 elements: 8-bit moments
    opt = GradNormLoRP([p], optim_bits=8)
    for _ in range(2):
        p.grad = torch.randn(5000)
        opt.step()
    sd = opt.state_dict()
    assert sd["state"][0]["exp_avg_sq"].dtype == torch.uint8
    for name in ("exp_avg_absmax", "exp_avg_sq_absmax"):
        with pytest.raises(ValueError, match=rf"'{name}' holds 1 negative"):
            opt.load_state_dict(corrupt(sd, 0, name, 0, -1.0))
        with pytest.raises(ValueError, match=rf"'{name}' holds 1 non-finite"):
            opt.load_state_dict(corrupt(sd, 0, name, 0, float("nan")))
    opt.load_state_dict(sd)  # the intact one loads


def test_invalid_step_refused():
    W, b, opt = trained()
    sd = opt.state_dict()
    for bad in (-1, 2.5, torch.tensor(1.5), "3"):
        bad_sd = {**sd, "state": {**sd["state"], 1: {**sd["state"][1], "step": bad}}}
        with pytest.raises(ValueError, match="invalid step"):
            opt.load_state_dict(bad_sd)


def test_load_state_dict_hooks_see_the_state():
    """torch's contract: a pre-hook gets the dict to load (and may replace
    it), a post-hook runs with the loaded state in place."""
    W, b, opt = trained()
    sd = opt.state_dict()
    seen = {}

    def pre(optimizer, state_dict):
        seen["pre"] = len(state_dict["state"])
        edited = {**state_dict, "param_groups": [dict(g) for g in state_dict["param_groups"]]}
        edited["param_groups"][1]["lr"] = 0.123
        return edited

    def post(optimizer):
        seen["post"] = (len(optimizer.state), optimizer.state[W]["step"], optimizer.param_groups[1]["lr"])

    W2, b2 = nn.Parameter(W.detach().clone()), nn.Parameter(b.detach().clone())
    opt2 = projected_opt(W2, b2)
    opt2.register_load_state_dict_pre_hook(pre)
    opt2.register_load_state_dict_post_hook(post)
    W = W2  # the post-hook looks up the receiving optimizer's parameter
    opt2.load_state_dict(sd)
    assert seen == {"pre": 2, "post": (2, 2, 0.123)}
