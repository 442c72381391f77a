"""Convergence benchmark (issues 5 and 11): pre-train a small LLaMA from
scratch on real text with full-rank AdamW, galore-torch GaLoreAdamW,
GradNormLoRP (32/8/4-bit state, exact-SVD and subspace refresh), APOLLO and
APOLLO-Mini (apollo-torch), Fira (fira) and LoRA (peft), and compare held-out
loss, speed and optimizer-state memory over several seeds.

    PYTHONPATH=python python bench/convergence.py        # about an hour on 2 cores
    PYTHONPATH=python python bench/convergence.py --steps 200 --seeds 1 --methods adamw,gnlp32 --out /tmp/c

Needs torch, transformers, galore-torch, apollo-torch, fira, peft, tqdm and
matplotlib (requirements-bench.txt) and the built gradnormlorp package.

Every method sees the same model initialisations and the same batches in the
same order (one pair per seed: --seeds runs from --seed on, each seed sets
both), the same number of steps and the same schedule (linear warmup over
10% of the steps, cosine decay to 10% of the peak LR, as GaLore's
pre-training runs), fp32, gradient clipping at 1.0, betas (0.9, 0.999), eps
1e-8, no weight decay. Tokens are raw bytes (vocabulary 256). The low-rank
methods project the same weights (attention and MLP); everything else is a
plain Adam group inside the same optimizer.

The corpus is split 80/10/10: the first 80% is trained on, the next 10%
(validation) picks the learning rates, the last 10% (test) gives the
reported loss. Peak LRs come from one identical rule for every method: a
short run (--sweep-steps, same schedule compressed, first seed only) at each
LR of --lrs, and the LR with the lowest validation loss wins. GradNormLoRP's
8-bit, 4-bit and subspace-refresh rows reuse the LR picked for its 32-bit SVD
row, so that they show the effect of quantisation / the fast refresh alone.
--lr LR instead trains every method at one shared LR (no sweep);
--lr-from DIR/convergence.json takes the LRs an earlier run of the same
settings swept, and sweeps only the methods it lacks (to add rows to a
run). Each row
reports the mean and standard deviation of the test loss over the seeds.

Writes DIR/convergence.md (tables), DIR/convergence.png (train and eval
loss curves, mean over the seeds with a min..max band) and
DIR/convergence.json (all numbers and curves, every seed's).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ../shared/data next to the checkout, as on the project's machines
DEFAULT_CORPUS = os.path.join(os.path.dirname(ROOT), "shared", "data", "tinyshakespeare.txt")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BETAS = (0.9, 0.999)
EPS = 1e-8
# The peers' own settings, from their READMEs and LLaMA-60M C4 scripts (APOLLO: the README,
# also apollo-torch's PyPI description, and scripts/pretrain_c4/llama_60m_apollo{,_mini}.sh;
# Fira: the README and pre_training_c4/scripts/llama_60m.sh). Their rank rule (1/4 of the
# model width, as GaLore's) is the bench's default --rank 32 for --hidden 128.
APOLLO_SCALE = 1.0  # "default value for APOLLO"
APOLLO_MINI_RANK = 1
APOLLO_MINI_SCALE = 128.0  # "default value for APOLLO-Mini"
# The norm-growth limiter after the scale: the README's advice for short warmups "e.g.
# LLaMA 60M and 130M with APOLLO-Mini", and what the Mini scripts of those sizes pass.
APOLLO_MINI_SCALE_FRONT = True
APOLLO_GAP = 200  # update_proj_gap of every APOLLO script and of the README's example
FIRA_ALPHA = 0.25  # the README's pre-training command (divide_params defaults to 1.0)


def parse_args(argv=None) -> argparse.Namespace:
    from gradnormlorp.demo import add_model_arguments

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600, help="training steps per method (default %(default)s)")
    ap.add_argument("--corpus", default=DEFAULT_CORPUS, help="text file, byte-level (default %(default)s)")
    ap.add_argument(
        "--rank", type=int, default=32, help="rank of GaLore, GradNormLoRP, APOLLO, Fira and LoRA (default %(default)s)"
    )
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"), help="output directory (default bench/out)")
    ap.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)} (default: all)"
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="first seed; each seed sets the model init and the batch order (default %(default)s)",
    )
    ap.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="seeds of every method's final run, from --seed on; the LR sweep uses the first (default %(default)s)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="torch threads and GOMAXPROCS (default: all cores, %(default)s)",
    )
    ap.add_argument("--lr", type=float, default=None, help="one shared peak LR for all methods (skips the sweep)")
    ap.add_argument(
        "--lr-from",
        metavar="JSON",
        default=None,
        help="convergence.json of an earlier run with the same settings: reuse the LRs it swept",
    )
    ap.add_argument("--lrs", default="1e-3,3e-3,1e-2,3e-2", help="peak LRs of the sweep (default %(default)s)")
    ap.add_argument("--sweep-steps", type=int, default=None, help="steps of each sweep run (default: steps/4)")
    add_model_arguments(ap)  # --scale is also LoRA's lora_alpha / r
    ap.add_argument("--evals", type=int, default=12, help="points on the eval curve (default %(default)s)")
    ap.add_argument(
        "--curve-batches",
        type=int,
        default=8,
        help="test batches per curve point; the final loss uses the whole test split (default %(default)s)",
    )
    args = ap.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        ap.error(f"unknown --methods {unknown}; choose from {', '.join(METHODS)}")
    if args.lr is not None and args.lr_from:
        ap.error("--lr and --lr-from exclude each other")
    args.lrs = [float(x) for x in args.lrs.split(",")]
    if args.sweep_steps is None:
        args.sweep_steps = max(1, args.steps // 4)
    for name in (
        "steps",
        "seeds",
        "rank",
        "threads",
        "sweep_steps",
        "update_proj_gap",
        "hidden",
        "layers",
        "heads",
        "batch_size",
        "seq_len",
        "evals",
        "curve_batches",
    ):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.hidden % args.heads:
        ap.error("--hidden must be a multiple of --heads")
    return args


# ------------------------------------------------------------------ methods


@dataclass(frozen=True)
class Method:
    label: str
    lr_from: str  # the method whose swept LR this one uses (itself for a sweep of its own)
    make: Callable  # (model, lr, args) -> (model to train, optimizer)
    rank: int | None = None  # a rank of its own (APOLLO-Mini's), else the bench's --rank


def make_adamw(model, lr, args):
    return model, torch.optim.AdamW(model.parameters(), lr=lr, betas=BETAS, eps=EPS, weight_decay=0.0)


def projected_groups(model, args, **projection):
    """Attention and MLP weights projected, the rest plain: GaLore's README split.
    The group format (rank, update_proj_gap, scale, proj_type) is GaLore's, so
    GaLore and GradNormLoRP get identical groups; a peer with options of its
    own passes them as `projection`, which replace GaLore's in the projected
    group (same weights, same plain group)."""
    from gradnormlorp import target_param_groups

    groups = target_param_groups(
        model, TARGETS, rank=args.rank, update_proj_gap=args.update_proj_gap, scale=args.scale, proj_type="std"
    )
    if not projection:
        return groups
    return [{"params": g["params"], **projection} if "rank" in g else g for g in groups]


def make_galore(model, lr, args):
    from galore_torch import GaLoreAdamW

    opt = GaLoreAdamW(
        projected_groups(model, args), lr=lr, betas=BETAS, eps=EPS, weight_decay=0.0, no_deprecation_warning=True
    )
    return model, opt


def gnlp_maker(bits: int, refresh: str, compensation: str = "none"):
    def make(model, lr, args):
        from gradnormlorp import GradNormLoRP

        opt = GradNormLoRP(
            projected_groups(model, args),
            lr=lr,
            betas=BETAS,
            eps=EPS,
            weight_decay=0.0,
            optim_bits=bits,
            refresh=refresh,
            compensation=compensation,
        )
        return model, opt

    return make


def apollo_maker(rank: int | None, scale_type: str, scale: float, scale_front: bool):
    """APOLLO (channel-wise scaling) or APOLLO-Mini (tensor-wise, rank 1),
    random projection as the README sets both up; rank None is --rank."""

    def make(model, lr, args):
        from apollo_torch import APOLLOAdamW

        groups = projected_groups(
            model,
            args,
            rank=rank or args.rank,
            proj="random",
            scale_type=scale_type,
            scale=scale,
            update_proj_gap=APOLLO_GAP,
            proj_type="std",
        )
        opt = APOLLOAdamW(groups, lr=lr, betas=BETAS, eps=EPS, weight_decay=0.0, scale_front=scale_front)
        return model, opt

    return make


def make_fira(model, lr, args):
    """Fira: GaLore's SVD subspace plus the norm-scaled rest of the gradient;
    rank and refresh gap are the bench's, as GaLore's."""
    from fira import FiraAdamW

    groups = projected_groups(
        model, args, rank=args.rank, update_proj_gap=args.update_proj_gap, alpha=FIRA_ALPHA, proj_type="std"
    )
    opt = FiraAdamW(groups, lr=lr, betas=BETAS, eps=EPS, weight_decay=0.0, no_deprecation_warning=True)
    return model, opt


def make_lora(model, lr, args):
    """Plain LoRA (no ReLoRA restarts) on the same matrices, as the GaLore
    paper's pre-training baseline: the random base weights stay frozen, the
    adapters (lora_alpha / r = scale) train, and so do embeddings, norms and
    the output head, which the other methods also train in full."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=args.rank, lora_alpha=args.scale * args.rank, lora_dropout=0.0, target_modules=TARGETS, bias="none"
    )
    model = get_peft_model(model, config)
    frozen = {id(m.base_layer.weight) for m in model.modules() if hasattr(m, "base_layer")}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=lr, betas=BETAS, eps=EPS, weight_decay=0.0)


