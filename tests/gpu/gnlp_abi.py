"""Direct C ABI calls for the GPU tests: one parameter's state and steps
through gnlp_state_layout / gnlp_state_init / gnlp_step(_batch)(_async),
on any device and stream, plus the CUDA-only functions the package does
not bind."""

from __future__ import annotations

import ctypes

import torch

from gradnormlorp import _lib as L


def lib():
    h = L.lib()
    h.gnlp_cuda_scratch.restype = ctypes.c_int
    h.gnlp_cuda_scratch.argtypes = [ctypes.c_int32, ctypes.c_int32] + [ctypes.POINTER(ctypes.c_int64)] * 3
    h.gnlp_step_batch_async.restype = ctypes.c_int
    h.gnlp_step_batch_async.argtypes = [ctypes.POINTER(L.gnlp_step_item), ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p]
    return h


def config(rank=0, proj_type="std", gap=200, bits=32, lr=1e-3, eps=1e-8, wd=1e-2, scale=1.0, compensation="none"):
    return L.make_config(
        lr=lr, beta1=0.9, beta2=0.999, eps=eps, weight_decay=wd, scale=scale, rank=rank,
        update_proj_gap=gap, proj_type=L.PROJ_TYPES[proj_type], correct_bias=True, optim_bits=bits,
        compensation=L.COMPENSATION_MODES[compensation],
    )


def stream_ptr(stream):
    if stream is None:
        return None
    return ctypes.c_void_p(stream.cuda_stream)


class Param:
    """A parameter, its state tensors (owned by torch) and their descriptors."""

    def __init__(self, w: torch.Tensor, cfg, stream=None):
        self.w, self.cfg = w, cfg
        self.layout = L.state_layout(L.describe(w), cfg)
        self.state = [torch.zeros(shape, dtype=dt, device=w.device) for (_, dt, shape, _) in self.layout]
        self.descs = (L.gnlp_tensor * len(self.state))(*[L.describe(t) for t in self.state])
        L.state_init(L.describe(w), self.descs, cfg, stream_ptr(stream))

    def state_bytes(self) -> int:
        return sum(b for (_, _, _, b) in self.layout)

    def item(self, grad: torch.Tensor, step: int) -> L.gnlp_step_item:
        it = L.gnlp_step_item()
        it.param, it.grad = L.describe(self.w), L.describe(grad)
        it.state, it.n_state = self.descs, len(self.state)
        it.config, it.step = self.cfg, step
        return it

    def step(self, grad: torch.Tensor, step: int, stream=None) -> None:
        items = (L.gnlp_step_item * 1)(self.item(grad, step))
        L.step_batch(items, stream_ptr(stream))


def step_async(params, grads, step, flag: torch.Tensor, stream=None) -> int:
    items = (L.gnlp_step_item * len(params))(*[p.item(g, step) for p, g in zip(params, grads)])
    return lib().gnlp_step_batch_async(items, len(items), stream_ptr(stream), ctypes.c_void_p(flag.data_ptr()))
