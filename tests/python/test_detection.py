"""Wrapped, flattened and sharded models: GradNormLoRP either trains exactly
(as one process on the whole batch, within 1e-5) or refuses with an error
naming the problem, never silently as something else (issue 16).

2 CPU processes with gloo run every multi-process setup once (one spawn);
a tiny LLaMA, a few steps each. DeepSpeed setups are skipped when it is not
installed."""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from unittest import mock

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gradnormlorp import GradNormLoRP, GradNormLoRPError, LayerwiseGradNormLoRP, target_param_groups
from gradnormlorp import _lib as gnlp_lib
from gradnormlorp.audit import summary
from problems import record, rel
from tiny_llama import batches, snapshot, tiny_llama

WORLD = 2
STEPS = 3
PER_RANK = 2
HP = dict(lr=1e-2, weight_decay=0.1)
BOUND = 1e-5  # relative, per parameter, against one process on the whole batch
# Written against the model's own module names; wrappers add prefixes.
REGEX = r"model\.layers\.\d+\.(self_attn|mlp)\..*"
HAVE_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
DEEPSPEED_CLIP = 1.0  # DeepSpeed's default "gradient_clipping"


def groups_of(model):
    return target_param_groups(model, REGEX, rank=8, update_proj_gap=3)


def local(batch, rank, world):
    n = len(batch["input_ids"]) // world
    return {k: v[rank * n : (rank + 1) * n] for k, v in batch.items()}


def train(model, opt, rank=0, world=1, clip=None):
    for batch in batches(STEPS, WORLD * PER_RANK):
        model(**local(batch, rank, world)).loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad()


# ------------------------------------------------------ one process per rank


def ddp_prefix(rank):
    model = tiny_llama()
    ddp = DistributedDataParallel(model)
    train(ddp, GradNormLoRP(groups_of(ddp), **HP), rank, WORLD)  # names start "module."
    return snapshot(model)


def fsdp1(use_orig_params: bool, optimizer_first: bool):
    def run(rank):
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = tiny_llama()
        opt = GradNormLoRP(groups_of(model), **HP) if optimizer_first else None
        wrapped = FullyShardedDataParallel(model, use_orig_params=use_orig_params, device_id=torch.device("cpu"))
        train(wrapped, opt or GradNormLoRP(groups_of(wrapped), **HP), rank, WORLD)
        return snapshot(model)

    return run


def fsdp1_flat_params_given_directly(rank):
    from torch.distributed.fsdp import FullyShardedDataParallel

    wrapped = FullyShardedDataParallel(tiny_llama(), device_id=torch.device("cpu"))
    GradNormLoRP(wrapped.parameters(), rank=8, **HP)


def fsdp2(optimizer_first: bool):
    def run(rank):
        from torch.distributed.fsdp import fully_shard

        model = tiny_llama()
        opt = GradNormLoRP(groups_of(model), **HP) if optimizer_first else None
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        train(model, opt or GradNormLoRP(groups_of(model), **HP), rank, WORLD)
        return {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}

    return run


