"""Optimizer-state memory of LLaMA-shaped models: GradNormLoRP against its peers.

    python -m gradnormlorp.memory --model llama-7b --rank 1024
    python -m gradnormlorp.memory --config path/to/config.json --rank 256 --json
    python -m gradnormlorp.memory --model llama-1b --rank 512 --plot mem.png

Only shapes are used: no weights are allocated, so LLaMA-7B takes no time.

The GradNormLoRP rows are the library's own answer: the sum, over every
parameter, of the ``bytes`` that ``gnlp_state_layout`` asks the caller to
allocate (exactly what :class:`gradnormlorp.GradNormLoRP` holds after a step).
The other rows follow, formula by formula, what those libraries allocate
(see :data:`ROW_NOTES`; tests/python/test_memory.py checks every formula
against the real optimizers' state after a step):

* ``adamw-fp32``, ``adamw-bf16``: ``torch.optim.AdamW`` on an fp32 or a bf16
  model: ``exp_avg`` and ``exp_avg_sq`` like the parameter, and a 0-d fp32
  ``step`` tensor per parameter.
* ``adamw-8bit``: ``bitsandbytes.optim.AdamW8bit``: tensors of >= 4096
  elements get two uint8 code tensors and two fp32 absmax vectors (one value
  per 256-block); smaller ones two fp32 moments; plus the two 256-entry fp32
  code tables, shared by all parameters.
* ``galore``: ``galore_torch.GaLoreAdamW`` on a model of ``--dtype``:
  ``torch.zeros_like`` of the projected gradient, so both low-rank moments are
  in the parameter dtype, as are the non-projected parameters' moments; the
  projector (``proj_type="std"``: ``k x n`` if ``m >= n``, else ``m x k``,
  ``k = min(rank, m, n)``) is cast to the parameter dtype too.
* ``galore-8bit``: ``galore_torch.GaLoreAdamW8bit``: bitsandbytes' rule above
  applied to the low-rank moments (and to the non-projected parameters), the
  projector in the parameter dtype, and a 1-element fp32 ``unorm_vec`` per
  parameter (GaLoreAdamW8bit passes ``percentile_clipping=100`` positionally
  into bitsandbytes' ``max_unorm`` slot, which allocates it).

The projected parameters are every attention (q, k, v, o) and MLP (gate, up,
down) weight, as in GaLore's and the paper's runs; embeddings, ``lm_head``
and the RMSNorm weights (and biases, where a config has them) get AdamW.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import torch

from . import _lib

__all__ = ["MODELS", "LlamaShape", "Param", "RankState", "Report", "Row", "Target", "main", "report", "sharded_state"]


class Param(NamedTuple):
    """A parameter tensor as the report sees it: its shape, and whether it is projected."""

    shape: tuple[int, ...]
    projected: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class LlamaShape:
    """The parameter shapes of a LLaMA-style decoder (HF ``LlamaForCausalLM``)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int = 32000
    kv_heads: int | None = None  # None: as many as query heads (no GQA)
    head_dim: int | None = None  # None: hidden // heads
    tied: bool = False  # lm_head shares the embedding's weight
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any]) -> "LlamaShape":
        """From a HuggingFace LLaMA-style config.json (as a dict)."""
        try:
            return cls(
                hidden=int(cfg["hidden_size"]),
                intermediate=int(cfg["intermediate_size"]),
                layers=int(cfg["num_hidden_layers"]),
                heads=int(cfg["num_attention_heads"]),
                vocab=int(cfg["vocab_size"]),
                kv_heads=cfg.get("num_key_value_heads"),
                head_dim=cfg.get("head_dim"),
                tied=bool(cfg.get("tie_word_embeddings", False)),  # LlamaConfig's default
                attention_bias=bool(cfg.get("attention_bias", False)),
                mlp_bias=bool(cfg.get("mlp_bias", False)),
            )
        except KeyError as e:
            raise ValueError(f"LLaMA config lacks {e.args[0]!r}") from None

    def tensors(self) -> list[Param]:
        """Every parameter tensor, as LlamaForCausalLM registers them."""
        h, i = self.hidden, self.intermediate
        head_dim = self.head_dim or h // self.heads
        q, kv = self.heads * head_dim, (self.kv_heads or self.heads) * head_dim
        linears = [(q, h, self.attention_bias), (kv, h, self.attention_bias), (kv, h, self.attention_bias),
                   (h, q, self.attention_bias), (i, h, self.mlp_bias), (i, h, self.mlp_bias), (h, i, self.mlp_bias)]
        layer = [Param((h,), False), Param((h,), False)]  # input and post-attention RMSNorm
        for out, inp, bias in linears:
            layer.append(Param((out, inp), True))
            if bias:
                layer.append(Param((out,), False))
        embeddings = [Param((self.vocab, h), False)] * (1 if self.tied else 2)
        return embeddings + layer * self.layers + [Param((h,), False)]  # + final norm


