"""The library's worker pool follows torch's intra-op thread count
(torch.set_num_threads, OMP_NUM_THREADS as torchrun sets it), unless
$GNLP_NUM_THREADS fixes it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch
from torch import nn

from gradnormlorp import GradNormLoRP, _lib

HERE = os.path.dirname(os.path.abspath(__file__))


def step_once():
    W = nn.Parameter(torch.randn(32, 16))
    opt = GradNormLoRP([W], rank=4)
    W.grad = torch.randn(32, 16)
    opt.step()


def test_pool_follows_torch_set_num_threads():
    before = torch.get_num_threads()
    cores = os.cpu_count() or 1
    try:
        torch.set_num_threads(1)
        step_once()
        assert _lib.num_threads() == 1
        torch.set_num_threads(2)
        step_once()
        assert _lib.num_threads() == min(2, cores)
    finally:
        torch.set_num_threads(before)


def child_threads(env, torch_threads=None) -> str:
    """The pool size after one step in a fresh process with env (and torch.set_num_threads(torch_threads))."""
    code = textwrap.dedent(
        """
        import os, sys
        sys.path[:0] = [os.path.join(sys.argv[1], "..", "..", "python"), sys.argv[1]]
        import torch
        from test_threads import step_once
        from gradnormlorp import _lib
        if len(sys.argv) > 2:
            torch.set_num_threads(int(sys.argv[2]))
        step_once()
        print(_lib.num_threads())
        """
    )
    args = [sys.executable, "-c", code, HERE] + ([str(torch_threads)] if torch_threads else [])
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_omp_num_threads_one_makes_the_step_single_threaded():
    """torchrun's OMP_NUM_THREADS=1 reaches the pool through torch."""
    assert child_threads({"OMP_NUM_THREADS": "1"}) == "1"


def test_gnlp_num_threads_overrides_torch():
    assert child_threads({"GNLP_NUM_THREADS": "1"}, torch_threads=2) == "1"
