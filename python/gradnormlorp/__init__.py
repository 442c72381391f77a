"""gradnormlorp: the GradNormLoRP optimizer (weight-normalised low-rank
projected Adam) for PyTorch, backed by a Go/CUDA library.

    from gradnormlorp import GradNormLoRP, target_param_groups
    groups = target_param_groups(model, ["attn", "mlp"], rank=128)
    opt = GradNormLoRP(groups, lr=1e-3, weight_decay=0.0)

The shared library (libgradnormlorp.so next to this file, or
$GNLP_LIBRARY) is loaded at import, where it exists, to check that
its version (gnlp_version) is this package's; a missing library is reported
when the first optimizer is created.

Command line: ``python -m gradnormlorp info|memory|demo`` (also installed as
the ``gradnormlorp`` script). HF Trainer: :func:`gradnormlorp.hf.trainer_optimizer`.
"""

from ._lib import ABI_VERSION, GradNormLoRPError, device_info, library_path, library_version
from ._version import check_library_version, read_version
from .groups import target_param_groups
from .layerwise import LayerwiseGradNormLoRP
from .optimizer import GradNormLoRP

__version__ = read_version()
check_library_version(__version__)

__all__ = [
    "ABI_VERSION",
    "GradNormLoRP",
    "GradNormLoRPError",
    "LayerwiseGradNormLoRP",
    "__version__",
    "device_info",
    "library_path",
    "library_version",
    "target_param_groups",
]