METHODS = {
    "adamw": Method("AdamW (full rank)", "adamw", make_adamw),
    "galore": Method("GaLore AdamW", "galore", make_galore),
    "apollo": Method(
        "APOLLO (channel-wise, random proj.)", "apollo", apollo_maker(None, "channel", APOLLO_SCALE, scale_front=False)
    ),
    "apollo-mini": Method(
        "APOLLO-Mini (tensor-wise, random proj.)",
        "apollo-mini",
        apollo_maker(APOLLO_MINI_RANK, "tensor", APOLLO_MINI_SCALE, scale_front=APOLLO_MINI_SCALE_FRONT),
        rank=APOLLO_MINI_RANK,
    ),
    "fira": Method("Fira AdamW", "fira", make_fira),
    "gnlp32": Method("GradNormLoRP 32-bit, svd", "gnlp32", gnlp_maker(32, "svd")),
    "gnlp8": Method("GradNormLoRP 8-bit, svd", "gnlp32", gnlp_maker(8, "svd")),
    "gnlp4": Method("GradNormLoRP 4-bit, svd", "gnlp32", gnlp_maker(4, "svd")),
    "gnlp32-subspace": Method("GradNormLoRP 32-bit, subspace", "gnlp32", gnlp_maker(32, "subspace")),
    "gnlp32-residual": Method(
        "GradNormLoRP 32-bit, svd, residual", "gnlp32-residual", gnlp_maker(32, "svd", "residual")
    ),
    "gnlp8-residual": Method(
        "GradNormLoRP 8-bit, svd, residual", "gnlp32-residual", gnlp_maker(8, "svd", "residual")
    ),
    "lora": Method("LoRA (peft, frozen base)", "lora", make_lora),
}


