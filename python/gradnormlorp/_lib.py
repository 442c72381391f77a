"""ctypes binding of libgradnormlorp (include/gradnormlorp.h).

The constants, defaults and struct layouts come from _abi.py, generated from
the header (``make abi``; ``make abi-check`` fails when it is stale); the
function signatures are declared here. The ABI version check below catches a
library built from a different header.

The library is loaded lazily, on the first call of :func:`lib` (constructing a
:class:`gradnormlorp.GradNormLoRP` does that), so ``import gradnormlorp``
works even where the library has not been built yet.
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings

import torch

# Constants, defaults and struct layouts of include/gradnormlorp.h, generated
# from it (internal/abigen; `make abi-check` keeps them current).
from ._abi import *  # noqa: F403
from ._abi import (
    ABI_VERSION,
    CONFIG_DEFAULTS,
    GNLP_BFLOAT16,
    GNLP_DEVICE_CPU,
    GNLP_DEVICE_CUDA,
    GNLP_ERR_BACKEND_UNAVAILABLE,
    GNLP_ERR_DEVICE,
    GNLP_ERR_DTYPE,
    GNLP_ERR_INVALID_ARGUMENT,
    GNLP_ERR_SHAPE,
    GNLP_ERR_UNKNOWN_OPTION,
    GNLP_FLOAT16,
    GNLP_FLOAT32,
    GNLP_MAX_STATE,
    GNLP_OK,
    GNLP_UINT8,
    SIZEOF,
    STATUS_NAMES,
    gnlp_buffer_spec,
    gnlp_config,
    gnlp_gpu_info,
    gnlp_shard,
    gnlp_step_item,
    gnlp_tensor,
)

TORCH_TO_GNLP_DTYPE = {
    torch.float32: GNLP_FLOAT32,
    torch.bfloat16: GNLP_BFLOAT16,
    torch.float16: GNLP_FLOAT16,
    torch.uint8: GNLP_UINT8,
}
GNLP_TO_TORCH_DTYPE = {v: k for k, v in TORCH_TO_GNLP_DTYPE.items()}
# Parameters and gradients may have these dtypes; uint8 is for state only.
PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

LIBRARY_ENV = "GNLP_LIBRARY"
# The variable's former name, still read (with a DeprecationWarning).
LIBRARY_ENV_DEPRECATED = "GRADNORMLORP_LIBRARY"
LIBRARY_NAME = "libgradnormlorp.so"


class GradNormLoRPError(RuntimeError):
    """An error reported by the GradNormLoRP library (or by the Python side
    for inputs the library cannot even be handed, such as float64 tensors).

    ``status`` is the ``gnlp_status`` code (an int, see ``STATUS_NAMES``);
    ``str(err)`` is the library's message, unchanged.
    """

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = int(status)

    @property
    def status_name(self) -> str:
        return STATUS_NAMES.get(self.status, f"gnlp_status({self.status})")


class GradNormLoRPValueError(GradNormLoRPError, ValueError):
    """A bad hyperparameter (GNLP_ERR_INVALID_ARGUMENT or
    GNLP_ERR_UNKNOWN_OPTION from the library's config validation): both a
    GradNormLoRPError and, as torch.optim's optimizers raise, a ValueError."""


class GradNormLoRPForkError(GradNormLoRPError):
    """The library was used in a process forked after its parent loaded it."""


# The layouts _abi.py declares are the ones the C compiler gives the header
# (the C ABI test checks the same SIZEOF numbers with sizeof).
for _struct in (gnlp_tensor, gnlp_config, gnlp_buffer_spec, gnlp_step_item, gnlp_shard, gnlp_gpu_info):
    assert ctypes.sizeof(_struct) == SIZEOF[_struct.__name__], _struct.__name__

_T_P = ctypes.POINTER(gnlp_tensor)
_C_P = ctypes.POINTER(gnlp_config)

_SIGNATURES = {
    "gnlp_version": (ctypes.c_char_p, []),
    "gnlp_abi_version": (ctypes.c_int32, []),
    "gnlp_last_error": (ctypes.c_char_p, []),
    "gnlp_config_default": (gnlp_config, []),
    "gnlp_state_layout": (
        ctypes.c_int,
        [_T_P, _C_P, ctypes.POINTER(gnlp_buffer_spec), ctypes.c_int32, ctypes.POINTER(ctypes.c_int32)],
    ),
    "gnlp_state_init": (ctypes.c_int, [_T_P, _T_P, ctypes.c_int32, _C_P, ctypes.c_void_p]),
    "gnlp_step": (ctypes.c_int, [_T_P, _T_P, _T_P, ctypes.c_int32, _C_P, ctypes.c_int64, ctypes.c_void_p]),
    "gnlp_step_batch": (ctypes.c_int, [ctypes.POINTER(gnlp_step_item), ctypes.c_int32, ctypes.c_void_p]),
    "gnlp_device_info": (ctypes.c_int, [ctypes.c_int32, ctypes.POINTER(gnlp_gpu_info)]),
    "gnlp_abi_minor": (ctypes.c_int32, []),
    "gnlp_config_validate": (ctypes.c_int, [_C_P]),
    "gnlp_set_num_threads": (ctypes.c_int, [ctypes.c_int32]),
    "gnlp_num_threads": (ctypes.c_int32, []),
}

# gnlp_collective_fn: ctypes re-acquires the GIL to run the Python callback.
COLLECTIVE_FN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32, _T_P, _T_P)
_S_P = ctypes.POINTER(gnlp_shard)