def replicated_dtensor_given_directly(_):
    """Tensor parallelism's kind of DTensor: not FSDP2's row sharding."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    weight = nn.Parameter(distribute_tensor(torch.randn(8, 4), init_device_mesh("cpu", (WORLD,)), [Replicate()]))
    GradNormLoRP([weight], rank=2, **HP)


def deepspeed_zero(stage: int):
    def run(rank):
        import deepspeed

        model = tiny_llama()
        config = {
            "train_micro_batch_size_per_gpu": PER_RANK,
            "zero_optimization": {"stage": stage},
            "zero_allow_untested_optimizer": True,  # DeepSpeed asks for this for any client optimizer
        }
        # DeepSpeed JIT-compiles a shared-memory all-reduce (about a minute);
        # the gloo group it falls back to computes the same sums.
        with mock.patch("deepspeed.comm.torch.build_shm_op", return_value=None):
            engine, *_ = deepspeed.initialize(model=model, optimizer=GradNormLoRP(groups_of(model), **HP), config=config)
        for batch in batches(STEPS, WORLD * PER_RANK):
            loss = engine(**local(batch, rank, WORLD)).loss
            engine.backward(loss)
            engine.step()
        return snapshot(model)

    return run


SETUPS = {
    "DDP, groups on the DDP model": ddp_prefix,
    "FSDP1 use_orig_params=True, optimizer before wrapping": fsdp1(True, optimizer_first=True),
    "FSDP1 use_orig_params=True, groups on the FSDP model": fsdp1(True, optimizer_first=False),
    "FSDP1 use_orig_params=False, optimizer before wrapping": fsdp1(False, optimizer_first=True),
    "FSDP1 use_orig_params=False, groups on the FSDP model": fsdp1(False, optimizer_first=False),
    "FSDP1 flat parameters handed to a projected optimizer": fsdp1_flat_params_given_directly,
    "FSDP2 fully_shard, optimizer before sharding": fsdp2(optimizer_first=True),
    "FSDP2 fully_shard, groups on the sharded model": fsdp2(optimizer_first=False),
    "replicated DTensor handed to a projected optimizer": replicated_dtensor_given_directly,
}
if HAVE_DEEPSPEED:
    SETUPS.update({f"DeepSpeed ZeRO stage {s}": deepspeed_zero(s) for s in (0, 1, 2, 3)})


def worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))  # read by DeepSpeed
    try:
        outcomes = {}
        for name, setup in SETUPS.items():
            try:
                outcomes[name] = {"params": setup(rank)}
            except GradNormLoRPError as e:
                outcomes[name] = {"error": str(e)}
            dist.barrier()
        torch.save(outcomes, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every setup's outcome on each rank: {"params": snapshot} or {"error": message}."""
    tmp = tmp_path_factory.mktemp("detection")
    with pytest.MonkeyPatch.context() as mpatch:
        mpatch.setenv("OMP_NUM_THREADS", "1")
        mp.spawn(worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def single_process(clip=None):
    model = tiny_llama()
    train(model, GradNormLoRP(groups_of(model), **HP), clip=clip)
    return snapshot(model)


def assert_trains_exactly(outcomes, setup, reference):
    for r, out in enumerate(outcomes):
        assert "error" not in out[setup], f"{setup}, rank {r}: {out[setup].get('error')}"
        got = out[setup]["params"]
        worst = max(rel(got[n], reference[n]) for n in reference)
        record(f"{setup} vs one process, {STEPS} steps", worst, BOUND, f"rank {r}")
        assert worst <= BOUND, f"{setup}, rank {r}: {worst:.2e} from one process"
    initial = snapshot(tiny_llama())
    assert all(not torch.equal(got[n], initial[n]) for n in initial), f"{setup}: training must move every parameter"


def assert_refused(outcomes, setup, *phrases):
    for r, out in enumerate(outcomes):
        assert "params" not in out[setup], f"{setup}, rank {r}: trained without an error"
        message = out[setup]["error"]
        for phrase in (*phrases, "DistributedDataParallel"):  # and it names the supported way
            assert phrase in message, f"{setup}, rank {r}: {phrase!r} not in: {message}"


def test_ddp_prefix_trains_exactly(outcomes):
    assert_trains_exactly(outcomes, "DDP, groups on the DDP model", single_process())


@pytest.mark.parametrize(
    "setup, phrases",
    [
        ("FSDP1 use_orig_params=True, optimizer before wrapping", ["parameter 0 of param group 0 is", "flattened by FSDP"]),
        ("FSDP1 use_orig_params=True, groups on the FSDP model", ["'model.layers.0.self_attn.q_proj'", "flattened by FSDP"]),
        ("FSDP1 use_orig_params=False, optimizer before wrapping", ["has a gradient", "use_orig_params=False"]),
        ("FSDP1 use_orig_params=False, groups on the FSDP model", ["not one of the model's parameters", "FlatParameter"]),
        ("FSDP1 flat parameters handed to a projected optimizer", ["the param group being added", "FSDP FlatParameter"]),
        ("FSDP2 fully_shard, optimizer before sharding", ["has a gradient", "fully_shard"]),
        (
            "replicated DTensor handed to a projected optimizer",
            ["parameter 0 of the param group being added", "DTensor", "Replicate", "Shard(0)", "fully_shard"],
        ),
    ],
)
def test_fsdp_is_refused(outcomes, setup, phrases):
    assert_refused(outcomes, setup, *phrases)


@pytest.mark.skipif(not hasattr(gnlp_lib.lib(), "gnlp_step_sharded"), reason="library without ABI minor 2 (make lib)")
def test_fsdp2_trains_exactly(outcomes):
    """FSDP2's row-sharded DTensors are stepped as whole matrices (tests/python/test_fsdp2.py)."""
    assert_trains_exactly(outcomes, "FSDP2 fully_shard, groups on the sharded model", single_process())


@pytest.mark.skipif(not HAVE_DEEPSPEED, reason="deepspeed is not installed (pip install deepspeed)")
def test_deepspeed_zero0_trains_exactly_with_its_default_clipping(outcomes):
    """ZeRO stage 0 hands the optimizer the model's own parameters; DeepSpeed
    clips gradients at 1.0 by default, so that is the run it must equal."""
    assert_trains_exactly(outcomes, "DeepSpeed ZeRO stage 0", single_process(clip=DEEPSPEED_CLIP))


@pytest.mark.skipif(not HAVE_DEEPSPEED, reason="deepspeed is not installed (pip install deepspeed)")
@pytest.mark.parametrize(
    "stage, phrases",
    [
        (1, ["param group 0 was given 14 matrices", "DeepSpeed ZeRO stages 1 and 2"]),
        (2, ["param group 0 was given 14 matrices", "DeepSpeed ZeRO stages 1 and 2"]),
        (3, ["partitioned by DeepSpeed ZeRO stage 3"]),
    ],
)
def test_deepspeed_zero123_is_refused(outcomes, stage, phrases):
    assert_refused(outcomes, f"DeepSpeed ZeRO stage {stage}", *phrases)


# ------------------------------------------------------------ one process


def test_torch_compile_prefix_trains_exactly():
    plain = tiny_llama()
    train(plain, GradNormLoRP(groups_of(plain), **HP))
    model = tiny_llama()
    compiled = torch.compile(model, backend="eager")  # names start "_orig_mod."
    groups = groups_of(compiled)
    ids = lambda gs: [[id(p) for p in g["params"]] for g in gs]  # noqa: E731
    assert ids(groups) == ids(groups_of(model)) and len(groups[0]["params"]) == 14
    train(compiled, GradNormLoRP(groups, **HP))
    got, want = snapshot(model), snapshot(plain)
    worst = record(f"torch.compile vs plain, {STEPS} steps", max(rel(got[n], want[n]) for n in want), BOUND, "eager")
    assert worst <= BOUND


def hand_flattened(kind):
    """A projected optimizer whose matrices were replaced or reshaped after
    it was created, the way ZeRO 1/2 (replace) and unknown shards (reshape) do."""
    model = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 4))
    opt = GradNormLoRP([{"params": [model[0].weight, model[1].weight], "rank": 2}])
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    if kind == "replaced":
        flat = torch.cat([p.detach().flatten() for p in opt.param_groups[0]["params"]]).requires_grad_()
        flat.grad = torch.ones_like(flat)
        opt.param_groups[0]["params"] = [flat]
    elif kind == "reshaped":
        model[0].weight.data = model[0].weight.data.flatten()
        model[0].weight.grad = torch.ones_like(model[0].weight)
    return opt