MODELS: dict[str, LlamaShape] = {
    # hidden / intermediate / layers / heads of the configs in GaLore's repository.
    "llama-60m": LlamaShape(512, 1376, 8, 8),
    "llama-130m": LlamaShape(768, 2048, 12, 12),
    "llama-350m": LlamaShape(1024, 2736, 24, 16),
    "llama-1b": LlamaShape(2048, 5461, 24, 32),
    "llama-7b": LlamaShape(4096, 11008, 32, 32),
}

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# bitsandbytes' blockwise 8-bit optimizer state (Optimizer2State.init_state).
BNB_MIN_8BIT_SIZE = 4096
BNB_BLOCK = 256
BNB_QMAPS = 2 * 256 * 4  # the signed and unsigned dynamic code tables, fp32, shared
TORCH_STEP = 4  # torch.optim.AdamW's 0-d fp32 "step" tensor
GALORE_UNORM_VEC = 4

ROW_NOTES = {
    "adamw-fp32": "torch.optim.AdamW, fp32 model: 2 fp32 moments + a 4-byte step tensor per parameter",
    "adamw-bf16": "torch.optim.AdamW, bf16 model: 2 bf16 moments + a 4-byte step tensor per parameter",
    "adamw-8bit": "bitsandbytes AdamW8bit: >= 4096 elements: 2 x (uint8 codes + fp32 absmax per 256), "
    "else 2 fp32 moments; + 2 KiB of shared code tables",
    "galore": "galore_torch GaLoreAdamW: low-rank moments and projector in the parameter dtype; "
    "other parameters: 2 moments in the parameter dtype",
    "galore-8bit": "galore_torch GaLoreAdamW8bit: bitsandbytes 8-bit rule on the low-rank moments and other "
    "parameters, projector in the parameter dtype, 4-byte unorm_vec per parameter",
    "gradnormlorp": "gnlp_state_layout, optim_bits=32",
    "gradnormlorp-8bit": "gnlp_state_layout, optim_bits=8",
    "gradnormlorp-4bit": "gnlp_state_layout, optim_bits=4",
}
# compensation="residual" rows: the same layouts plus one float
# (compensation_norm) per projected matrix.
for _name, _note in list(ROW_NOTES.items()):
    if _name.startswith("gradnormlorp"):
        ROW_NOTES[_name + "-residual"] = _note + ", compensation=residual"

# The paper's headline: 8-bit GradNormLoRP saves 89.5% of 32-bit AdamW's state
# on LLaMA-7B at rank 1024 (SPEC section 4).
PAPER_MODEL, PAPER_RANK, PAPER_FRACTION = "llama-7b", 1024, 0.105
# magnitude, direction_norm and their two Adam moments: fp32 per row.
GNLP_ROW_BYTES = 4 * 4


# ------------------------------------------------------------------ formulas


