"""Layer-wise mode: update each parameter inside backward() as soon as its
gradient is ready, then free that gradient, as GaLore does to fit LLaMA-7B on
a 24 GB card."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

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

    * :meth:`step` updates nothing, because the hooks already did. It runs
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
    * Parameters that do not require grad when they are added get no hook
      and are never updated. Call :meth:`remove_hooks` before handing the
      parameters to another optimizer.
    """

    def __init__(self, params, *args: Any, **kwargs: Any):
        _refuse_distributed()
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._accumulating = False
        super().__init__(params, *args, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        gi = len(self.param_groups) - 1
        for pi, p in enumerate(self.param_groups[gi]["params"]):
            if p.requires_grad:
                # Positions, not the group dict: load_state_dict replaces the dicts.
                self._hooks.append(p.register_post_accumulate_grad_hook(self._hook(gi, pi)))

    def _hook(self, gi: int, pi: int) -> Callable[[torch.Tensor], None]:
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

    def step(self, closure: Callable[[], Any] | None = None):
        """Update nothing (the hooks update the parameters during backward).
        If ``closure`` is given, call it with gradients enabled and return
        its loss."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def remove_hooks(self) -> None:
        """Detach from the parameters: afterwards ``backward()`` leaves their
        gradients in ``.grad`` and updates nothing."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()


def _refuse_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        raise RuntimeError(
            "LayerwiseGradNormLoRP cannot be used while torch.distributed is initialised: layer-wise mode "
            "updates each parameter inside backward() as soon as its local gradient is ready, before "
            "DistributedDataParallel (or FSDP) has averaged the gradients across ranks, so the ranks would "
            "train on different gradients and diverge. Use GradNormLoRP (normal mode) for distributed training."
        )
