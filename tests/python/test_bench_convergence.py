"""bench/convergence.py's --lr-from: an earlier run's sweep is reused only
when every setting the LR choice depends on matches."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("convergence", os.path.join(ROOT, "bench", "convergence.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def earlier_run(tmp_path, bench, argv):
    """A convergence.json as an earlier run with `argv` would write it."""
    args = bench.parse_args(argv)
    path = tmp_path / "convergence.json"
    path.write_text(
        json.dumps(
            {
                "args": vars(args),
                "lr": {"gnlp32": 0.01},
                "sweep": {"gnlp32": {str(lr): 2.0 + lr for lr in args.lrs}},
            }
        )
    )
    return str(path)


def test_reuses_the_sweep_of_matching_settings(tmp_path, bench):
    path = earlier_run(tmp_path, bench, ["--hidden", "256", "--steps", "300", "--methods", "gnlp32"])
    args = bench.parse_args(["--hidden", "256", "--steps", "300", "--methods", "gnlp8", "--lr-from", path])
    lrs, losses = bench.earlier_sweep(path, args)
    assert lrs == {"gnlp32": 0.01}
    assert losses["gnlp32"][0.003] == pytest.approx(2.003)  # keys are floats again, as a sweep's


def test_refuses_a_sweep_of_other_settings(tmp_path, bench):
    path = earlier_run(tmp_path, bench, ["--hidden", "256", "--steps", "300"])
    args = bench.parse_args(["--hidden", "128", "--steps", "300", "--lr-from", path])
    with pytest.raises(SystemExit, match=r"--hidden 256 \(here 128\)"):
        bench.earlier_sweep(path, args)


def test_lr_and_lr_from_exclude_each_other(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--lr", "0.01", "--lr-from", "x.json"])
    assert "exclude each other" in capsys.readouterr().err
