"""GPU tests of the CUDA backend (run by scripts/gpu_check.sh on a machine
with an NVIDIA GPU). Puts python/ (the package) and tests/python (the
float64 oracle) on sys.path; every test is skipped without CUDA."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for path in (os.path.join(ROOT, "python"), os.path.join(ROOT, "tests", "python"), HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device (these tests run on a GPU machine: scripts/gpu_check.sh)")
    for item in items:
        item.add_marker(skip)
