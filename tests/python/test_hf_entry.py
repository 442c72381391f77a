"""gradnormlorp.hf.trainer_optimizer: the one-line Trainer route
(optimizer_cls_and_kwargs) trains exactly as hand-built groups do, keeps
embeddings, norms and lm_head out of the projection, resumes exactly from a
checkpoint, and refuses bad optim_args before training starts."""

from __future__ import annotations

import pytest
from transformers import Trainer, TrainingArguments

from gradnormlorp import GradNormLoRP
from gradnormlorp.hf import parse_optim_args, trainer_optimizer
from test_integration_trainer import StopAt
from tiny_llama import (
    PROJECTED,
    TARGETS,
    assert_same_params,
    assert_same_state,
    param_groups,
    snapshot,
    tiny_llama,
    token_samples,
)

MAX_STEPS = 6
STOP = 3  # between the projector refreshes at steps 1 and 4
LR, WEIGHT_DECAY = 1e-2, 0.1
DATA = token_samples(24)  # 6 batches of 4: one epoch


def training_args(output_dir, **kwargs) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=MAX_STEPS,
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        optim_target_modules=TARGETS,
        optim_args="rank=8,update_proj_gap=3",
        save_strategy="steps",
        save_steps=STOP,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        **kwargs,
    )


def train(output_dir, model_seed=0, stop_at=None, resume=None, by_hand=False) -> Trainer:
    """Trainer with the one-liner, or (by_hand) with GradNormLoRP on tiny_llama's param_groups."""
    args = training_args(output_dir)
    model = tiny_llama(model_seed)
    if by_hand:
        route = {"optimizers": (GradNormLoRP(param_groups(model), lr=LR, weight_decay=WEIGHT_DECAY), None)}
    else:
        route = {"optimizer_cls_and_kwargs": trainer_optimizer(args)}
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=DATA,
        callbacks=[StopAt(stop_at)] if stop_at else None,
        **route,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_one_liner_trains_like_hand_built_groups(tmp_path):
    """The factory route reads lr, weight decay, betas, eps, targets and
    optim_args from TrainingArguments and builds the same optimizer as
    target_param_groups by hand, bit for bit (Trainer adds its scheduler to both)."""
    trainer = train(tmp_path / "hf")
    reference = train(tmp_path / "by_hand", by_hand=True)
    assert_same_params(snapshot(trainer.model), snapshot(reference.model))

    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == MAX_STEPS and losses[-1] < losses[0] - 0.3


def test_only_attention_and_mlp_weights_are_projected(tmp_path):
    trainer = train(tmp_path, stop_at=1)
    opt = trainer.optimizer.optimizer  # inside accelerate's AcceleratedOptimizer
    assert isinstance(opt, GradNormLoRP)
    projected = {name for name, p in trainer.model.named_parameters() if "magnitude" in opt.state[p]}
    suffixes = tuple(f"{k}.weight" for k in PROJECTED)
    assert projected == {n for n, _ in trainer.model.named_parameters() if n.endswith(suffixes)}
    assert not projected & {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"}
    projected_group = next(g for g in opt.param_groups if g.get("rank") is not None)
    assert (projected_group["rank"], projected_group["update_proj_gap"], projected_group["scale"]) == (8, 3, 0.25)
    assert all(g["lr"] >= 0 and g["weight_decay"] == WEIGHT_DECAY for g in opt.param_groups)


def test_resume_from_checkpoint_continues_the_exact_trajectory(tmp_path):
    full = train(tmp_path / "full")
    interrupted = train(tmp_path / "interrupted", stop_at=STOP)
    assert interrupted.state.global_step == STOP
    # Another initialisation: weights and optimizer state must come from the checkpoint.
    resumed = train(tmp_path / "resumed", model_seed=1, resume=str(tmp_path / "interrupted" / f"checkpoint-{STOP}"))
    assert resumed.state.global_step == MAX_STEPS
    assert_same_params(snapshot(resumed.model), snapshot(full.model))
    assert_same_state(resumed.optimizer.state_dict(), full.optimizer.state_dict())


def test_explicit_arguments_override_training_arguments(tmp_path):
    args = training_args(tmp_path)
    _, kwargs = trainer_optimizer(
        args, target_modules=["mlp"], optim_args="rank=4,proj_type=left", scale=0.5, optim_bits=8, lr=3e-3
    )
    assert kwargs["target_modules"] == ["mlp"]
    assert kwargs["projection"] == {"rank": 4, "update_proj_gap": 200, "scale": 0.5, "proj_type": "left"}
    assert (kwargs["lr"], kwargs["weight_decay"], kwargs["optim_bits"]) == (3e-3, WEIGHT_DECAY, 8)
    assert kwargs["betas"] == (args.adam_beta1, args.adam_beta2) and kwargs["eps"] == args.adam_epsilon


def test_without_training_arguments_galore_defaults_apply():
    _, kwargs = trainer_optimizer(target_modules="all-linear")
    assert kwargs["projection"] == {"rank": 128, "update_proj_gap": 200, "scale": 0.25, "proj_type": "std"}
    assert "lr" not in kwargs  # GradNormLoRP's own default


def test_parse_optim_args_uses_galore_keys_and_types():
    assert parse_optim_args(" rank=16, update_proj_gap=50,scale=0.5 ,proj_type=reverse_std") == {
        "rank": 16, "update_proj_gap": 50, "scale": 0.5, "proj_type": "reverse_std",
    }
    assert parse_optim_args(None) == {} == parse_optim_args("")


@pytest.mark.parametrize(
    "optim_args, message",
    [
        ("rank=8,gap=3", "unknown optim_args key 'gap'"),
        ("rank", "not key=value"),
        ("rank=eight", "rank='eight' is not a valid int"),
    ],
)
def test_bad_optim_args_are_refused_before_training(optim_args, message):
    with pytest.raises(ValueError, match=message):
        trainer_optimizer(target_modules=TARGETS, optim_args=optim_args)


def test_bad_values_are_refused_before_training():
    with pytest.raises(ValueError, match="rank"):
        trainer_optimizer(target_modules=TARGETS, rank=-1)
    with pytest.raises(ValueError, match="proj_type"):
        trainer_optimizer(target_modules=TARGETS, proj_type="diagonal")
    with pytest.raises(TypeError, match="momentum"):
        trainer_optimizer(target_modules=TARGETS, momentum=0.9)
    with pytest.raises(ValueError, match="needs target_modules"):
        trainer_optimizer()
    with pytest.raises(TypeError, match="pass the modules as target_modules"):
        trainer_optimizer(TARGETS)


def test_the_factory_splits_the_model_it_is_given():
    """What Trainer.create_optimizer does with the pair: instantiate, call with its model."""
    factory, kwargs = trainer_optimizer(target_modules=TARGETS, rank=8)
    model = tiny_llama()
    opt = factory()(model, **kwargs)
    assert isinstance(opt, GradNormLoRP)
    assert sum(len(g["params"]) for g in opt.param_groups if g.get("rank") == 8) == 2 * len(PROJECTED)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
