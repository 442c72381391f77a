"""Layer-wise mode (LayerwiseGradNormLoRP): the same trajectory as normal
mode, with each gradient freed as soon as its parameter is updated."""

from __future__ import annotations

import contextlib
import io
import math
import weakref

import pytest
import torch
import torch.distributed as dist
from transformers import get_cosine_schedule_with_warmup

from gradnormlorp import GradNormLoRP, GradNormLoRPError, LayerwiseGradNormLoRP
from tiny_llama import assert_same_params, assert_same_state, batches, param_groups, snapshot, tiny_llama

HP = dict(lr=1e-2, weight_decay=0.1)


def make(layerwise: bool, seed: int = 0):
    model = tiny_llama(seed)
    cls = LayerwiseGradNormLoRP if layerwise else GradNormLoRP
    opt = cls(param_groups(model), **HP)
    return model, opt, get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=10)


def train(model, opt, sched, data, accumulation: int = 1) -> list[float]:
    """The usual loop (step, scheduler, zero_grad every `accumulation`
    micro-batches); in layer-wise mode the non-final micro-batches run inside
    opt.accumulating(). Returns the lr of each optimizer step."""
    lrs = []
    for i, batch in enumerate(data):
        last = (i + 1) % accumulation == 0
        ctx = opt.accumulating(not last) if isinstance(opt, LayerwiseGradNormLoRP) else contextlib.nullcontext()
        with ctx:
            (model(**batch).loss / accumulation).backward()
        if last:
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
            opt.zero_grad()
    return lrs


def test_trajectory_equals_normal_mode():
    data = batches(8, 4)
    runs = {}
    for layerwise in (False, True):
        model, opt, sched = make(layerwise)
        lrs = train(model, opt, sched, data)
        runs[layerwise] = (snapshot(model), opt.state_dict(), lrs)
    (w_normal, sd_normal, lrs), (w_layer, sd_layer, lrs_layer) = runs[False], runs[True]
    assert lrs == lrs_layer and lrs[0] == 0.0 and len(set(lrs)) >= 6, "the schedule must drive lr"
    assert_same_params(w_layer, w_normal)
    assert_same_state(sd_layer, sd_normal)
    assert {st["step"] for st in sd_layer["state"].values()} == {8}


def test_scheduler_drives_the_hooks():
    """scheduler.step() on the optimizer changes the lr the hooks use; lr=0
    (the first warmup step) leaves every parameter unchanged, weight decay
    included, although the step is counted."""
    model, opt, sched = make(layerwise=True)
    b0, b1 = batches(2, 4)
    before = snapshot(model)
    assert opt.param_groups[0]["lr"] == 0.0
    model(**b0).loss.backward()
    assert_same_params(snapshot(model), before)
    assert all(st["step"] == 1 for st in opt.state.values()) and len(opt.state) == len(before)

    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(HP["lr"] / 2)
    model(**b1).loss.backward()
    after = snapshot(model)
    assert all(not torch.equal(after[n], before[n]) for n in before), "lr > 0 must move every parameter"


class GradProbe:
    """Peak bytes of parameter gradients alive during backward, measured
    independently of the optimizer: a hook registered before the optimizer's
    (hooks run in registration order) adds up, whenever a gradient lands,
    the bytes of every gradient seen so far that is still alive. Weak
    references also catch a gradient dropped from .grad but still held."""

    def __init__(self, model: torch.nn.Module):
        self.seen: list[weakref.ref] = []
        self.peak = 0
        for p in model.parameters():
            p.register_post_accumulate_grad_hook(self._landed)

    def _landed(self, p: torch.Tensor) -> None:
        self.seen.append(weakref.ref(p.grad))
        live = (ref() for ref in self.seen)
        self.peak = max(self.peak, sum(g.numel() * g.element_size() for g in live if g is not None))


def test_peak_gradient_memory_drops():
    (batch,) = batches(1, 4)
    peaks = {}
    for layerwise in (False, True):
        model = tiny_llama()
        probe = GradProbe(model)
        opt = (LayerwiseGradNormLoRP if layerwise else GradNormLoRP)(param_groups(model), **HP)
        model(**batch).loss.backward()
        opt.step()
        peaks[layerwise] = probe.peak
    sizes = [p.numel() * p.element_size() for p in model.parameters()]
    total, largest = sum(sizes), max(sizes)
    print(f"peak gradient bytes: normal {peaks[False]}, layer-wise {peaks[True]} (all {total}, largest {largest})")
    assert peaks[False] == total, "the probe must see every gradient alive at the end of a normal backward"
    # The embedding and lm_head gradients are the largest (16 KiB each);
    # layer-wise keeps at most the one being applied.
    assert peaks[True] == largest
    assert peaks[True] < total / 6


