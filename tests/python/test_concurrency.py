"""Threads: step() calls on one optimizer run one at a time; different
optimizers step in parallel, each as if alone."""

from __future__ import annotations

import threading

import torch
from torch import nn

from gradnormlorp import GradNormLoRP
from problems import GradSeq, init_weight

STEPS = 12


def make(seed):
    W = nn.Parameter(init_weight(96, 64, seed))
    b = nn.Parameter(torch.randn(96, generator=torch.Generator().manual_seed(seed)))
    opt = GradNormLoRP([{"params": [W], "rank": 8, "update_proj_gap": 4}, {"params": [b]}], lr=1e-2)
    return W, b, opt


def run_serial(seed):
    W, b, opt = make(seed)
    gs = GradSeq(96, 64, seed)
    for t in range(1, STEPS + 1):
        W.grad, b.grad = gs(t), torch.full((96,), 0.1 * t)
        opt.step()
    return W.detach(), b.detach(), opt


def run_all(threads):
    errors = []

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported by the test
                errors.append(e)

        return run

    workers = [threading.Thread(target=guarded(t)) for t in threads]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors


def test_threads_stepping_one_optimizer_serialise():
    """Two threads step the same optimizer, each STEPS times, on a constant
    gradient: every step counts, and the result is that of 2*STEPS serial steps."""
    W, b, opt = make(1)
    W.grad, b.grad = GradSeq(96, 64, 1)(1), torch.full((96,), 0.1)
    ref_W, ref_b, ref = make(1)
    ref_W.grad, ref_b.grad = W.grad.clone(), b.grad.clone()
    for _ in range(2 * STEPS):
        ref.step()

    def stepper():
        for _ in range(STEPS):
            opt.step()

    run_all([stepper, stepper])
    assert opt.state[W]["step"] == 2 * STEPS and opt.state[b]["step"] == 2 * STEPS
    assert torch.equal(W.detach(), ref_W.detach()) and torch.equal(b.detach(), ref_b.detach())


def test_threads_stepping_different_optimizers():
    expected = {seed: run_serial(seed)[:2] for seed in range(4)}
    results = {}

    def trainer(seed):
        return lambda: results.__setitem__(seed, run_serial(seed)[:2])

    run_all([trainer(seed) for seed in range(4)])
    for seed, (W, b) in expected.items():
        assert torch.equal(results[seed][0], W) and torch.equal(results[seed][1], b), seed
