"""ctypes binding of libgradnormlorp (include/gradnormlorp.h).

Everything here mirrors the C header one to one: the struct layouts, the enum
values and the function signatures. Keep it in sync with the header; the ABI
version check below catches a library built from a different header.

The library is loaded lazily, on the first call of :func:`lib` (constructing a
:class:`gradnormlorp.GradNormLoRP` does that), so ``import gradnormlorp``
works even where the library has not been built yet.
"""

from __future__ import annotations

import ctypes
import os
import threading

import torch

# The GNLP_ABI_VERSION this binding was written against.
ABI_VERSION = 1

GNLP_NAME_MAX = 32
GNLP_MAX_STATE = 16

# gnlp_status
GNLP_OK = 0
GNLP_ERR_INVALID_ARGUMENT = 1
GNLP_ERR_NULL_POINTER = 2
GNLP_ERR_MISALIGNED = 3
GNLP_ERR_SHAPE = 4
GNLP_ERR_DTYPE = 5
GNLP_ERR_NOT_CONTIGUOUS = 6
GNLP_ERR_NONFINITE = 7
GNLP_ERR_UNKNOWN_OPTION = 8
GNLP_ERR_DEVICE = 9
GNLP_ERR_BACKEND_UNAVAILABLE = 10
GNLP_ERR_BUFFER_TOO_SMALL = 11
GNLP_ERR_NUMERICAL = 12
GNLP_ERR_INTERNAL = 13
GNLP_ERR_NO_DRIVER = 14
GNLP_ERR_CUDA = 15

STATUS_NAMES = {
    GNLP_OK: "GNLP_OK",
    GNLP_ERR_INVALID_ARGUMENT: "GNLP_ERR_INVALID_ARGUMENT",
    GNLP_ERR_NULL_POINTER: "GNLP_ERR_NULL_POINTER",
    GNLP_ERR_MISALIGNED: "GNLP_ERR_MISALIGNED",
    GNLP_ERR_SHAPE: "GNLP_ERR_SHAPE",
    GNLP_ERR_DTYPE: "GNLP_ERR_DTYPE",
    GNLP_ERR_NOT_CONTIGUOUS: "GNLP_ERR_NOT_CONTIGUOUS",
    GNLP_ERR_NONFINITE: "GNLP_ERR_NONFINITE",
    GNLP_ERR_UNKNOWN_OPTION: "GNLP_ERR_UNKNOWN_OPTION",
    GNLP_ERR_DEVICE: "GNLP_ERR_DEVICE",
    GNLP_ERR_BACKEND_UNAVAILABLE: "GNLP_ERR_BACKEND_UNAVAILABLE",
    GNLP_ERR_BUFFER_TOO_SMALL: "GNLP_ERR_BUFFER_TOO_SMALL",
    GNLP_ERR_NUMERICAL: "GNLP_ERR_NUMERICAL",
    GNLP_ERR_INTERNAL: "GNLP_ERR_INTERNAL",
    GNLP_ERR_NO_DRIVER: "GNLP_ERR_NO_DRIVER",
    GNLP_ERR_CUDA: "GNLP_ERR_CUDA",
}

# gnlp_dtype
GNLP_FLOAT32 = 0
GNLP_BFLOAT16 = 1
GNLP_FLOAT16 = 2
GNLP_UINT8 = 3

# gnlp_device_type
GNLP_DEVICE_CPU = 0
GNLP_DEVICE_CUDA = 1

# gnlp_proj_type
PROJ_TYPES = {"std": 0, "reverse_std": 1, "right": 2, "left": 3, "full": 4}

TORCH_TO_GNLP_DTYPE = {
    torch.float32: GNLP_FLOAT32,
    torch.bfloat16: GNLP_BFLOAT16,
    torch.float16: GNLP_FLOAT16,
    torch.uint8: GNLP_UINT8,
}
GNLP_TO_TORCH_DTYPE = {v: k for k, v in TORCH_TO_GNLP_DTYPE.items()}
# Parameters and gradients may have these dtypes; uint8 is for state only.
PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

LIBRARY_ENV = "GRADNORMLORP_LIBRARY"
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


class gnlp_tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * 2),
        ("strides", ctypes.c_int64 * 2),
        ("device_type", ctypes.c_int32),
        ("device_index", ctypes.c_int32),
    ]


