"""8-bit and 4-bit state: the stored codes, training quality, checkpoints."""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gradnormlorp import GradNormLoRP, target_param_groups
from problems import GradSeq

BLOCK = 256
# ../shared/data next to the checkout, as on the project's machines.
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"


def corpus_bytes() -> bytes:
    """tinyshakespeare where the checkout has it, else the English text that
    ships with CPython (the claims below hold for any real text)."""
    if CORPUS.is_file():
        return CORPUS.read_bytes()
    from pydoc_data.topics import topics

    return "\n".join(topics.values()).encode()


# ------------------------------------------------------------------- codes


@functools.cache
def dynamic_code(bits: int, signed: bool) -> torch.Tensor:
    """The code table as core/quant/quant.go documents it (the C ABI does not
    expose it): with D = bits-1 decades, decade d (scale 10^(d-D+1)) has
    2^(d+extra) points at the midpoints of an even split of [0.1, 1] x scale
    (extra 0 signed, 1 unsigned); plus 0 and 1, and the mirror images of the
    points when signed. The unsigned 4-bit code has no 0: its smallest decade
    gets that slot (one more point)."""
    decades, extra = bits - 1, 0 if signed else 1
    zero_free = bits == 4 and not signed
    counts = [2 ** (d + extra) + (zero_free and d == 0) for d in range(decades)]
    pos = [10.0 ** (d - decades + 1) * (0.1 + 0.9 / counts[d] * (i + 0.5))
           for d in range(decades) for i in range(counts[d])]
    values = sorted([1.0, *([] if zero_free else [0.0]), *pos, *([-v for v in pos] if signed else [])])
    assert len(values) == 2**bits
    return torch.tensor(values, dtype=torch.float32)


def dequantise(codes: torch.Tensor, absmax: torch.Tensor, bits: int, signed: bool, n: int) -> torch.Tensor:
    """n values from flat codes (4-bit: two per byte, low nibble first) and
    one absmax per block of 256."""
    idx = codes.flatten().long()
    if bits == 4:
        idx = torch.stack([idx & 15, idx >> 4], dim=1).flatten()
    return dynamic_code(bits, signed)[idx[:n]] * absmax.repeat_interleave(BLOCK)[:n]


def check_codes(state: dict, name: str, exact: torch.Tensor, bits: int, signed: bool) -> float:
    """Assert that `name`'s codes store `exact` (what 32-bit state holds after
    the same step) as well as the code allows: each block's absmax is its
    largest magnitude and every value decodes to the table entry nearest to
    it. Returns the worst error relative to its block's absmax."""
    x = exact.flatten()
    n = x.numel()
    absmax = state[f"{name}_absmax"]
    assert state[name].dtype == torch.uint8 and absmax.dtype == torch.float32
    assert absmax.numel() == math.ceil(n / BLOCK)
    pad = absmax.numel() * BLOCK - n
    want_absmax = nn.functional.pad(x.abs(), (0, pad)).view(-1, BLOCK).amax(dim=1)
    torch.testing.assert_close(absmax, want_absmax, rtol=1e-6, atol=0)

    table = dynamic_code(bits, signed)
    scale = absmax.repeat_interleave(BLOCK)[:n]
    err = (dequantise(state[name], absmax, bits, signed, n) - x).abs()
    candidates = (table[None, :] * scale[:, None] - x[:, None]).abs()
    if not signed:  # a positive value never takes the zero code (see quant.Code.Nearest)
        candidates[:, 0] = torch.where(x > 0, torch.inf, candidates[:, 0])
    nearest = candidates.amin(dim=1)
    assert torch.all(err <= nearest + 1e-6 * scale), f"{name}: a value is not stored as its nearest code"
    half_gap = (table.diff().max() / 2).item()
    worst = (err / scale.clamp_min(1e-30)).max().item()
    assert worst <= half_gap * (1 + 1e-5), f"{name}: error {worst:.3g} x absmax > half the widest gap {half_gap:.3g}"
    return worst


