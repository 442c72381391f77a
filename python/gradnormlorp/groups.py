"""Param groups from module-name patterns, like transformers' optim_target_modules."""

from __future__ import annotations

import re
from typing import Any, Iterator, Sequence

from torch import nn

from . import _lib
from ._lib import GradNormLoRPError
from .audit import SUPPORTED, not_a_whole_matrix

__all__ = ["target_param_groups", "module_matches", "unwrapped_named_modules"]

# Children through which wrappers hold the user's module: torch.compile's
# OptimizedModule, FSDP1 and activation checkpointing. Their names never
# belong to the model itself.
_WRAPPER_CHILDREN = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
# DistributedDataParallel and DataParallel hold it as "module", a name a
# model may use itself, so it is dropped only under those wrappers.
_DATA_PARALLEL = (nn.parallel.DistributedDataParallel, nn.DataParallel)


def unwrapped_named_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``model.named_modules()`` with the names the unwrapped model gives
    them: without torch.compile's ``_orig_mod.``, DDP's ``module.``, FSDP1's
    ``_fsdp_wrapped_module.`` and ``_checkpoint_wrapped_module.``, so
    patterns written against the model match the wrapped model too. A
    wrapper and the module it wraps share a name; the wrapped one is given."""
    unwrapped: dict[str, str] = {"": ""}  # qualified name -> unwrapped name
    modules: dict[str, nn.Module] = {}  # unwrapped name -> innermost module
    parent_of: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if name:
            parent, _, child = name.rpartition(".")
            data_parallel = isinstance(parent_of[parent], _DATA_PARALLEL)
            wrapper = child in _WRAPPER_CHILDREN or (child == "module" and data_parallel)
            base = unwrapped[parent]
            unwrapped[name] = base if wrapper else (f"{base}.{child}" if base else child)
        parent_of[name] = module
        modules[unwrapped[name]] = module  # pre-order: the wrapped module comes after its wrapper
    yield from modules.items()


def module_matches(target_modules: str | Sequence[str], name: str) -> bool:
    """Whether the qualified module name matches, with the semantics of
    transformers' ``optim_target_modules`` (``check_target_module_exists``):

    * a single string is a regular expression that must match the whole
      name (``re.fullmatch``);
    * a list of strings matches if the name is in the list, or contains one
      of the strings as a substring, or fully matches one of them as a
      regular expression.
    """
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    if name in target_modules:
        return True
    if any(t in name for t in target_modules):
        return True
    return any(re.fullmatch(t, name) is not None for t in target_modules)


def target_param_groups(
    model: nn.Module,
    target_modules: str | Sequence[str],
    rank: int,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    proj_type: str = "std",
    **group_kwargs: Any,
) -> list[dict[str, Any]]:
    """Split a model's parameters into a projected and a plain param group.

    The weights of the ``nn.Linear`` modules whose qualified name (from
    ``model.named_modules()``, without the prefixes wrappers add: see
    :func:`unwrapped_named_modules`) matches ``target_modules`` go to the
    first group, with ``rank``, ``update_proj_gap``, ``scale`` and
    ``proj_type``; every other parameter (biases, norms, embeddings,
    unmatched layers, and modules that matched but are not ``nn.Linear``)
    goes to a second group without ``rank``, i.e. plain AdamW (as GaLore
    reads it; do not give the optimizer a default ``rank``, or that group
    inherits it: the optimizer warns). ``target_modules`` follows
    transformers' ``optim_target_modules``: a regex string matched against
    the whole name, ``"all-linear"`` for every ``nn.Linear`` but the output
    layer (``model.get_output_embeddings()``, e.g. ``lm_head``: as peft
    reads it, and as GaLore's recipe keeps the head in full rank), or a list of
    strings each matching exactly, as a substring or as a full regex (see
    :func:`module_matches`). ``group_kwargs`` (e.g. ``lr``, ``weight_decay``)
    are set in both groups. Empty groups are left out.

    Parameters are taken once each (tied weights count once; a tied weight
    is projected if any of its Linear modules matched).

    Raises ValueError if no ``nn.Linear`` module matched, and
    GradNormLoRPError if a matched weight was flattened or sharded (FSDP,
    DeepSpeed ZeRO-3, DTensor) and so cannot be projected.
    """
    if isinstance(target_modules, str):
        all_linear = target_modules.replace("_", "-") == "all-linear"
    elif isinstance(target_modules, (list, tuple)) and all(isinstance(t, str) for t in target_modules):
        all_linear = False
    else:
        raise TypeError(
            f"target_modules must be a regex string, 'all-linear' or a list of strings, got {target_modules!r}"
        )

    params = list(model.parameters())  # deduplicated: tied parameters appear once
    param_ids = {id(p) for p in params}
    head = _output_layer(model) if all_linear else None
    targets: dict[int, nn.Parameter] = {}
    for name, module in unwrapped_named_modules(model):
        if not isinstance(module, nn.Linear) or module is head:
            continue
        if all_linear or module_matches(target_modules, name):
            w = module.weight
            if w is None:
                continue
            _check_projectable(name, w, params, param_ids)
            targets[id(w)] = w
    if not targets:
        raise ValueError(f"no nn.Linear module of the model matches target_modules={target_modules!r}")

    projected, plain = [], []
    for p in params:
        (projected if id(p) in targets else plain).append(p)

    groups = []
    if projected:
        groups.append(
            {
                "params": projected,
                "rank": rank,
                "update_proj_gap": update_proj_gap,
                "scale": scale,
                "proj_type": proj_type,
                **group_kwargs,
            }
        )
    if plain:
        groups.append({"params": plain, **group_kwargs})
    return groups


def _output_layer(model: nn.Module) -> nn.Module | None:
    """The model's output layer, for models that name one (transformers'
    get_output_embeddings, looked up through wrappers' ``module``)."""
    while not hasattr(model, "get_output_embeddings") and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None


def _check_projectable(name: str, weight, params, param_ids) -> None:
    """A matched weight must be a whole matrix and one of the model's parameters."""
    problem = not_a_whole_matrix(weight)
    if problem is None and weight.dim() != 2:
        problem = (
            f"of shape {tuple(weight.shape)}, not 2-D as an nn.Linear weight is: flattened or sharded "
            f"by a wrapper GradNormLoRP does not recognise"
        )
    if problem is None and id(weight) not in param_ids:
        flat = next(filter(None, map(not_a_whole_matrix, params)), None)
        problem = "not one of the model's parameters" + (f" (they were replaced: one is {flat})" if flat else "")
    if problem:
        raise GradNormLoRPError(
            f"target_param_groups: the weight of {name!r} (matched by the target modules) is {problem}, "
            f"so it cannot be projected. {SUPPORTED}.",
            _lib.GNLP_ERR_INVALID_ARGUMENT,
        )
