"""GradNormLoRP as a torch.optim.Optimizer, backed by libgradnormlorp."""

from __future__ import annotations

import ctypes
import math
from numbers import Integral, Real
from typing import Any, Callable, Iterable

import torch
from torch.optim import Optimizer

from . import _lib, audit
from ._lib import GradNormLoRPError

__all__ = ["GradNormLoRP"]

_STEP = "step"


class GradNormLoRP(Optimizer):
    r"""GradNormLoRP: weight-normalised, low-rank projected Adam (SPEC section 1).

    Param groups whose ``rank`` is not ``None`` are *projected*: every 2-D
    parameter ``W`` (``m x n``, rows are output units as in ``nn.Linear``) is
    trained as ``W_i = g_i V_i / ||V_i||`` with a per-row magnitude ``g`` and a
    direction ``V`` that moves only inside a rank-``rank`` subspace of its
    weight-norm gradient, refreshed by SVD every ``update_proj_gap`` steps;
    Adam runs on the projected gradient. Parameters that are not 2-D in such
    a group (biases, norms, conv kernels) and every parameter of a group with
    ``rank=None`` get plain AdamW with decoupled weight decay.

    Args:
        params: parameters or param groups (dicts), as for torch.optim.AdamW.
        lr (float): learning rate (default 1e-3).
        betas (tuple[float, float]): Adam coefficients (default (0.9, 0.999)).
        eps (float): added to ``sqrt(exp_avg_sq)`` (default 1e-8).
        weight_decay (float): decoupled weight decay; for projected matrices
            it scales the magnitude ``g`` (default 1e-2).
        rank (int or None): projection rank; ``None`` means plain AdamW. The
            rank used for an ``m x n`` matrix is ``min(rank, m, n)``.
        update_proj_gap (int): steps between projector refreshes (default 200).
        scale (float): ``alpha``, the scale of the projected-back update
            (default 1.0 as galore_torch.GaLoreAdamW; transformers uses 0.25).
        proj_type (str): ``"std"``, ``"reverse_std"``, ``"right"``, ``"left"``
            or ``"full"`` (GaLore's meanings).
        correct_bias (bool): Adam bias correction (default True).
        optim_bits (int): 32 (fp32 moments, fp32 projector), 8 or 4 (Adam
            moments of tensors with >= 4096 elements stored as blockwise
            dynamic-code integers with one fp32 absmax per 256 values, as
            bitsandbytes does; the projector is stored the same way, in 8 or 4
            bits).
        refresh (str): how a projector refresh finds the top-``rank`` singular
            subspace: ``"svd"`` (default, exact SVD) or ``"subspace"``
            (subspace iteration warm-started from the previous projector:
            much faster, captured energy >= 0.99 of the exact subspace on
            real gradients, see bench/step.py; the first refresh of each
            parameter is exact).

    Every group key is read on every step, so LR schedulers work as usual.

    State: for each parameter, ``self.state[p]`` holds the buffers the library
    asks for (``gnlp_state_layout``: ``exp_avg``, ``exp_avg_sq``, and for
    projected matrices ``proj_left``/``proj_right``, ``magnitude``,
    ``direction_norm``, ``magnitude_exp_avg``, ``magnitude_exp_avg_sq``), all
    ``torch.float32`` tensors owned by PyTorch on the parameter's device, plus
    ``"step"``, a plain int. Parameters that are neither 1-D nor 2-D are
    handled as one flat vector, so their AdamW moments are stored flat. State
    stays fp32 for bf16/fp16 parameters, also across ``load_state_dict``.

    Inputs and errors:

    * Parameters must be contiguous (they are updated in place), of dtype
      float32, bfloat16 or float16, on the CPU. A non-contiguous gradient is
      copied to a contiguous one (it is only read). Sparse or complex
      gradients, other dtypes, CUDA tensors (the CUDA backend is not available
      yet), and a parameter that changed shape since its state was created
      raise :class:`GradNormLoRPError`; bad hyperparameters raise
      ``ValueError`` in the constructor and ``add_param_group``.
    * Parameters whose ``grad`` is ``None`` and empty parameters are skipped.
    * **Non-finite gradients:** if any gradient in the step holds NaN or Inf,
      the library refuses the whole step before changing anything:
      :class:`GradNormLoRPError` (``status == GNLP_ERR_NONFINITE``) is raised,
      and every parameter and every state buffer, including ``"step"``, is
      left exactly as it was (no state is created for parameters stepped for
      the first time). Skip the batch or lower the loss scale and go on; with
      ``torch.amp.GradScaler`` (which skips steps on inf itself) this does not
      arise.
    * All parameters of one device are updated by one library call; on error
      nothing of that call is changed.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        rank: int | None = None,
        update_proj_gap: int = 200,
        scale: float = 1.0,
        proj_type: str = "std",
        correct_bias: bool = True,
        optim_bits: int = 32,
        refresh: str = "svd",
    ):
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            proj_type=proj_type,
            correct_bias=correct_bias,
            optim_bits=optim_bits,
            refresh=refresh,
        )
        _validate_hyperparameters(defaults)
        _lib.lib()  # fail early, with a clear message, if the library is missing
        self._layout_cache: dict[tuple, list] = {}
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_layout_cache", {})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {k: param_group.get(k, v) for k, v in self.defaults.items()}
        _validate_hyperparameters(merged)
        audit.check_param_group(self, param_group, merged)  # flattened/sharded matrices (audit.py)
        super().add_param_group(param_group)

    # ------------------------------------------------------------------ state

    def _plan(self, group: dict[str, Any], p: torch.Tensor) -> tuple[tuple[int, ...], _lib.gnlp_config]:
        """The shape p is described with and the config it is stepped under."""
        shape = tuple(p.shape) if p.dim() in (1, 2) else (p.numel(),)
        projected = group["rank"] is not None and p.dim() == 2
        proj_type = group["proj_type"]
        if proj_type not in _lib.PROJ_TYPES:
            raise ValueError(f"invalid proj_type: {proj_type!r} (want one of {', '.join(_lib.PROJ_TYPES)})")
        beta1, beta2 = group["betas"]
        cfg = _lib.make_config(
            lr=_as_float(group["lr"]),
            beta1=_as_float(beta1),
            beta2=_as_float(beta2),
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            scale=group["scale"],
            rank=group["rank"] if projected else 0,
            update_proj_gap=group["update_proj_gap"],
            proj_type=_lib.PROJ_TYPES[proj_type],
            correct_bias=group["correct_bias"],
            optim_bits=group["optim_bits"],
            refresh=REFRESH_MODES[group.get("refresh", "svd")],
        )
        return shape, cfg

    def _layout(self, p: torch.Tensor, shape: tuple[int, ...], cfg: _lib.gnlp_config) -> list:
        key = (shape, p.dtype, cfg.rank, cfg.proj_type if cfg.rank else 0, cfg.optim_bits)
        layout = self._layout_cache.get(key)
        if layout is None:
            desc = _lib.gnlp_tensor()
            desc.dtype = _lib.gnlp_dtype_of(p.dtype)
            desc.ndim = len(shape)
            for i, d in enumerate(shape):
                desc.shape[i] = d
            # Only dtype, ndim and shape are read, but fill in the rest sensibly.
            desc.strides[0] = shape[1] if len(shape) == 2 else 1
            desc.strides[1] = 1
            layout = _lib.state_layout(desc, cfg)
            self._layout_cache[key] = layout
        return layout

    def _check_state(self, where: str, p: torch.Tensor, state: dict, layout: list, cfg) -> None:
        names = [name for name, *_ in layout]
        extra = sorted(set(k for k in state if k != _STEP) - set(names))
        missing = [n for n in names if n not in state]
        if missing or extra:
            raise GradNormLoRPError(
                f"{where} (shape {tuple(p.shape)}, dtype {p.dtype}): its optimizer state has buffers "
                f"{sorted(k for k in state if k != _STEP)}, but its current shape under its group's current "
                f"config (rank={group_desc(cfg)}) needs {names}. The parameter changed shape (number of "
                f"dimensions) or its group's rank/proj_type changed since its state was created; reset "
                f"its state (del optimizer.state[p]) to start afresh.",
                _lib.GNLP_ERR_SHAPE,
            )
        for name, dtype, shape, _ in layout:
            t = state[name]
            if tuple(t.shape) != shape:
                raise GradNormLoRPError(
                    f"{where} changed shape since its optimizer state was created: it is now "
                    f"{tuple(p.shape)}, and its state buffer {name!r} has shape {tuple(t.shape)} "
                    f"where this shape needs {shape} (or its group's rank/proj_type changed). "
                    f"Reset its state (del optimizer.state[p]) to start afresh.",
                    _lib.GNLP_ERR_SHAPE,
                )
            if t.dtype != dtype:
                raise GradNormLoRPError(
                    f"{where}: state buffer {name!r} has dtype {t.dtype}, want {dtype}",
                    _lib.GNLP_ERR_DTYPE,
                )
            if t.device != p.device:
                raise GradNormLoRPError(
                    f"{where}: state buffer {name!r} is on {t.device} but the parameter is on {p.device}",
                    _lib.GNLP_ERR_DEVICE,
                )
            if not t.is_contiguous():
                raise GradNormLoRPError(
                    f"{where}: state buffer {name!r} is not contiguous", _lib.GNLP_ERR_NOT_CONTIGUOUS
                )

    @staticmethod
    def _stream(p: torch.Tensor):
        if p.device.type == "cuda":
            return ctypes.c_void_p(torch.cuda.current_stream(p.device).cuda_stream)
        return None

    def _new_state(self, p: torch.Tensor, shape, cfg, layout) -> dict:
        """Allocate and initialise fresh state for p (not yet stored)."""
        state: dict[str, Any] = {}
        for name, dtype, bshape, _ in layout:
            state[name] = torch.empty(bshape, dtype=dtype, device=p.device)
        descs = (_lib.gnlp_tensor * len(layout))(*[_lib.describe(state[name]) for name, *_ in layout])
        _lib.state_init(_lib.describe(p, shape), descs, cfg, self._stream(p))
        state[_STEP] = 0
        return state

    def state_bytes(self) -> int:
        """Exact bytes of all state tensors currently held."""
        total = 0
        for st in self.state.values():
            for v in st.values():
                if isinstance(v, torch.Tensor):
                    total += v.numel() * v.element_size()
        return total

    # ------------------------------------------------------------------- step

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """Perform one optimization step.

        Args:
            closure (Callable, optional): re-evaluates the model and returns
                the loss (run with gradients enabled).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step_params(
            (gi, pi) for gi, group in enumerate(self.param_groups) for pi in range(len(group["params"]))
        )
        return loss

    def _step_params(self, which: Iterable[tuple[int, int]]) -> None:
        """Update the parameters given as (group index, index in group) that
        have a gradient, under their groups' current hyperparameters: one
        library call per device. Layer-wise mode steps one parameter at a time
        through this."""
        audit.check_first_step(self)  # once: refuse flattened/replaced matrices, log the summary
        batches: dict[tuple[int, int], list] = {}  # device -> [(p, state, new, item fields)]
        for gi, pi in which:
            group = self.param_groups[gi]
            p = group["params"][pi]
            if p.grad is None or p.numel() == 0:
                continue
            where = f"parameter {pi} of param group {gi}"
            grad = self._checked_grad(where, p)
            shape, cfg = self._plan(group, p)
            layout = self._layout(p, shape, cfg)
            state = self.state.get(p)
            new = not state
            if new:
                state = self._new_state(p, shape, cfg, layout)
            else:
                self._check_state(where, p, state, layout, cfg)
            dev = _lib.device_of(p)
            batches.setdefault(dev, []).append((p, grad, shape, cfg, layout, state, new))

        for entries in batches.values():
            n = len(entries)
            items = (_lib.gnlp_step_item * n)()
            keep = []
            for i, (p, grad, shape, cfg, layout, state, _) in enumerate(entries):
                descs = (_lib.gnlp_tensor * len(layout))(*[_lib.describe(state[name]) for name, *_ in layout])
                keep.append(descs)
                it = items[i]
                it.param = _lib.describe(p, shape)
                it.grad = _lib.describe(grad, shape)
                it.state = ctypes.cast(descs, ctypes.POINTER(_lib.gnlp_tensor))
                it.n_state = len(layout)
                it.reserved = 0
                it.config = cfg
                it.step = state[_STEP] + 1
            _lib.step_batch(items, self._stream(entries[0][0]))
            for p, _, _, _, _, state, new in entries:
                state[_STEP] += 1
                if new:
                    self.state[p] = state
            del keep

    @staticmethod
    def _checked_grad(where: str, p: torch.Tensor) -> torch.Tensor:
        grad = p.grad
        if grad.is_sparse or grad.layout != torch.strided:
            raise GradNormLoRPError(
                f"{where}: sparse gradients are not supported by GradNormLoRP (layout {grad.layout})",
                _lib.GNLP_ERR_INVALID_ARGUMENT,
            )
        if p.is_complex() or grad.is_complex():
            raise GradNormLoRPError(
                f"{where}: complex parameters/gradients are not supported by GradNormLoRP "
                f"(dtype {p.dtype}, grad dtype {grad.dtype})",
                _lib.GNLP_ERR_DTYPE,
            )
        if p.dtype not in _lib.PARAM_DTYPES:
            raise GradNormLoRPError(
                f"{where}: unsupported parameter dtype {p.dtype} (supported: float32, bfloat16, float16)",
                _lib.GNLP_ERR_DTYPE,
            )
        if grad.dtype not in _lib.PARAM_DTYPES:
            raise GradNormLoRPError(
                f"{where}: unsupported gradient dtype {grad.dtype} (supported: float32, bfloat16, float16)",
                _lib.GNLP_ERR_DTYPE,
            )
        if grad.device != p.device:
            raise GradNormLoRPError(
                f"{where}: gradient is on {grad.device} but the parameter is on {p.device}",
                _lib.GNLP_ERR_DEVICE,
            )
        if grad.shape != p.shape:
            raise GradNormLoRPError(
                f"{where}: gradient shape {tuple(grad.shape)} differs from parameter shape {tuple(p.shape)}",
                _lib.GNLP_ERR_SHAPE,
            )
        if not p.is_contiguous():
            raise GradNormLoRPError(
                f"{where} (shape {tuple(p.shape)}, strides {p.stride()}) is not contiguous; GradNormLoRP "
                f"updates parameters in place and needs them contiguous (make the parameter's data "
                f"contiguous before creating the optimizer, e.g. p.data = p.data.contiguous())",
                _lib.GNLP_ERR_NOT_CONTIGUOUS,
            )
        _lib.device_of(p)
        if not grad.is_contiguous():
            grad = grad.contiguous()  # read only: a copy is safe
        return grad

    # ------------------------------------------------------------ checkpoints

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state saved by :meth:`state_dict`.

        Unlike ``torch.optim.Optimizer.load_state_dict``, state tensors keep
        their saved dtype (fp32 moments of a bf16 parameter stay fp32); they
        are copied to the parameter's device. Every parameter's buffers are
        checked against the layout for its current shape and its group's
        loaded config; on a mismatch ``ValueError`` is raised and the
        optimizer is left unchanged.
        """
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict or "state" not in state_dict:
            raise ValueError("not an optimizer state dict: expected a dict with 'state' and 'param_groups'")
        groups = self.param_groups
        saved_groups = state_dict["param_groups"]
        if len(groups) != len(saved_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, this optimizer has {len(groups)}"
            )
        for gi, (g, sg) in enumerate(zip(groups, saved_groups)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(
                    f"loaded state dict's param group {gi} has {len(sg['params'])} parameters, "
                    f"this optimizer's has {len(g['params'])}"
                )
            merged = {k: sg.get(k, v) for k, v in self.defaults.items()}
            try:
                _validate_hyperparameters(merged)
            except ValueError as e:
                raise ValueError(f"loaded state dict's param group {gi}: {e}") from None

        where_of = {}
        for gi, (g, sg) in enumerate(zip(groups, saved_groups)):
            merged = {k: sg.get(k, v) for k, v in self.defaults.items()}
            for pi, (pid, p) in enumerate(zip(sg["params"], g["params"])):
                where_of[pid] = (p, merged, f"parameter {pi} of param group {gi}")

        restored: dict[torch.Tensor, dict[str, Any]] = {}
        for pid, saved in state_dict["state"].items():
            if pid not in where_of:
                raise ValueError(f"loaded state dict has state for parameter id {pid!r}, which no param group lists")
            p, group, where = where_of[pid]
            if not saved:
                continue
            if not isinstance(saved, dict) or _STEP not in saved:
                raise ValueError(f"{where}: saved state has no 'step'")
            shape, cfg = self._plan(group, p)
            layout = self._layout(p, shape, cfg)
            names = [name for name, *_ in layout]
            have = sorted(k for k in saved if k != _STEP)
            if sorted(names) != have:
                raise ValueError(
                    f"{where} (shape {tuple(p.shape)}, dtype {p.dtype}): saved state has buffers {have}, "
                    f"but its group's config (rank={group['rank']}, proj_type={group['proj_type']!r}) needs {names}"
                )
            st: dict[str, Any] = {}
            for name, dtype, bshape, _ in layout:
                t = saved[name]
                if not isinstance(t, torch.Tensor):
                    raise ValueError(f"{where}: saved state buffer {name!r} is not a tensor")
                if tuple(t.shape) != bshape:
                    raise ValueError(
                        f"{where} (shape {tuple(p.shape)}): saved state buffer {name!r} has shape "
                        f"{tuple(t.shape)}, want {bshape}; the checkpoint was made for a parameter of "
                        f"another shape or another rank/proj_type"
                    )
                if t.dtype != dtype:
                    raise ValueError(f"{where}: saved state buffer {name!r} has dtype {t.dtype}, want {dtype}")
                st[name] = t.to(device=p.device, copy=True).contiguous()
            step = saved[_STEP]
            step = int(step.item()) if isinstance(step, torch.Tensor) else step
            if not isinstance(step, Integral) or isinstance(step, bool) or step < 0:
                raise ValueError(f"{where}: saved state has an invalid step {saved[_STEP]!r}")
            st[_STEP] = int(step)
            restored[p] = st

        # Let torch load the groups (hyperparameters, hooks) with no state, so
        # it casts nothing; then put the restored state in place. Keys a
        # saved group lacks (e.g. a torch.optim.AdamW checkpoint) get the
        # defaults, as add_param_group would give them.
        groups_in = [{**self.defaults, **sg} for sg in saved_groups]
        super().load_state_dict({**state_dict, "state": {}, "param_groups": groups_in})
        for p, st in restored.items():
            self.state[p] = st


# ---------------------------------------------------------------- validation


def group_desc(cfg) -> str:
    if not cfg.rank:
        return "None (AdamW)"
    names = {v: k for k, v in _lib.PROJ_TYPES.items()}
    return f"{cfg.rank}, proj_type={names.get(cfg.proj_type, cfg.proj_type)!r}"


def _as_float(v) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.item())
    return float(v)


def _is_real(v) -> bool:
    if isinstance(v, torch.Tensor):
        return v.numel() == 1 and not v.is_complex()
    return isinstance(v, Real) and not isinstance(v, bool)


# gnlp_config.refresh values.
REFRESH_MODES = {"svd": 0, "subspace": 1}


def _validate_hyperparameters(h: dict[str, Any]) -> None:
    """Raise ValueError naming the first bad hyperparameter."""
    for name in ("lr", "eps", "weight_decay"):
        v = h[name]
        if not _is_real(v) or not math.isfinite(_as_float(v)) or _as_float(v) < 0:
            raise ValueError(f"invalid {name}: {v!r} (must be a finite number >= 0)")
    betas = h["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"invalid betas: {betas!r} (must be a pair (beta1, beta2))")
    for i, b in enumerate(betas):
        if not _is_real(b) or not (0.0 <= _as_float(b) < 1.0):
            raise ValueError(f"invalid beta parameter at index {i}: {b!r} (must be in [0, 1))")
    rank = h["rank"]
    if rank is not None and (not isinstance(rank, Integral) or isinstance(rank, bool) or rank < 1):
        raise ValueError(f"invalid rank: {rank!r} (must be an int >= 1, or None for plain AdamW)")
    if rank is not None and rank > 2**31 - 1:
        raise ValueError(f"invalid rank: {rank!r} (too large)")
    gap = h["update_proj_gap"]
    if not isinstance(gap, Integral) or isinstance(gap, bool) or not (1 <= gap <= 2**31 - 1):
        raise ValueError(f"invalid update_proj_gap: {gap!r} (must be an int >= 1)")
    scale = h["scale"]
    if not _is_real(scale) or not math.isfinite(_as_float(scale)):
        raise ValueError(f"invalid scale: {scale!r} (must be a finite number)")
    pt = h["proj_type"]
    if not isinstance(pt, str) or pt not in _lib.PROJ_TYPES:
        raise ValueError(f"invalid proj_type: {pt!r} (want one of {', '.join(repr(k) for k in _lib.PROJ_TYPES)})")
    if not isinstance(h["correct_bias"], (bool, Integral)):
        raise ValueError(f"invalid correct_bias: {h['correct_bias']!r} (must be a bool)")
    refresh = h.get("refresh", "svd")
    if not isinstance(refresh, str) or refresh not in REFRESH_MODES:
        raise ValueError(f"invalid refresh: {refresh!r} (want one of {', '.join(repr(k) for k in REFRESH_MODES)})")
    bits = h["optim_bits"]
    if isinstance(bits, bool) or bits not in (32, 8, 4):
        raise ValueError(f"invalid optim_bits: {bits!r} (want 32, 8 or 4)")