def test_code_tables_have_the_documented_shape():
    assert dynamic_code(8, True)[0] == -dynamic_code(8, True)[-2]  # -1 is not representable
    assert dynamic_code(8, False)[0] == 0 and dynamic_code(8, False)[-1] == 1
    # Widest gaps, i.e. twice the worst rounding error relative to absmax.
    gaps = {(b, s): dynamic_code(b, s).diff().max().item() for b in (8, 4) for s in (True, False)}
    assert gaps == pytest.approx({(8, True): 0.9 / 64, (8, False): 0.9 / 128, (4, True): 0.225, (4, False): 0.1125},
                                 rel=1e-5)  # float32 tables


@pytest.mark.parametrize("bits", [8, 4])
def test_state_codes_are_the_nearest_dynamic_codes(bits):
    """After one step, the quantised AdamW moments and projector decode to
    the 32-bit run's values up to the nearest code, block by block. The
    plain parameter has an odd size and a partial last block."""

    def step(optim_bits):
        torch.manual_seed(0)
        plain = nn.Parameter(torch.randn(37, 123))  # 4551 values
        projected = nn.Parameter(torch.randn(96, 300))  # left projector 96 x 48
        plain.grad = torch.randn(plain.shape)
        projected.grad = GradSeq(96, 300, seed=3)(1)
        opt = GradNormLoRP([{"params": [projected], "rank": 48}, {"params": [plain]}], optim_bits=optim_bits)
        opt.step()
        return opt.state[plain], opt.state[projected]

    (plain32, proj32), (plain, proj) = step(32), step(bits)
    worst = [
        check_codes(plain, "exp_avg", plain32["exp_avg"], bits, signed=True),
        check_codes(plain, "exp_avg_sq", plain32["exp_avg_sq"], bits, signed=False),
        check_codes(proj, "proj_left", proj32["proj_left"], bits, signed=True),
    ]
    assert max(worst) > 0  # the comparison saw rounding
    assert proj["direction_norm"].dtype == torch.float32
    # The magnitude's update does not involve the projector: same fp32 state at every width.
    for name in ("magnitude", "magnitude_exp_avg", "magnitude_exp_avg_sq"):
        assert proj[name].dtype == torch.float32 and torch.equal(proj[name], proj32[name]), name


# --------------------------------------------------------------- training

SEQ, BATCH, STEPS, EVAL_BATCHES = 48, 12, 120, 8


def byte_batches(data: torch.Tensor, n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, data.numel() - SEQ, (n, BATCH), generator=gen)
    return [torch.stack([data[s : s + SEQ] for s in row.tolist()]) for row in starts]


@functools.cache
def final_loss(projected_bits: int, plain_bits: int) -> float:
    """Held-out loss of a 2-layer byte-level LLaMA after STEPS steps on
    tinyshakespeare (fixed seed and batches), with the projected matrices'
    state at projected_bits and the rest (embeddings, lm_head, norms) at
    plain_bits. Every state tensor the widths concern has >= 4096 values."""
    transformers = pytest.importorskip("transformers")
    data = torch.frombuffer(bytearray(corpus_bytes()), dtype=torch.uint8).long()
    split = int(0.9 * data.numel())
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                                      num_attention_heads=4, vocab_size=256, max_position_embeddings=SEQ)
    model = transformers.LlamaForCausalLM(config)
    groups = target_param_groups(model, ["self_attn", "mlp"], rank=32, update_proj_gap=50, scale=1.0)
    groups[0]["optim_bits"], groups[1]["optim_bits"] = projected_bits, plain_bits
    opt = GradNormLoRP(groups, lr=3e-3, weight_decay=0.0)
    for x in byte_batches(data[:split], STEPS, seed=0):
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        held_out = byte_batches(data[split:], EVAL_BATCHES, seed=1)
        return sum(model(input_ids=x, labels=x).loss.item() for x in held_out) / EVAL_BATCHES


def test_8bit_training_ends_within_2_percent_of_32bit():
    loss32, loss8 = final_loss(32, 32), final_loss(8, 8)
    assert loss32 < 0.5 * math.log(256)  # it learned something: uniform bytes give ln 256
    assert abs(loss8 - loss32) <= 0.02 * loss32, f"8-bit {loss8:.4f} vs 32-bit {loss32:.4f}"


