"""gradnormlorp: the GradNormLoRP optimizer (weight-normalised low-rank
projected Adam) for PyTorch, backed by a Go/CUDA library.

    from gradnormlorp import GradNormLoRP, target_param_groups
    groups = target_param_groups(model, ["attn", "mlp"], rank=128)
    opt = GradNormLoRP(groups, lr=1e-3, weight_decay=0.0)

The shared library (libgradnormlorp.so next to this file, or
$GRADNORMLORP_LIBRARY) is loaded when the first optimizer is created.
"""

from ._lib import ABI_VERSION, GradNormLoRPError, device_info, library_path, library_version
from .groups import target_param_groups
from .layerwise import LayerwiseGradNormLoRP
from .optimizer import GradNormLoRP

__version__ = "0.1.0"

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
