"""GradNormLoRP under accelerate: Accelerator(cpu=True).prepare(model,
optimizer, dataloader, scheduler) with gradient accumulation and clipping
trains exactly as a plain loop, and save_state / load_state resumes it."""

from __future__ import annotations

import itertools

import pytest
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from gradnormlorp import GradNormLoRP
from tiny_llama import assert_same_params, assert_same_state, param_groups, snapshot, tiny_llama, token_samples

ACCUM = 2
MICRO_BATCHES = 8  # 4 optimizer steps
MAX_GRAD_NORM = 0.1


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    # Accelerator state is a process-wide singleton; start and leave each test clean.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def make(model_seed=0):
    model = tiny_llama(model_seed)
    opt = GradNormLoRP(param_groups(model), lr=1e-2, weight_decay=0.1)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=1, num_training_steps=MICRO_BATCHES // ACCUM)
    loader = DataLoader(token_samples(4 * MICRO_BATCHES), batch_size=4, shuffle=False)
    return model, opt, sched, loader


def plain_loop():
    model, opt, sched, loader = make()
    for i, batch in enumerate(loader):
        (model(**batch).loss / ACCUM).backward()
        if (i + 1) % ACCUM == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            opt.step()
            sched.step()
            opt.zero_grad()
    return model, opt


def prepared(model_seed=0):
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=ACCUM)
    return accelerator, *accelerator.prepare(*make(model_seed))


def train(accelerator, model, opt, sched, loader) -> None:
    for batch in loader:
        with accelerator.accumulate(model):
            accelerator.backward(model(**batch).loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            opt.step()  # AcceleratedOptimizer skips it until the last micro-batch
            sched.step()
            opt.zero_grad()


def test_prepared_training_equals_plain_loop():
    reference, reference_opt = plain_loop()
    accelerator, model, opt, sched, loader = prepared()
    assert isinstance(opt, AcceleratedOptimizer) and isinstance(opt.optimizer, GradNormLoRP)
    train(accelerator, model, opt, sched, loader)
    assert {st["step"] for st in opt.optimizer.state.values()} == {MICRO_BATCHES // ACCUM}
    assert_same_params(snapshot(model), snapshot(reference))
    assert_same_state(opt.state_dict(), reference_opt.state_dict())


def test_save_state_and_load_state_resume(tmp_path):
    """Stop after 2 of 4 optimizer steps, accelerator.save_state, rebuild
    everything from another initialisation, load_state (which reads the
    optimizer with torch.load(weights_only=True)), skip the seen batches and
    go on: the plain loop's result, bit for bit."""
    reference, reference_opt = plain_loop()
    seen = MICRO_BATCHES // 2

    accelerator, model, opt, sched, loader = prepared()
    train(accelerator, model, opt, sched, itertools.islice(loader, seen))
    accelerator.save_state(tmp_path)

    accelerator, model, opt, sched, loader = prepared(model_seed=1)
    accelerator.load_state(tmp_path)
    assert {st["step"] for st in opt.optimizer.state.values()} == {seen // ACCUM}
    train(accelerator, model, opt, sched, accelerator.skip_first_batches(loader, seen))
    assert_same_params(snapshot(model), snapshot(reference))
    assert_same_state(opt.state_dict(), reference_opt.state_dict())