# --------------------------------------------------------------------- data


def load_splits(path: str, seq_len: int):
    """Byte tokens split 80/10/10 into train, validation and test."""
    with open(path, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
    a, b = int(0.8 * len(data)), int(0.9 * len(data))
    splits = data[:a], data[a:b], data[b:]
    if min(len(s) for s in splits) <= seq_len:
        sys.exit(f"error: {path} ({len(data)} bytes) is too small for --seq-len {seq_len}")
    return splits


def windows(split, seq_len: int, count: int | None = None):
    """Non-overlapping windows of a held-out split: all of them, or `count`
    spread evenly over it."""
    n = len(split) // seq_len
    idx = range(n) if count is None or count >= n else torch.linspace(0, n - 1, count).long().tolist()
    return torch.stack([split[i * seq_len : (i + 1) * seq_len] for i in idx])


def batch_starts(train, steps: int, seed: int, args):
    """The start offsets of every training batch: one order per seed, shared
    by all methods."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, len(train) - args.seq_len, (steps, args.batch_size), generator=gen)


# -------------------------------------------------------------------- model


def build_model(args, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)  # every method starts from the same weights at a seed
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=args.hidden,
        intermediate_size=int(8 * args.hidden / 3 + 63) // 64 * 64,  # LLaMA's 8/3, rounded up to 64
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.seq_len,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config)


def lr_factor(step: int, steps: int) -> float:
    """Linear warmup over 10% of the steps, then cosine decay to 10%."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def state_bytes(opt) -> int:
    """Bytes of every tensor the optimizer keeps per parameter, including
    tensors held inside objects (GaLore's projector)."""

    def size(v) -> int:
        if isinstance(v, torch.Tensor):
            return v.numel() * v.element_size()
        if isinstance(v, (list, tuple)):
            return sum(size(x) for x in v)
        if hasattr(v, "__dict__"):
            return sum(size(x) for x in vars(v).values())
        return 0

    return sum(size(v) for st in opt.state.values() for v in st.values())


@dataclass
class Run:
    method: str
    lr: float
    steps: int
    seed: int
    train_loss: list[float] = field(default_factory=list)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, loss on test windows)
    final_loss: float = math.nan  # on the whole held-out split
    train_s: float = 0.0  # training loop, evals excluded
    opt_s: float = 0.0  # inside optimizer.step()
    state_bytes: int = 0
    trainable: int = 0
    diverged: bool = False