def _low_rank(t: Param, rank: int) -> tuple[int, int]:
    """(moment elements, projector elements) of a projected m x n matrix under
    proj_type "std" (GaLore's and ours): the moments are max(m, n) x k and the
    projector min(m, n) x k, whichever side is projected."""
    m, n = t.shape
    k = min(rank, m, n)
    return max(m, n) * k, min(m, n) * k


def _bnb_adam(numel: int) -> int:
    """bitsandbytes' two Adam states of one tensor (without the code tables)."""
    if numel < BNB_MIN_8BIT_SIZE:
        return 2 * 4 * numel
    return 2 * (numel + 4 * -(-numel // BNB_BLOCK))


def _bnb_tables(numels: Sequence[int]) -> int:
    """The code tables are created with the first 8-bit state, once."""
    return BNB_QMAPS if any(n >= BNB_MIN_8BIT_SIZE for n in numels) else 0


def _torch_adamw(tensors: Sequence[Param], moment_bytes: int) -> int:
    return sum(2 * t.numel * moment_bytes + TORCH_STEP for t in tensors)


def _adamw_8bit(tensors: Sequence[Param]) -> int:
    numels = [t.numel for t in tensors]
    return sum(map(_bnb_adam, numels)) + _bnb_tables(numels)


def _galore_split(tensors: Sequence[Param], rank: int) -> list[tuple[int, int]]:
    """(moment elements, projector elements) of every parameter under GaLore."""
    return [_low_rank(t, rank) if t.projected else (t.numel, 0) for t in tensors]


def _galore(tensors: Sequence[Param], rank: int, param_bytes: int) -> int:
    return sum((2 * moments + projector) * param_bytes for moments, projector in _galore_split(tensors, rank))


def _galore_8bit(tensors: Sequence[Param], rank: int, param_bytes: int) -> int:
    split = _galore_split(tensors, rank)
    moments = [m for m, _ in split]
    return (sum(map(_bnb_adam, moments)) + _bnb_tables(moments) + sum(p for _, p in split) * param_bytes
            + GALORE_UNORM_VEC * len(tensors))


def _gradnormlorp(tensors: Sequence[Param], rank: int, bits: int, dtype: str, compensation: str = "none") -> int:
    """The library's layout, summed over every parameter. The query reads only
    dtype, ndim and shape, so the tensors are described without data."""
    cfg = _lib.lib().gnlp_config_default()
    cfg.optim_bits = bits
    cfg.compensation = _lib.COMPENSATION_MODES[compensation]
    gnlp_dtype = _lib.gnlp_dtype_of(DTYPES[dtype])
    total = 0
    for t in tensors:
        desc = _lib.gnlp_tensor(dtype=gnlp_dtype, ndim=len(t.shape))
        desc.shape[: len(t.shape)] = t.shape
        cfg.rank = rank if t.projected else 0
        total += sum(nbytes for *_, nbytes in _lib.state_layout(desc, cfg))
    return total


# ------------------------------------------------------------- sharded (FSDP2)


@dataclass(frozen=True)
class RankState:
    """GradNormLoRP's state on the rank holding the most rows (rank 0) when
    every parameter is row-sharded over `world_size` ranks, as FSDP2 does."""

    world_size: int
    bits: int
    row_sharded: int  # bytes of this rank's rows: per-row vectors, right-projection and AdamW moments
    replicated: int  # bytes every rank holds whole: projectors, left/full-projection moments

    @property
    def total(self) -> int:
        return self.row_sharded + self.replicated


def sharded_state(model: str | LlamaShape | Mapping[str, Any], rank: int, bits: int = 32, world_size: int = 1,
                  dtype: str = "bf16") -> RankState:
    """Per-rank optimizer-state bytes under FSDP2 (gnlp_shard_state_layout
    of rank 0, which holds ceil(rows / world_size) rows of each parameter),
    split into row-sharded and replicated buffers."""
    from . import sharded

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size!r}")
    _, shape = resolve_model(model)
    torch_dtype = DTYPES[dtype]
    cfg = _lib.lib().gnlp_config_default()
    cfg.optim_bits = bits
    split = {"row": 0, "replicated": 0}
    for t in shape.tensors():
        cfg.rank = rank if t.projected else 0
        rows = -(-t.shape[0] // world_size)
        desc = _lib.gnlp_tensor(dtype=_lib.gnlp_dtype_of(torch_dtype), ndim=len(t.shape))
        desc.shape[: len(t.shape)] = (rows, *t.shape[1:])
        shard = _lib.gnlp_shard(global_rows=t.shape[0], row_offset=0, rank=0, world_size=world_size)
        by_rows = sharded.row_sharded_names(torch_dtype, t.shape, cfg)
        for name, _, _, nbytes in _lib.shard_state_layout(desc, shard, cfg):
            split["row" if name in by_rows else "replicated"] += nbytes
    return RankState(world_size, bits, split["row"], split["replicated"])


# -------------------------------------------------------------------- report


@dataclass(frozen=True)
class Row:
    optimizer: str
    state_bytes: int
    source: str  # "gnlp_state_layout" or "formula"


@dataclass(frozen=True)
class Target:
    description: str
    value: int  # bytes
    limit: int  # bytes

    @property
    def ok(self) -> bool:
        return self.value <= self.limit


@dataclass(frozen=True)
class Report:
    model: str
    rank: int
    dtype: str
    shape: LlamaShape
    rows: tuple[Row, ...]

    def bytes_of(self, optimizer: str) -> int:
        return next(r.state_bytes for r in self.rows if r.optimizer == optimizer)

    def saving(self, row: Row, baseline: str) -> float:
        """Percent of `baseline`'s state that `row` saves (negative: uses more)."""
        return 100.0 * (1.0 - row.state_bytes / self.bytes_of(baseline))

    @property
    def parameters(self) -> int:
        return sum(t.numel for t in self.shape.tensors())

    @property
    def projected_rows(self) -> int:
        return sum(t.shape[0] for t in self.shape.tensors() if t.projected)

    def targets(self) -> list[Target]:
        """SPEC section 4's memory targets that apply to this report: ours
        within galore-8bit plus the per-row vectors weight normalisation needs
        (any model), and the paper's 10.5% of AdamW at LLaMA-7B, rank 1024
        (8-bit against fp32 moments, 4-bit against bf16 ones)."""
        have = {r.optimizer: r.state_bytes for r in self.rows}
        out = []
        if "gradnormlorp-8bit" in have:
            extra = GNLP_ROW_BYTES * self.projected_rows
            out.append(Target(f"gradnormlorp-8bit <= galore-8bit + {GNLP_ROW_BYTES} B x {self.projected_rows:,} "
                              f"projected rows", have["gradnormlorp-8bit"], have["galore-8bit"] + extra))
        if (self.model, self.rank) != (PAPER_MODEL, PAPER_RANK):
            return out
        for ours, base in (("gradnormlorp-8bit", "adamw-fp32"), ("gradnormlorp-4bit", "adamw-bf16")):
            if ours in have:
                out.append(Target(f"{ours} <= {PAPER_FRACTION:.1%} of {base}", have[ours],
                                  math.floor(PAPER_FRACTION * have[base])))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "rank": self.rank,
            "dtype": self.dtype,
            "parameters": self.parameters,
            "rows": [
                {
                    "optimizer": r.optimizer,
                    "state_bytes": r.state_bytes,
                    "reduction_vs_adamw_fp32": round(self.saving(r, "adamw-fp32"), 3),
                    "reduction_vs_adamw_bf16": round(self.saving(r, "adamw-bf16"), 3),
                    "source": r.source,
                }
                for r in self.rows
            ],
            "targets": [{"target": t.description, "bytes": t.value, "limit": t.limit, "ok": t.ok}
                        for t in self.targets()],
        }

    def title(self) -> str:
        tensors = self.shape.tensors()
        n_proj = sum(t.projected for t in tensors)
        n = self.parameters
        count = f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"
        return (f"{self.model}: {count} parameters in {len(tensors)} tensors, "
                f"{n_proj} projected at rank {self.rank}; {self.dtype} weights")

    def _cells(self) -> list[list[str]]:
        return [[r.optimizer, f"{r.state_bytes:,}", human_bytes(r.state_bytes),
                 f"{self.saving(r, 'adamw-fp32'):.1f}%", f"{self.saving(r, 'adamw-bf16'):.1f}%"]
                for r in self.rows]

    _HEADER = ("optimizer", "state bytes", "state", "saving vs adamw-fp32", "saving vs adamw-bf16")

    def table(self) -> str:
        """The human-readable report the CLI prints."""
        cells = [self._HEADER, *self._cells()]
        widths = [max(len(row[c]) for row in cells) for c in range(len(self._HEADER))]
        lines = [f"Optimizer state, {self.title()}", ""]
        for row in cells:
            lines.append("  ".join([row[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(row[1:], widths[1:])]))
        targets = self.targets()
        if targets:
            lines += ["", "Targets:"]
            lines += [f"  {'PASS' if t.ok else 'FAIL'}  {t.description}: {human_bytes(t.value)} "
                      f"(limit {human_bytes(t.limit)})" for t in targets]
        return "\n".join(lines)

    def markdown(self, command: str) -> str:
        lines = [f"# Optimizer-state memory: {self.model}, rank {self.rank}", "",
                 f"{self.title()}. Generated by `{command}`.", "",
                 "| " + " | ".join(self._HEADER) + " |", "|" + "---|" + "---:|" * (len(self._HEADER) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in self._cells()]
        targets = self.targets()
        if targets:
            lines += ["", "## Targets", ""]
            lines += [f"- **{'PASS' if t.ok else 'FAIL'}** {t.description}: {t.value:,} B "
                      f"({human_bytes(t.value)}), limit {t.limit:,} B" for t in targets]
        lines += ["", "## How each row is counted", ""]
        lines += [f"- `{r.optimizer}`: {ROW_NOTES[r.optimizer]}" for r in self.rows]
        return "\n".join(lines) + "\n"

    def plot(self, path: str) -> None:
        """A horizontal bar chart of the rows (GiB) written to `path`."""
        try:
            import matplotlib
        except ImportError:
            raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        names = [r.optimizer for r in self.rows][::-1]
        gib = [r.state_bytes / 2**30 for r in self.rows][::-1]
        colors = ["tab:orange" if n.startswith("gradnormlorp") else "tab:gray" for n in names]
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.4))
        bars = ax.barh(names, gib, color=colors)
        fp32 = self.bytes_of("adamw-fp32")
        labels = [f"{human_bytes(r.state_bytes)}  ({100 * (r.state_bytes / fp32 - 1):+.1f}%)" for r in self.rows][::-1]
        ax.bar_label(bars, labels=labels, padding=3, fontsize=8)
        ax.set_xlim(0, max(gib) * 1.35)
        ax.set_xlabel("optimizer state (GiB); in brackets: change vs adamw-fp32")
        ax.set_title(self.title(), fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def human_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def resolve_model(model: str | LlamaShape | Mapping[str, Any]) -> tuple[str, LlamaShape]:
    """A model name of MODELS, a path to a HF config.json, a config dict or a
    LlamaShape, as (label, shape)."""
    if isinstance(model, LlamaShape):
        return "custom", model
    if isinstance(model, Mapping):
        return str(model.get("_name_or_path") or "custom"), LlamaShape.from_hf_config(model)
    if model in MODELS:
        return model, MODELS[model]
    if os.path.isfile(model):
        with open(model) as f:
            return model, LlamaShape.from_hf_config(json.load(f))
    raise ValueError(f"unknown model {model!r}: want one of {', '.join(MODELS)} or a path to a config.json")


def report(model: str | LlamaShape | Mapping[str, Any], rank: int, bits: int | Sequence[int] = (32, 8, 4),
           dtype: str = "bf16", residual: bool = False) -> Report:
    """Optimizer-state bytes of `model` (see :func:`resolve_model`) at `rank`
    for every peer optimizer and for GradNormLoRP at each width of `bits`
    (32, 8, 4), with weights in `dtype` ("bf16", "fp16" or "fp32"; the
    default is the paper's). With `residual`, each GradNormLoRP row is
    followed by its ``compensation="residual"`` twin (name + "-residual")."""
    bits = (bits,) if isinstance(bits, int) else tuple(bits)
    if any(b not in (32, 8, 4) for b in bits):
        raise ValueError(f"bits must be 32, 8 or 4, got {bits!r}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: want one of {', '.join(DTYPES)}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    label, shape = resolve_model(model)
    tensors = shape.tensors()
    pb = DTYPES[dtype].itemsize
    rows = [
        Row("adamw-fp32", _torch_adamw(tensors, 4), "formula"),
        Row("adamw-bf16", _torch_adamw(tensors, 2), "formula"),
        Row("adamw-8bit", _adamw_8bit(tensors), "formula"),
        Row("galore", _galore(tensors, rank, pb), "formula"),
        Row("galore-8bit", _galore_8bit(tensors, rank, pb), "formula"),
    ]
    for b in bits:
        name = "gradnormlorp" if b == 32 else f"gradnormlorp-{b}bit"
        rows.append(Row(name, _gradnormlorp(tensors, rank, b, dtype), "gnlp_state_layout"))
        if residual:
            rows.append(Row(name + "-residual", _gradnormlorp(tensors, rank, b, dtype, "residual"),
                            "gnlp_state_layout"))
    return Report(label, rank, dtype, shape, tuple(rows))


# ----------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gradnormlorp.memory",
        description="Exact optimizer-state bytes of a LLaMA-shaped model: AdamW (fp32, bf16, 8-bit), "
        "GaLore (32-bit, 8-bit) and GradNormLoRP (32, 8, 4-bit).",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", choices=list(MODELS), help="one of the paper's LLaMA sizes")
    which.add_argument("--config", metavar="CONFIG_JSON", help="a HuggingFace LLaMA-style config.json")
    parser.add_argument("--rank", type=int, required=True, help="projection rank (GaLore and GradNormLoRP)")
    parser.add_argument("--bits", type=int, choices=(32, 8, 4),
                        help="show GradNormLoRP at this state width only (default: 32, 8 and 4)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="weight dtype (default bf16)")
    parser.add_argument("--residual", action="store_true",
                        help='also GradNormLoRP with compensation="residual" (one float more per projected matrix)')
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    out.add_argument("--markdown", action="store_true", help="print a Markdown document instead of a table")
    parser.add_argument("--plot", metavar="FILE.png", help="also write a bar chart (needs matplotlib)")
    parser.add_argument("--world-size", type=int, metavar="N",
                        help="with the table: also GradNormLoRP's per-rank state when FSDP2 shards over N ranks")
    args = parser.parse_args(argv)

    try:
        rep = report(args.model or args.config, args.rank, args.bits or (32, 8, 4), args.dtype, args.residual)
    except ValueError as e:
        parser.error(str(e))
    if args.json:
        print(json.dumps(rep.to_json(), indent=2))
    elif args.markdown:
        command = " ".join(["python -m gradnormlorp.memory", *(sys.argv[1:] if argv is None else argv)])
        print(rep.markdown(command), end="")
    else:
        print(rep.table())
        if args.world_size:
            print()
            for b in (args.bits,) if args.bits else (32, 8, 4):
                st = sharded_state(args.model or args.config, args.rank, b, args.world_size, args.dtype)
                print(f"FSDP2 over {st.world_size} ranks, {b}-bit: {human_bytes(st.total)} per rank "
                      f"({human_bytes(st.row_sharded)} row-sharded, {human_bytes(st.replicated)} replicated)")
    if args.plot:
        rep.plot(args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
