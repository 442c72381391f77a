"""The gradnormlorp command: ``python -m gradnormlorp COMMAND`` (or the
installed ``gradnormlorp`` script).

    info     versions, ABI, backends and GPUs this installation sees
    memory   optimizer-state bytes of a LLaMA-shaped model (gradnormlorp.memory)
    demo     train a tiny LLaMA on the CPU (gradnormlorp.demo; needs transformers)

``COMMAND --help`` shows a command's options.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import Callable, Sequence

# As cuda/loader.go reads them: the variable, then its former name.
CUDA_LIBRARY_ENVS = ("GNLP_CUDA_LIBRARY", "GRADNORMLORP_CUDA_LIBRARY")
CUDA_LIBRARY_NAME = "libgnlp_cuda.so"


def cuda_backend_path(library_path: str) -> str:
    """Where libgradnormlorp.so looks for the CUDA backend first (cuda/loader.go)."""
    for name in CUDA_LIBRARY_ENVS:
        if os.environ.get(name):
            return os.environ[name]
    return os.path.join(os.path.dirname(library_path), CUDA_LIBRARY_NAME)


def cuda_backend(library_path: str) -> dict:
    """Whether the CUDA backend was built, and whether it loads here (its
    cuBLAS, cuSOLVER and cudart found); loading needs no driver."""
    path = cuda_backend_path(library_path)
    if not os.path.isfile(path):
        return {"built": False, "path": path}
    try:
        ctypes.CDLL(path)
    except OSError as e:
        return {"built": True, "path": path, "loads": False, "error": str(e)}
    return {"built": True, "path": path, "loads": True}


def gpus() -> dict:
    """NVML's view (gnlp_device_info) of every GPU, or why there is none."""
    from . import _lib

    try:
        first = _lib.device_info(0)
    except _lib.GradNormLoRPError as e:
        return {"driver": False if e.status == _lib.GNLP_ERR_NO_DRIVER else None, "error": str(e), "devices": []}
    devices = [first] + [_lib.device_info(i) for i in range(1, first["device_count"])]
    return {"driver": True, "devices": devices}


def collect_info() -> dict:
    import torch

    import gradnormlorp

    from . import _lib

    lib_path = gradnormlorp.library_path()
    return {
        "version": gradnormlorp.__version__,
        "package": os.path.dirname(os.path.abspath(gradnormlorp.__file__)),
        "library": {"path": lib_path, "version": gradnormlorp.library_version(), "abi": _lib.lib().gnlp_abi_version()},
        "backends": {"cpu": True, "cuda": cuda_backend(lib_path)},
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
        },
        "gpus": gpus(),
    }


def format_info(info: dict) -> str:
    lib = info["library"]
    cuda = info["backends"]["cuda"]
    if not cuda["built"]:
        cuda_line = f"not built (no {cuda['path']})"
    elif cuda["loads"]:
        cuda_line = f"built, loads ({cuda['path']})"
    else:
        cuda_line = f"built, does NOT load: {cuda['error']}"
    t = info["torch"]
    lines = [
        f"gradnormlorp {info['version']}  ({info['package']})",
        f"library      {lib['version']}, ABI {lib['abi']}  ({lib['path']})",
        "backends     cpu: yes",
        f"             cuda: {cuda_line}",
        f"torch        {t['version']}, CUDA {t['cuda'] or 'none (CPU build)'}, "
        f"cuda available: {'yes' if t['cuda_available'] else 'no'}",
    ]
    g = info["gpus"]
    if g["driver"] is False:
        lines.append(f"GPU          no driver ({g['error']})")
    elif g["driver"] is None:
        lines.append(f"GPU          NVML error: {g['error']}")
    for i, d in enumerate(g["devices"]):
        lines.append(
            f"GPU {i}        {d['name']}, compute {d['compute_major']}.{d['compute_minor']}, "
            f"{d['memory_total'] / 2**30:.1f} GiB ({d['memory_free'] / 2**30:.1f} free), "
            f"driver {d['driver_version']} (CUDA {d['cuda_driver_version']})"
        )
    return "\n".join(lines)


def info_main(argv: Sequence[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="gradnormlorp info", description="What this installation of gradnormlorp sees.")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def memory_main(argv: Sequence[str]) -> int:
    from .memory import main

    return main(argv)


def demo_main(argv: Sequence[str]) -> int:
    from .demo import main

    return main(argv)


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "info": (info_main, "versions, ABI, backends and GPUs this installation sees"),
    "memory": (memory_main, "optimizer-state bytes of a LLaMA-shaped model"),
    "demo": (demo_main, "train a tiny LLaMA on the CPU (needs transformers)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    return (
        "usage: gradnormlorp COMMAND [ARGS]   (or python -m gradnormlorp)\n\n"
        f"commands:\n{rows}\n\nCOMMAND --help shows its options."
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__

        print(__version__)
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"gradnormlorp: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return command[0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
