"""GradNormLoRP as a torch.optim.Optimizer, backed by libgradnormlorp."""

from __future__ import annotations

import copy
import ctypes
import math
import os
import threading
from collections import defaultdict
from numbers import Integral, Real
from typing import Any, Callable, Iterable, NamedTuple

import torch
from torch.optim import Optimizer

from . import _lib, audit, sharded
from ._lib import GradNormLoRPError
from ._signals import deferred_signals

__all__ = ["GradNormLoRP"]

_STEP = "step"

_INT32_MAX = 2**31 - 1

# Set, the library's worker pool is sized by it and torch's thread count is not followed.
THREADS_ENV = "GNLP_NUM_THREADS"


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
        lr (float or 1-element Tensor): learning rate (default 1e-3).
        betas (tuple[float, float]): Adam coefficients (default (0.9, 0.999)).
        eps (float): added to ``sqrt(exp_avg_sq)`` (default 1e-8).
        weight_decay (float): decoupled weight decay; for projected matrices
            it scales the magnitude ``g`` (default 1e-2).
        rank (int or None): projection rank; ``None`` means plain AdamW. The
            rank used for an ``m x n`` matrix is ``min(rank, m, n)``.
        update_proj_gap (int): steps between projector refreshes (default 200).
        scale (float): ``alpha``, the scale of the projected-back update
            (default 0.25, as transformers' GaLore and
            :func:`~gradnormlorp.target_param_groups`).
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
            much faster, captured energy >= 0.999 of the exact subspace on
            real gradients, see bench/step.py; the first refresh of each
            parameter is exact).
        compensation (str): what happens to the part of the direction
            gradient outside the projector's subspace: ``"none"`` drops it
            (SPEC section 1, as GaLore drops it) and ``"residual"`` adds it
            back, Fira-style: the update becomes ``scale * (back(N) + c S)``
            with ``S = dV - back(R)``, ``c = ||N|| / ||R||`` (``N`` the
            low-rank Adam direction), and ``c ||S||`` allowed to grow at most
            1.01x per step. Costs 4 bytes of state (``compensation_norm``)
            per matrix and one more pass over the weights per step; see
            docs/convergence.md for what it buys.

    Every group key is read on every step, so LR schedulers work as usual.
    Hyperparameters are checked by the library (one rule set for every
    caller of the C ABI): a bad value raises ``ValueError`` from the
    constructor, ``add_param_group`` and ``load_state_dict``, naming it.

    State: for each parameter, ``self.state[p]`` holds the buffers the library
    asks for (``gnlp_state_layout``: ``exp_avg``, ``exp_avg_sq``, and for
    projected matrices ``proj_left``/``proj_right``, ``magnitude``,
    ``direction_norm``, ``magnitude_exp_avg``, ``magnitude_exp_avg_sq``),
    tensors owned by PyTorch on the parameter's device, plus ``"step"``, a
    plain int. They are ``torch.float32``, except with ``optim_bits`` 8 or 4,
    where a quantised buffer is ``torch.uint8`` codes plus a float32
    ``<name>_absmax``. Parameters that are neither 1-D nor 2-D are handled as
    one flat vector, so their AdamW moments are stored flat. State stays
    float32 for bf16/fp16 parameters, also across ``load_state_dict``.

    Inputs and errors:

    * Parameters may have dtype float32, bfloat16 or float16 and live on the
      CPU or a CUDA device (where the CUDA backend is built). Non-contiguous
      parameters (transposed views, channels_last conv weights) are stepped
      through a contiguous copy that is written back; non-contiguous
      gradients are copied. Sparse or complex gradients, other dtypes, and a
      parameter that changed shape since its state was created raise
      :class:`GradNormLoRPError`.
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
      nothing of that call is changed. A signal (Ctrl-C) arriving during the
      call is handled right after it, once the step counters record it, so
      an interrupted step is either wholly done or not done at all.
    * ``step()`` calls on one optimizer from several threads run one at a
      time; different optimizers step in parallel.
    * The library's worker pool follows ``torch.get_num_threads()`` (checked
      at each step), unless ``$GNLP_NUM_THREADS`` is set.
    * ``torch.compile`` does not trace into :meth:`step` (a library call
      cannot be compiled); compiled models around it work as usual.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        rank: int | None = None,
        update_proj_gap: int = 200,
        scale: float = 0.25,
        proj_type: str = "std",
        correct_bias: bool = True,
        optim_bits: int = 32,
        refresh: str = "svd",
        compensation: str = "none",
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
            compensation=compensation,
        )
        _lib.lib()  # fail early, with a clear message, if the library is missing
        _validate_group(defaults)
        self._init_runtime()
        super().__init__(params, defaults)

    def _init_runtime(self) -> None:
        """What is not state and so is not pickled: rebuilt on unpickling and deepcopy."""
        self._layout_cache: dict[tuple, list] = {}
        self._step_lock = threading.Lock()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_step_lock" not in self.__dict__:
            self._init_runtime()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {k: param_group.get(k, v) for k, v in self.defaults.items()}
        _validate_group(merged)
        audit.check_param_group(self, param_group, merged)  # flattened/sharded matrices (audit.py)
        super().add_param_group(param_group)

    # ------------------------------------------------------------------ state

    @staticmethod
    def _shape(group: dict[str, Any], p: torch.Tensor) -> tuple[tuple[int, ...], bool]:
        """The shape p is described to the library with, and whether it is projected."""
        shape = tuple(p.shape) if p.dim() in (1, 2) else (p.numel(),)
        return shape, group["rank"] is not None and p.dim() == 2

    def _plan(self, group: dict[str, Any], p: torch.Tensor) -> tuple[tuple[int, ...], _lib.gnlp_config]:
        """The shape p is described with and the config it is stepped under."""
        shape, projected = self._shape(group, p)
        return shape, _config_of(group, projected)

    def _layout(self, p: torch.Tensor, shape: tuple[int, ...], cfg: _lib.gnlp_config, shard=None) -> list:
        """p's state buffers; with a gnlp_shard, those of this rank's rows p of a sharded parameter."""
        where = (shard.global_rows, shard.row_offset, shard.rank, shard.world_size) if shard is not None else None
        key = (shape, p.dtype, cfg.rank, cfg.proj_type if cfg.rank else 0, cfg.optim_bits,
               cfg.compensation if cfg.rank else 0, where)
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
            if shard is None:
                layout = _lib.state_layout(desc, cfg)
            else:
                layout = _lib.shard_state_layout(desc, shard, cfg)
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

    def _new_state(self, p: torch.Tensor, shape, cfg, layout, shard=None) -> dict:
        """Allocate and initialise fresh state for p (not yet stored); with a
        gnlp_shard, for this rank's rows p of a sharded parameter."""
        state: dict[str, Any] = {}
        for name, dtype, bshape, _ in layout:
            state[name] = torch.empty(bshape, dtype=dtype, device=p.device)
        descs = (_lib.gnlp_tensor * len(layout))(*[_lib.describe(state[name]) for name, *_ in layout])
        # The library reads p's values (the magnitudes start as its row norms).
        values = p if p.is_contiguous() else p.contiguous()
        if shard is None:
            _lib.state_init(_lib.describe(values, shape), descs, cfg, self._stream(p))
        else:
            _lib.shard_state_init(_lib.describe(values, shape), shard, descs, cfg, self._stream(p))
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

    @torch._disable_dynamo
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
            ((gi, pi) for gi, group in enumerate(self.param_groups) for pi in range(len(group["params"]))),
            init_only=self._is_state_probe(),
        )
        return loss

    def _is_state_probe(self) -> bool:
        """Whether this is torch.distributed.checkpoint creating state
        (_init_optim_state: a step of a fresh optimizer at lr 0 on all-zero
        gradients). It only creates the state: a real step would count as
        step 1 (refreshing the projector from a zero gradient) and round the
        weights, so a resumed run would not follow the one it continues."""
        if self.state or any(_scalar("lr", g["lr"]) != 0 for g in self.param_groups):
            return False
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        return bool(grads) and not any(bool((sharded.local_of(g) != 0).any()) for g in grads)

    def _step_params(self, which: Iterable[tuple[int, int]], init_only: bool = False) -> None:
        """Update the parameters given as (group index, index in group) that
        have a gradient, under their groups' current hyperparameters: one
        library call per device (per process group for FSDP2's sharded
        parameters). Layer-wise mode steps one parameter at a time through
        this. With init_only, state is created for them and nothing stepped."""
        with self._step_lock:
            audit.check_first_step(self)  # once: refuse flattened/replaced matrices, log the summary
            _follow_torch_threads()
            batches: dict[tuple[int, int], list[_Pending]] = {}
            configs: dict[tuple[int, bool], _lib.gnlp_config] = {}
            for gi, pi in which:
                group = self.param_groups[gi]
                p = group["params"][pi]
                if p.grad is None or p.numel() == 0:
                    continue
                where = f"parameter {pi} of param group {gi}"
                # A DTensor (FSDP2) is stepped as this rank's rows of the whole matrix (sharded.py).
                local, grad, shard = p, p.grad, None
                if sharded.is_dtensor(p):
                    local, grad, shard = sharded.local_rows(where, p), sharded.local_grad(where, p), sharded.shard_of(p)
                grad = self._checked_grad(where, local, grad)
                shape, projected = self._shape(group, local)
                cfg = configs.get((gi, projected))
                if cfg is None:
                    cfg = configs[(gi, projected)] = _config_of(group, projected)
                layout = self._layout(local, shape, cfg, shard)
                state = self.state.get(p)
                new = not state
                if new:
                    state = self._new_state(local, shape, cfg, layout, shard)
                else:
                    self._check_state(where, local, state, layout, cfg)
                # The library updates contiguous memory in place: a strided
                # parameter is stepped as a copy, written back afterwards.
                staged = local if local.is_contiguous() else local.contiguous()
                key = sharded.batch_key(p) if shard is not None else _lib.device_of(p)
                batches.setdefault(key, []).append(
                    _Pending(p, local, staged, grad, shape, cfg, layout, state, new, shard)
                )
            for entries in batches.values():
                if init_only:
                    self.state.update((e.param, e.state) for e in entries if e.new)
                else:
                    self._apply(entries)

    def _apply(self, entries: list[_Pending]) -> None:
        """One library call for the entries (all on one device), then the
        bookkeeping that records it, with no signal handled in between."""
        items = (_lib.gnlp_step_item * len(entries))()
        keep = []
        for it, e in zip(items, entries):
            descs = (_lib.gnlp_tensor * len(e.layout))(*[_lib.describe(e.state[name]) for name, *_ in e.layout])
            keep.append(descs)
            it.param = _lib.describe(e.staged, e.shape)
            it.grad = _lib.describe(e.grad, e.shape)
            it.state = ctypes.cast(descs, ctypes.POINTER(_lib.gnlp_tensor))
            it.n_state = len(e.layout)
            it.reserved = 0
            it.config = e.cfg
            it.step = e.state[_STEP] + 1
        stream = self._stream(entries[0].local)
        with deferred_signals():
            # On error nothing has changed (on any rank, for sharded parameters), and nothing below runs.
            if entries[0].shard is None:
                _lib.step_batch(items, stream)
            else:
                shards = (_lib.gnlp_shard * len(entries))(*[e.shard for e in entries])
                sharded.step(items, shards, entries[0].param.device_mesh.get_group(), stream)
            for e in entries:
                if e.staged is not e.local:
                    e.local.copy_(e.staged)
                e.state[_STEP] += 1
                if e.new:
                    self.state[e.param] = e.state
        del keep

    @staticmethod
    def _checked_grad(where: str, p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
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
        if not p.is_contiguous() and torch._debug_has_internal_overlap(p) == 1:
            raise GradNormLoRPError(
                f"{where} (shape {tuple(p.shape)}, strides {p.stride()}) has elements that share memory "
                f"(e.g. made by expand()), so it cannot be updated element by element; give it its own "
                f"memory (p.data = p.data.clone())",
                _lib.GNLP_ERR_NOT_CONTIGUOUS,
            )
        _lib.device_of(p)
        if not grad.is_contiguous():
            grad = grad.contiguous()  # read only: a copy is safe
        return grad

    # ------------------------------------------------------------ checkpoints

    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict, with the state of FSDP2-sharded
        parameters in the form torch.distributed.checkpoint shards and
        reshards (sharded.export_state): row-sharded buffers as Shard(0)
        DTensors of the whole buffer, replicated ones as plain tensors. With
        8/4-bit sharded state this is a collective: call it on every rank."""
        sd = super().state_dict()
        ids = (pid for g in sd["param_groups"] for pid in g["params"])
        for (group, p), pid in zip(((g, p) for g in self.param_groups for p in g["params"]), ids):
            if pid in sd["state"] and sharded.is_dtensor(p):
                _, cfg = self._plan(group, p)
                sd["state"][pid] = sharded.export_state(p, sd["state"][pid], cfg)
        return sd

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state saved by :meth:`state_dict` (of either mode), or by
        ``torch.optim.AdamW``/``Adam``.

        As ``torch.optim.Optimizer.load_state_dict``: the load-state-dict
        pre-hooks run first (and may replace the dict), the post-hooks after
        the state is in place, and the saved groups' hyperparameters replace
        the current ones. Unlike it:

        * A key the saved group lacks keeps this optimizer's value (so an
          AdamW checkpoint loaded into a projected group keeps its ``rank``).
        * State tensors keep their saved dtype (fp32 moments of a bf16
          parameter stay fp32, uint8 codes stay uint8); they are copied to
          the parameter's device.
        * Everything is checked before anything changes: every buffer's
          name, shape and dtype against the layout for the parameter's
          current shape under its group's loaded config, and its values
          (finite; second moments, norms and absmax not negative). On a
          problem ``ValueError`` names the parameter and buffer, and the
          optimizer is left unchanged.
        * A parameter whose saved state is plain AdamW moments
          (``exp_avg``/``exp_avg_sq`` of the parameter's size, as
          ``torch.optim.AdamW`` saves) keeps them, with its step count,
          where its layout stores AdamW moments in float32; where it does
          not (a projected matrix, whose moments are those of a projected
          gradient of another shape, or 8/4-bit state), its state starts
          fresh at step 0, as for a parameter never stepped.
        """
        if not isinstance(state_dict, dict):
            raise ValueError(f"not an optimizer state dict: expected a dict, got {type(state_dict).__name__}")
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        groups, state = self._restore(state_dict)
        self.__setstate__({"state": state, "param_groups": groups})
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _restore(self, state_dict: dict[str, Any]) -> tuple[list[dict], defaultdict]:
        """The param groups and state a loaded state dict describes, checked
        whole; raises ValueError and changes nothing on any problem."""
        if "param_groups" not in state_dict or "state" not in state_dict:
            raise ValueError("not an optimizer state dict: expected a dict with 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(self.param_groups) != len(saved_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, this optimizer has "
                f"{len(self.param_groups)}"
            )
        groups = []
        where_of = {}
        for gi, (g, sg) in enumerate(zip(self.param_groups, saved_groups)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(
                    f"loaded state dict's param group {gi} has {len(sg['params'])} parameters, "
                    f"this optimizer's has {len(g['params'])}"
                )
            group = {**g, **copy.deepcopy({k: v for k, v in sg.items() if k != "params"}), "params": g["params"]}
            try:
                _validate_group(group)
            except ValueError as e:
                raise ValueError(f"loaded state dict's param group {gi}: {e}") from None
            groups.append(group)
            for pi, (pid, p) in enumerate(zip(sg["params"], g["params"])):
                where_of[pid] = (p, group, f"parameter {pi} of param group {gi}")

        state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        for pid, saved in state_dict["state"].items():
            if pid not in where_of:
                raise ValueError(f"loaded state dict has state for parameter id {pid!r}, which no param group lists")
            p, group, where = where_of[pid]
            if saved:
                state[p] = self._restore_param(where, p, group, saved)
        return groups, state

    def _restore_param(self, where: str, p: torch.Tensor, group: dict, saved: Any) -> dict[str, Any]:
        if not isinstance(saved, dict) or _STEP not in saved:
            raise ValueError(f"{where}: saved state has no 'step'")
        step = _saved_step(where, saved[_STEP])
        shape, cfg = self._plan(group, p)
        if sharded.is_dtensor(p):
            local, shard = sharded.local_rows(where, p), sharded.shard_of(p)
            saved = sharded.import_state(where, p, saved, cfg)  # this rank's rows, from any world size
            return self._restored(where, local, group, saved, self._layout(local, tuple(local.shape), cfg, shard), step)
        layout = self._layout(p, shape, cfg)
        if not _matches(saved, layout) and _is_adamw_state(saved, p):
            return self._from_adamw(where, p, shape, cfg, layout, saved, step)
        return self._restored(where, p, group, saved, layout, step)

    @staticmethod
    def _restored(where: str, p: torch.Tensor, group: dict, saved: dict, layout: list, step: int) -> dict[str, Any]:
        """p's state from saved buffers that must match its layout, checked."""
        names = sorted(name for name, *_ in layout)
        have = sorted(k for k in saved if k != _STEP)
        if have != names:
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
            _check_values(where, name, t)
            st[name] = t.to(device=p.device, copy=True).contiguous()
        st[_STEP] = step
        return st

    def _from_adamw(self, where, p, shape, cfg, layout, saved, step) -> dict[str, Any]:
        """State for p from plain AdamW moments of its full size: kept where
        p's layout is float32 AdamW moments, else fresh state at step 0."""
        for name in ("exp_avg", "exp_avg_sq"):
            _check_values(where, name, saved[name])
        plain = [(name, dtype) for name, dtype, _, _ in layout] == [
            ("exp_avg", torch.float32),
            ("exp_avg_sq", torch.float32),
        ]
        if not (plain and all(math.prod(bshape) == p.numel() for _, _, bshape, _ in layout)):
            return self._new_state(p, shape, cfg, layout)
        st: dict[str, Any] = {
            name: saved[name].to(device=p.device, dtype=torch.float32, copy=True).reshape(bshape).contiguous()
            for name, _, bshape, _ in layout
        }
        st[_STEP] = step
        return st


class _Pending(NamedTuple):
    """One parameter of a library call, and what to do once it returns."""

    param: torch.Tensor  # the optimizer's tensor (the key of its state)
    local: torch.Tensor  # what the library updates: param, or a DTensor's local rows
    staged: torch.Tensor  # local, or its contiguous copy to write back
    grad: torch.Tensor
    shape: tuple[int, ...]
    cfg: _lib.gnlp_config
    layout: list
    state: dict[str, Any]
    new: bool
    shard: Any = None  # the gnlp_shard of a sharded parameter's local rows


# ------------------------------------------------------- hyperparameters


def _config_of(group: dict[str, Any], projected: bool) -> _lib.gnlp_config:
    """The library's config for a param group's parameters (projected or
    not). This translates the Python spellings (rank None, names of
    proj_type, refresh and compensation, tensor lr) and refuses what has no C value; the
    values themselves are the library's to check (gnlp_check_config)."""
    beta1, beta2 = _betas(group["betas"])
    rank = group["rank"]
    if rank is not None and (not _is_int(rank) or not 1 <= rank <= _INT32_MAX):
        raise ValueError(f"invalid rank: {rank!r} (must be an int >= 1, or None for plain AdamW)")
    gap = group["update_proj_gap"]
    if not _is_int(gap) or not -_INT32_MAX <= gap <= _INT32_MAX:
        raise ValueError(f"invalid update_proj_gap: {gap!r} (must be an int >= 1)")
    proj_type = group["proj_type"]
    if not isinstance(proj_type, str) or proj_type not in _lib.PROJ_TYPES:
        raise ValueError(
            f"invalid proj_type: {proj_type!r} (want one of {', '.join(repr(k) for k in _lib.PROJ_TYPES)})"
        )
    refresh = group.get("refresh", "svd")
    if not isinstance(refresh, str) or refresh not in _lib.REFRESH_MODES:
        raise ValueError(f"invalid refresh: {refresh!r} (want one of {', '.join(repr(k) for k in _lib.REFRESH_MODES)})")
    compensation = group.get("compensation", "none")
    if not isinstance(compensation, str) or compensation not in _lib.COMPENSATION_MODES:
        raise ValueError(
            f"invalid compensation: {compensation!r} "
            f"(want one of {', '.join(repr(k) for k in _lib.COMPENSATION_MODES)})"
        )
    if not isinstance(group["correct_bias"], (bool, Integral)):
        raise ValueError(f"invalid correct_bias: {group['correct_bias']!r} (must be a bool)")
    bits = group["optim_bits"]
    if not _is_int(bits) or not -_INT32_MAX <= bits <= _INT32_MAX:
        raise ValueError(f"invalid optim_bits: {bits!r} (want 32, 8 or 4)")
    return _lib.make_config(
        lr=_scalar("lr", group["lr"]),
        beta1=beta1,
        beta2=beta2,
        eps=_scalar("eps", group["eps"]),
        weight_decay=_scalar("weight_decay", group["weight_decay"]),
        scale=_scalar("scale", group["scale"]),
        rank=rank if projected else 0,
        update_proj_gap=gap,
        proj_type=_lib.PROJ_TYPES[proj_type],
        correct_bias=group["correct_bias"],
        optim_bits=bits,
        refresh=_lib.REFRESH_MODES[refresh],
        compensation=_lib.COMPENSATION_MODES[compensation],
    )


def _validate_group(group: dict[str, Any]) -> None:
    """Raise ValueError naming the first bad hyperparameter of a group."""
    _lib.check_config(_config_of(group, group["rank"] is not None))


def _scalar(name: str, v: Any) -> float:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")  # torch.optim's wording
        if v.is_complex():
            raise ValueError(f"invalid {name}: {v!r} (must be a real number)")
        return float(v.item())
    if not isinstance(v, Real) or isinstance(v, bool):
        raise ValueError(f"invalid {name}: {v!r} (must be a real number)")
    return float(v)


def _betas(betas: Any) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"invalid betas: {betas!r} (must be a pair (beta1, beta2))")
    return _scalar("betas[0]", betas[0]), _scalar("betas[1]", betas[1])


def _is_int(v: Any) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def group_desc(cfg) -> str:
    if not cfg.rank:
        return "None (AdamW)"
    names = {v: k for k, v in _lib.PROJ_TYPES.items()}
    return f"{cfg.rank}, proj_type={names.get(cfg.proj_type, cfg.proj_type)!r}"


# ------------------------------------------------------------ checkpoints


def _saved_step(where: str, step: Any) -> int:
    value = step
    if isinstance(step, torch.Tensor):
        value = step.item() if step.numel() == 1 else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # torch.optim saves step as a float tensor
    if not _is_int(value) or value < 0:
        raise ValueError(f"{where}: saved state has an invalid step {step!r} (want an int >= 0)")
    return int(value)


def _matches(saved: dict, layout: list) -> bool:
    """Whether saved has exactly the buffers of layout, with their shapes and dtypes."""
    if set(saved) - {_STEP} != {name for name, *_ in layout}:
        return False
    return all(
        isinstance(saved[name], torch.Tensor) and saved[name].dtype == dtype and tuple(saved[name].shape) == bshape
        for name, dtype, bshape, _ in layout
    )


def _is_adamw_state(saved: dict, p: torch.Tensor) -> bool:
    """Whether saved is torch.optim.AdamW's state of p: floating exp_avg and
    exp_avg_sq of p's size (and maybe max_exp_avg_sq of amsgrad)."""
    have = set(saved) - {_STEP, "max_exp_avg_sq"}
    return have == {"exp_avg", "exp_avg_sq"} and all(
        isinstance(saved[k], torch.Tensor) and saved[k].is_floating_point() and saved[k].numel() == p.numel()
        for k in have
    )


# State buffers whose values cannot be negative: second moments, the row
# norms of the direction, and each block's absmax.
_NON_NEGATIVE = ("exp_avg_sq", "magnitude_exp_avg_sq", "direction_norm")


def _check_values(where: str, name: str, t: torch.Tensor) -> None:
    """Refuse a loaded buffer holding values the optimizer cannot produce:
    NaN/Inf anywhere, negative second moments, norms or absmax."""
    if not t.is_floating_point():
        return  # uint8 codes: every byte is a valid code
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{where}: saved state buffer {name!r} holds {bad} non-finite value(s) (NaN or Inf); "
            f"the checkpoint is corrupt or was saved after a diverged step"
        )
    if (name in _NON_NEGATIVE or name.endswith("_absmax")) and bool((t < 0).any()):
        raise ValueError(
            f"{where}: saved state buffer {name!r} holds {int((t < 0).sum())} negative value(s), "
            f"which it cannot hold (second moments, norms and absmax are >= 0); the checkpoint is corrupt"
        )


# ------------------------------------------------------------------ threads


def _follow_torch_threads() -> None:
    """Size the library's worker pool as torch's intra-op pool
    (torch.set_num_threads, OMP_NUM_THREADS), unless $GNLP_NUM_THREADS
    fixes it. Set at every step (one call into the library, about a
    microsecond), so whatever changed the pool since, the step follows torch."""
    if not os.environ.get(THREADS_ENV):
        _lib.set_num_threads(torch.get_num_threads())
