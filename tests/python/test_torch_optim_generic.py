"""PyTorch's generic optimizer checks, driven with OptimizerInfo entries for
GradNormLoRP and LayerwiseGradNormLoRP.

torch's own test/test_optim.py is not installed with the wheel, so its
generic checks are restated here against torch's test machinery
(torch.testing._internal.common_optimizers: OptimizerInfo, OptimizerInput,
its error inputs common to all optimizers, the @optims parametrizer and
device-type instantiation). Gradients always come from backward() and are
followed by step(), which is how both modes are used: in layer-wise mode
backward() does the update and step() does nothing.
"""

from __future__ import annotations

import copy
import io
import itertools
import warnings

import torch
from torch.nn import Parameter
from torch.optim.lr_scheduler import ReduceLROnPlateau, StepLR
from torch.testing._internal.common_device_type import instantiate_device_type_tests
from torch.testing._internal.common_optimizers import (
    ErrorOptimizerInput,
    OptimizerErrorEnum,
    OptimizerInfo,
    OptimizerInput,
    get_error_inputs_for_all_optims,
    optims,
)
from torch.testing._internal.common_utils import TestCase

from gradnormlorp import GradNormLoRP, GradNormLoRPError, LayerwiseGradNormLoRP


def optim_inputs(device, dtype=None):
    """Configurations every check runs with: plain AdamW, and projected
    groups (the 10x5 weight; the bias stays AdamW) in each variant."""
    return [
        OptimizerInput(params=None, kwargs={}, desc="default: AdamW"),
        OptimizerInput(params=None, kwargs={"lr": 0.01, "weight_decay": 0.1}, desc="AdamW, weight decay"),
        OptimizerInput(params=None, kwargs={"lr": torch.tensor(0.01)}, desc="tensor lr"),
        OptimizerInput(params=None, kwargs={"lr": 0.01, "rank": 2}, desc="projected, std"),
        OptimizerInput(
            params=None, kwargs={"lr": 0.01, "rank": 2, "update_proj_gap": 1, "proj_type": "full"}, desc="full, gap 1"
        ),
        OptimizerInput(params=None, kwargs={"lr": 0.01, "rank": 3, "proj_type": "left"}, desc="left"),
        OptimizerInput(
            params=None,
            kwargs={"lr": 0.01, "rank": 2, "update_proj_gap": 2, "refresh": "subspace"},
            desc="subspace refresh",
        ),
        OptimizerInput(params=None, kwargs={"lr": 0.01, "rank": 2, "correct_bias": False}, desc="no bias correction"),
        OptimizerInput(params=None, kwargs={"lr": 0.01, "rank": 2, "optim_bits": 8}, desc="8-bit"),
    ]


def optim_error_inputs(device, dtype):
    p = Parameter(torch.randn(2, 2, device=device, dtype=dtype))
    ours = [
        ErrorOptimizerInput(
            OptimizerInput(params=None, kwargs={"lr": -0.1}, desc="negative lr"),
            error_type=ValueError,
            error_regex="invalid lr",
        ),
        ErrorOptimizerInput(
            OptimizerInput(params=None, kwargs={"betas": (1.0, 0.999)}, desc="beta1 out of range"),
            error_type=ValueError,
            error_regex="invalid beta parameter at index 0",
        ),
        ErrorOptimizerInput(
            OptimizerInput(params=None, kwargs={"rank": 0}, desc="rank 0"),
            error_type=ValueError,
            error_regex="invalid rank",
        ),
        ErrorOptimizerInput(
            OptimizerInput(params=[Parameter(p.detach().to(torch.complex64))], kwargs={}, desc="complex parameter"),
            error_on=OptimizerErrorEnum.STEP_ERROR,
            error_type=GradNormLoRPError,
            error_regex="complex parameters",
        ),
        ErrorOptimizerInput(
            OptimizerInput(params=[Parameter(p.detach().double())], kwargs={}, desc="float64 parameter"),
            error_on=OptimizerErrorEnum.STEP_ERROR,
            error_type=GradNormLoRPError,
            error_regex="unsupported parameter dtype torch.float64",
        ),
    ]
    return get_error_inputs_for_all_optims(device, dtype) + ours


INFO = dict(
    optim_inputs_func=optim_inputs,
    optim_error_inputs_func=optim_error_inputs,
    scheduler_inputs=([lambda opt: StepLR(opt, gamma=0.9, step_size=10)], [lambda opt: ReduceLROnPlateau(opt)]),
    supported_impls=(),  # no foreach / fused / differentiable variants
    supports_complex=False,
    supports_sparse=False,
)
OPTIM_DB = [OptimizerInfo(GradNormLoRP, **INFO), OptimizerInfo(LayerwiseGradNormLoRP, **INFO)]