def mean_loss(model, x, batch_size: int) -> float:
    model.eval()
    with torch.no_grad():
        losses = [model(input_ids=xb, labels=xb).loss.item() for xb in x.split(batch_size)]
    model.train()
    return sum(losses) / len(losses)


def train(name: str, lr: float, steps: int, seed: int, train_split, args, final_x, bar, curve_x=None) -> Run:
    """One training run of `steps` steps from `seed`'s model and batch order;
    the loss on final_x at the end, and on curve_x (if given) along the way.
    Advances the progress bar by `steps` and logs through it."""
    starts = batch_starts(train_split, steps, seed, args)
    model, opt = METHODS[name].make(build_model(args, seed), lr, args)
    params = [p for p in model.parameters() if p.requires_grad]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps))
    run = Run(name, lr, steps, seed, trainable=sum(p.numel() for p in params))
    bar.set_description(f"{name} lr {lr:g} seed {seed}")
    eval_at = {round(steps * k / args.evals) for k in range(1, args.evals + 1)}
    if curve_x is not None:
        run.curve.append((0, mean_loss(model, curve_x, args.batch_size)))
    model.train()
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        xb = torch.stack([train_split[s : s + args.seq_len] for s in starts[step - 1].tolist()])
        loss = model(input_ids=xb, labels=xb).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        sched.step()
        run.train_loss.append(loss.item())
        run.opt_s += t2 - t1
        run.train_s += time.perf_counter() - t0
        bar.update()
        if not math.isfinite(run.train_loss[-1]):
            run.diverged = True
            bar.write(f"  {name} lr {lr:g} seed {seed}: loss {run.train_loss[-1]} at step {step}, stopped")
            bar.update(steps - step)  # the bar counts the steps it skips
            break
        if curve_x is not None and step in eval_at:
            run.curve.append((step, mean_loss(model, curve_x, args.batch_size)))
            recent = run.train_loss[-20:]
            bar.write(
                f"  {name:16s} seed {seed} step {step:5d}  train {sum(recent) / len(recent):.4f}  "
                f"eval {run.curve[-1][1]:.4f}  {run.train_s:6.1f} s"
            )
    run.state_bytes = state_bytes(opt)
    if not run.diverged:
        run.final_loss = mean_loss(model, final_x, args.batch_size)
    return run


def sweep(names, train_split, val_x, args, bar) -> tuple[dict[str, float], dict[str, dict[float, float]]]:
    """The LR rule: for each method that owns an LR, a short run at every LR
    of the grid from the first seed; the lowest validation loss wins (a
    divergence loses)."""
    losses: dict[str, dict[float, float]] = {}
    for name in names:
        losses[name] = {}
        for lr in args.lrs:
            run = train(name, lr, args.sweep_steps, args.seed, train_split, args, val_x, bar)
            losses[name][lr] = run.final_loss
            bar.write(f"sweep {name:11s} lr {lr:<8g} val loss {run.final_loss:.4f}  ({run.train_s:.0f} s)")
    best = {n: min(ls, key=lambda lr: ls[lr] if math.isfinite(ls[lr]) else math.inf) for n, ls in losses.items()}
    return best, losses


