"""gradnormlorp.memory: every row equals what the optimizer it names allocates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gradnormlorp import GradNormLoRP, target_param_groups
from gradnormlorp.memory import MODELS, main, report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGETS = ["self_attn", "mlp"]  # q, k, v, o and gate, up, down in HF's LLaMA
PAPER_RANKS = {"llama-60m": 128, "llama-130m": 256, "llama-350m": 256, "llama-1b": 512, "llama-7b": 1024}
# Small enough for galore-torch's SVDs, large enough that some low-rank
# moments cross bitsandbytes' 4096-element threshold and others do not; GQA.
TINY = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000)
TINY_RANK = 24


def llama(dtype=torch.float32, seed=0, **config) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**config)).to(dtype)


def one_step(model, opt, zero_grads=False):
    """One optimizer step, with a zero gradient (enough to create the state,
    whose size does not depend on values, and it keeps exact SVDs cheap) or a
    random one."""
    gen = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if zero_grads else torch.randn(p.shape, generator=gen).to(p.dtype)
    opt.step()
    return opt


def allocated_bytes(opt) -> int:
    """Bytes of every distinct tensor an optimizer's state holds, including
    galore-torch's projector objects; tensors shared between parameters
    (bitsandbytes' code tables) count once."""
    seen = {}
    for st in opt.state.values():
        for v in st.values():
            v = getattr(v, "ortho_matrix", v)  # a GaLoreProjector
            if isinstance(v, torch.Tensor):
                seen[v.untyped_storage().data_ptr()] = v.numel() * v.element_size()
    return sum(seen.values())


def galore_groups(model):
    """The groups carry GaLore's keys (rank, update_proj_gap, scale, proj_type)."""
    return target_param_groups(model, TARGETS, rank=TINY_RANK)


def row_bytes(rep) -> dict[str, int]:
    return {r.optimizer: r.state_bytes for r in rep.rows}


# --------------------------------------------------------- GradNormLoRP rows


def test_gradnormlorp_rows_equal_the_state_allocated_for_llama_60m(tmp_path):
    config = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                  vocab_size=32000)
    model = llama(torch.bfloat16, **config)
    LlamaConfig(**config).to_json_file(tmp_path / "config.json")
    rows = row_bytes(report("llama-60m", 128))
    assert rows == row_bytes(report(str(tmp_path / "config.json"), 128))
    for bits, name in ((32, "gradnormlorp"), (8, "gradnormlorp-8bit"), (4, "gradnormlorp-4bit")):
        opt = GradNormLoRP(target_param_groups(model, TARGETS, rank=128), optim_bits=bits)
        assert one_step(model, opt, zero_grads=True).state_bytes() == rows[name], name
        assert allocated_bytes(opt) == rows[name]


def test_residual_rows_equal_the_state_allocated():
    """compensation="residual" adds exactly one float per projected matrix."""
    rows = row_bytes(report(TINY, TINY_RANK, residual=True))
    model = llama(torch.bfloat16, **TINY)
    groups = target_param_groups(model, TARGETS, rank=TINY_RANK)
    matrices = len(groups[0]["params"])
    for bits, name in ((32, "gradnormlorp"), (8, "gradnormlorp-8bit"), (4, "gradnormlorp-4bit")):
        opt = GradNormLoRP(target_param_groups(model, TARGETS, rank=TINY_RANK), optim_bits=bits,
                           compensation="residual")
        assert allocated_bytes(one_step(model, opt, zero_grads=True)) == rows[name + "-residual"], name
        assert rows[name + "-residual"] == rows[name] + 4 * matrices, name
    assert "gradnormlorp-residual" not in row_bytes(report(TINY, TINY_RANK))


@pytest.mark.parametrize("tied", [False, True])
def test_model_tensors_match_transformers(tied):
    """The shapes the report counts are LlamaForCausalLM's parameters, and the
    projected ones are exactly those target_param_groups projects."""
    config = dict(TINY, tie_word_embeddings=tied, attention_bias=True, mlp_bias=True, head_dim=48)
    model = llama(**config)
    projected = {id(p) for p in target_param_groups(model, TARGETS, rank=8)[0]["params"]}
    want = sorted((tuple(p.shape), id(p) in projected) for p in model.parameters())
    got = sorted(report(config, 8).shape.tensors())
    assert got == want


