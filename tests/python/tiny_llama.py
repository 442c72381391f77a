"""A tiny LLaMA built from a config (no downloads) and a learnable in-memory
token data set, shared by the integration and layer-wise tests."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gradnormlorp import target_param_groups

VOCAB = 128
SEQ = 16

# Attention and MLP linears are projected; embeddings, norms and lm_head get AdamW.
TARGETS = ["self_attn", "mlp"]
PROJECTED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer LLaMA (hidden 32, MLP 64, 4 heads, 2 KV heads, ~27k parameters)."""
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def param_groups(model: torch.nn.Module, **kwargs) -> list[dict]:
    """Projected groups for attention/MLP weights, AdamW for the rest. rank 8
    < 32 really projects; refreshes at steps 1, 4, 7, ... fall inside
    every test's run."""
    return target_param_groups(model, TARGETS, rank=8, update_proj_gap=3, **kwargs)


def token_samples(n: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """n sequences that follow t -> (5 t + 3) mod VOCAB from a random start,
    so the loss can fall within a few steps. Each sample is
    {"input_ids", "labels"} (the model shifts the labels itself)."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, VOCAB, (n,), generator=gen)
    seqs = [starts]
    for _ in range(SEQ - 1):
        seqs.append((5 * seqs[-1] + 3) % VOCAB)
    ids = torch.stack(seqs, dim=1)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def batches(n_batches: int, batch_size: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Stacked batches of token_samples."""
    samples = token_samples(n_batches * batch_size, seed)
    return [
        {k: torch.stack([s[k] for s in samples[i : i + batch_size]]) for k in samples[0]}
        for i in range(0, len(samples), batch_size)
    ]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bit-for-bit equality of two snapshots."""
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name}: max |diff| {(a[name] - b[name]).abs().max().item():.3e}"


def assert_same_state(a: dict, b: dict) -> None:
    """Bit-for-bit equality of two optimizer state_dicts (step counts included)."""
    assert a["state"].keys() == b["state"].keys()
    for pid, sa in a["state"].items():
        sb = b["state"][pid]
        assert sa.keys() == sb.keys(), pid
        for k, v in sa.items():
            same = torch.equal(v, sb[k]) if isinstance(v, torch.Tensor) else v == sb[k]
            assert same, f"state of parameter {pid}, {k!r} differs"