@pytest.mark.parametrize("kind, phrase", [("replaced", "no longer in the group"), ("reshaped", "now of shape 48")])
def test_matrices_replaced_after_creation_are_refused(kind, phrase):
    opt = hand_flattened(kind)
    before = [p.detach().clone() for p in opt.param_groups[0]["params"]]
    for _ in range(2):  # refused again at the next step: the check is not spent
        with pytest.raises(GradNormLoRPError, match="replaced or reshaped") as err:
            opt.step()
        assert phrase in str(err.value) and "DeepSpeed ZeRO stages 1 and 2" in str(err.value)
    assert all(torch.equal(p, b) for p, b in zip(opt.param_groups[0]["params"], before))
    assert len(opt.state) == 0


def test_replacement_is_found_after_load_state_dict():
    """torch's load_state_dict makes new group dicts around the same params lists."""
    opt = hand_flattened("none")
    opt.load_state_dict(opt.state_dict())
    opt.param_groups[0]["params"] = opt.param_groups[0]["params"][:1]
    with pytest.raises(GradNormLoRPError, match=r"1 of them were replaced or reshaped \(one of shape 4x6 is no longer"):
        opt.step()


def test_explicit_rank_without_a_matrix_warns():
    norm = nn.LayerNorm(8)
    with pytest.warns(UserWarning, match=r"asks for rank=4 but holds no 2-D parameter \(tensors: 2 of 8\)"):
        GradNormLoRP([{"params": norm.named_parameters(), "rank": 4}])