# ----------------------------------------------------------------- peer rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_peer_formulas_equal_real_allocations(dtype):
    bnb = pytest.importorskip("bitsandbytes")
    galore_torch = pytest.importorskip("galore_torch")
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    rows = row_bytes(report(TINY, TINY_RANK, dtype=name))

    model = llama(dtype, **TINY)
    adamw = one_step(model, torch.optim.AdamW(model.parameters()))
    assert allocated_bytes(adamw) == rows[f"adamw-{name}"]

    model = llama(dtype, **TINY)
    assert allocated_bytes(one_step(model, bnb.optim.AdamW8bit(model.parameters()))) == rows["adamw-8bit"]

    model = llama(dtype, **TINY)
    galore = one_step(model, galore_torch.GaLoreAdamW(galore_groups(model), no_deprecation_warning=True))
    assert allocated_bytes(galore) == rows["galore"]

    # GaLoreAdamW8bit calls torch.cuda.synchronize() after every parameter;
    # bitsandbytes' 8-bit update itself runs on the CPU.
    model = llama(dtype, **TINY)
    with mock.patch("torch.cuda.synchronize"):
        galore8 = one_step(model, galore_torch.GaLoreAdamW8bit(galore_groups(model)))
    assert allocated_bytes(galore8) == rows["galore-8bit"]


def test_tiny_model_mixes_quantised_and_fp32_low_rank_moments():
    """TINY exercises both sides of bitsandbytes' 8-bit threshold."""
    galore_torch = pytest.importorskip("galore_torch")
    model = llama(**TINY)
    with mock.patch("torch.cuda.synchronize"):
        opt = one_step(model, galore_torch.GaLoreAdamW8bit(galore_groups(model)))
    dtypes = {opt.state[p]["state1"].dtype for p in target_param_groups(model, TARGETS, rank=1)[0]["params"]}
    assert dtypes == {torch.uint8, torch.float32}


# ---------------------------------------------------------- CLI and targets


@pytest.mark.parametrize("model", list(MODELS))
def test_json_for_every_model(model, capsys):
    rank = PAPER_RANKS[model]
    assert main(["--model", model, "--rank", str(rank), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["model"], out["rank"], out["dtype"]) == (model, rank, "bf16")
    names = [r["optimizer"] for r in out["rows"]]
    assert names == ["adamw-fp32", "adamw-bf16", "adamw-8bit", "galore", "galore-8bit",
                     "gradnormlorp", "gradnormlorp-8bit", "gradnormlorp-4bit"]
    rows = {r["optimizer"]: r for r in out["rows"]}
    assert all(type(r["state_bytes"]) is int and r["state_bytes"] > 0 for r in out["rows"])
    assert rows["adamw-fp32"]["reduction_vs_adamw_fp32"] == 0
    assert rows["adamw-bf16"]["reduction_vs_adamw_fp32"] == pytest.approx(50, abs=1e-3)
    # Every width is smaller than the next wider one, and ours never needs
    # more than GaLore 8-bit plus its per-row vectors.
    assert (rows["gradnormlorp-4bit"]["state_bytes"] < rows["gradnormlorp-8bit"]["state_bytes"]
            < rows["gradnormlorp"]["state_bytes"])
    assert [t["ok"] for t in out["targets"]] == [True] * len(out["targets"])


def test_llama_7b_cli_meets_the_paper_targets():
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "python")}
    proc = subprocess.run([sys.executable, "-m", "gradnormlorp.memory", "--model", "llama-7b", "--rank", "1024",
                           "--json"], capture_output=True, text=True, env=env, check=True, timeout=120)
    out = json.loads(proc.stdout)  # the whole output is one JSON object
    rows = {r["optimizer"]: r["state_bytes"] for r in out["rows"]}
    assert len(out["targets"]) == 3 and all(t["ok"] for t in out["targets"])
    assert rows["gradnormlorp-8bit"] <= 0.105 * rows["adamw-fp32"]
    assert rows["gradnormlorp-4bit"] <= 0.105 * rows["adamw-bf16"]
    assert rows["gradnormlorp-8bit"] <= rows["galore-8bit"]
    assert rows["adamw-fp32"] == pytest.approx(53.9e9, rel=1e-3)


def test_table_and_markdown(capsys):
    assert main(["--model", "llama-1b", "--rank", "512", "--bits", "8"]) == 0
    table = capsys.readouterr().out
    assert "gradnormlorp-8bit" in table and "gradnormlorp-4bit" not in table and "GiB" in table
    assert main(["--model", "llama-7b", "--rank", "1024", "--markdown"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Optimizer-state memory: llama-7b, rank 1024") and "**PASS**" in md
    assert "**FAIL**" not in md


def test_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["--model", "llama-60m", "--rank", "128", "--json", "--plot", str(tmp_path / "m.png")]) == 0
    json.loads(capsys.readouterr().out)  # still exactly one JSON object on stdout
    with open(tmp_path / "m.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--config", str(tmp_path / "missing.json"), "--rank", "8"])
    assert e.value.code == 2 and "missing.json" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "bad.json"), "--rank", "8"])
    assert "intermediate_size" in capsys.readouterr().err
    with pytest.raises(ValueError, match="rank"):
        report("llama-60m", 0)
