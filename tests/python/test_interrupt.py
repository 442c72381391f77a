"""Ctrl-C during step(): the step is either wholly done (weights, moments
and step counters moved together) or not done at all."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))

# The child steps a parameter whose step takes long (a full SVD refresh of a
# big matrix) while a thread sends SIGINT as soon as the main thread is
# inside the library call, then reports whether weights and counters agree.
CHILD = textwrap.dedent(
    r"""
    import os, signal, sys, threading, time
    import torch
    sys.path[:0] = [os.path.join(sys.argv[1], "..", "..", "python")]
    from gradnormlorp import GradNormLoRP, _lib

    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(1536, 1024))
    opt = GradNormLoRP([W], rank=256)
    W.grad = torch.randn(1536, 1024)
    before = W.detach().clone()
    main = threading.main_thread().ident

    def in_library_call():
        frame = sys._current_frames().get(main)
        return frame is not None and frame.f_code.co_filename == _lib.__file__

    def interrupt():
        while not in_library_call():
            time.sleep(0.001)
        time.sleep(0.05)  # well inside the C call, which releases the GIL
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    try:
        opt.step()
        print("no interrupt")
    except KeyboardInterrupt:
        moved = not torch.equal(W.detach(), before)
        step = opt.state[W]["step"] if W in opt.state else 0
        print(f"interrupted moved={moved} step={step}")
    """
)


def test_sigint_during_step_keeps_counters_and_state_together():
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, HERE],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    # The library call ran to the end (it cannot be cut), so the step is
    # done and recorded; the KeyboardInterrupt comes after it.
    assert out == "interrupted moved=True step=1", out
