"""Layer-wise mode: update each parameter inside backward() as soon as its
gradient is ready, then free that gradient, as GaLore does to fit LLaMA-7B on
a 24 GB card."""

from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.weak import WeakIdKeyDictionary

from .optimizer import GradNormLoRP

__all__ = ["LayerwiseGradNormLoRP"]


class LayerwiseGradNormLoRP(GradNormLoRP):
    r"""GradNormLoRP in layer-wise mode: ``backward()`` does the update.

    Takes the same arguments and param groups as :class:`GradNormLoRP` and
    computes the same trajectory. Each parameter that requires grad gets a
    ``register_post_accumulate_grad_hook`` that steps it under its group's
    *current* hyperparameters as soon as its gradient is accumulated, then
    sets ``p.grad = None``. So only the gradients still in flight are alive,
    not all of them. It is one optimizer, so an LR scheduler attached to it
    drives the learning rate the hooks use::

        opt = LayerwiseGradNormLoRP(target_param_groups(model, ["attn", "mlp"], rank=128), lr=1e-3)
        sched = get_cosine_schedule_with_warmup(opt, 100, 10_000)
        for batch in loader:
            model(**batch).loss.backward()  # updates the parameters
            opt.step()  # no-op, so the loop is unchanged
            sched.step()

    Gradient accumulation: run the backward passes of all micro-batches but
    the last inside :meth:`accumulating`. They only accumulate ``.grad``, and
    the last backward steps on the sum, as normal mode would::

        for i, batch in enumerate(loader):
            with opt.accumulating(enabled=(i + 1) % n != 0):
                (model(**batch).loss / n).backward()

    Until the last micro-batch the full gradients are kept, so accumulation
    saves no gradient memory.

    * :meth:`step` updates nothing the hooks update, because they already
      did. It runs
      the closure if one is given (its ``backward()`` updates) and returns its
      loss. It stays callable so training loops and LR schedulers (which warn
      if ``step()`` is never called) work unchanged. ``zero_grad()`` is
      harmless.
    * ``state``, ``state_dict()`` and ``load_state_dict()`` are those of
      :class:`GradNormLoRP`, step counts included. A checkpoint of either
      mode loads in the other.
    * Anything that needs every gradient before the first update cannot be
      used: clipping by the global gradient norm, ``GradScaler`` (inf checks,
      unscaling), and data parallelism. DDP and FSDP reduce gradients across
      ranks only after the hook has fired, so ranks would diverge. While
      ``torch.distributed`` is initialised, construction and ``backward()``
      raise ``RuntimeError``.
    * A non-finite gradient raises :class:`GradNormLoRPError` out of
      ``backward()``. That parameter is left unchanged, but the parameters
      whose gradients came earlier in that pass are already updated.
    * A parameter that does not require grad when it is added gets its hook
      once it does: the next :meth:`step` hooks it and updates it on the
      gradient its last backward left in ``.grad``; from then on backward
      updates it.
    * A parameter is driven by one layer-wise optimizer at a time (the first
      hook frees the gradient, so a second would never update it): a newer
      layer-wise optimizer on the same parameter takes it over, with a
      warning, and the older one no longer updates it (as when a notebook
      cell that builds the optimizer runs again). Call :meth:`remove_hooks`
      before handing the parameters to another kind of optimizer.
    * A ``copy.deepcopy`` (or an unpickled copy) hooks the copied parameters.
    """

    def __init__(self, params, *args: Any, **kwargs: Any):
        _refuse_distributed()
        self._init_hooks()
        try:
            super().__init__(params, *args, **kwargs)
        except BaseException:
            self.remove_hooks()  # a half-built optimizer must not keep stepping the groups it took
            raise

    def _init_hooks(self) -> None:
        self._hooks: dict[tuple[int, int], torch.utils.hooks.RemovableHandle] = {}
        self._released: set[tuple[int, int]] = set()  # positions another optimizer took over
        self._accumulating = False
        self._detached = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        fresh = "_hooks" not in self.__dict__  # unpickled or deep-copied, not load_state_dict
        super().__setstate__(state)
        if fresh:
            self._init_hooks()
            self._hook_new_params()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._hook_new_params()

    def _hook_new_params(self) -> list[tuple[int, int]]:
        """Hook every parameter that requires grad and has no hook yet (nor
        was taken over by another layer-wise optimizer); return the
        positions hooked."""
        added, taken = [], 0
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if (gi, pi) in self._hooks or (gi, pi) in self._released or not p.requires_grad:
                    continue
                previous = _OWNERS.get(p, _dead)()
                if previous is not None and previous is not self:
                    previous._release(p)
                    taken += 1
                _OWNERS[p] = weakref.ref(self)
                # Positions, not the group dict: load_state_dict replaces the dicts.
                self._hooks[(gi, pi)] = p.register_post_accumulate_grad_hook(self._hook(gi, pi))
                added.append((gi, pi))
        if taken:
            warnings.warn(
                f"LayerwiseGradNormLoRP took over {taken} parameter(s) from another LayerwiseGradNormLoRP, "
                f"which no longer updates them (the first hook frees the gradient, so only one can)",
                stacklevel=6,  # the caller of LayerwiseGradNormLoRP(...), through torch's __init__
            )
        return added

    def _release(self, p: torch.Tensor) -> None:
        """Another layer-wise optimizer took p over: stop updating it, for good."""
        for gi, group in enumerate(self.param_groups):
            for pi, q in enumerate(group["params"]):
                if q is p:
                    handle = self._hooks.pop((gi, pi), None)
                    if handle is not None:
                        handle.remove()
                    self._released.add((gi, pi))

    def _hook(self, gi: int, pi: int) -> Callable[[torch.Tensor], None]:
        # The hook holds the optimizer: one built and not kept still trains.
        @torch.no_grad()
        def grad_ready(p: torch.Tensor) -> None:
            if self._accumulating:
                return
            _refuse_distributed()
            self._step_params([(gi, pi)])
            p.grad = None

        return grad_ready

    @contextlib.contextmanager
    def accumulating(self, enabled: bool = True) -> Iterator[None]:
        """Within this context (if ``enabled``), backward passes only accumulate
        gradients into ``.grad``. The first backward pass outside it steps
        every parameter on the accumulated gradient and frees it."""
        previous = self._accumulating
        self._accumulating = bool(enabled)
        try:
            yield
        finally:
            self._accumulating = previous

    @torch._disable_dynamo
    def step(self, closure: Callable[[], Any] | None = None):
        """Update nothing the hooks update (they did during backward). If
        ``closure`` is given, call it with gradients enabled and return its
        loss. Parameters that started requiring grad after they were added
        are hooked here, and updated on the gradient they hold."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._detached and not self._accumulating:
            added = self._hook_new_params()
            if added:
                with torch.no_grad():
                    self._step_params(added)
                    for gi, pi in added:
                        self.param_groups[gi]["params"][pi].grad = None
        return loss

    def remove_hooks(self) -> None:
        """Detach from the parameters: afterwards ``backward()`` leaves their
        gradients in ``.grad`` and updates nothing, and :meth:`step` hooks
        nothing."""
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()
        self._detached = True
        for group in getattr(self, "param_groups", []):  # none yet if construction failed early
            for p in group["params"]:
                if _OWNERS.get(p, _dead)() is self:
                    del _OWNERS[p]


# A weak reference to the layer-wise optimizer whose hook drives each parameter.
_OWNERS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _dead() -> None:
    return None


def _refuse_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        raise RuntimeError(
            "LayerwiseGradNormLoRP cannot be used while torch.distributed is initialised: layer-wise mode "
            "updates each parameter inside backward() as soon as its local gradient is ready, before "
            "DistributedDataParallel (or FSDP) has averaged the gradients across ranks, so the ranks would "
            "train on different gradients and diverge. Use GradNormLoRP (normal mode) for distributed training."
        )