def make_problem(device, dtype, contiguous=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(10, 5, generator=gen)
    if not contiguous:
        weight = torch.randn(5, 10, generator=gen).t()  # same values every time: a transposed view
    weight = Parameter(weight.to(device=device, dtype=dtype))
    bias = Parameter(torch.randn(10, generator=gen).to(device=device, dtype=dtype))
    x = torch.randn(5, generator=gen).to(device=device, dtype=dtype)
    return weight, bias, x


def groups(weight, bias, kwargs, named=False):
    """The optimizer's arguments: with a rank, the weight is projected and
    the bias is plain AdamW; named, parameters come as (name, parameter)."""
    kwargs = dict(kwargs)
    rank = kwargs.pop("rank", None)
    w, b = (("weight", weight), ("bias", bias)) if named else (weight, bias)
    if rank is None:
        return [w, b], kwargs
    return [{"params": [w], "rank": rank}, {"params": [b]}], kwargs


def build(optim_cls, weight, bias, kwargs, named=False):
    params, kw = groups(weight, bias, kwargs, named)
    return optim_cls(params, **kw)


def loss_of(weight, bias, x):
    return (weight.mv(x) + bias).pow(2).sum()


def train_step(opt, weight, bias, x):
    """One iteration as a training loop runs it: zero_grad, backward, step."""
    opt.zero_grad()
    loss = loss_of(weight, bias, x)
    loss.backward()
    opt.step()
    return loss.item()


class TestTorchOptimGeneric(TestCase):
    @optims(OPTIM_DB)
    def test_errors(self, device, dtype, optim_info):
        for error_input in optim_info.optim_error_inputs_func(device=device, dtype=dtype):
            oi = error_input.optimizer_error_input
            params = oi.params if oi.params is not None else [Parameter(torch.randn(2, 2, device=device))]
            with self.subTest(oi.desc):
                if issubclass(error_input.error_type, Warning):
                    with self.assertWarnsRegex(error_input.error_type, error_input.error_regex):
                        optim_info.optim_cls(params, **oi.kwargs)
                elif error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
                    with self.assertRaisesRegex(error_input.error_type, error_input.error_regex):
                        optim_info.optim_cls(params, **oi.kwargs)
                else:
                    opt = optim_info.optim_cls(params, **oi.kwargs)
                    with self.assertRaisesRegex(error_input.error_type, error_input.error_regex):
                        sum(p.abs().square().sum() for p in params).backward()  # layer-wise: steps here
                        opt.step()

    def _goes_right_direction(self, device, dtype, optim_info, contiguous, schedulers=None):
        for oi in optim_info.optim_inputs_func(device=device):
            with self.subTest(oi.desc):
                weight, bias, x = make_problem(device, dtype, contiguous)
                opt = build(optim_info.optim_cls, weight, bias, oi.kwargs)
                scheds = [make(opt) for make in schedulers or []]
                initial = loss_of(weight, bias, x).item()
                for _ in range(20):
                    loss = train_step(opt, weight, bias, x)
                    for s in scheds:
                        s.step(loss) if isinstance(s, ReduceLROnPlateau) else s.step()
                self.assertLess(loss_of(weight, bias, x).item(), initial)
                self.assertEqual(weight.is_contiguous(), contiguous)

    @optims(OPTIM_DB, dtypes=[torch.float32, torch.bfloat16])
    def test_forloop_goes_right_direction(self, device, dtype, optim_info):
        self._goes_right_direction(device, dtype, optim_info, contiguous=True)

    @optims(OPTIM_DB)
    def test_forloop_goes_right_direction_noncontiguous(self, device, dtype, optim_info):
        self._goes_right_direction(device, dtype, optim_info, contiguous=False)

    @optims(OPTIM_DB)
    def test_param_group_with_lrscheduler_goes_right_direction(self, device, dtype, optim_info):
        for schedulers in optim_info.scheduler_inputs:
            self._goes_right_direction(device, dtype, optim_info, True, schedulers)

    @optims(OPTIM_DB)
    def test_param_groups_lr_and_weight_decay(self, device, dtype, optim_info):
        """Per-group options: lr 0 on the bias group freezes it; the other group trains."""
        weight, bias, x = make_problem(device, dtype)
        opt = optim_info.optim_cls(
            [{"params": [weight], "rank": 2, "weight_decay": 0.1}, {"params": [bias], "lr": 0.0, "weight_decay": 0.0}],
            lr=0.01,
        )
        bias_before, initial = bias.detach().clone(), loss_of(weight, bias, x).item()
        for _ in range(10):
            train_step(opt, weight, bias, x)
        self.assertEqual(bias.detach(), bias_before, atol=0, rtol=0)
        self.assertLess(loss_of(weight, bias, x).item(), initial)

    @optims(OPTIM_DB)
    def test_tensor_lr(self, device, dtype, optim_info):
        """lr given as a 1-element tensor steps exactly as the float."""
        for kwargs in ({"lr": 0.01}, {"lr": 0.01, "rank": 2}):
            w1, b1, x = make_problem(device, dtype)
            w2, b2, _ = make_problem(device, dtype)
            opt1 = build(optim_info.optim_cls, w1, b1, kwargs)
            opt2 = build(optim_info.optim_cls, w2, b2, {**kwargs, "lr": torch.tensor(0.01)})
            for _ in range(5):
                train_step(opt1, w1, b1, x)
                train_step(opt2, w2, b2, x)
            self.assertEqual(w1.detach(), w2.detach(), atol=0, rtol=0)

    @optims(OPTIM_DB)
    def test_step_is_noop_when_params_have_no_grad(self, device, dtype, optim_info):
        for oi in optim_info.optim_inputs_func(device=device):
            weight, bias, x = make_problem(device, dtype)
            opt = build(optim_info.optim_cls, weight, bias, oi.kwargs)
            before = (weight.detach().clone(), bias.detach().clone())
            opt.step()
            self.assertEqual((weight.detach(), bias.detach()), before, atol=0, rtol=0)
            self.assertEqual(len(opt.state), 0)

    @optims(OPTIM_DB)
    def test_step_all_hooks(self, device, dtype, optim_info):
        weight, bias, x = make_problem(device, dtype)
        opt = build(optim_info.optim_cls, weight, bias, {"rank": 2})
        calls = []
        opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
        opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
        train_step(opt, weight, bias, x)
        self.assertEqual(calls, ["pre", "post"])

    @optims(OPTIM_DB)
    def test_state_dict_hooks(self, device, dtype, optim_info):
        weight, bias, x = make_problem(device, dtype)
        opt = build(optim_info.optim_cls, weight, bias, {"rank": 2})
        train_step(opt, weight, bias, x)
        opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
        sd = opt.state_dict()
        self.assertEqual(sd["extra"], 1)
        seen = []
        opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append(("pre", len(sd["state"]))))
        opt.register_load_state_dict_post_hook(lambda o: seen.append(("post", len(o.state))))
        opt.load_state_dict(sd)
        self.assertEqual(seen, [("pre", 2), ("post", 2)])

    @optims(OPTIM_DB)
    def test_optimizer_can_be_printed(self, device, dtype, optim_info):
        weight, bias, x = make_problem(device, dtype)
        text = repr(build(optim_info.optim_cls, weight, bias, {"rank": 2}))
        self.assertIn(optim_info.optim_cls.__name__, text)
        self.assertIn("rank: 2", text)

    @optims(OPTIM_DB)
    def test_state_dict_deterministic(self, device, dtype, optim_info):
        """A second optimizer on equal (not identical) parameters, loaded from
        the first one's state dict, continues identically; the state dict is
        not modified by loading it. As in torch's test, one pair of
        parameters serves every configuration in turn (each optimizer is
        dropped for the next), and parameters may come with names."""
        weight, bias, x = make_problem(device, dtype)
        for oi, named in itertools.product(optim_info.optim_inputs_func(device=device), (False, True)):
            with self.subTest(oi.desc, named=named), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "LayerwiseGradNormLoRP took over")  # the previous config's
                opt = build(optim_info.optim_cls, weight, bias, oi.kwargs, named)

                def closure():
                    opt.zero_grad()
                    loss = loss_of(weight, bias, x)
                    loss.backward()
                    return loss

                for _ in range(3):
                    opt.step(closure)
                weight_c = Parameter(weight.detach().clone())
                bias_c = Parameter(bias.detach().clone())
                opt_c = build(optim_info.optim_cls, weight_c, bias_c, oi.kwargs)

                def closure_c():
                    opt_c.zero_grad()
                    loss = loss_of(weight_c, bias_c, x)
                    loss.backward()
                    return loss

                state_dict = copy.deepcopy(opt.state_dict())
                opt_c.load_state_dict(state_dict)
                for _ in range(5):
                    opt.step(closure)
                    opt_c.step(closure_c)
                    self.assertEqual(weight, weight_c, atol=0, rtol=0)
                    self.assertEqual(bias, bias_c, atol=0, rtol=0)
                self.assertEqual(state_dict, copy.deepcopy(state_dict))
                # Repeated groups have one representation.
                opt_c.param_groups.extend(opt_c.param_groups)
                self.assertEqual(opt.state_dict()["param_groups"][-1], opt_c.state_dict()["param_groups"][-1])

    @optims(OPTIM_DB)
    def test_save_load_equality_with_weights_only(self, device, dtype, optim_info):
        for oi in optim_info.optim_inputs_func(device=device):
            with self.subTest(oi.desc):
                weight, bias, x = make_problem(device, dtype)
                opt = build(optim_info.optim_cls, weight, bias, oi.kwargs)
                for _ in range(3):
                    train_step(opt, weight, bias, x)
                buf = io.BytesIO()
                torch.save(opt.state_dict(), buf)
                buf.seek(0)
                loaded = torch.load(buf, weights_only=True)
                self.assertEqual(loaded, opt.state_dict())
                opt.load_state_dict(loaded)
                self.assertEqual(opt.state_dict(), loaded)

    @optims(OPTIM_DB)
    def test_load_nontensor_and_tensor_step(self, device, dtype, optim_info):
        """Steps saved as plain ints (ours) or as tensors (torch.optim's) both load."""
        weight, bias, x = make_problem(device, dtype)
        opt = build(optim_info.optim_cls, weight, bias, {"lr": 0.01})
        for _ in range(2):
            train_step(opt, weight, bias, x)
        sd = opt.state_dict()
        as_tensors = {**sd, "state": {i: {**s, "step": torch.tensor(float(s["step"]))} for i, s in sd["state"].items()}}
        opt.load_state_dict(as_tensors)
        self.assertEqual([s["step"] for s in opt.state.values()], [2, 2])
        self.assertTrue(all(type(s["step"]) is int for s in opt.state.values()))

    @optims(OPTIM_DB)
    def test_deepcopy_is_usable(self, device, dtype, optim_info):
        """A deep copy (of the optimizer with its parameters) carries every
        public attribute and trains on exactly as the original."""
        for oi in optim_info.optim_inputs_func(device=device):
            with self.subTest(oi.desc):
                weight, bias, x = make_problem(device, dtype)
                opt = build(optim_info.optim_cls, weight, bias, oi.kwargs)
                train_step(opt, weight, bias, x)
                opt_c = copy.deepcopy(opt)
                public = {k for k in vars(opt) if not k.startswith("_")}
                self.assertEqual(public, {k for k in vars(opt_c) if not k.startswith("_")})
                weight_c, bias_c = opt_c.param_groups[0]["params"][0], opt_c.param_groups[-1]["params"][-1]
                self.assertIsNot(weight_c, weight)
                for _ in range(3):
                    train_step(opt, weight, bias, x)
                    train_step(opt_c, weight_c, bias_c, x)
                self.assertEqual(weight_c, weight, atol=0, rtol=0)
                self.assertEqual(bias_c, bias, atol=0, rtol=0)

    @optims(OPTIM_DB)
    def test_compiled_step_does_not_recompile(self, device, dtype, optim_info):
        """torch.compile does not trace into step() (a library call), so no
        recompilation per parameter and no warnings."""
        import torch._dynamo

        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        weights = [Parameter(torch.randn(8, 6, device=device, dtype=dtype)) for _ in range(12)]
        opt = optim_info.optim_cls([{"params": weights, "rank": 2}], lr=0.01)
        step = torch.compile(opt.step, backend="eager")
        x = torch.randn(6, device=device, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(3):
                opt.zero_grad()
                sum(w.mv(x).square().sum() for w in weights).backward()
                step()
        self.assertEqual(dict(torch._dynamo.utils.counters["recompiles"]), {})
        self.assertEqual(len(opt.state), 12)

    # torch's checks of variants this optimizer does not have, skipped with the reason.

    @optims(OPTIM_DB)
    def test_foreach_fused_differentiable_match_forloop(self, device, dtype, optim_info):
        self.skipTest(
            "one implementation only (the library's batched step): no foreach, fused or differentiable "
            "variant to compare, and no such constructor flags"
        )

    @optims(OPTIM_DB)
    def test_complex(self, device, dtype, optim_info):
        self.skipTest("complex parameters are not supported; they are refused with a clear error (test_errors)")

    @optims(OPTIM_DB)
    def test_rosenbrock_sparse(self, device, dtype, optim_info):
        self.skipTest("sparse gradients are not supported; they are refused with a clear error (test_errors.py)")


instantiate_device_type_tests(TestTorchOptimGeneric, globals(), only_for="cpu")
