"""target_param_groups: transformers' optim_target_modules semantics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradnormlorp import GradNormLoRP, GradNormLoRPError, target_param_groups
from gradnormlorp.groups import module_matches, unwrapped_named_modules


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(8, 8)
        self.v_proj = nn.Linear(8, 8, bias=False)
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight  # tied


def names_in(groups, model, i):
    ids = {id(p) for p in groups[i]["params"]}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_list_of_names_substring_and_exact():
    m = Model()
    groups = target_param_groups(m, ["q_proj", "v_proj"], rank=4)
    assert len(groups) == 2
    assert names_in(groups, m, 0) == [f"layers.{i}.{k}.weight" for i in range(2) for k in ("q_proj", "v_proj")]
    g0, g1 = groups
    assert g0["rank"] == 4 and g0["update_proj_gap"] == 200 and g0["scale"] == 0.25 and g0["proj_type"] == "std"
    assert "rank" not in g1  # as galore_torch reads groups: no "rank" key is AdamW
    # Everything else, biases included, is in the plain group; nothing twice.
    assert len(g0["params"]) + len(g1["params"]) == len(list(m.parameters()))
    assert "layers.0.q_proj.bias" in names_in(groups, m, 1)


def test_regex_string_full_match():
    m = Model()
    groups = target_param_groups(m, r"layers\.1\.mlp\.\d+", rank=2)
    assert names_in(groups, m, 0) == ["layers.1.mlp.0.weight", "layers.1.mlp.2.weight"]
    # A single string must match the whole name: "mlp" alone matches nothing.
    with pytest.raises(ValueError, match="no nn.Linear module"):
        target_param_groups(m, "mlp", rank=2)


def test_list_with_regex():
    m = Model()
    groups = target_param_groups(m, [r".*\.mlp\.0"], rank=2)
    assert names_in(groups, m, 0) == ["layers.0.mlp.0.weight", "layers.1.mlp.0.weight"]


def test_all_linear_and_non_linear_matches_ignored():
    m = Model()
    groups = target_param_groups(m, "all-linear", rank=2)
    # The head is tied to the embedding: it is projected (once).
    assert "embed.weight" in names_in(groups, m, 0)
    assert len(groups[0]["params"]) == 2 * 4 + 1
    # "norm" and "embed" match modules that are not nn.Linear: ignored.
    with pytest.raises(ValueError, match="no nn.Linear module"):
        target_param_groups(m, ["norm", "embed"], rank=2)
    groups = target_param_groups(m, "all_linear", rank=2)
    assert len(groups[0]["params"]) == 9


def test_group_kwargs_and_empty_plain_group_omitted():
    lin = nn.Linear(8, 4, bias=False)
    model = nn.Sequential(lin)
    groups = target_param_groups(model, ["0"], rank=3, update_proj_gap=50, scale=1.0, proj_type="left", lr=0.1, weight_decay=0.0)
    assert len(groups) == 1
    g = groups[0]
    assert (g["rank"], g["update_proj_gap"], g["scale"], g["proj_type"], g["lr"], g["weight_decay"]) == (3, 50, 1.0, "left", 0.1, 0.0)


def test_bad_target_modules_type():
    with pytest.raises(TypeError):
        target_param_groups(Model(), 3, rank=2)


def test_semantics_match_transformers():
    """module_matches agrees with transformers' own check on every module name."""
    check = pytest.importorskip("transformers.trainer_utils").check_target_module_exists
    m = Model()
    patterns = [
        ["q_proj", "v_proj"],
        ["layers.0.q_proj"],
        ["mlp.0", r"layers\.\d\.v_proj"],
        [r".*proj"],
        r".*proj",
        r"layers\.0\..*",
        "head",
        ["head"],
        ["ead"],
    ]
    for pat in patterns:
        for name, _ in m.named_modules():
            assert module_matches(pat, name) == bool(check(pat, name)), (pat, name)