# The settings an LR choice depends on: an earlier sweep is reused only when
# all of them match.
SWEEP_SETTINGS = (
    "corpus", "steps", "sweep_steps", "lrs", "seed", "rank", "scale", "update_proj_gap",
    "hidden", "layers", "heads", "batch_size", "seq_len",
)  # fmt: skip


def earlier_sweep(path: str, args) -> tuple[dict[str, float], dict[str, dict[float, float]]]:
    """The chosen LRs and sweep losses of an earlier run's convergence.json."""
    with open(path) as f:
        earlier = json.load(f)
    theirs = earlier["args"]
    differ = [f"--{k.replace('_', '-')} {theirs.get(k)!r} (here {getattr(args, k)!r})"
              for k in SWEEP_SETTINGS if theirs.get(k) != getattr(args, k)]  # fmt: skip
    if differ:
        sys.exit(f"error: --lr-from {path} was swept with other settings: {'; '.join(differ)}")
    losses = {n: {float(lr): v for lr, v in ls.items()} for n, ls in earlier["sweep"].items()}
    return earlier["lr"], losses


# ------------------------------------------------------------------- report


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores"


def versions() -> str:
    import gradnormlorp

    parts = [f"torch {torch.__version__}"]
    for pkg in ("transformers", "galore-torch", "apollo-torch", "fira", "peft"):
        try:
            parts.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{pkg} (not installed)")
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown commit"
    parts.append(f"gradnormlorp {gradnormlorp.__version__} ({commit}, {gradnormlorp.library_path()})")
    return ", ".join(parts)


def seeds_of(args) -> list[int]:
    return list(range(args.seed, args.seed + args.seeds))


