"""transformers' get_cosine_schedule_with_warmup drives group["lr"], and our
step follows it: lr = 0 changes nothing, the update scales with lr, and the
trajectory is the oracle's."""

from __future__ import annotations

import math

from transformers import get_cosine_schedule_with_warmup

from gradnormlorp import GradNormLoRP
from oracle import Oracle
from problems import record, rel
from tiny_llama import assert_same_params, batches, param_groups, snapshot, tiny_llama

STEPS = 12


def run(cls):
    """STEPS steps under a cosine schedule with 2 warmup steps (lr 0 at the
    first); returns the model, the lr of each step and the norm of each
    step's update over all parameters."""
    model = tiny_llama()
    opt = cls(param_groups(model), lr=1e-2, weight_decay=0.1)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=STEPS)
    lrs, updates = [], []
    for batch in batches(STEPS, 4):
        model(**batch).loss.backward()
        before = snapshot(model)
        lrs.append(opt.param_groups[0]["lr"])
        assert all(g["lr"] == lrs[-1] for g in opt.param_groups)
        opt.step()
        sched.step()
        opt.zero_grad()
        after = snapshot(model)
        updates.append(math.sqrt(sum((after[n] - before[n]).double().square().sum().item() for n in after)))
        if len(lrs) == 1:
            first = before, after, {st["step"] for st in opt.state.values()}
    return model, lrs, updates, first


def test_cosine_schedule_with_warmup_drives_the_update():
    model, lrs, updates, (before, after, steps) = run(GradNormLoRP)

    # Warmup step 0: lr = 0, so nothing moves, weight decay (lr * wd) included; the step still counts.
    assert lrs[0] == 0.0
    assert_same_params(after, before)
    assert steps == {1}

    # Afterwards the update follows the lr: lr spans a factor > 30, update / lr a factor < 3
    # (about 1.6 measured; Adam's normalised step is roughly constant in size).
    ratios = [u / lr for u, lr in zip(updates[1:], lrs[1:])]
    assert max(lrs) / min(lrs[1:]) > 30
    assert max(ratios) / min(ratios) < 3, ratios

    reference, reference_lrs, _, _ = run(Oracle)
    assert reference_lrs == lrs
    worst = max(rel(p.detach(), q.detach()) for p, q in zip(model.parameters(), reference.parameters()))
    assert record("tiny LLaMA, cosine schedule, 12 steps vs oracle", worst, 1e-5, "fp32") <= 1e-5