# ABI minor 2 (row sharding): bound where the library has them, so a library
# without them still serves everything else; sharded_lib() says what is missing.
_SHARDED_SIGNATURES = {
    "gnlp_shard_state_layout": (
        ctypes.c_int,
        [_T_P, _S_P, _C_P, ctypes.POINTER(gnlp_buffer_spec), ctypes.c_int32, ctypes.POINTER(ctypes.c_int32)],
    ),
    "gnlp_shard_state_init": (ctypes.c_int, [_T_P, _S_P, _T_P, ctypes.c_int32, _C_P, ctypes.c_void_p]),
    "gnlp_step_sharded": (
        ctypes.c_int,
        [ctypes.POINTER(gnlp_step_item), _S_P, ctypes.c_int32, COLLECTIVE_FN, ctypes.c_void_p, ctypes.c_void_p],
    ),
}

_lock = threading.Lock()
_lib = None
# pid of the process that loaded the library, once a fork has copied it.
_forked_from: int | None = None


def library_path() -> str:
    """The path of the shared library this package loads (or would load):
    ``$GNLP_LIBRARY`` if set (``$GRADNORMLORP_LIBRARY``, its deprecated
    name, otherwise), else ``libgradnormlorp.so`` next to the package's
    ``__init__.py``."""
    env = _library_env()
    if env:
        return os.path.abspath(env)
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


def _library_env() -> str | None:
    env = os.environ.get(LIBRARY_ENV)
    if env:
        return env
    old = os.environ.get(LIBRARY_ENV_DEPRECATED)
    if old:
        warnings.warn(
            f"${LIBRARY_ENV_DEPRECATED} is deprecated: set ${LIBRARY_ENV} instead", DeprecationWarning, stacklevel=3
        )
    return old


def lib() -> ctypes.CDLL:
    """The loaded library, loading and checking it on first use.

    Raises ImportError if it is missing, cannot be loaded, or was built for a
    different ABI version, and GradNormLoRPForkError in a process forked
    after the library was loaded (the Go runtime inside does not survive
    fork: a call would hang)."""
    global _lib
    if _forked_from is not None:
        raise GradNormLoRPForkError(
            f"gradnormlorp: this process (pid {os.getpid()}) was forked from pid {_forked_from} after that process "
            "loaded libgradnormlorp; the Go runtime inside the library does not survive fork(), so a call here "
            "would hang forever. Start worker processes that use GradNormLoRP with the 'spawn' or 'forkserver' "
            "start method (multiprocessing.set_start_method('spawn') or multiprocessing.get_context('spawn'); "
            "torch.multiprocessing likewise), or fork before the parent imports gradnormlorp. The parent process "
            "is unaffected, and so are children that never call the library (DataLoader workers).",
            GNLP_ERR_BACKEND_UNAVAILABLE,
        )
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            _lib = _load(library_path())
    return _lib


def _after_fork_in_child() -> None:
    global _forked_from
    if _lib is not None and _forked_from is None:
        _forked_from = os.getppid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _load(path: str) -> ctypes.CDLL:
    how = (
        "Build it with `make lib` in the gradnormlorp source tree (or install the "
        f"package with `pip install .`), or point ${LIBRARY_ENV} at an existing "
        f"{LIBRARY_NAME}."
    )
    if not os.path.isfile(path):
        env = _library_env()
        where = f"$GNLP_LIBRARY={env!r}" if env else "next to the package"
        raise ImportError(f"gradnormlorp: shared library not found at {path} ({where}). {how}")
    try:
        handle = ctypes.CDLL(path)
    except OSError as e:
        raise ImportError(f"gradnormlorp: cannot load shared library {path}: {e}. {how}") from e
    missing = [name for name in _SIGNATURES if not hasattr(handle, name)]
    if missing:
        raise ImportError(
            f"gradnormlorp: {path} is not a compatible libgradnormlorp (missing symbols: "
            f"{', '.join(missing)}). {how}"
        )
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(handle, name)
        fn.restype = restype
        fn.argtypes = argtypes
    for name, (restype, argtypes) in _SHARDED_SIGNATURES.items():
        fn = getattr(handle, name, None)
        if fn is not None:
            fn.restype = restype
            fn.argtypes = argtypes
    abi = handle.gnlp_abi_version()
    if abi != ABI_VERSION:
        raise ImportError(
            f"gradnormlorp: {path} has ABI version {abi}, but this Python package expects "
            f"ABI version {ABI_VERSION}. Rebuild the library from the same source as the "
            f"package. {how}"
        )
    return handle