def by_method(runs: list[Run]) -> dict[str, list[Run]]:
    """Every method's runs (one per seed), methods in the order they ran."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.method, []).append(r)
    return groups


@dataclass(frozen=True)
class LossStats:
    mean: float
    std: float  # sample standard deviation over the seeds; 0 for a single seed
    diverged: int  # seeds whose run diverged: left out of mean and std
    seeds: int

    def text(self) -> str:
        out = f"{self.mean:.4f} ± {self.std:.4f}"
        return out + (f" ({self.diverged}/{self.seeds} diverged)" if self.diverged else "")


def loss_stats(runs: list[Run]) -> LossStats:
    finite = [r.final_loss for r in runs if not r.diverged]
    mean = statistics.fmean(finite) if finite else math.nan
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return LossStats(mean, std, len(runs) - len(finite), len(runs))


def row_label(name: str, args) -> str:
    method = METHODS[name]
    return method.label if name == "adamw" else f"{method.label}, r={method.rank or args.rank}"


def results_table(runs: list[Run], args) -> list[str]:
    groups = by_method(runs)
    base = loss_stats(groups["adamw"]).mean if "adamw" in groups else None
    head = [
        "method",
        "peak LR",
        f"test loss (mean ± std, {args.seeds} seeds)",
        "perplexity (of the mean)",
        "vs AdamW",
        "test loss per seed",
        "wall time (s)",
        "optimizer ms/step",
        "optimizer state (bytes)",
        "trainable params",
    ]
    rows = [head, ["---"] * len(head)]
    for name, rs in groups.items():
        st = loss_stats(rs)
        rel = f"{st.mean / base - 1:+.2%}" if base and name != "adamw" else "-"
        wall = statistics.fmean(r.train_s for r in rs)
        opt_ms = statistics.fmean(1000 * r.opt_s / max(1, len(r.train_loss)) for r in rs)
        rows.append(
            [
                row_label(name, args),
                f"{rs[0].lr:g}",
                st.text(),
                f"{math.exp(st.mean):.3f}",
                rel,
                " / ".join(f"{r.final_loss:.4f}" for r in rs),
                f"{wall:.1f}",
                f"{opt_ms:.2f}",
                f"{rs[0].state_bytes:,}",
                f"{rs[0].trainable:,}",
            ]
        )
    return ["| " + " | ".join(row) + " |" for row in rows]


def sweep_table(losses: dict[str, dict[float, float]], best: dict[str, float], args) -> list[str]:
    head = ["method"] + [f"lr {lr:g}" for lr in args.lrs] + ["chosen"]
    rows = [head, ["---"] * len(head)]
    for name, ls in losses.items():
        rows.append([METHODS[name].label] + [f"{ls[lr]:.4f}" for lr in args.lrs] + [f"{best[name]:g}"])
    return ["| " + " | ".join(row) + " |" for row in rows]


def target_lines(runs: list[Run]) -> list[str]:
    """SPEC section 4's quality target, checked row by row on the seed means;
    a gap within the larger of the two stds is not told from noise."""
    by = {name: loss_stats(rs) for name, rs in by_method(runs).items()}
    lines = []
    for name in (n for n in by if n.startswith("gnlp")):
        st = by[name]
        if "galore" in by:
            ref = by["galore"]
            ok = st.mean <= ref.mean
            gap = st.mean - ref.mean
            noise = "within" if abs(gap) <= max(st.std, ref.std) else "beyond"
            lines.append(
                f"{METHODS[name].label}: test loss {st.text()} {'<=' if ok else '>'} GaLore's "
                f"{ref.text()} (gap {gap:+.4f}, {noise} one std): {'met' if ok else 'NOT met'}"
            )
        if "adamw" in by:
            rel = st.mean / by["adamw"].mean - 1
            ok = rel <= 0.05
            lines.append(
                f"{METHODS[name].label}: {rel:+.2%} against full-rank AdamW's {by['adamw'].mean:.4f} "
                f"(target <= +5%): {'met' if ok else 'NOT met'}"
            )
    return lines


def moving_average(xs: list[float], window: int) -> list[float]:
    return [statistics.fmean(xs[max(0, i - window + 1) : i + 1]) for i in range(len(xs))]


def spread(series: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    """Mean, min and max across the seeds, point by point."""
    columns = list(zip(*series))  # as long as the shortest series
    return [statistics.fmean(c) for c in columns], [min(c) for c in columns], [max(c) for c in columns]


def plot_spread(ax, steps, series, style: str, label: str, **line) -> None:
    """The mean curve over the seeds, in a band from their min to their max."""
    mean, low, high = spread(series)
    steps = steps[: len(mean)]
    (drawn,) = ax.plot(steps, mean, style, label=label, linewidth=1.2, **line)
    ax.fill_between(steps, low, high, color=drawn.get_color(), alpha=0.2, linewidth=0)


def plot(runs: list[Run], path: str, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(13, 5))
    window = max(1, args.steps // 30)
    # One colour per method, the same in every plot (tab10 alone repeats after ten).
    colors = dict(zip(METHODS, [*plt.get_cmap("tab10").colors, "black", "darkgoldenrod"]))
    for name, rs in by_method(runs).items():
        finished = [r for r in rs if not r.diverged]  # a diverged seed has no curve to average
        if not finished:
            continue
        style = "--" if name.startswith("gnlp") and name != "gnlp32" else "-"
        label, color = METHODS[name].label, colors.get(name)  # None: the next default colour
        plot_spread(
            ax_train,
            list(range(1, args.steps + 1)),
            [moving_average(r.train_loss, window) for r in finished],
            style,
            label,
            color=color,
        )
        plot_spread(
            ax_eval,
            [s for s, _ in finished[0].curve],
            [[v for _, v in r.curve] for r in finished],
            style,
            label,
            color=color,
            marker="o",
            markersize=3,
        )
    ax_train.set_title(f"train loss (moving average over {window} steps)")
    ax_eval.set_title(f"eval loss ({args.curve_batches * args.batch_size} test windows)")
    for ax in (ax_train, ax_eval):
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/byte)")
        ax.set_ylim(top=min(3.6, ax.get_ylim()[1]))
        ax.grid(alpha=0.3)
    ax_eval.legend(fontsize=8)
    fig.suptitle(
        f"LLaMA {args.layers}x{args.hidden}, byte-level, rank {args.rank}, "
        f"{args.steps} steps of {args.batch_size}x{args.seq_len}; mean of {args.seeds} seeds, "
        "band from their min to their max"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(runs, best, losses, args, meta) -> str:
    seeds = seeds_of(args)
    out = [
        "# Convergence: GradNormLoRP against AdamW, GaLore, APOLLO, Fira and LoRA",
        "",
        "Generated by `bench/convergence.py` (issues 5 and 11).",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}; {args.threads} threads (torch and GOMAXPROCS)",
        f"- software: {meta['versions']}",
        f"- command: `{meta['command']}`",
        f"- total run time: {meta['total_s'] / 60:.1f} min",
        "",
        "## Setup",
        "",
        f"- model: {meta['model']}",
        f"- data: `{os.path.basename(args.corpus)}`, raw bytes (vocabulary 256), split 80/10/10 into "
        f"train / validation (LR choice) / test (reported loss); {args.steps} steps of {args.batch_size} x "
        f"{args.seq_len} bytes.",
        f"- seeds: every method's final run is repeated at seeds {', '.join(map(str, seeds))}; a seed sets both "
        "the model initialisation and the batch order, the same for every method. Rows give the mean and the "
        "sample standard deviation of the test loss over the seeds (a diverged seed is left out and counted); "
        "the perplexity is exp of the mean loss.",
        "- schedule: linear warmup over 10% of the steps, cosine decay to 10% of the peak LR; fp32; "
        f"gradient clipping 1.0; betas {BETAS}, eps {EPS:g}, no weight decay, for every method.",
        f"- GaLore and GradNormLoRP: rank {args.rank}, update_proj_gap {args.update_proj_gap}, "
        f"scale (alpha) {args.scale} for both, proj_type std, projected: q/k/v/o and gate/up/down "
        "weights; embeddings, norms and the output head plain AdamW (GaLore's README split). "
        "APOLLO and Fira project the same weights and keep the same plain group.",
        f"- APOLLO (apollo-torch `APOLLOAdamW`): rank {args.rank}, random projection, channel-wise scaling, "
        f"scale {APOLLO_SCALE:g}, norm-growth limiter before the scale; APOLLO-Mini: rank {APOLLO_MINI_RANK}, "
        f"tensor-wise scaling, scale {APOLLO_MINI_SCALE:g}, limiter after it (`scale_front`); both "
        f"update_proj_gap {APOLLO_GAP}. These are the README's defaults and its LLaMA-60M scripts' settings "
        "(`scale_front` is the README's advice for small models with short warmups); the gap is theirs, "
        "not the bench's.",
        f"- Fira (fira `FiraAdamW`): rank {args.rank}, update_proj_gap {args.update_proj_gap} and SVD projection "
        f"as GaLore, alpha {FIRA_ALPHA:g} (the README's pre-training command), with its norm-based scaling of the "
        "gradient outside the subspace and its norm-growth limiter.",
        f"- LoRA: peft, plain LoRA (no ReLoRA restarts) of rank {args.rank} on the same matrices, "
        f"lora_alpha / r = {args.scale}, no dropout; the random base weights are frozen, embeddings, "
        "norms and the head train in full. Pre-training from scratch with a frozen random base is "
        "a hard setting for LoRA by construction (as in the GaLore paper's comparison).",
        "- test loss: mean next-byte cross-entropy over every non-overlapping window of the test "
        "split; perplexity = exp(loss) per byte. The curves use an evenly spread subset of those windows.",
        "- wall time: the training loop without evals; optimizer ms/step: inside `optimizer.step()`, "
        "refreshes included; both are means over the seeds, and noisy: the machine is shared with other jobs "
        "running at the same time. Optimizer state: bytes of every tensor the optimizer holds (GaLore's, "
        "APOLLO's and Fira's projectors included; LoRA's adapter weights are model parameters, not counted).",
        "",
        "## Learning rates",
        "",
    ]
    if losses:
        out += [
            f"Rule, identical for every method: a {args.sweep_steps}-step run (same schedule, compressed) from "
            f"the first seed ({args.seed}) at each peak LR of {{{', '.join(f'{lr:g}' for lr in args.lrs)}}}; the "
            "LR with the lowest validation loss is used for every seed. GradNormLoRP's 8-bit, 4-bit and subspace "
            "rows use the LR of its 32-bit SVD row, so they differ from it only in state storage / refresh. "
            "Validation losses of the sweep:",
            "",
            *sweep_table(losses, best, args),
            "",
        ]
        if args.lr_from:
            out += [f"The sweeps of {', '.join(METHODS[n].label for n in meta['lr_reused'])} are the earlier run's "
                    f"(`--lr-from {args.lr_from}`).", ""]  # fmt: skip
        edge = [METHODS[n].label for n, lr in best.items() if lr in (min(args.lrs), max(args.lrs))]
        if edge:
            out += [f"At the edge of the grid: {', '.join(edge)} (a wider grid might change these).", ""]
    else:
        out += [f"One shared peak LR for every method: {args.lr:g} (no sweep).", ""]
    out += ["## Results", "", *results_table(runs, args), "", "## Targets (SPEC section 4, quality)", ""]
    out += [f"- {line}" for line in target_lines(runs)] or ["- (needs GradNormLoRP and AdamW or GaLore rows)"]
    out += ["", "![train and eval loss curves](convergence.png)", ""]
    return "\n".join(out)


def summary(runs: list[Run]) -> dict[str, dict]:
    """Per method: the seeds' test losses and their mean and std, for the json."""
    out = {}
    for name, rs in by_method(runs).items():
        st = loss_stats(rs)
        out[name] = {
            "seeds": [r.seed for r in rs],
            "test_loss": [r.final_loss for r in rs],
            "mean": st.mean,
            "std": st.std,
            "diverged": st.diverged,
        }
    return out


