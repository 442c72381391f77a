"""The CUDA backend against the CPU backend and a float64 oracle, for every
dtype and proj_type; streams; non-finite gradients; memory accounting."""

from __future__ import annotations

import ctypes

import pytest
import torch

import gradnormlorp
from gnlp_abi import Param, config, lib, step_async
from gradnormlorp import _lib as L
from oracle import Oracle

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
PROJ = ["std", "reverse_std", "left", "right", "full"]
# Relative to the largest magnitude: CUDA vs CPU backend (same float32
# math, other summation order and cuBLAS/cuSOLVER), and vs the float64
# oracle (which the CPU backend meets to about the same bound).
TOL_CPU = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}
TOL_F64 = {torch.float32: 5e-4, torch.bfloat16: 3e-2, torch.float16: 6e-3}
STEPS, GAP, RANK = 4, 2, 24


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def problem(m, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g).to(dtype)
    w[3].zero_()  # a zero row
    grads = [(0.1 * torch.randn(m, n, generator=g)).to(dtype) for _ in range(STEPS)]
    return w, grads


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("proj_type", PROJ)
@pytest.mark.parametrize("shape", [(96, 160), (160, 96)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("compensation", ["none", "residual"])
def test_matches_cpu_and_float64(dtype, proj_type, shape, compensation):
    # eps 1e-4: at a refresh, "full" projects dV on its own singular vectors,
    # so the off-diagonal core entries are rounding noise that Adam would
    # scale to +-1 differently per backend (see cuda/hostcheck).
    cfg = config(rank=RANK, proj_type=proj_type, gap=GAP, lr=1e-2, eps=1e-4, compensation=compensation)
    w, grads = problem(*shape, dtype)
    cpu, gpu = Param(w.clone(), cfg), Param(w.clone().cuda(), cfg)
    ref = w.clone()
    opt = Oracle([ref], lr=1e-2, eps=1e-4, rank=RANK, update_proj_gap=GAP, proj_type=proj_type,
                 compensation=compensation, compute_dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        cpu.step(g, t)
        gpu.step(g.cuda(), t)
        ref.grad = g.clone()
        opt.step()
    torch.cuda.synchronize()
    assert rel_err(gpu.w, cpu.w) <= TOL_CPU[dtype]
    assert rel_err(gpu.w, ref) <= TOL_F64[dtype]
    for (name, sdt, _, _), a, b in zip(cpu.layout, cpu.state, gpu.state):
        if sdt == torch.float32:
            assert rel_err(b, a) <= 5e-3, name
        if name == "compensation_norm":  # the limiter's memory was written
            assert float(b) > 0


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_quantized_state_matches_cpu(bits, dtype):
    cfg = config(rank=64, proj_type="std", gap=GAP, bits=bits, lr=1e-2, eps=1e-4)
    w, grads = problem(128, 192, dtype)  # R 128 x 64: quantised
    cpu, gpu = Param(w.clone(), cfg), Param(w.clone().cuda(), cfg)
    assert any(dt == torch.uint8 for (_, dt, _, _) in cpu.layout)
    for t, g in enumerate(grads, start=1):
        cpu.step(g, t)
        gpu.step(g.cuda(), t)
    torch.cuda.synchronize()
    tol = {8: 2e-2, 4: 2e-1}[bits]
    assert rel_err(gpu.w - w.cuda(), cpu.w - w) <= tol


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", [32, 8])
def test_plain_adamw(dtype, bits):
    cfg = config(rank=0, bits=bits)
    w, grads = problem(64, 96, dtype)
    cpu, gpu = Param(w.clone(), cfg), Param(w.clone().cuda(), cfg)
    for t, g in enumerate(grads, start=1):
        cpu.step(g, t)
        gpu.step(g.cuda(), t)
    assert rel_err(gpu.w, cpu.w) <= TOL_CPU[dtype]


def test_non_default_stream_gives_the_same_result():
    cfg = config(rank=16, proj_type="std", gap=2)
    w, grads = problem(64, 80, torch.float32)
    a, b = Param(w.clone().cuda(), cfg), None
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        b = Param(w.clone().cuda(), cfg, stream=s)
    for t, g in enumerate(grads, start=1):
        a.step(g.cuda(), t)
        gs = g.cuda()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            b.step(gs, t, stream=s)
    s.synchronize()
    torch.cuda.synchronize()
    assert torch.equal(a.w, b.w)


def test_nonfinite_gradient_changes_nothing():
    cfg = config(rank=16, gap=1)
    w, grads = problem(64, 80, torch.bfloat16)
    p = Param(w.clone().cuda(), cfg)
    p.step(grads[0].cuda(), 1)
    before = [p.w.clone()] + [t.clone() for t in p.state]
    bad = grads[1].cuda()
    bad[5, 7] = float("nan")
    with pytest.raises(L.GradNormLoRPError) as e:
        p.step(bad, 2)
    assert e.value.status == L.GNLP_ERR_NONFINITE
    for x, y in zip(before, [p.w] + p.state):
        assert torch.equal(x, y)


def test_async_step_flags_nonfinite_without_changes():
    cfg = config(rank=16, gap=1)
    w, grads = problem(64, 80, torch.float32)
    ps = [Param(w.clone().cuda(), cfg), Param(w.clone().cuda(), cfg)]
    flag = torch.zeros(1, dtype=torch.int32, device="cuda")
    assert step_async(ps, [grads[0].cuda()] * 2, 1, flag) == 0
    assert int(flag) == 0
    before = [t.clone() for p in ps for t in [p.w] + p.state]
    bad = grads[1].cuda()
    bad[0, 0] = float("inf")
    assert step_async(ps, [grads[1].cuda(), bad], 2, flag) == 0  # refresh step: both skipped
    assert int(flag) == 1
    for x, y in zip(before, [t for p in ps for t in [p.w] + p.state]):
        assert torch.equal(x, y)


def test_state_bytes_equal_allocator_growth():
    """The optimizer's state is all the CUDA memory it takes from torch: the
    library's scratch comes from its own pool."""
    from gradnormlorp import GradNormLoRP

    torch.manual_seed(0)
    ws = [torch.nn.Parameter(torch.randn(m, n, device="cuda")) for m, n in [(256, 512), (512, 256), (300, 7)]]
    bias = torch.nn.Parameter(torch.zeros(512, device="cuda"))
    for p in ws + [bias]:
        p.grad = torch.randn_like(p)
    opt = GradNormLoRP([{"params": ws, "rank": 64}, {"params": [bias]}], lr=1e-3)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    opt.step()
    torch.cuda.synchronize()
    grown = torch.cuda.memory_allocated() - base
    tensors = [t for st in opt.state.values() for t in st.values() if torch.is_tensor(t) and t.is_cuda]
    assert grown == sum(t.untyped_storage().nbytes() + (-t.untyped_storage().nbytes()) % 512 for t in tensors)
    cfgs = [config(rank=64), config(rank=64), config(rank=64), config(rank=0)]
    layout_bytes = sum(b for p, c in zip(ws + [bias], cfgs) for (_, _, _, b) in L.state_layout(L.describe(p.detach()), c))
    assert sum(t.nbytes for t in tensors) == layout_bytes


def test_device_info_and_scratch():
    h = lib()
    info = gradnormlorp.device_info(0)
    assert info["memory_total"] > 0 and info["name"] and info["device_count"] >= 1
    assert int(info["cuda_driver_version"].split(".")[0]) >= 12
    print(f"\nGPU 0: {info['name']}, {info['memory_total'] / 2**30:.1f} GiB, driver {info['driver_version']}, "
          f"CUDA driver {info['cuda_driver_version']}")
    p = Param(torch.randn(256, 384, device="cuda"), config(rank=32, gap=1))
    p.step(torch.randn(256, 384, device="cuda"), 1)
    torch.cuda.synchronize()
    r, u, pk = ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64()
    assert h.gnlp_cuda_scratch(0, 0, ctypes.byref(r), ctypes.byref(u), ctypes.byref(pk)) == 0, L.last_error()
    assert pk.value > 0 and r.value >= u.value
    print(f"scratch pool: reserved {r.value} B, in use {u.value} B, peak {pk.value} B")