def test_4bit_low_rank_state_ends_within_5_percent_of_32bit():
    """4-bit projected-matrix state (the plain parameters at 8 bits)."""
    loss32, loss4 = final_loss(32, 32), final_loss(4, 8)
    assert abs(loss4 - loss32) <= 0.05 * loss32, f"4-bit {loss4:.4f} vs 32-bit {loss32:.4f}"


def test_4bit_everywhere_ends_within_5_percent_of_32bit():
    """Also the embedding's AdamW moments at 4 bits: its rows see sparse
    gradients, which diverged (loss 22.5) while the unsigned 4-bit code had
    a zero (see core/quant)."""
    loss32, loss4 = final_loss(32, 32), final_loss(4, 4)
    assert abs(loss4 - loss32) <= 0.05 * loss32, f"4-bit {loss4:.4f} vs 32-bit {loss32:.4f}"


# ------------------------------------------------------------- checkpoints


# Buffers stored as codes (with a NAME_absmax) when they have >= 4096 values.
CODES = ("exp_avg", "exp_avg_sq", "proj_left", "proj_right")


def make_model(dtype, seed=0):
    """Every low-bit case: a right projector with an odd-sized low-rank
    moment (257 x 45), a left projector (96 x 48), a plain matrix of odd size
    (97 x 43), all quantised, and a vector too small to quantise."""
    torch.manual_seed(seed)
    params = [torch.randn(257, 96), torch.randn(96, 300), torch.randn(97, 43), torch.randn(96)]
    return nn.ParameterList(nn.Parameter(p.to(dtype)) for p in params)


def make_opt(model, bits):
    w1, w2, rest = model[0], model[1], list(model)[2:]
    return GradNormLoRP(
        [{"params": [w1], "rank": 45}, {"params": [w2], "rank": 48}, {"params": rest}],
        lr=1e-3, weight_decay=0.01, update_proj_gap=5, scale=0.25, optim_bits=bits,
    )


def set_grads(model, t):
    for i, p in enumerate(model):
        if p.dim() == 2:
            p.grad = GradSeq(*p.shape, seed=100 + i)(t, p.dtype)
        else:
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(t)).to(p.dtype)


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("bits", [8, 4])
def test_lowbit_resume_is_bit_exact(bits, dtype):
    total, stop = 17, 8  # refreshes at 1, 6, 11, 16: one on each side of the stop

    def run(model, opt, steps):
        for t in steps:
            set_grads(model, t)
            opt.step()

    ref = make_model(dtype)
    ref_opt = make_opt(ref, bits)
    run(ref, ref_opt, range(1, total + 1))

    model = make_model(dtype)
    opt = make_opt(model, bits)
    run(model, opt, range(1, stop + 1))
    model_sd, opt_sd = roundtrip(model.state_dict()), roundtrip(opt.state_dict())
    model2 = make_model(dtype, seed=123)
    model2.load_state_dict(model_sd)
    opt2 = make_opt(model2, bits)
    opt2.load_state_dict(opt_sd)

    for p, p_saved in zip(model2, model):
        st, saved = opt2.state[p], opt.state[p_saved]
        assert st.keys() == saved.keys()
        for k, v in st.items():
            if k == "step":
                assert v == stop and type(v) is int
                continue
            want = torch.uint8 if k in CODES and p.dim() == 2 else torch.float32
            assert v.dtype == want, f"{k} of {tuple(p.shape)} loaded as {v.dtype}"
            assert torch.equal(v, saved[k]) and v.data_ptr() != saved[k].data_ptr()

    run(model2, opt2, range(stop + 1, total + 1))
    for a, b in zip(ref, model2):
        assert torch.equal(a, b), f"{tuple(a.shape)}: the resumed run differs from the uninterrupted one"
        for k, v in ref_opt.state[a].items():
            same = v == opt2.state[b][k] if k == "step" else torch.equal(v, opt2.state[b][k])
            assert same, f"{tuple(a.shape)}: state {k} differs after resuming"