def test_accumulation_equals_normal_mode():
    n = 3
    data = batches(4 * n, 2)
    runs = {}
    for layerwise in (False, True):
        model, opt, sched = make(layerwise)
        train(model, opt, sched, data, accumulation=n)
        runs[layerwise] = (snapshot(model), opt.state_dict())
    assert_same_params(runs[True][0], runs[False][0])
    assert_same_state(runs[True][1], runs[False][1])
    assert {st["step"] for st in runs[True][1]["state"].values()} == {4}


def test_accumulating_only_accumulates():
    model, opt, sched = make(layerwise=True)
    opt.step()
    sched.step()  # lr > 0
    b0, b1 = batches(2, 4)
    before = snapshot(model)
    with opt.accumulating():
        model(**b0).loss.backward()
        opt.step()  # a no-op, also in the middle of accumulation
    assert_same_params(snapshot(model), before)
    assert not opt.state and all(p.grad is not None for p in model.parameters())
    model(**b1).loss.backward()
    assert all(p.grad is None for p in model.parameters())
    assert {st["step"] for st in opt.state.values()} == {1}


@pytest.mark.parametrize("resume_in", ["layerwise", "normal"])
def test_state_dict_resume(resume_in):
    """Stop a layer-wise run after 4 of 8 steps, save model, optimizer and
    scheduler through torch.save / torch.load(weights_only=True), rebuild
    everything and go on (in layer-wise or normal mode): the result is the
    uninterrupted normal-mode run, bit for bit."""
    data = batches(8, 4)
    model, opt, sched = make(layerwise=False)
    train(model, opt, sched, data)
    reference = snapshot(model), opt.state_dict()

    model, opt, sched = make(layerwise=True)
    train(model, opt, sched, data[:4])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    opt.remove_hooks()
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    model, opt, sched = make(layerwise=resume_in == "layerwise", seed=1)  # other init: all must come from ckpt
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    train(model, opt, sched, data[4:])
    assert_same_params(snapshot(model), reference[0])
    assert_same_state(opt.state_dict(), reference[1])


def test_step_closure_and_nonfinite_gradient():
    model, opt, sched = make(layerwise=True)
    opt.step()
    sched.step()  # lr > 0
    (batch,) = batches(1, 4)
    before = snapshot(model)
    loss = opt.step(lambda: _backward(model, batch))
    assert math.isfinite(loss)
    after = snapshot(model)
    assert all(not torch.equal(after[n], before[n]) for n in before), "the closure's backward updates"

    # NaN reaches every gradient: the first hook refuses, nothing changes.
    with pytest.raises(GradNormLoRPError, match="NaN or Inf"):
        (model(**batch).loss * float("nan")).backward()
    assert_same_params(snapshot(model), after)
    assert {st["step"] for st in opt.state.values()} == {1}


def _backward(model, batch) -> float:
    loss = model(**batch).loss
    loss.backward()
    return loss.item()


def test_frozen_parameters_and_remove_hooks():
    model = tiny_llama()
    model.model.embed_tokens.weight.requires_grad_(False)
    opt = LayerwiseGradNormLoRP(param_groups(model), **HP)
    (batch,) = batches(1, 4)
    model(**batch).loss.backward()
    assert model.model.embed_tokens.weight not in opt.state
    assert len(opt.state) == sum(p.requires_grad for p in model.parameters())

    opt.remove_hooks()
    before = snapshot(model)
    model(**batch).loss.backward()
    assert_same_params(snapshot(model), before)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_refuses_distributed():
    """DDP averages gradients after the hooks have fired, so layer-wise mode
    refuses to run while torch.distributed is initialised: at construction,
    and in backward when the process group came later (here a DDP model)."""
    model = tiny_llama()
    opt = LayerwiseGradNormLoRP(param_groups(model), **HP)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError, match="torch.distributed is initialised.*DistributedDataParallel"):
            LayerwiseGradNormLoRP(param_groups(tiny_llama()), **HP)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        (batch,) = batches(1, 4)
        with pytest.raises(RuntimeError, match="before\\s+DistributedDataParallel"):
            ddp(**batch).loss.backward()
        assert not opt.state
    finally:
        dist.destroy_process_group()
