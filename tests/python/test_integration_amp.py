"""GradNormLoRP with mixed precision: bf16/fp16 torch.autocast on the CPU and
torch.amp.GradScaler (unscaled gradients reach our step, inf steps are
skipped by the scaler, unscale_ + clip_grad_norm_)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from gradnormlorp import GradNormLoRP, GradNormLoRPError
from oracle import Oracle
from problems import record, rel
from tiny_llama import assert_same_params, batches, param_groups, snapshot, tiny_llama

HP = dict(lr=1e-2, weight_decay=0.1)


class ShadowOracle:
    """Steps the pure-PyTorch oracle on copies of the parameters with the
    very gradients our optimizer is given (a step pre-hook), so the two can be
    compared on the gradients real AMP training produces."""

    def __init__(self, opt: GradNormLoRP):
        copies = {p: p.detach().clone().requires_grad_() for g in opt.param_groups for p in g["params"]}
        groups = [{**g, "params": [copies[p] for p in g["params"]]} for g in opt.param_groups]
        self.oracle = Oracle(groups)
        self.copies = copies
        opt.register_step_pre_hook(self._step)

    def _step(self, opt, args, kwargs) -> None:
        for p, c in self.copies.items():
            c.grad = None if p.grad is None else p.grad.clone()
        with torch.autocast("cpu", enabled=False):  # the oracle's math stays fp32
            self.oracle.step()

    def worst_rel_error(self) -> float:
        return max(rel(p.detach(), c.detach()) for p, c in self.copies.items())


def amp_train(model, opt, data, dtype, scaler=None, max_grad_norm=None, step_in_autocast=False) -> list[float]:
    """A standard AMP loop: forward under autocast (none if dtype is None),
    backward of the scaled loss, optional unscale_ + clipping, scaler-driven
    step (inside the autocast region if asked)."""
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)

    def autocast(enabled=True):
        return torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=enabled and dtype is not None)

    losses = []
    for batch in data:
        with autocast():
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        if max_grad_norm is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        with autocast(step_in_autocast):
            scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@contextlib.contextmanager
def inf_logits(model):
    """Makes the model's output non-finite, so every gradient is."""
    handle = model.lm_head.register_forward_hook(lambda module, args, out: out * float("inf"))
    try:
        yield
    finally:
        handle.remove()


def test_bf16_autocast_training():
    """Forward in bf16, fp32 weights: the loss falls; our step gives the same
    bits inside and outside an autocast region (the math is in the library,
    not in autocast-affected torch ops); and every update matches the
    oracle's on the same gradients."""
    data = batches(10, 4)
    runs = []
    for step_in_autocast in (False, True):
        model = tiny_llama()
        opt = GradNormLoRP(param_groups(model), **HP)
        shadow = ShadowOracle(opt)
        losses = amp_train(model, opt, data, torch.bfloat16, step_in_autocast=step_in_autocast)
        runs.append(snapshot(model))
    assert losses[-1] < losses[0] - 1.0
    assert_same_params(runs[1], runs[0])
    err = record("bf16 autocast, tiny LLaMA, 10 steps vs oracle", shadow.worst_rel_error(), 1e-5, "fp32 weights")
    assert err <= 1e-5


@pytest.mark.parametrize("max_grad_norm", [None, 0.1], ids=["step", "unscale_+clip"])
def test_grad_scaler_steps_on_unscaled_gradients(max_grad_norm):
    """fp32 weights, no autocast, so scaling by a power of two is exact: with
    a GradScaler our step sees, bit for bit, the gradients of the unscaled
    loop (possibly clipped after scaler.unscale_), and the trajectories are
    the same. Adam is nearly invariant to the gradient scale, so it is the
    gradients themselves that are compared."""
    data = batches(6, 4)
    runs = {}
    for enabled in (False, True):
        model = tiny_llama()
        opt = GradNormLoRP(param_groups(model), **HP)
        seen = []
        opt.register_step_pre_hook(lambda o, args, kwargs: seen.append([p.grad.clone() for p in model.parameters()]))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=enabled)
        amp_train(model, opt, data, None, scaler=scaler, max_grad_norm=max_grad_norm)
        runs[enabled] = snapshot(model), seen
    assert scaler.get_scale() == 2.0**12, "no step may have been skipped"
    (w_plain, g_plain), (w_scaled, g_scaled) = runs[False], runs[True]
    assert len(g_scaled) == len(data)
    for step, (a, b) in enumerate(zip(g_scaled, g_plain)):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"step {step}: our step saw other gradients"
    assert_same_params(w_scaled, w_plain)


@pytest.mark.parametrize("max_grad_norm", [None, 0.1], ids=["step", "unscale_+clip"])
def test_grad_scaler_skips_an_inf_step(max_grad_norm):
    """Non-finite gradients: our step would refuse them (GradNormLoRPError),
    so the scaler must skip it: nothing changes, the scale is halved, and the
    next step trains normally."""
    model = tiny_llama()
    opt = GradNormLoRP(param_groups(model), **HP)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    b0, b1, b2 = batches(3, 4)
    amp_train(model, opt, [b0], torch.float16, scaler=scaler, max_grad_norm=max_grad_norm)

    before = snapshot(model)
    with inf_logits(model):
        model(**b1).loss.backward()
        with pytest.raises(GradNormLoRPError, match="NaN or Inf"):
            opt.step()
        opt.zero_grad()
        scale = scaler.get_scale()
        amp_train(model, opt, [b1], torch.float16, scaler=scaler, max_grad_norm=max_grad_norm)
    assert_same_params(snapshot(model), before)
    assert {st["step"] for st in opt.state.values()} == {1}
    assert scaler.get_scale() == scale / 2

    amp_train(model, opt, [b2], torch.float16, scaler=scaler, max_grad_norm=max_grad_norm)
    after = snapshot(model)
    assert all(not torch.equal(after[n], before[n]) for n in before)
    assert {st["step"] for st in opt.state.values()} == {2}


def test_fp16_autocast_with_grad_scaler_trains():
    """fp16 forward with the default GradScaler (2^16) and clipping: no step
    overflows here, so each of the 10 reaches us once; the loss falls, and
    each update matches the oracle's on the same (unscaled) gradients."""
    model = tiny_llama()
    opt = GradNormLoRP(param_groups(model), **HP)
    shadow = ShadowOracle(opt)
    scaler = torch.amp.GradScaler("cpu")
    losses = amp_train(model, opt, batches(10, 4), torch.float16, scaler=scaler, max_grad_norm=1.0)
    assert losses[-1] < losses[0] - 1.0
    assert scaler.get_scale() == 2.0**16 and {st["step"] for st in opt.state.values()} == {10}
    err = record("fp16 autocast + GradScaler, tiny LLaMA vs oracle", shadow.worst_rel_error(), 1e-5, "fp32 weights")
    assert err <= 1e-5