# --------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    known_lr, known_losses = earlier_sweep(args.lr_from, args) if args.lr_from else ({}, {})
    # The Go runtime reads GOMAXPROCS when the library loads (first optimizer).
    os.environ["GOMAXPROCS"] = str(args.threads)
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    # peft calls a transformers API that transformers 5 deprecates; not ours to fix.
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.perf_counter()

    train_split, val_split, test_split = load_splits(args.corpus, args.seq_len)
    val_x, test_x = windows(val_split, args.seq_len), windows(test_split, args.seq_len)
    curve_x = windows(test_split, args.seq_len, args.curve_batches * args.batch_size)
    model = build_model(args, args.seed)
    seeds = seeds_of(args)
    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "versions": versions(),
        "command": shlex.join(
            [os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT) else "python"] + sys.argv
        ),
        "model": f"LLaMA (transformers LlamaConfig), {args.layers} layers, hidden {args.hidden}, MLP "
        f"{model.config.intermediate_size}, {args.heads} heads, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters",
    }
    print(f"{meta['date']}  {meta['machine']}, {args.threads} threads\n{meta['versions']}\n{meta['model']}")
    print(
        f"data: {len(train_split):,} / {len(val_split):,} / {len(test_split):,} bytes train / val / test; "
        f"methods: {', '.join(args.methods)}; seeds {', '.join(map(str, seeds))}",
        flush=True,
    )

    owners = list(dict.fromkeys(METHODS[m].lr_from for m in args.methods)) if args.lr is None else []
    meta["lr_reused"] = [o for o in owners if o in known_lr]
    owners = [o for o in owners if o not in known_lr]
    total = len(owners) * len(args.lrs) * args.sweep_steps + len(args.methods) * len(seeds) * args.steps
    bar = tqdm(
        total=total, unit="step", dynamic_ncols=True, file=sys.stdout, mininterval=0.5 if sys.stdout.isatty() else 15
    )  # a log file gets a line every 15 s
    if args.lr is None:
        best, losses = sweep(owners, train_split, val_x, args, bar)
        for o in meta["lr_reused"]:
            best[o], losses[o] = known_lr[o], known_losses[o]
    else:
        best, losses = {METHODS[m].lr_from: args.lr for m in args.methods}, {}

    runs = []
    for name in args.methods:
        lr = best[METHODS[name].lr_from]
        bar.write(f"{name}: lr {lr:g}, {args.steps} steps, seeds {', '.join(map(str, seeds))}")
        runs += [train(name, lr, args.steps, seed, train_split, args, test_x, bar, curve_x) for seed in seeds]
    bar.close()
    meta["total_s"] = time.perf_counter() - t_start

    print()
    print("\n".join(results_table(runs, args)))
    print()
    print("\n".join(target_lines(runs)))
    md_path, png_path = os.path.join(args.out, "convergence.md"), os.path.join(args.out, "convergence.png")
    with open(md_path, "w") as f:
        f.write(markdown(runs, best, losses, args, meta))
    plot(runs, png_path, args)
    with open(os.path.join(args.out, "convergence.json"), "w") as f:
        json.dump(
            {
                "args": vars(args),
                "meta": meta,
                "lr": best,
                "seeds": seeds,
                "sweep": {n: {str(lr): v for lr, v in ls.items()} for n, ls in losses.items()},
                "summary": summary(runs),
                "runs": [asdict(r) for r in runs],
            },
            f,
        )
    print(
        f"\nwrote {md_path}, {png_path}; total {meta['total_s'] / 60:.1f} min (wall times are noisy: "
        "the machine is shared)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
