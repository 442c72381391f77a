"""Bad input gives a clear Python exception, never a crash, and a refused
step changes nothing."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import gradnormlorp
from gradnormlorp import GradNormLoRP, GradNormLoRPError, _lib
from problems import GradSeq, init_weight

# ------------------------------------------------------------ hyperparameters

# The values are checked by the library (one rule set for every C ABI
# caller), so its messages are the ones raised; the Python side refuses only
# what has no C value (a rank of 0, a bad pair, a name it does not know).
BAD_HYPER = [
    ("lr", -1e-3, r"invalid lr: -0\.001"),
    ("lr", float("nan"), r"invalid lr: nan"),
    ("lr", torch.tensor([1e-3, 1e-3]), r"Tensor lr must be 1-element"),
    ("eps", -1e-8, r"invalid eps"),
    ("weight_decay", -0.1, r"invalid weight_decay: -0\.1"),
    ("betas", (1.0, 0.999), r"invalid beta parameter at index 0: 1\.0"),
    ("betas", (0.9, -0.1), r"invalid beta parameter at index 1: -0\.1"),
    ("betas", (0.9,), r"invalid betas"),
    ("rank", -4, r"invalid rank: -4"),
    ("rank", 0, r"invalid rank: 0"),
    ("rank", 2.5, r"invalid rank: 2\.5"),
    ("update_proj_gap", 0, r"invalid update_proj_gap: 0"),
    ("scale", float("inf"), r"invalid scale: inf"),
    ("proj_type", "diagonal", r"invalid proj_type: 'diagonal'"),
    ("optim_bits", 16, r"invalid optim_bits: 16 \(want 32, 8 or 4\)"),
]


@pytest.mark.parametrize("name,value,msg", BAD_HYPER, ids=[f"{n}={v}" for n, v, _ in BAD_HYPER])
def test_bad_hyperparameters(name, value, msg):
    p = nn.Parameter(torch.randn(4, 3))
    kw = {"rank": 2, name: value}  # projected, so every hyperparameter is in use
    with pytest.raises(ValueError, match=msg):
        GradNormLoRP([p], **kw)
    opt = GradNormLoRP([p])
    q = nn.Parameter(torch.randn(4, 3))
    with pytest.raises(ValueError, match=msg):
        opt.add_param_group({"params": [q], **kw})
    assert len(opt.param_groups) == 1, "a rejected group must not be added"


def test_good_hyperparameters_accepted():
    p = nn.Parameter(torch.randn(4, 3))
    for pt in ("std", "reverse_std", "right", "left", "full"):
        GradNormLoRP([p], rank=2, proj_type=pt, lr=0.0, eps=0.0, weight_decay=0.0, betas=(0.0, 0.0), scale=-1.0)
    GradNormLoRP([p], lr=torch.tensor(1e-3))


# -------------------------------------------------------------- refused steps


def snapshot(opt, params):
    return (
        [p.detach().clone() for p in params],
        {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()} for p in opt.state},
    )


def assert_unchanged(opt, params, snap):
    ps, st = snap
    for p, before in zip(params, ps):
        assert torch.equal(p.detach(), before), "a refused step changed a parameter"
    assert {id(p) for p in opt.state} == set(st), "a refused step created or dropped state"
    for p in opt.state:
        now = opt.state[p]
        assert now.keys() == st[id(p)].keys()
        for k, v in now.items():
            if torch.is_tensor(v):
                assert torch.equal(v, st[id(p)][k]), f"a refused step changed state {k}"
            else:
                assert v == st[id(p)][k], f"a refused step changed {k}: {st[id(p)][k]} -> {v}"


def two_group_setup(dtype=torch.float32):
    W = nn.Parameter(init_weight(24, 16, 1, dtype))
    b = nn.Parameter(torch.randn(24).to(dtype))
    opt = GradNormLoRP([{"params": [W], "rank": 4}, {"params": [b]}], lr=1e-2)
    gs = GradSeq(24, 16, 1)
    for t in range(1, 4):
        W.grad = gs(t, dtype)
        b.grad = torch.randn(24).to(dtype)
        opt.step()
    return W, b, opt


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("which", ["matrix", "vector"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_nonfinite_gradient_refuses_whole_step(bad, which, dtype):
    W, b, opt = two_group_setup(dtype)
    W.grad = GradSeq(24, 16, 1)(4, dtype)
    b.grad = torch.randn(24).to(dtype)
    (W.grad if which == "matrix" else b.grad).view(-1)[5] = bad
    snap = snapshot(opt, [W, b])
    with pytest.raises(GradNormLoRPError, match=r"NaN or Inf") as ei:
        opt.step()
    assert ei.value.status == _lib.GNLP_ERR_NONFINITE == 7
    assert ei.value.status_name == "GNLP_ERR_NONFINITE"
    assert isinstance(ei.value, RuntimeError)
    assert_unchanged(opt, [W, b], snap)
    assert opt.state[W]["step"] == 3
    # Fixing the gradient lets training go on.
    W.grad = torch.nan_to_num(W.grad, nan=0.0, posinf=0.0, neginf=0.0)
    b.grad = torch.nan_to_num(b.grad, nan=0.0, posinf=0.0, neginf=0.0)
    opt.step()
    assert opt.state[W]["step"] == 4 and opt.state[b]["step"] == 4


def test_nonfinite_gradient_on_first_step_creates_no_state():
    W = nn.Parameter(torch.randn(8, 6))
    opt = GradNormLoRP([W], rank=2)
    W.grad = torch.full((8, 6), float("nan"))
    before = W.detach().clone()
    with pytest.raises(GradNormLoRPError):
        opt.step()
    assert len(opt.state) == 0 and opt.state_bytes() == 0
    assert torch.equal(W.detach(), before)


def test_non_contiguous_gradient_is_copied():
    """The gradient is only read, so a non-contiguous one is made contiguous."""
    W0 = init_weight(24, 16, 2)
    gs = GradSeq(24, 16, 2)
    a, b = nn.Parameter(W0.clone()), nn.Parameter(W0.clone())
    oa, ob = GradNormLoRP([a], rank=4), GradNormLoRP([b], rank=4)
    for t in range(1, 4):
        g = gs(t)
        a.grad = g.clone()
        b.grad = g.t().contiguous().t()  # same values, transposed strides
        assert not b.grad.is_contiguous()
        oa.step()
        ob.step()
    assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize(
    "dtype,msg", [(torch.float64, r"unsupported parameter dtype torch\.float64"), (torch.int32, r"torch\.int32")]
)
def test_unsupported_parameter_dtype(dtype, msg):
    p = torch.zeros(4, 3, dtype=dtype)
    p.grad = torch.ones(4, 3, dtype=dtype)
    opt = GradNormLoRP([p], rank=2)
    with pytest.raises(GradNormLoRPError, match=msg) as ei:
        opt.step()
    assert ei.value.status == _lib.GNLP_ERR_DTYPE
    assert torch.equal(p, torch.zeros(4, 3, dtype=dtype)) and len(opt.state) == 0


def test_complex_parameter():
    p = nn.Parameter(torch.randn(4, 3, dtype=torch.complex64))
    p.grad = torch.randn(4, 3, dtype=torch.complex64)
    with pytest.raises(GradNormLoRPError, match=r"complex"):
        GradNormLoRP([p]).step()


def test_sparse_gradient():
    emb = nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    assert emb.weight.grad.is_sparse
    opt = GradNormLoRP(emb.parameters())
    before = emb.weight.detach().clone()
    with pytest.raises(GradNormLoRPError, match=r"sparse gradients are not supported"):
        opt.step()
    assert torch.equal(emb.weight.detach(), before)


@pytest.mark.parametrize("rank", [4, None])
def test_shape_change_between_steps(rank):
    W = nn.Parameter(torch.randn(24, 16))
    opt = GradNormLoRP([W], rank=rank)
    W.grad = torch.randn(24, 16)
    opt.step()
    W.data = torch.randn(20, 16)
    W.grad = torch.randn(20, 16)
    snap = snapshot(opt, [W])
    with pytest.raises(GradNormLoRPError, match=r"changed shape since its optimizer state was created") as ei:
        opt.step()
    assert ei.value.status == _lib.GNLP_ERR_SHAPE
    assert "(20, 16)" in str(ei.value)
    assert_unchanged(opt, [W], snap)
    # Resetting its state is the way out.
    del opt.state[W]
    opt.step()
    assert opt.state[W]["step"] == 1


def test_group_config_change_is_reported():
    W = nn.Parameter(torch.randn(24, 16))
    opt = GradNormLoRP([W], rank=4, proj_type="std")
    W.grad = torch.randn(24, 16)
    opt.step()
    opt.param_groups[0]["proj_type"] = "full"
    with pytest.raises(GradNormLoRPError, match=r"rank/proj_type"):
        opt.step()


def test_cuda_tensor_gives_clear_error_from_library():
    """The library refuses CUDA tensors with GNLP_ERR_BACKEND_UNAVAILABLE; the
    Python side passes that through. Checked through the binding with a host
    buffer described as a CUDA tensor (the library must not touch it)."""
    p = torch.randn(8, 6)
    cfg = _lib.make_config(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, scale=1.0, rank=2,
                           update_proj_gap=10, proj_type=0, correct_bias=True, optim_bits=32)
    desc = _lib.describe(p)
    layout = _lib.state_layout(desc, cfg)
    state = [torch.zeros(shape, dtype=dt) for _, dt, shape, _ in layout]
    descs = (_lib.gnlp_tensor * len(state))(*[_lib.describe(s) for s in state])
    mixed = (_lib.gnlp_tensor * len(state))(*descs)
    desc.device_type = _lib.GNLP_DEVICE_CUDA
    with pytest.raises(GradNormLoRPError, match=r"state\[0\] is on cpu but param is on cuda:0") as ei:
        _lib.state_init(desc, mixed, cfg)
    assert ei.value.status == _lib.GNLP_ERR_DEVICE
    for d in descs:
        d.device_type = _lib.GNLP_DEVICE_CUDA
    with pytest.raises(GradNormLoRPError, match=r"CUDA") as ei:
        _lib.state_init(desc, descs, cfg)
    assert ei.value.status == _lib.GNLP_ERR_BACKEND_UNAVAILABLE
    items = (_lib.gnlp_step_item * 1)()
    items[0].param = desc
    items[0].grad = _lib.describe(torch.randn(8, 6))
    items[0].grad.device_type = _lib.GNLP_DEVICE_CUDA
    items[0].state = ctypes.cast(descs, ctypes.POINTER(_lib.gnlp_tensor))
    items[0].n_state = len(state)
    items[0].config = cfg
    items[0].step = 1
    with pytest.raises(GradNormLoRPError, match=r"CUDA") as ei:
        _lib.step_batch(items)
    assert ei.value.status == _lib.GNLP_ERR_BACKEND_UNAVAILABLE
    assert all(torch.count_nonzero(s) == 0 for s in state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_parameter_gives_clear_error():
    W = nn.Parameter(torch.randn(8, 6, device="cuda"))
    W.grad = torch.randn(8, 6, device="cuda")
    opt = GradNormLoRP([W], rank=2)
    with pytest.raises(GradNormLoRPError, match=r"CUDA") as ei:
        opt.step()
    assert ei.value.status == _lib.GNLP_ERR_BACKEND_UNAVAILABLE
    assert len(opt.state) == 0


def test_grad_none_and_empty_params_skipped():
    W = nn.Parameter(torch.randn(8, 6))
    e = nn.Parameter(torch.randn(0, 6))
    v = nn.Parameter(torch.randn(5))
    opt = GradNormLoRP([{"params": [W, e], "rank": 2}, {"params": [v]}])
    e.grad = torch.randn(0, 6)
    v.grad = torch.randn(5)
    before = W.detach().clone()
    opt.step()
    assert torch.equal(W.detach(), before)
    assert W not in opt.state and e not in opt.state and opt.state[v]["step"] == 1


# --------------------------------------------------------------- the library


def test_library_missing_gives_clear_import_error():
    code = (
        "import torch, gradnormlorp\n"
        "try:\n"
        "    gradnormlorp.GradNormLoRP([torch.nn.Parameter(torch.zeros(2))])\n"
        "except ImportError as e:\n"
        "    print('IMPORTERROR', e)\n"
    )
    env = dict(os.environ, GRADNORMLORP_LIBRARY="/nonexistent/libgradnormlorp.so")
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(gradnormlorp.__file__)))
    env["PYTHONPATH"] = pkg + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "IMPORTERROR" in out.stdout, out.stderr
    assert "/nonexistent/libgradnormlorp.so" in out.stdout
    assert "make lib" in out.stdout and "pip install ." in out.stdout


def test_abi_mismatch_gives_clear_import_error(monkeypatch):
    built = _lib.ABI_VERSION
    monkeypatch.setattr(_lib, "ABI_VERSION", 999)
    with pytest.raises(ImportError, match=rf"ABI version {built}.*expects ABI version 999"):
        _lib._load(gradnormlorp.library_path())


def test_library_identity():
    assert gradnormlorp.library_path().endswith("libgradnormlorp.so")
    assert os.path.isfile(gradnormlorp.library_path())
    assert _lib.lib().gnlp_abi_version() == gradnormlorp.ABI_VERSION == 2
    assert gradnormlorp.library_version()
    assert isinstance(gradnormlorp.__version__, str)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without an NVIDIA driver")
def test_device_info_without_driver_says_so():
    with pytest.raises(GradNormLoRPError, match=r"no NVIDIA driver") as ei:
        gradnormlorp.device_info()
    assert ei.value.status == _lib.GNLP_ERR_NO_DRIVER