def library_version() -> str:
    """The library's version string (gnlp_version())."""
    return lib().gnlp_version().decode()


def last_error() -> str:
    msg = lib().gnlp_last_error()
    return msg.decode("utf-8", errors="replace") if msg else ""


def check(status: int, context: str | None = None) -> None:
    """Raise GradNormLoRPError for a non-OK status, with the library's
    message unchanged (a context, if given, is put in front of it)."""
    if status != GNLP_OK:
        raise _error(status, context)


def _error(status: int, context: str | None = None) -> GradNormLoRPError:
    msg = last_error() or f"{STATUS_NAMES.get(status, status)} (the library gave no message)"
    if context:
        msg = f"{context}: {msg}"
    return GradNormLoRPError(msg, status)


def gnlp_dtype_of(dtype: torch.dtype) -> int:
    try:
        return TORCH_TO_GNLP_DTYPE[dtype]
    except KeyError:
        raise GradNormLoRPError(
            f"unsupported dtype {dtype} (supported: float32, bfloat16, float16)", GNLP_ERR_DTYPE
        ) from None


def device_of(t: torch.Tensor) -> tuple[int, int]:
    dev = t.device
    if dev.type == "cpu":
        return GNLP_DEVICE_CPU, 0
    if dev.type == "cuda":
        return GNLP_DEVICE_CUDA, dev.index if dev.index is not None else torch.cuda.current_device()
    raise GradNormLoRPError(
        f"unsupported device {dev} (the GradNormLoRP library handles cpu and cuda tensors)", GNLP_ERR_DEVICE
    )


def describe(t: torch.Tensor, shape: tuple[int, ...] | None = None) -> gnlp_tensor:
    """A gnlp_tensor for t. With `shape`, t (which must be contiguous) is
    described as that shape, e.g. a 4-D parameter as one flat vector."""
    d = gnlp_tensor()
    d.data = t.data_ptr()
    d.dtype = gnlp_dtype_of(t.dtype)
    if shape is None:
        shape = tuple(t.shape)
        strides = tuple(t.stride())
    else:
        strides = tuple(_contiguous_strides(shape))
    if len(shape) not in (1, 2):
        raise GradNormLoRPError(f"tensor must be 1-D or 2-D, got shape {tuple(shape)}", GNLP_ERR_SHAPE)
    d.ndim = len(shape)
    d.shape[0] = shape[0]
    d.strides[0] = strides[0]
    if len(shape) == 2:
        d.shape[1] = shape[1]
        d.strides[1] = strides[1]
    d.device_type, d.device_index = device_of(t)
    return d


def _contiguous_strides(shape):
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return reversed(strides)


def make_config(**values) -> gnlp_config:
    """A gnlp_config: the header's defaults (CONFIG_DEFAULTS) with the given
    fields (lr=..., beta1=..., correct_bias=True, ...) set. Unknown names
    raise TypeError; values are not validated here (see check_config)."""
    unknown = set(values) - set(CONFIG_DEFAULTS)
    if unknown:
        raise TypeError(f"make_config: unknown gnlp_config field(s): {', '.join(sorted(unknown))}")
    c = gnlp_config()
    for name, ctype in gnlp_config._fields_:
        value = values.get(name, CONFIG_DEFAULTS[name])
        setattr(c, name, float(value) if ctype is ctypes.c_double else int(value))
    return c


def check_config(cfg: gnlp_config) -> None:
    """Validate cfg as the library does before any call that takes it
    (gnlp_config_validate). Raises GradNormLoRPValueError with the library's
    message, which names the bad field and its value."""
    status = lib().gnlp_config_validate(ctypes.byref(cfg))
    if status == GNLP_OK:
        return
    err = _error(status)
    if status in (GNLP_ERR_INVALID_ARGUMENT, GNLP_ERR_UNKNOWN_OPTION):
        raise GradNormLoRPValueError(str(err), status)
    raise err