def test_rank_from_the_optimizer_arguments_warns_about_embeddings():
    model = tiny_llama()
    with pytest.warns(UserWarning, match=r"takes rank=8 from the optimizer's arguments, so all 16 of its matrices") as rec:
        GradNormLoRP(model.parameters(), rank=8)
    assert "largest: 2 of 128x32" in str(rec[0].message)  # the embedding and the LM head
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GradNormLoRP(groups_of(model))  # the plain group has no rank to inherit
        GradNormLoRP([model.model.layers[0].self_attn.q_proj.weight], rank=8)  # one matrix: no model
        GradNormLoRP(model.model.norm.parameters(), rank=8)  # no matrix, rank not asked for


def test_trainer_optimizer_cls_and_kwargs_warns(tmp_path):
    """HF Trainer's optimizer_cls_and_kwargs puts every weight in one group."""
    transformers = pytest.importorskip("transformers")
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = transformers.Trainer(
        model=tiny_llama(), args=args, optimizer_cls_and_kwargs=(GradNormLoRP, {"rank": 8})
    )
    with pytest.warns(UserWarning, match="the token embedding and the LM head"):
        trainer.create_optimizer()


def test_summary_is_logged_once_at_the_first_step(caplog):
    model = tiny_llama()
    opt = GradNormLoRP(groups_of(model), **HP)
    with caplog.at_level(logging.INFO, logger="gradnormlorp"):
        train(model, opt)
    lines = [r.getMessage() for r in caplog.records if r.name == "gradnormlorp"]
    # Two layers of q, o (32x32), k, v (16x32), gate, up (64x32), down (32x64);
    # AdamW: embedding and LM head (128x32), 5 RMSNorm weights.
    assert lines == [
        "GradNormLoRP: 14 matrices projected (rank 8: 4 of 16x32, 4 of 32x32, 4 of 64x32, 2 of 32x64), "
        "7 tensors on AdamW (5 of 32, 2 of 128x32); 69% of 26,784 values projected"
    ]
    assert lines[0] == summary(opt)


def test_summary_quiet_by_default_and_logged_by_layerwise(caplog):
    model = tiny_llama()
    with caplog.at_level(logging.WARNING, logger="gradnormlorp"):
        train(model, GradNormLoRP(groups_of(model), **HP))
    assert not [r for r in caplog.records if r.name == "gradnormlorp"]
    model = tiny_llama()
    with caplog.at_level(logging.INFO, logger="gradnormlorp"):
        train(model, LayerwiseGradNormLoRP(groups_of(model), **HP))
    assert [r.getMessage()[:40] for r in caplog.records if r.name == "gradnormlorp"] == [
        "GradNormLoRP: 14 matrices projected (ran"
    ]
