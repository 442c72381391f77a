"""GradNormLoRP for HuggingFace Trainer in one line.

    args = TrainingArguments(..., learning_rate=1e-3,
                             optim_target_modules=["self_attn", "mlp"],
                             optim_args="rank=128,update_proj_gap=200,scale=0.25")
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      optimizer_cls_and_kwargs=gradnormlorp.hf.trainer_optimizer(args))

or, without reading TrainingArguments:

    optimizer_cls_and_kwargs=trainer_optimizer(target_modules=["self_attn", "mlp"], rank=128, lr=1e-3)

``optimizer_cls_and_kwargs`` is transformers' route for an optimizer it does
not know, and the one left under FSDP, where Trainer refuses a ready-made
``optimizers=(opt, sched)`` (FSDP2's sharded parameters are stepped exactly:
README, Sharded training (FSDP2)). Trainer's own param groups carry no module names, so
the first element is an optimizer *factory*: Trainer instantiates it and
calls it with the model it trains, and the factory splits that model with
:func:`gradnormlorp.target_param_groups`. Trainer then builds its LR
scheduler on the optimizer and checkpoints and resumes it as its own.

``optim_args`` uses GaLore's keys and defaults in transformers (rank 128,
update_proj_gap 200, scale 0.25, proj_type "std"); LayerwiseGradNormLoRP is
not offered here because Trainer clips and reduces gradients after backward.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .groups import target_param_groups
from .optimizer import GradNormLoRP

__all__ = ["TrainerOptimizerFactory", "parse_optim_args", "trainer_optimizer"]

# The keys of transformers' GaLore optim_args, with its defaults and types.
PROJECTION_DEFAULTS: dict[str, Any] = {"rank": 128, "update_proj_gap": 200, "scale": 0.25, "proj_type": "std"}


def parse_optim_args(text: str | None) -> dict[str, Any]:
    """``"rank=128,update_proj_gap=200,scale=0.25,proj_type=std"`` -> a dict
    with GaLore's keys, typed as GaLore's defaults are. Raises ValueError
    naming an unknown key, a malformed item or a value of the wrong type."""
    out: dict[str, Any] = {}
    if not text:
        return out
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"optim_args item {item!r} is not key=value (in {text!r})")
        if key not in PROJECTION_DEFAULTS:
            raise ValueError(f"unknown optim_args key {key!r} (known: {', '.join(PROJECTION_DEFAULTS)})")
        kind = type(PROJECTION_DEFAULTS[key])
        try:
            out[key] = kind(value)
        except ValueError:
            raise ValueError(f"optim_args {key}={value!r} is not a valid {kind.__name__}") from None
    return out


class TrainerOptimizerFactory:
    """What ``Trainer.create_optimizer`` instantiates and calls with the
    model it trains (transformers' optimizer-factory protocol): builds the
    param groups from module names, then the optimizer."""

    def __call__(self, model, *, target_modules, projection: dict[str, Any], **optimizer_kwargs) -> GradNormLoRP:
        groups = target_param_groups(model, target_modules, **projection)
        return GradNormLoRP(groups, **optimizer_kwargs)


def trainer_optimizer(
    args=None,
    *,
    target_modules: str | Sequence[str] | None = None,
    optim_args: str | None = None,
    rank: int | None = None,
    update_proj_gap: int | None = None,
    scale: float | None = None,
    proj_type: str | None = None,
    **optimizer_kwargs: Any,
) -> tuple[type, dict[str, Any]]:
    """The ``(factory, kwargs)`` pair for ``Trainer(optimizer_cls_and_kwargs=...)``.

    Args:
        args: optional ``TrainingArguments``; gives ``optim_target_modules``,
            ``optim_args``, and ``learning_rate``, ``weight_decay``,
            ``adam_beta1/2`` and ``adam_epsilon`` as ``lr``, ``weight_decay``,
            ``betas`` and ``eps``. (Trainer hands these only to its built-in
            optimizers; without ``args`` they are GradNormLoRP's defaults
            unless given here.)
        target_modules: the modules whose weights are projected, as
            transformers' ``optim_target_modules`` (see
            :func:`gradnormlorp.target_param_groups`); default
            ``args.optim_target_modules``.
        optim_args: GaLore-style ``"rank=..,update_proj_gap=..,scale=..,proj_type=.."``;
            default ``args.optim_args``.
        rank, update_proj_gap, scale, proj_type: override ``optim_args``.
        optimizer_kwargs: any other :class:`GradNormLoRP` argument
            (``optim_bits``, ``refresh``, ``lr``, ...); they override ``args``.

    Everything is checked here, before Trainer starts: a bad key or value
    raises ValueError now, not at the first step.
    """
    _require_factory_support()
    if args is not None and not hasattr(args, "optim_target_modules"):
        raise TypeError(
            f"trainer_optimizer's first argument is the TrainingArguments (or None), got {args!r}; "
            "pass the modules as target_modules=..."
        )
    if args is not None:
        target_modules = args.optim_target_modules if target_modules is None else target_modules
        optim_args = args.optim_args if optim_args is None else optim_args
        from_args = {
            "lr": args.learning_rate,
            "weight_decay": args.weight_decay,
            "betas": (args.adam_beta1, args.adam_beta2),
            "eps": args.adam_epsilon,
        }
        optimizer_kwargs = {**from_args, **optimizer_kwargs}
    if target_modules is None:
        raise ValueError(
            "trainer_optimizer needs target_modules (or TrainingArguments with optim_target_modules), "
            'e.g. ["self_attn", "mlp"] or "all-linear"'
        )
    explicit = {"rank": rank, "update_proj_gap": update_proj_gap, "scale": scale, "proj_type": proj_type}
    projection = {
        **PROJECTION_DEFAULTS,
        **parse_optim_args(optim_args),
        **{k: v for k, v in explicit.items() if v is not None},
    }
    # The optimizer judges every value now, on a throw-away parameter: a
    # ValueError (TypeError for an unknown name) names the bad one.
    GradNormLoRP([torch.nn.Parameter(torch.zeros(1))], **projection, **optimizer_kwargs)
    return TrainerOptimizerFactory, {"target_modules": target_modules, "projection": projection, **optimizer_kwargs}


def _require_factory_support() -> None:
    try:
        from transformers.trainer_optimizer import is_optimizer_factory
    except ImportError:
        is_optimizer_factory = None
    if is_optimizer_factory is None or not is_optimizer_factory(TrainerOptimizerFactory):
        import transformers

        raise ImportError(
            f"gradnormlorp.hf.trainer_optimizer needs a transformers whose Trainer accepts optimizer factories "
            f"in optimizer_cls_and_kwargs (transformers.trainer_optimizer.is_optimizer_factory); "
            f"transformers {transformers.__version__} has none. Upgrade transformers, or build the optimizer "
            "yourself: Trainer(optimizers=(GradNormLoRP(target_param_groups(model, ...)), scheduler))."
        )
