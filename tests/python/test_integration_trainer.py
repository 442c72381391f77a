"""GradNormLoRP under HuggingFace Trainer: optimizers=(opt, scheduler),
gradient accumulation, max_grad_norm clipping, checkpoints, and
resume_from_checkpoint continuing the exact trajectory."""

from __future__ import annotations

import os

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, get_cosine_schedule_with_warmup

from gradnormlorp import GradNormLoRP
from tiny_llama import (
    PROJECTED,
    assert_same_params,
    assert_same_state,
    param_groups,
    snapshot,
    tiny_llama,
    token_samples,
)

MAX_STEPS = 8
STOP = 3  # mid-epoch (5 optimizer steps per epoch), between projector refreshes at 1, 4, 7
MAX_GRAD_NORM = 0.1
DATA = token_samples(40)  # 10 micro-batches of 4 = 5 optimizer steps of 8 samples per epoch


class StopAt(TrainerCallback):
    """Interrupts training after a given optimizer step (after its checkpoint is saved)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def make(model_seed=0):
    model = tiny_llama(model_seed)
    opt = GradNormLoRP(param_groups(model), lr=1e-2, weight_decay=0.1)
    return model, opt, get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=MAX_STEPS)


def run(output_dir, model_seed=0, stop_at=None, resume=None, record=None) -> Trainer:
    """Train with Trainer; `record`, a list, receives the model inputs of every micro-batch."""
    model, opt, sched = make(model_seed)
    if record is not None:
        model.register_forward_pre_hook(lambda _, args, kwargs: record.append(kwargs), with_kwargs=True)
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=MAX_STEPS,
        max_grad_norm=MAX_GRAD_NORM,
        save_strategy="steps",
        save_steps=STOP,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=DATA,
        optimizers=(opt, sched),
        callbacks=[StopAt(stop_at)] if stop_at else None,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_trainer_equals_a_plain_loop(tmp_path):
    """Trainer drives the optimizer as a hand-written loop with gradient
    accumulation and clipping would, on the micro-batches it fed the model
    (Trainer passes num_items_in_batch, so the loss is already the mean over
    the accumulated micro-batches)."""
    micro_batches = []
    trainer = run(tmp_path, record=micro_batches)
    assert len(micro_batches) == 2 * MAX_STEPS

    model, opt, sched = make()
    for i, inputs in enumerate(micro_batches):
        model(**inputs).loss.backward()
        if i % 2 == 1:
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            opt.step()
            sched.step()
            opt.zero_grad()
    assert_same_params(snapshot(trainer.model), snapshot(model))

    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == MAX_STEPS
    assert min(log["grad_norm"] for log in logs) > MAX_GRAD_NORM, "clipping must be active at every step"
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.3


def test_resume_from_checkpoint_continues_the_exact_trajectory(tmp_path):
    full = run(tmp_path / "full")
    interrupted = run(tmp_path / "interrupted", stop_at=STOP)
    assert interrupted.state.global_step == STOP
    checkpoint = tmp_path / "interrupted" / f"checkpoint-{STOP}"
    # Another initialisation: everything must come from the checkpoint.
    resumed = run(tmp_path / "resumed", model_seed=1, resume=str(checkpoint))
    assert resumed.state.global_step == MAX_STEPS

    # Trainer itself loads optimizer.pt with weights_only=True; our state is plain tensors and ints.
    saved = torch.load(os.path.join(checkpoint, "optimizer.pt"), weights_only=True)
    assert {st["step"] for st in saved["state"].values()} == {STOP}

    assert_same_params(snapshot(resumed.model), snapshot(full.model))
    assert_same_state(resumed.optimizer.state_dict(), full.optimizer.state_dict())
    lrs = [log["learning_rate"] for log in full.state.log_history if "learning_rate" in log]
    resumed_lrs = [log["learning_rate"] for log in resumed.state.log_history if "learning_rate" in log]
    # The resumed history starts with the checkpoint's (trainer_state.json).
    assert resumed_lrs == lrs and len(set(lrs)) >= 6, "the scheduler must resume too"


def test_target_param_groups_project_attention_and_mlp(tmp_path):
    """With target_param_groups(model, ["self_attn", "mlp"]), the attention
    and MLP weights get GradNormLoRP state (magnitude, projector) and
    everything else (embeddings, norms, lm_head) plain AdamW state."""
    trainer = run(tmp_path, stop_at=1)
    opt = trainer.optimizer.optimizer  # Trainer wraps it in accelerate's AcceleratedOptimizer
    assert isinstance(opt, GradNormLoRP)
    projected, plain = [], []
    for name, p in trainer.model.named_parameters():
        keys = set(opt.state[p])
        if name.endswith(tuple(f"{k}.weight" for k in PROJECTED)):
            assert {"magnitude", "direction_norm"} <= keys and keys & {"proj_left", "proj_right"}, name
            projected.append(name)
        else:
            assert keys == {"exp_avg", "exp_avg_sq", "step"}, name
            plain.append(name)
        assert opt.state[p]["step"] == 1
    assert len(projected) == 2 * len(PROJECTED)
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(plain)
