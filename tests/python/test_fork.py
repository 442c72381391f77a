"""Fork (issue 13 item 7): the Go runtime inside libgradnormlorp does not
survive fork(), so a forked child's first library call used to hang. It now
raises a clear GradNormLoRPError; the parent keeps working, children that
never call the library (DataLoader workers) are unaffected, and 'spawn'
children use the library normally.

Each scenario runs in a fresh interpreter with a timeout, so a hang fails
the test instead of blocking the suite."""

import os
import subprocess
import sys
import textwrap

import pytest

import gradnormlorp

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

PRELUDE = """
import os, sys, torch
from gradnormlorp import GradNormLoRP, GradNormLoRPError
torch.manual_seed(0)
w = torch.nn.Parameter(torch.randn(16, 12))
opt = GradNormLoRP([w], rank=4, update_proj_gap=3)
def step():
    w.grad = torch.randn_like(w)
    opt.step()
step()
"""


def run(tmp_path, code: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Runs PRELUDE + code as a script (a file, so 'spawn' children can
    import its functions)."""
    script = tmp_path / "scenario.py"
    script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(code))
    env = dict(os.environ)
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(gradnormlorp.__file__)))
    env["PYTHONPATH"] = pkg + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=timeout)


def test_forked_child_gets_clear_error_and_parent_keeps_working(tmp_path):
    out = run(tmp_path, """
        r, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                step()
                msg = "NO ERROR"
            except GradNormLoRPError as e:
                msg = type(e).__name__ + ": " + str(e)
            os.write(wfd, msg.encode())
            os._exit(0)
        os.close(wfd)
        _, status = os.waitpid(pid, 0)
        print("CHILD", os.read(r, 4096).decode())
        before = w.detach().clone()
        step()
        print("PARENT STEPPED", not torch.equal(before, w.detach()))
    """)
    assert out.returncode == 0, out.stderr
    assert "CHILD GradNormLoRPForkError" in out.stdout, out.stdout
    assert "does not survive fork()" in out.stdout and "'spawn'" in out.stdout
    assert "PARENT STEPPED True" in out.stdout


def test_dataloader_fork_workers_are_unaffected(tmp_path):
    out = run(tmp_path, """
        data = torch.utils.data.TensorDataset(torch.randn(64, 12))
        loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=2, multiprocessing_context="fork")
        n = 0
        for (x,) in loader:
            step()
            n += x.shape[0]
        print("SEEN", n)
    """)
    assert out.returncode == 0, out.stderr
    assert "SEEN 64" in out.stdout


def test_spawn_child_uses_the_library(tmp_path):
    out = run(tmp_path, """
        import multiprocessing as mp

        def child(q):
            import torch
            from gradnormlorp import GradNormLoRP
            p = torch.nn.Parameter(torch.ones(4, 3))
            o = GradNormLoRP([p], rank=2)
            p.grad = torch.ones_like(p)
            o.step()
            q.put(float(p.detach().sum()))

        if __name__ == "__main__":  # spawn children import this file as __mp_main__
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            proc = ctx.Process(target=child, args=(q,))
            proc.start()
            print("CHILD SUM", q.get(timeout=150) != 12.0)
            proc.join()
            step()
            print("PARENT OK")
    """, timeout=240)
    assert out.returncode == 0, out.stderr
    assert "CHILD SUM True" in out.stdout and "PARENT OK" in out.stdout
