"""state_dict / load_state_dict: resuming equals not stopping, bit for bit."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from gradnormlorp import GradNormLoRP
from problems import GradSeq


def make_model(dtype, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 24), nn.LayerNorm(24), nn.Linear(24, 20), nn.Linear(20, 16, bias=False))
    return model.to(dtype)


def make_opt(model, **kw):
    mats = [m.weight for m in model if isinstance(m, nn.Linear)]
    ids = {id(p) for p in mats}
    rest = [p for p in model.parameters() if id(p) not in ids]
    hp = dict(rank=4, update_proj_gap=5, scale=0.25, proj_type="std")
    hp.update(kw)
    return GradNormLoRP([{"params": mats, **hp}, {"params": rest}], lr=1e-2, weight_decay=0.01)


def set_grads(model, t):
    for i, p in enumerate(model.parameters()):
        if p.dim() == 2:
            p.grad = GradSeq(*p.shape, seed=100 + i)(t, p.dtype)
        else:
            gen = torch.Generator().manual_seed(1000 * i + t)
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)


def roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "fp16"])
@pytest.mark.parametrize("proj_type", ["std", "full"])
def test_resume_is_bit_exact(dtype, proj_type):
    total, stop = 17, 8  # refreshes at 1, 6, 11, 16: one on each side of the stop
    # Uninterrupted run.
    ref_model = make_model(dtype)
    ref_opt = make_opt(ref_model, proj_type=proj_type)
    for t in range(1, total + 1):
        set_grads(ref_model, t)
        ref_opt.step()

    # Run, save, rebuild everything, load, continue.
    model = make_model(dtype)
    opt = make_opt(model, proj_type=proj_type)
    for t in range(1, stop + 1):
        set_grads(model, t)
        opt.step()
    model_sd = roundtrip(model.state_dict())
    opt_sd = roundtrip(opt.state_dict())

    model2 = make_model(dtype, seed=123)  # different init: everything must come from the checkpoint
    model2.load_state_dict(model_sd)
    opt2 = make_opt(model2, proj_type=proj_type)
    opt2.load_state_dict(opt_sd)
    # Dtypes preserved: fp32 state of half-precision params stays fp32.
    for p in model2.parameters():
        st = opt2.state[p]
        assert st["step"] == stop and type(st["step"]) is int
        for k, v in st.items():
            if k != "step":
                assert v.dtype == torch.float32, f"{k} of a {p.dtype} parameter loaded as {v.dtype}"
    for t in range(stop + 1, total + 1):
        set_grads(model2, t)
        opt2.step()

    for (n, a), b in zip(ref_model.named_parameters(), model2.parameters()):
        assert torch.equal(a, b), f"{n}: resumed run differs from the uninterrupted one"
    for a, b in zip(ref_model.parameters(), model2.parameters()):
        sa, sb = ref_opt.state[a], opt2.state[b]
        assert sa.keys() == sb.keys()
        for k in sa:
            if k == "step":
                assert sa[k] == sb[k]
            else:
                assert torch.equal(sa[k], sb[k]), f"state {k} differs after resuming"


def test_state_dict_contents_are_plain():
    model = make_model(torch.bfloat16)
    opt = make_opt(model)
    set_grads(model, 1)
    opt.step()
    sd = opt.state_dict()
    for st in sd["state"].values():
        for k, v in st.items():
            if k == "step":
                assert type(v) is int
            else:
                assert isinstance(v, torch.Tensor) and v.dtype == torch.float32
    loaded = roundtrip(sd)  # weights_only=True accepts it
    assert loaded["param_groups"][0]["proj_type"] == "std"
    assert loaded["param_groups"][0]["rank"] == 4 and loaded["param_groups"][1]["rank"] is None


def test_loaded_state_is_not_aliased():
    """Loading copies: stepping the loaded optimizer leaves the dict alone."""
    model = make_model(torch.float32)
    opt = make_opt(model)
    set_grads(model, 1)
    opt.step()
    sd = opt.state_dict()
    model2 = make_model(torch.float32)
    opt2 = make_opt(model2)
    opt2.load_state_dict(sd)
    before = {k: v.clone() for k, v in sd["state"][0].items() if k != "step"}
    set_grads(model2, 2)
    opt2.step()
    for k, v in before.items():
        assert torch.equal(sd["state"][0][k], v)
    assert sd["state"][0]["step"] == 1


def test_load_rejects_mismatched_state():
    model = make_model(torch.float32)
    opt = make_opt(model)
    set_grads(model, 1)
    opt.step()
    sd = opt.state_dict()

    # A different rank: buffer shapes disagree.
    opt_r = make_opt(make_model(torch.float32), rank=8)
    sd_r = {**sd, "param_groups": [dict(g) for g in opt_r.state_dict()["param_groups"]]}
    with pytest.raises(ValueError, match=r"exp_avg.*has shape"):
        opt_r.load_state_dict(sd_r)

    # A different proj_type with other buffers: names disagree.
    opt_l = make_opt(make_model(torch.float32), proj_type="full")
    sd_l = {**sd, "param_groups": [dict(g) for g in opt_l.state_dict()["param_groups"]]}
    with pytest.raises(ValueError, match=r"buffers"):
        opt_l.load_state_dict(sd_l)

    # The saved groups carry their config: loading them into an optimizer
    # built with another rank restores the saved rank (as torch does).
    opt_r.load_state_dict(sd)
    assert opt_r.param_groups[0]["rank"] == 4

    # A model whose layer has another shape.
    other = nn.Sequential(nn.Linear(16, 24), nn.LayerNorm(24), nn.Linear(24, 12), nn.Linear(20, 16, bias=False))
    opt_s = make_opt(other)
    with pytest.raises(ValueError, match=r"shape"):
        opt_s.load_state_dict(sd)
    assert len(opt_s.state) == 0, "a failed load must leave the optimizer unchanged"

    # Wrong dtype of a buffer.
    bad = roundtrip(sd)
    bad["state"][0]["exp_avg"] = bad["state"][0]["exp_avg"].double()
    with pytest.raises(ValueError, match=r"dtype"):
        make_opt(make_model(torch.float32)).load_state_dict(bad)

    # Missing buffer.
    bad = roundtrip(sd)
    del bad["state"][0]["magnitude"]
    with pytest.raises(ValueError, match=r"buffers"):
        make_opt(make_model(torch.float32)).load_state_dict(bad)

    # Wrong number of groups / params.
    with pytest.raises(ValueError, match="parameter groups"):
        GradNormLoRP(model.parameters()).load_state_dict(sd)


def test_load_torch_adamw_fp32_state_into_adamw_group():
    """exp_avg / exp_avg_sq of a torch.optim.AdamW checkpoint of fp32 params
    have exactly the AdamW layout, so they load (step given as a tensor)."""
    p = nn.Parameter(torch.randn(8, 4))
    ta = torch.optim.AdamW([p])
    p.grad = torch.randn(8, 4)
    ta.step()
    opt = GradNormLoRP([p])
    opt.load_state_dict(ta.state_dict())
    assert opt.state[p]["step"] == 1
    p.grad = torch.randn(8, 4)
    opt.step()
    assert opt.state[p]["step"] == 2
