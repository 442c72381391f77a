"""What a GradNormLoRP optimizer is handed, checked so that it never trains
silently as something else.

A projected param group (one with a ``rank``) projects whole weight matrices:
the per-row norms and the SVD of the gradient need the matrix as its model
defines it. Wrappers that flatten or shard parameters hand the optimizer
something else, and each of these would otherwise quietly run plain AdamW
(or nothing):

* DeepSpeed ZeRO stages 1 and 2 replace each param group's parameters with
  one flat 1-D fp32 partition; ZeRO stage 3 partitions every parameter
  (``ds_id``, data of shape ``[0]``).
* FSDP1 (``FullyShardedDataParallel``) flattens parameters into a
  ``FlatParameter``; with ``use_orig_params=True`` the original parameters
  become 1-D views of the local shard (both marked ``_fsdp_flattened``).
* FSDP2 (``fully_shard``) and tensor parallelism make DTensors: FSDP2's
  placement, ``Shard(0)`` on a 1-D mesh, is stepped exactly (sharded.py);
  any other placement is refused.
* A wrapper that replaces the parameters leaves the optimizer holding
  tensors that never get a gradient.

:func:`check_param_group` runs when a group is added, :func:`check_first_step`
at the first step, which also logs one line saying what is projected at which
rank and what runs AdamW (logger ``gradnormlorp``, level INFO: quiet unless
the program turns logging on, e.g. ``logging.basicConfig(level=logging.INFO)``).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from typing import Any, Sequence

import torch
import torch.distributed as dist

from . import _lib, sharded
from ._lib import GradNormLoRPError

__all__ = ["check_first_step", "check_param_group", "not_a_whole_matrix", "summary"]

log = logging.getLogger("gradnormlorp")

SUPPORTED = (
    "GradNormLoRP supports data parallelism with whole parameters (torch.nn.parallel.DistributedDataParallel, "
    "or DeepSpeed with ZeRO stage 0) and sharded parameters as FSDP2 makes them: wrap the model with "
    "torch.distributed.fsdp.fully_shard (FSDP2), not FullyShardedDataParallel (FSDP1), and create the "
    "optimizer after sharding"
)


def _dtensor_problem(p: torch.Tensor) -> str | None:
    """The one place that decides about DTensors: FSDP2's row sharding
    (Shard(0) on a 1-D mesh) is stepped exactly; tensor parallelism's and
    any other placement is refused (sharded.placement_problem)."""
    return sharded.placement_problem(p) if sharded.is_dtensor(p) else None


def not_a_whole_matrix(p: torch.Tensor) -> str | None:
    """Why ``p`` is not a parameter as its model defines it but a flattened
    or sharded stand-in (by the markers FSDP, DeepSpeed and DTensor put on
    them), or None."""
    problem = _dtensor_problem(p)
    if problem:
        return problem
    if getattr(p, "_is_flat_param", False):
        return (
            f"an FSDP FlatParameter of shape {_shape(p)} (FullyShardedDataParallel flattens a module's "
            f"parameters into one 1-D shard)"
        )
    if getattr(p, "_fsdp_flattened", False):
        return (
            f"flattened by FSDP: FullyShardedDataParallel(use_orig_params=True) made it a 1-D view "
            f"of shape {_shape(p)} into its flat local shard"
        )
    if hasattr(p, "ds_id"):
        whole = getattr(p, "ds_shape", None)
        return f"partitioned by DeepSpeed ZeRO stage 3 (local data of shape {_shape(p)}" + (
            f", of a parameter of shape {_shape_of(tuple(whole))})" if whole is not None else ")"
        )
    return None


def _problem(p, projected: bool) -> str | None:
    """What makes ``p`` unusable in its group: in a projected group anything
    but a whole matrix; in an AdamW group (elementwise, so a flat shard is
    fine) only a DTensor, whose storage is not a plain tensor."""
    if not isinstance(p, torch.Tensor):
        return None  # torch's add_param_group names non-tensors
    return not_a_whole_matrix(p) if projected else _dtensor_problem(p)


def _where(pi: int, name: str | None, group: str) -> str:
    return f"parameter {pi}{f' ({name!r})' if name else ''} of {group}"


def _refuse(where: str, problem: str, projected: bool) -> GradNormLoRPError:
    why = (
        "Its param group is projected (rank is set), and a projected matrix must be the model's whole "
        "2-D weight; training on without it would be plain AdamW, not GradNormLoRP."
        if projected
        else "GradNormLoRP steps plain tensors and FSDP2's row-sharded DTensors only, also in its AdamW groups."
    )
    return GradNormLoRPError(f"{where} is {problem}. {why} {SUPPORTED}.", _lib.GNLP_ERR_INVALID_ARGUMENT)


# --------------------------------------------------------- adding a group


def _given(opt) -> dict[int, list[tuple[torch.Tensor, tuple[int, ...]]]]:
    """Group index -> the matrices that projected group was given, with
    their shapes then. Groups are only appended (and load_state_dict keeps
    their order); a failed add is overwritten by the next. Kept on the
    optimizer instance: a deep copy or an unpickled optimizer starts afresh
    (its first step is checked again)."""
    return opt.__dict__.setdefault("_gnlp_given", {})


def check_param_group(opt, param_group: dict[str, Any], merged: dict[str, Any]) -> None:
    """Check a param group about to be added (``merged``: the group's keys
    over the optimizer's defaults) and remember what it was given.

    Raises GradNormLoRPError if a projected group holds a flattened or
    sharded parameter, or any group a DTensor. Warns if a group that asks for ``rank`` itself holds
    no matrix to project, and if a group takes ``rank`` from the
    optimizer's arguments and so projects every matrix of a model, the
    token embedding and LM head included. Turns ``param_group["params"]``
    into a list as torch would (a generator can be read only once).
    """
    params = param_group["params"]
    if isinstance(params, set):
        return  # torch raises its own TypeError
    if isinstance(params, torch.Tensor):
        params = [params]
    elif not isinstance(params, list):
        params = param_group["params"] = list(params)
    index = len(opt.param_groups)
    names = [p[0] if isinstance(p, tuple) else None for p in params]  # named parameters: (name, tensor)
    params = [p[1] if isinstance(p, tuple) else p for p in params]
    projected = merged["rank"] is not None
    for pi, p in enumerate(params):
        problem = _problem(p, projected)
        if problem:
            raise _refuse(_where(pi, names[pi], f"the param group being added (group {index})"), problem, projected)
    matrices = [(p, tuple(p.shape)) for p in params if projected and isinstance(p, torch.Tensor) and p.dim() == 2]
    _given(opt)[index] = matrices
    if not projected:
        return
    default_rank = "rank" not in param_group
    if params and not matrices and not default_rank:
        warnings.warn(
            f"param group {index} asks for rank={merged['rank']} but holds no 2-D parameter "
            f"(tensors: {_shapes(params)}): GradNormLoRP projects matrices only, so all its "
            f"{len(params)} parameters run plain AdamW",
            stacklevel=3,
        )
    if default_rank and len(matrices) >= 2:
        warnings.warn(
            f"param group {index} has no 'rank' of its own and takes rank={merged['rank']} from the "
            f"optimizer's arguments, so all {len(matrices)} of its matrices are projected, the token "
            f"embedding and the LM head too if they are among them (largest: {_largest(matrices)}). "
            f"GaLore and transformers give those AdamW. Build the groups with "
            f"gradnormlorp.target_param_groups(model, ['self_attn', 'mlp'], rank=...) "
            f"(with HF Trainer: gradnormlorp.hf.trainer_optimizer), or set 'rank' in the group to "
            f"project them all on purpose",
            stacklevel=3,
        )


# ------------------------------------------------------------- first step


def check_first_step(opt) -> None:
    """At an optimizer's first step: refuse parameters that were flattened,
    sharded or replaced since their groups were added, then log the
    summary. Later steps return at once. Raises GradNormLoRPError (nothing
    is changed) and checks again at the next step."""
    if opt.__dict__.get("_gnlp_checked"):
        return
    for gi, group in enumerate(opt.param_groups):
        projected = group["rank"] is not None
        names = group.get("param_names") or [None] * len(group["params"])
        for pi, p in enumerate(group["params"]):
            problem = _problem(p, projected)
            if problem:
                raise _refuse(_where(pi, names[pi], f"param group {gi}"), problem, projected)
        if projected:
            _check_unchanged(gi, group, _given(opt).get(gi, []))
    _check_some_gradient(opt)
    opt.__dict__["_gnlp_checked"] = True
    if log.isEnabledFor(logging.INFO):
        log.info(summary(opt))


def _check_unchanged(gi: int, group: dict[str, Any], matrices: Sequence[tuple[torch.Tensor, tuple[int, ...]]]):
    """The matrices a projected group was given are still in it, whole."""
    held = {id(p) for p in group["params"]}
    changed = [(p, shape) for p, shape in matrices if id(p) not in held or tuple(p.shape) != shape]
    if not changed or _sharded_in_place(group, matrices):
        return
    p, shape = changed[0]
    now = "no longer in the group" if id(p) not in held else f"now of shape {_shape(p)}"
    shape = _shape_of(shape)
    raise GradNormLoRPError(
        f"param group {gi} was given {len(matrices)} matrices to project, but at the first step "
        f"{len(changed)} of them were replaced or reshaped (one of shape {shape} is {now}; the group "
        f"now holds tensors: {_shapes(group['params'])}). A wrapper flattened or sharded the parameters "
        f"after the optimizer was created: DeepSpeed ZeRO stages 1 and 2 replace each param group with one "
        f"flat 1-D partition, on which GradNormLoRP would be plain AdamW. {SUPPORTED}.",
        _lib.GNLP_ERR_INVALID_ARGUMENT,
    )


def _sharded_in_place(group: dict[str, Any], matrices: Sequence[tuple[torch.Tensor, tuple[int, ...]]]) -> bool:
    """Whether each matrix was swapped, in place, for its FSDP2 DTensor of
    the same global shape, as accelerate's FSDP2 prepare() does to an
    optimizer created before sharding (placements are checked separately)."""
    now = [p for p in group["params"] if isinstance(p, torch.Tensor) and p.dim() == 2]
    return len(now) == len(matrices) and all(
        q is p or (sharded.is_dtensor(q) and tuple(q.shape) == shape) for q, (p, shape) in zip(now, matrices)
    )


def _check_some_gradient(opt) -> None:
    """Under torch.distributed, a first step where no parameter has a
    gradient means the model trains other tensors than the optimizer's."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    params = [p for group in opt.param_groups for p in group["params"]]
    if not params or any(p.grad is not None for p in params):
        return
    raise GradNormLoRPError(
        f"none of the optimizer's {len(params)} parameters has a gradient at its first step, so "
        f"nothing would be trained: the model trains other tensors than the ones the optimizer was "
        f"given. FullyShardedDataParallel(use_orig_params=False) and FSDP2's fully_shard replace "
        f"the model's parameters with flat or sharded ones, so an optimizer created before "
        f"wrapping holds stale tensors (and GradNormLoRP cannot project the new ones). {SUPPORTED}.",
        _lib.GNLP_ERR_INVALID_ARGUMENT,
    )


# ---------------------------------------------------------------- summary


def summary(opt) -> str:
    """One line: which matrices are projected at which rank, and how many
    tensors run AdamW."""
    projected: Counter = Counter()  # (rank used, shape) -> count
    adamw: Counter = Counter()  # shape -> count
    values_projected = values_total = 0
    for group in opt.param_groups:
        for p in group["params"]:
            values_total += p.numel()
            if group["rank"] is not None and p.dim() == 2:
                projected[(min(group["rank"], *p.shape), tuple(p.shape))] += 1
                values_projected += p.numel()
            else:
                adamw[tuple(p.shape)] += 1
    ranks: dict[int, Counter] = {}
    for (r, shape), n in projected.items():
        ranks.setdefault(r, Counter())[shape] = n
    parts = [f"rank {r}: {_counted(shapes)}" for r, shapes in sorted(ranks.items(), reverse=True)]
    line = f"GradNormLoRP: {sum(projected.values())} matrices projected"
    if parts:
        line += f" ({'; '.join(parts)})"
    line += f", {sum(adamw.values())} tensors on AdamW"
    if adamw:
        line += f" ({_counted(adamw)})"
    share = values_projected / values_total if values_total else 0.0
    line += f"; {share:.0%} of {values_total:,} values projected"
    return line


# ------------------------------------------------------------- formatting

_MAX_SHAPES = 6


def _shape_of(shape) -> str:
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def _shape(t: torch.Tensor) -> str:
    return _shape_of(tuple(t.shape))


def _counted(shapes: Counter) -> str:
    """"4 of 32x32, 2 of 64x32, ..., +3 more shapes", most frequent first."""
    ordered = sorted(shapes.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{n} of {_shape_of(s)}" for s, n in ordered[:_MAX_SHAPES])
    if len(ordered) > _MAX_SHAPES:
        text += f", +{len(ordered) - _MAX_SHAPES} more shapes"
    return text


def _shapes(params) -> str:
    return _counted(Counter(tuple(p.shape) for p in params if isinstance(p, torch.Tensor)))


def _largest(matrices: Sequence[tuple[torch.Tensor, tuple[int, ...]]]) -> str:
    most = max(m * n for _, (m, n) in matrices)
    return _counted(Counter(shape for _, shape in matrices if shape[0] * shape[1] == most))