class gnlp_config(ctypes.Structure):
    _fields_ = [
        ("lr", ctypes.c_double),
        ("beta1", ctypes.c_double),
        ("beta2", ctypes.c_double),
        ("eps", ctypes.c_double),
        ("weight_decay", ctypes.c_double),
        ("scale", ctypes.c_double),
        ("rank", ctypes.c_int32),
        ("update_proj_gap", ctypes.c_int32),
        ("proj_type", ctypes.c_int32),
        ("correct_bias", ctypes.c_int32),
        ("optim_bits", ctypes.c_int32),
        ("refresh", ctypes.c_int32),
    ]


class gnlp_buffer_spec(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char * GNLP_NAME_MAX),
        ("dtype", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * 2),
        ("bytes", ctypes.c_int64),
    ]


class gnlp_step_item(ctypes.Structure):
    _fields_ = [
        ("param", gnlp_tensor),
        ("grad", gnlp_tensor),
        ("state", ctypes.POINTER(gnlp_tensor)),
        ("n_state", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("config", gnlp_config),
        ("step", ctypes.c_int64),
    ]


class gnlp_gpu_info(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char * 96),
        ("uuid", ctypes.c_char * 96),
        ("driver_version", ctypes.c_char * 32),
        ("cuda_driver_version", ctypes.c_int32),
        ("device_count", ctypes.c_int32),
        ("compute_major", ctypes.c_int32),
        ("compute_minor", ctypes.c_int32),
        ("memory_total", ctypes.c_int64),
        ("memory_used", ctypes.c_int64),
        ("memory_free", ctypes.c_int64),
    ]


# Sizes on LP64 (Linux x86-64 / aarch64), as a C compiler lays the header out.
assert ctypes.sizeof(gnlp_tensor) == 56
assert ctypes.sizeof(gnlp_config) == 72
assert ctypes.sizeof(gnlp_buffer_spec) == 64
assert ctypes.sizeof(gnlp_step_item) == 208
assert ctypes.sizeof(gnlp_gpu_info) == 264

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
}

_lock = threading.Lock()
_lib = None


def library_path() -> str:
    """The path of the shared library this package loads (or would load):
    ``$GRADNORMLORP_LIBRARY`` if set, else ``libgradnormlorp.so`` next to the
    package's ``__init__.py``."""
    env = os.environ.get(LIBRARY_ENV)
    if env:
        return os.path.abspath(env)
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


def lib() -> ctypes.CDLL:
    """The loaded library, loading and checking it on first use.

    Raises ImportError if it is missing, cannot be loaded, or was built for a
    different ABI version."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            _lib = _load(library_path())
    return _lib


def _load(path: str) -> ctypes.CDLL:
    how = (
        "Build it with `make lib` in the gradnormlorp source tree (or install the "
        f"package with `pip install .`), or point ${LIBRARY_ENV} at an existing "
        f"{LIBRARY_NAME}."
    )
    if not os.path.isfile(path):
        where = f"${LIBRARY_ENV}={os.environ[LIBRARY_ENV]!r}" if os.environ.get(LIBRARY_ENV) else "next to the package"
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
    if status == GNLP_OK:
        return
    msg = last_error() or f"{STATUS_NAMES.get(status, status)} (the library gave no message)"
    if context:
        msg = f"{context}: {msg}"
    raise GradNormLoRPError(msg, status)


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


def make_config(
    *, lr, beta1, beta2, eps, weight_decay, scale, rank, update_proj_gap, proj_type, correct_bias, optim_bits,
    refresh=0,
) -> gnlp_config:
    c = gnlp_config()
    c.lr = float(lr)
    c.beta1 = float(beta1)
    c.beta2 = float(beta2)
    c.eps = float(eps)
    c.weight_decay = float(weight_decay)
    c.scale = float(scale)
    c.rank = int(rank)
    c.update_proj_gap = int(update_proj_gap)
    c.proj_type = int(proj_type)
    c.correct_bias = 1 if correct_bias else 0
    c.optim_bits = int(optim_bits)
    c.refresh = int(refresh)
    return c


def state_layout(param: gnlp_tensor, config: gnlp_config) -> list[tuple[str, torch.dtype, tuple[int, ...], int]]:
    """gnlp_state_layout: [(name, torch dtype, shape, bytes)] in layout order."""
    L = lib()
    specs = (gnlp_buffer_spec * GNLP_MAX_STATE)()
    count = ctypes.c_int32(0)
    check(L.gnlp_state_layout(ctypes.byref(param), ctypes.byref(config), specs, GNLP_MAX_STATE, ctypes.byref(count)))
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
