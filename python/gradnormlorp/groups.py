"""Param groups from module-name patterns, like transformers' optim_target_modules."""

from __future__ import annotations

import re
from typing import Any, Sequence

from torch import nn

__all__ = ["target_param_groups", "module_matches"]


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
    ``model.named_modules()``) matches ``target_modules`` go to the first
    group, with ``rank``, ``update_proj_gap``, ``scale`` and ``proj_type``;
    every other parameter (biases, norms, embeddings, unmatched layers, and
    modules that matched but are not ``nn.Linear``) goes to a second group
    without ``rank``, i.e. plain AdamW. ``target_modules`` follows
    transformers' ``optim_target_modules``: a regex string matched against
    the whole name, ``"all-linear"`` for every ``nn.Linear``, or a list of
    strings each matching exactly, as a substring or as a full regex (see
    :func:`module_matches`). ``group_kwargs`` (e.g. ``lr``, ``weight_decay``)
    are set in both groups. Empty groups are left out.

    Parameters are taken once each (tied weights count once; a tied weight
    is projected if any of its Linear modules matched).

    Raises ValueError if no ``nn.Linear`` module matched.
    """
    if isinstance(target_modules, str):
        all_linear = target_modules.replace("_", "-") == "all-linear"
    elif isinstance(target_modules, (list, tuple)) and all(isinstance(t, str) for t in target_modules):
        all_linear = False
    else:
        raise TypeError(
            f"target_modules must be a regex string, 'all-linear' or a list of strings, got {target_modules!r}"
        )

    targets: dict[int, nn.Parameter] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if all_linear or module_matches(target_modules, name):
            w = module.weight
            if w is not None and w.dim() == 2:
                targets[id(w)] = w
    if not targets:
        raise ValueError(f"no nn.Linear module of the model matches target_modules={target_modules!r}")

    projected, plain = [], []
    for p in model.parameters():  # deduplicated: tied parameters appear once
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