def test_groups_feed_the_optimizer():
    torch.manual_seed(0)
    m = Model()
    groups = target_param_groups(m, ["q_proj", "v_proj", "mlp"], rank=4, update_proj_gap=5)
    opt = GradNormLoRP(groups, lr=1e-2)
    x = torch.randint(0, 20, (4, 6))
    for _ in range(3):
        h = m.embed(x)
        for blk in m.layers:
            h = h + blk.v_proj(blk.q_proj(blk.norm(h))) + blk.mlp(h)
        loss = m.head(h).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    st = opt.state[m.layers[0].q_proj.weight]
    assert "magnitude" in st and st["step"] == 3
    assert "magnitude" not in opt.state[m.embed.weight]


class Holder(nn.Module):
    """A model with a submodule of its own that happens to be named "module"."""

    def __init__(self):
        super().__init__()
        self.module = Model()


def test_wrapper_prefixes_are_dropped():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    m = Model()
    m.layers[1] = checkpoint_wrapper(m.layers[1])
    want = names_in(target_param_groups(m, r"layers\.\d\.q_proj", rank=2), m, 0)
    assert want == ["layers.0.q_proj.weight", "layers.1._checkpoint_wrapped_module.q_proj.weight"]
    for wrapped in (torch.compile(m), nn.DataParallel(m), torch.compile(nn.DataParallel(m))):
        assert names_in(target_param_groups(wrapped, r"layers\.\d\.q_proj", rank=2), m, 0) == want
    unwrapped = list(unwrapped_named_modules(torch.compile(nn.DataParallel(m))))
    assert [n for n, _ in unwrapped] == [n for n, _ in Model().named_modules()]
    assert unwrapped[0][1] is m and dict(unwrapped)["layers.1"] is m.layers[1]._checkpoint_wrapped_module


def test_a_models_own_module_named_module_keeps_its_name():
    h = Holder()
    names = [n for n, _ in unwrapped_named_modules(h)]
    assert names == [n for n, _ in h.named_modules()] and "module.layers.0.q_proj" in names
    assert len(target_param_groups(h, r"module\.layers\.0\.q_proj", rank=2)[0]["params"]) == 1


def test_a_default_rank_reaching_the_plain_group_warns():
    m = Model()
    with pytest.warns(UserWarning, match="param group 1 has no 'rank' of its own and takes rank=8"):
        GradNormLoRP(target_param_groups(m, ["q_proj"], rank=4), rank=8)


def test_weight_that_is_not_a_whole_matrix_is_refused():
    m = Model()
    m.layers[0].q_proj.weight = nn.Parameter(torch.zeros(64))  # a shard of unknown layout
    with pytest.raises(GradNormLoRPError, match=r"'layers.0.q_proj'.*of shape \(64,\), not 2-D.*DistributedDataParallel"):
        target_param_groups(m, ["q_proj"], rank=2)
    m = Model()
    torch.nn.utils.parametrizations.weight_norm(m.layers[0].v_proj)  # weight computed, not a parameter
    with pytest.raises(GradNormLoRPError, match=r"'layers.0.v_proj'.*is not one of the model's parameters, so"):
        target_param_groups(m, ["v_proj"], rank=2)


class HeadedModel(nn.Module):
    """A transformers-style model that names its output layer."""

    def __init__(self):
        super().__init__()
        self.block = Block()
        self.lm_head = nn.Linear(8, 20, bias=False)

    def get_output_embeddings(self):
        return self.lm_head


def test_all_linear_leaves_the_output_layer_to_adamw():
    m = HeadedModel()
    groups = target_param_groups(m, "all-linear", rank=2)
    assert "lm_head.weight" in names_in(groups, m, 1)
    assert len(groups[0]["params"]) == 4
    # Named explicitly, the head is projected; under DDP-style wrapping too.
    assert "lm_head.weight" in names_in(target_param_groups(m, ["lm_head"], rank=2), m, 0)
    wrapped = nn.Module()
    wrapped.module = m
    assert "module.lm_head.weight" in names_in(target_param_groups(wrapped, "all-linear", rank=2), wrapped, 1)
