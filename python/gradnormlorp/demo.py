"""Train a tiny LLaMA-style language model with GradNormLoRP on the CPU.

    python -m gradnormlorp.demo                      # ~2 minutes on 2 cores
    python -m gradnormlorp.demo --corpus my.txt --steps 1000 --rank 16

The model is a small ``transformers`` LLaMA (built from a ``LlamaConfig``, no
download) over raw UTF-8 bytes (vocabulary 256). The attention and MLP
projections are trained by GradNormLoRP at low rank; embeddings, the output
head and the norms get plain AdamW in the same optimizer. The default corpus
is the English text of Python's own documentation topics
(``pydoc_data.topics``, part of every CPython install); ``--corpus`` takes any
text file (e.g. tinyshakespeare). The last 10% of the corpus is held out for
the eval loss. At the end the demo prints the optimizer-state memory next to
what AdamW would need (two fp32 moments per parameter element).

Needs ``transformers`` and ``tqdm`` (``pip install gradnormlorp[demo]``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    """The model, batch and projection options shared with bench/convergence.py."""
    ap.add_argument("--update-proj-gap", type=int, default=50,
                    help="steps between projector refreshes (default: %(default)s)")
    ap.add_argument("--scale", type=float, default=0.25,
                    help="scale (alpha) of the projected update (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=16, help="sequences per batch (default: %(default)s)")
    ap.add_argument("--seq-len", type=int, default=128, help="bytes per sequence (default: %(default)s)")
    ap.add_argument("--hidden", type=int, default=128, help="model width (default: %(default)s)")
    ap.add_argument("--layers", type=int, default=4, help="transformer blocks (default: %(default)s)")
    ap.add_argument("--heads", type=int, default=4, help="attention heads (default: %(default)s)")


def _parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m gradnormlorp.demo",
        description="Train a tiny byte-level LLaMA with GradNormLoRP on the CPU.",
    )
    ap.add_argument("--corpus", metavar="PATH", default=None,
                    help="UTF-8 text file to train on (default: the text of Python's pydoc_data.topics)")
    ap.add_argument("--steps", type=int, default=800, help="optimizer steps (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (model init and batches) (default: %(default)s)")
    ap.add_argument("--rank", type=int, default=32, help="GradNormLoRP projection rank (default: %(default)s)")
    ap.add_argument("--lr", type=float, default=3e-3,
                    help="peak learning rate, after a 5%% warmup and before a cosine decay (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for PyTorch and the Go library (default: all cores)")
    ap.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay (default: %(default)s)")
    add_model_arguments(ap)
    ap.add_argument("--eval-every", type=int, default=None,
                    help="steps between eval losses (default: 8 evals per run)")
    ap.add_argument("--eval-batches", type=int, default=8, help="batches per eval (default: %(default)s)")
    ap.add_argument("--sample", type=int, default=160,
                    help="bytes of text to sample at the end, 0 for none (default: %(default)s)")
    args = ap.parse_args(argv)
    for name in ("steps", "rank", "update_proj_gap", "batch_size", "seq_len", "hidden", "layers", "heads",
                 "eval_batches"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.hidden % args.heads:
        ap.error("--hidden must be a multiple of --heads")
    if args.eval_every is None:
        args.eval_every = max(1, math.ceil(args.steps / 8))
    return args


def load_corpus(path: str | None) -> tuple[bytes, str]:
    """The training text as bytes, and a description of where it came from."""
    if path:
        with open(path, "rb") as f:
            data = f.read()
        return data, path
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split it out of the stdlib
        sys.exit("error: pydoc_data is not available in this Python; pass --corpus PATH to a text file")
    text = "\n\n".join(topics[k] for k in sorted(topics))
    return text.encode("utf-8"), "pydoc_data.topics (Python's documentation topics)"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _state_bytes_of(opt, params) -> int:
    total = 0
    for p in params:
        for v in opt.state.get(p, {}).values():
            if hasattr(v, "element_size"):
                total += v.numel() * v.element_size()
    return total


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.threads is not None:
        # The Go runtime reads GOMAXPROCS when the library is loaded, which
        # happens when the optimizer is created below.
        os.environ["GOMAXPROCS"] = str(args.threads)

    try:
        import torch
        from tqdm.auto import tqdm
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        sys.exit(f"error: the demo needs torch, transformers and tqdm ({e}); "
                 "install them with `pip install gradnormlorp[demo]`")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except Exception:  # pragma: no cover - logging is cosmetic
        pass

    import gradnormlorp
    from gradnormlorp import GradNormLoRP, audit, target_param_groups

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    raw, source = load_corpus(args.corpus)
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    split = int(0.9 * len(data))
    train, heldout = data[:split], data[split:]
    need = args.seq_len + 1
    if len(heldout) < need or len(train) < need:
        sys.exit(f"error: the corpus ({len(data)} bytes) is too small for --seq-len {args.seq_len}")

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=args.hidden,
        intermediate_size=int(8 * args.hidden / 3 + 63) // 64 * 64,  # LLaMA's 8/3 ratio
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.seq_len,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())

    groups = target_param_groups(model, ["attn", "mlp"], rank=args.rank, update_proj_gap=args.update_proj_gap,
                                 scale=args.scale, proj_type="std")
    opt = GradNormLoRP(groups, lr=args.lr, weight_decay=args.weight_decay)
    projected = [p for g in opt.param_groups if g.get("rank") is not None for p in g["params"]]
    plain = [p for g in opt.param_groups if g.get("rank") is None for p in g["params"]]

    warmup = max(1, args.steps // 20)

    def lr_lambda(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)

    print(f"gradnormlorp {gradnormlorp.__version__} ({gradnormlorp.library_path()})")
    print(f"corpus: {source}: {len(data):,} bytes ({len(train):,} train / {len(heldout):,} held out)")
    print(f"model:  LLaMA, {args.layers} layers, hidden {args.hidden}, MLP {config.intermediate_size}, "
          f"{args.heads} heads, byte vocabulary 256: {n_params:,} parameters")
    print(f"optim:  GradNormLoRP rank {args.rank} on {len(projected)} attention/MLP matrices "
          f"(update_proj_gap {args.update_proj_gap}, scale {args.scale}), AdamW on {len(plain)} other tensors; "
          f"lr {args.lr:g}, {args.steps} steps of {args.batch_size} x {args.seq_len} bytes, "
          f"{torch.get_num_threads()} threads")
    print(f"        {audit.summary(opt)}")

    gen = torch.Generator().manual_seed(args.seed)

    def train_batch() -> torch.Tensor:
        starts = torch.randint(0, len(train) - args.seq_len, (args.batch_size,), generator=gen)
        return torch.stack([train[s:s + args.seq_len] for s in starts.tolist()])

    # A fixed set of held-out windows, spread evenly over the held-out text.
    n_eval = args.eval_batches * args.batch_size
    eval_starts = torch.linspace(0, len(heldout) - args.seq_len - 1, n_eval).long().tolist()
    eval_x = torch.stack([heldout[s:s + args.seq_len] for s in eval_starts])

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        losses = [model(input_ids=xb, labels=xb).loss.item() for xb in eval_x.split(args.batch_size)]
        model.train()
        return sum(losses) / len(losses)

    eval_hist = [(0, evaluate())]
    print(f"eval loss at step 0: {eval_hist[0][1]:.4f} (uniform over 256 bytes: {math.log(256):.4f})")

    model.train()
    t0 = time.perf_counter()
    opt_time = 0.0
    first_loss = None
    ema = 0.0
    bar = tqdm(range(1, args.steps + 1), desc="training", unit="step", dynamic_ncols=True, file=sys.stdout,
               mininterval=0.5 if sys.stdout.isatty() else 15)  # a log file gets a line every 15 s
    for step in bar:
        xb = train_batch()
        loss = model(input_ids=xb, labels=xb).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        ts = time.perf_counter()
        opt.step()
        opt_time += time.perf_counter() - ts
        opt.zero_grad(set_to_none=True)
        sched.step()
        value = loss.item()
        if not math.isfinite(value):
            bar.close()
            print(f"error: the training loss became {value} at step {step}", file=sys.stderr)
            return 1
        if first_loss is None:
            first_loss = value
        ema = 0.9 * ema + 0.1 * value
        smooth = ema / (1 - 0.9 ** step)  # bias-corrected moving average
        bar.set_postfix(loss=f"{smooth:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}", refresh=False)
        if step % args.eval_every == 0 or step == args.steps:
            eval_hist.append((step, evaluate()))
            tqdm.write(f"step {step:5d}  train loss {smooth:.4f}  eval loss {eval_hist[-1][1]:.4f}", file=sys.stdout)
    bar.close()
    elapsed = time.perf_counter() - t0

    print()
    print(f"trained {args.steps} steps in {elapsed:.1f} s ({args.steps / elapsed:.2f} steps/s; "
          f"optimizer {1000 * opt_time / args.steps:.1f} ms/step, {100 * opt_time / elapsed:.0f}% of the time)")
    print(f"train loss {first_loss:.4f} -> {smooth:.4f} (smoothed)   "
          f"eval loss {eval_hist[0][1]:.4f} -> {eval_hist[-1][1]:.4f}")

    # ---------------------------------------------------------- memory table
    def row(label, params):
        numel = sum(p.numel() for p in params)
        adamw = 2 * 4 * numel
        ours = _state_bytes_of(opt, params)
        return label, numel, adamw, ours

    rows = [row(f"attention + MLP matrices (rank {args.rank})", projected),
            row("embeddings, head, norms (AdamW)", plain)]
    total_numel = sum(r[1] for r in rows)
    total_adamw = sum(r[2] for r in rows)
    total_ours = opt.state_bytes()
    rows.append(("total", total_numel, total_adamw, total_ours))
    w = max(len(r[0]) for r in rows)
    print()
    print("optimizer state (bytes actually held by the optimizer vs. AdamW's 2 fp32 moments per element)")
    header = f"{'parameters':<{w}}  {'elements':>10}  {'AdamW':>11}  {'GradNormLoRP':>12}  {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for label, numel, adamw, ours in rows:
        ratio = f"{ours / adamw:.1%}" if adamw else "-"
        print(f"{label:<{w}}  {numel:>10,}  {_fmt_bytes(adamw):>11}  {_fmt_bytes(ours):>12}  {ratio:>6}")
    if total_adamw:
        print(f"GradNormLoRP holds {total_ours:,} bytes of optimizer state, {1 - total_ours / total_adamw:.1%} "
              f"less than AdamW's {total_adamw:,}.")

    # ---------------------------------------------------------------- sample
    if args.sample > 0:
        model.eval()
        g = torch.Generator().manual_seed(args.seed)
        ctx = list(b"The ")
        with torch.no_grad():
            for _ in range(args.sample):
                x = torch.tensor([ctx[-args.seq_len:]])
                logits = model(input_ids=x).logits[0, -1] / 0.8
                ctx.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g)))
        text = bytes(ctx).decode("utf-8", errors="replace")
        print()
        print("sample (temperature 0.8):")
        print("  " + text.replace("\n", "\n  "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
