"""The ctypes binding's settings and config checks (_lib): the worker-pool
size, config validation by the library, make_config and the header-derived
defaults, the library-path environment variable."""

import ctypes
import os
import subprocess
import sys
import warnings

import pytest
import torch

import gradnormlorp
from gradnormlorp import GradNormLoRP, GradNormLoRPError, _lib


@pytest.fixture
def restore_threads():
    yield
    _lib.set_num_threads(0)


def test_set_num_threads_bounds_the_pool(restore_threads):
    _lib.set_num_threads(0)  # an optimizer's step may have set it to torch's count
    cores = _lib.num_threads()
    assert cores >= 1
    _lib.set_num_threads(1)
    assert _lib.num_threads() == 1
    w = torch.nn.Parameter(torch.randn(64, 48))
    opt = GradNormLoRP([w], rank=8)
    w.grad = torch.randn_like(w)
    opt.step()
    _lib.set_num_threads(0)
    assert _lib.num_threads() == cores


@pytest.mark.parametrize("bad", [-1, 2.0, True, 2**31])
def test_set_num_threads_refuses_bad_values(bad, restore_threads):
    _lib.set_num_threads(1)
    with pytest.raises(_lib.GradNormLoRPValueError):
        _lib.set_num_threads(bad)
    assert _lib.num_threads() == 1


def _python(code, **env):
    full = dict(os.environ, **env)
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(gradnormlorp.__file__)))
    full["PYTHONPATH"] = pkg + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)


def test_num_threads_env():
    out = _python("from gradnormlorp import _lib; print('THREADS', _lib.num_threads())", GNLP_NUM_THREADS="1")
    assert "THREADS 1" in out.stdout, out.stderr
    out = _python("from gradnormlorp import _lib; print('THREADS', _lib.num_threads())", GNLP_NUM_THREADS="lots")
    assert 'ignoring GNLP_NUM_THREADS="lots"' in out.stderr


BAD = [
    ("lr", -1e-3, r"invalid lr: -0\.001 \(must be a finite number >= 0\)", _lib.GNLP_ERR_INVALID_ARGUMENT),
    ("lr", float("nan"), r"invalid lr: nan", _lib.GNLP_ERR_INVALID_ARGUMENT),
    ("lr", 1e39, r"invalid lr: 1e\+39 \(too large for float32\)", _lib.GNLP_ERR_INVALID_ARGUMENT),
    ("eps", -1e-8, r"invalid eps: -1e-08", _lib.GNLP_ERR_INVALID_ARGUMENT),
    ("weight_decay", -0.1, r"invalid weight_decay: -0\.1", _lib.GNLP_ERR_INVALID_ARGUMENT),
    ("beta1", 1.0, r"invalid beta parameter at index 0: 1\.0", _lib.GNLP_ERR_INVALID_ARGUMENT),
    ("beta2", -0.1, r"invalid beta parameter at index 1: -0\.1", _lib.GNLP_ERR_INVALID_ARGUMENT),
    ("rank", -4, r"invalid rank: -4", _lib.GNLP_ERR_INVALID_ARGUMENT),
    ("scale", float("inf"), r"invalid scale: inf", _lib.GNLP_ERR_INVALID_ARGUMENT),
    ("proj_type", 9, r"unknown proj_type 9", _lib.GNLP_ERR_UNKNOWN_OPTION),
    ("refresh", 5, r"unknown refresh 5", _lib.GNLP_ERR_UNKNOWN_OPTION),
    ("compensation", 2, r"unknown compensation 2 \(want 0: none, 1: residual\)", _lib.GNLP_ERR_UNKNOWN_OPTION),
    ("optim_bits", 16, r"invalid optim_bits: 16 \(want 32, 8 or 4\)", _lib.GNLP_ERR_UNKNOWN_OPTION),
]


@pytest.mark.parametrize("name,value,msg,status", BAD, ids=[f"{n}={v}" for n, v, *_ in BAD])
def test_check_config_names_the_bad_field(name, value, msg, status):
    cfg = _lib.make_config(**{name: value})
    with pytest.raises(_lib.GradNormLoRPValueError, match=msg) as ei:
        _lib.check_config(cfg)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, GradNormLoRPError)
    assert ei.value.status == status


def test_check_config_update_proj_gap_matters_when_projecting():
    _lib.check_config(_lib.make_config(rank=0, update_proj_gap=0))
    with pytest.raises(_lib.GradNormLoRPValueError, match=r"invalid update_proj_gap: 0"):
        _lib.check_config(_lib.make_config(rank=4, update_proj_gap=0))


def _fields(c):
    return {name: getattr(c, name) for name, _ in _lib.gnlp_config._fields_}


def test_defaults_are_the_librarys():
    assert _fields(_lib.make_config()) == _fields(_lib.lib().gnlp_config_default())
    _lib.check_config(_lib.make_config())


def test_make_config_keeps_its_keyword_form():
    c = _lib.make_config(lr=2e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1, scale=0.25, rank=8,
                         update_proj_gap=50, proj_type=_lib.PROJ_TYPES["left"], correct_bias=False, optim_bits=8)
    assert (c.lr, c.rank, c.proj_type, c.correct_bias, c.optim_bits, c.refresh) == (2e-3, 8, 3, 0, 8, 0)
    with pytest.raises(TypeError, match="unknown gnlp_config field"):
        _lib.make_config(learning_rate=1)


def test_struct_layouts_match_the_header():
    for name, size in _lib.SIZEOF.items():
        assert ctypes.sizeof(getattr(_lib, name)) == size


def test_deprecated_library_env_still_works():
    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "from gradnormlorp import _lib\n"
        "print('PATH', _lib.library_path())\n"
    )
    out = _python(code, GRADNORMLORP_LIBRARY=gradnormlorp.library_path(), GNLP_LIBRARY="")
    assert f"PATH {gradnormlorp.library_path()}" in out.stdout, out.stderr
    assert "GRADNORMLORP_LIBRARY is deprecated: set $GNLP_LIBRARY" in out.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _lib.library_path() == gradnormlorp.library_path()