def set_num_threads(n: int) -> None:
    """Limit the library's CPU worker pool to n threads per parallel loop
    (the calling thread included); 0 means one per core (the default, or
    $GNLP_NUM_THREADS when the library loaded). Takes effect from the next
    step. Raises GradNormLoRPValueError for n < 0."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise GradNormLoRPValueError(f"set_num_threads: n must be an int >= 0, got {n!r}", GNLP_ERR_INVALID_ARGUMENT)
    if n > 2**31 - 1:
        raise GradNormLoRPValueError(f"set_num_threads: n = {n} is too large", GNLP_ERR_INVALID_ARGUMENT)
    status = lib().gnlp_set_num_threads(n)
    if status != GNLP_OK:
        raise GradNormLoRPValueError(str(_error(status)), status)


def num_threads() -> int:
    """How many threads a CPU step's parallel loops may use now."""
    return int(lib().gnlp_num_threads())


def state_layout(param: gnlp_tensor, config: gnlp_config) -> list[tuple[str, torch.dtype, tuple[int, ...], int]]:
    """gnlp_state_layout: [(name, torch dtype, shape, bytes)] in layout order."""
    return _layout_of(lambda specs, count: lib().gnlp_state_layout(
        ctypes.byref(param), ctypes.byref(config), specs, GNLP_MAX_STATE, count))


def _layout_of(query) -> list[tuple[str, torch.dtype, tuple[int, ...], int]]:
    """The specs a layout query (specs array, count pointer) -> status fills in."""
    specs = (gnlp_buffer_spec * GNLP_MAX_STATE)()
    count = ctypes.c_int32(0)
    check(query(specs, ctypes.byref(count)))
    out = []
    for i in range(count.value):
        s = specs[i]
        shape = tuple(s.shape[j] for j in range(s.ndim))
        out.append((s.name.decode(), GNLP_TO_TORCH_DTYPE[s.dtype], shape, int(s.bytes)))
    return out


def state_init(param: gnlp_tensor, state: ctypes.Array, config: gnlp_config, stream=None) -> None:
    check(lib().gnlp_state_init(ctypes.byref(param), state, len(state), ctypes.byref(config), stream))


def step_batch(items: ctypes.Array, stream=None) -> None:
    check(lib().gnlp_step_batch(items, len(items), stream))


def sharded_lib() -> ctypes.CDLL:
    """The library, if it has the row-sharded calls; else
    GradNormLoRPError(GNLP_ERR_BACKEND_UNAVAILABLE) saying so."""
    L = lib()
    if not all(hasattr(L, name) for name in _SHARDED_SIGNATURES):
        raise GradNormLoRPError(
            f"{library_path()} lacks the row-sharded step that FSDP2's sharded parameters need; "
            f"rebuild it from this source (`make lib`)",
            GNLP_ERR_BACKEND_UNAVAILABLE,
        )
    return L


def shard_state_layout(
    param: gnlp_tensor, shard: gnlp_shard, config: gnlp_config
) -> list[tuple[str, torch.dtype, tuple[int, ...], int]]:
    """gnlp_shard_state_layout: this rank's buffers, as state_layout gives them."""
    L = sharded_lib()
    return _layout_of(lambda specs, count: L.gnlp_shard_state_layout(
        ctypes.byref(param), ctypes.byref(shard), ctypes.byref(config), specs, GNLP_MAX_STATE, count))


def shard_state_init(param: gnlp_tensor, shard: gnlp_shard, state: ctypes.Array, config: gnlp_config,
                     stream=None) -> None:
    check(sharded_lib().gnlp_shard_state_init(
        ctypes.byref(param), ctypes.byref(shard), state, len(state), ctypes.byref(config), stream))


def step_sharded(items: ctypes.Array, shards: ctypes.Array, collective, stream=None) -> None:
    """gnlp_step_sharded; `collective` is a COLLECTIVE_FN (keep it alive until this returns)."""
    check(sharded_lib().gnlp_step_sharded(items, shards, len(items), collective, None, stream))


def device_info(index: int = 0) -> dict:
    """What the NVIDIA driver (NVML, through gnlp_device_info) says about GPU
    ``index``: name, uuid, driver and CUDA versions, compute capability and
    memory in bytes. Raises GradNormLoRPError (status GNLP_ERR_NO_DRIVER)
    where there is no NVIDIA driver."""
    info = gnlp_gpu_info()
    check(lib().gnlp_device_info(int(index), ctypes.byref(info)), f"device_info({index})")
    out = {name: getattr(info, name) for name, _ in gnlp_gpu_info._fields_}
    for name in ("name", "uuid", "driver_version"):
        out[name] = out[name].decode("utf-8", errors="replace")
    major, minor = divmod(info.cuda_driver_version // 10, 100)
    out["cuda_driver_version"] = f"{major}.{minor}"
    return out
