"""Test setup: puts python/ (the package) and this folder (the oracle) on
sys.path, and collects the worst errors measured so the run prints them."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for path in (os.path.join(ROOT, "python"), HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

import torch  # noqa: E402

# The test matrices are tiny: intra-op threads only add contention.
torch.set_num_threads(1)

from problems import COUNT as _COUNT
from problems import WORST as _WORST


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _WORST:
        return
    tr = terminalreporter
    tr.section("gradnormlorp: worst errors measured (library vs oracle)")
    width = max(len(c) for c in _WORST)
    for cat in sorted(_WORST):
        value, bound, case = _WORST[cat]
        tr.write_line(f"{cat:<{width}}  {value:.3e}  (bound {bound:.0e}, {_COUNT[cat]} cases)  worst: {case}")
