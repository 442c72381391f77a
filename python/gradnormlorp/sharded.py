"""GradNormLoRP on FSDP2's row-sharded parameters (DTensor, ``Shard(0)`` on a 1-D mesh).

``torch.distributed.fsdp.fully_shard`` gives each rank a block of whole rows
of every parameter (torch.chunk's split) and reduce-scatters the gradients
the same way. The library applies SPEC section 1 to each *whole* matrix
(``gnlp_step_sharded``, include/gradnormlorp.h, ABI minor 2): per-row math and
a right projection stay on the rank, and what crosses ranks (a left
projection's ``P^T dV``, the refresh's ``dV``, the absmax of 8/4-bit blocks
split between ranks) goes through the collective callback here, which runs
``torch.distributed`` on the parameter's mesh process group. Every rank must
step the same parameters in the same order, as FSDP2 training does.

State is sharded like the parameter: this rank's rows of the per-row buffers
(and of the moments of a right projection or a plain AdamW parameter);
projectors and the moments of a left or full projection are replicated.
:func:`export_state` / :func:`import_state` turn that into the form
``torch.distributed.checkpoint`` saves: row-sharded buffers as ``Shard(0)``
DTensors of the whole buffer, replicated ones as plain tensors, so a
checkpoint does not depend on the world size it was saved with.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import sys
from collections import Counter
from typing import Any, Iterator

import torch
import torch.distributed as dist

from . import _lib
from ._lib import GradNormLoRPError

__all__ = ["count_traffic", "export_state", "import_state", "placement_problem", "shard_of"]

HOW = (
    "GradNormLoRP steps sharded parameters as FSDP2 makes them: wrap the model with "
    "torch.distributed.fsdp.fully_shard (placement Shard(0) on a 1-D device mesh)"
)

_OP_NAMES = {
    _lib.GNLP_COLLECTIVE_SUM: "sum",
    _lib.GNLP_COLLECTIVE_MAX: "max",
    _lib.GNLP_COLLECTIVE_GATHER_ROWS: "gather_rows",
}


# ------------------------------------------------------------- placements


def dtensor_type() -> type | None:
    """torch's DTensor class, if torch.distributed.tensor is imported (no
    tensor can be a DTensor otherwise, so nothing is imported here)."""
    for module in ("torch.distributed.tensor", "torch.distributed._tensor"):
        cls = getattr(sys.modules.get(module), "DTensor", None)
        if cls is not None:
            return cls
    return None


def is_dtensor(t: Any) -> bool:
    cls = dtensor_type()
    return cls is not None and isinstance(t, cls)


def local_of(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local part; any other tensor itself."""
    return t.to_local() if is_dtensor(t) else t


def placement_problem(p: torch.Tensor) -> str | None:
    """Why the DTensor ``p`` cannot be stepped (its placements or mesh), or
    None if it is row-sharded as FSDP2 shards it."""
    from torch.distributed.tensor import Shard

    mesh = p.device_mesh
    placements = tuple(p.placements)
    if mesh.ndim == 1 and placements == (Shard(0),) and p.dim() in (1, 2):
        return None
    what = f"a DTensor (global shape {_shape(p)}, placements {placements} on a {mesh.ndim}-D device mesh)"
    if p.dim() not in (1, 2):
        return f"{what} of {p.dim()} dimensions; sharded parameters must be 1-D or 2-D"
    return (
        f"{what}; only Shard(0) on a 1-D mesh (rows split across ranks, as FSDP2's fully_shard makes) "
        f"can be stepped exactly, not {placements}"
    )


def _checked_placement(where: str, p: torch.Tensor) -> None:
    problem = placement_problem(p)
    if problem:
        raise GradNormLoRPError(f"{where} is {problem}. {HOW}.", _lib.GNLP_ERR_INVALID_ARGUMENT)


def _split(rows: int, world: int, rank: int) -> tuple[int, int]:
    """(first row, row count) of `rank` under torch.chunk's split of `rows`."""
    chunk = -(-rows // world)
    first = min(rank * chunk, rows)
    return first, min(chunk, rows - first)


def shard_of(p: torch.Tensor) -> _lib.gnlp_shard:
    """The gnlp_shard of this rank's rows of the DTensor ``p``."""
    mesh = p.device_mesh
    world, rank = mesh.size(), mesh.get_local_rank()
    first, _ = _split(p.shape[0], world, rank)
    return _lib.gnlp_shard(global_rows=p.shape[0], row_offset=first, rank=rank, world_size=world)


def local_rows(where: str, p: torch.Tensor) -> torch.Tensor:
    """This rank's rows of the DTensor parameter ``p`` (its storage, updated
    in place), checked against torch.chunk's split."""
    _checked_placement(where, p)
    local = p.to_local()
    mesh = p.device_mesh
    _, rows = _split(p.shape[0], mesh.size(), mesh.get_local_rank())
    if tuple(local.shape) != (rows, *p.shape[1:]):
        raise GradNormLoRPError(
            f"{where}: its local shard has shape {_shape(local)}, but torch.chunk's split of {_shape(p)} over "
            f"{mesh.size()} ranks gives rank {mesh.get_local_rank()} {rows} rows. {HOW}.",
            _lib.GNLP_ERR_SHAPE,
        )
    return local


def local_grad(where: str, p: torch.Tensor) -> torch.Tensor:
    """This rank's rows of p's gradient, which must be sharded like p."""
    grad = p.grad
    if not is_dtensor(grad) or grad.device_mesh != p.device_mesh or tuple(grad.placements) != tuple(p.placements):
        got = f"placements {tuple(grad.placements)}" if is_dtensor(grad) else f"a plain {type(grad).__name__}"
        raise GradNormLoRPError(
            f"{where}: the parameter is sharded {tuple(p.placements)} but its gradient is {got}; "
            f"FSDP2 reduce-scatters gradients like their parameters",
            _lib.GNLP_ERR_INVALID_ARGUMENT,
        )
    return grad.to_local()


def batch_key(p: torch.Tensor) -> tuple:
    """Parameters stepped by one gnlp_step_sharded call: one process group, one device."""
    return ("sharded", p.device_mesh.get_group(), _lib.device_of(p.to_local()))


# ------------------------------------------------------------ collectives


class Traffic:
    """Collective calls and the payload bytes this rank contributed to them,
    by op: a sum or max sends its whole recv buffer, a row gather this rank's
    rows padded to the largest block (what all_gather_into_tensor needs)."""

    def __init__(self) -> None:
        self.calls: Counter = Counter()
        self.bytes: Counter = Counter()

    def add(self, op: str, nbytes: int) -> None:
        self.calls[op] += 1
        self.bytes[op] += nbytes

    def total(self) -> int:
        return sum(self.bytes.values())


_counters: list[Traffic] = []


@contextlib.contextmanager
def count_traffic() -> Iterator[Traffic]:
    """Count the collectives of the sharded steps run inside the block."""
    traffic = Traffic()
    _counters.append(traffic)
    try:
        yield traffic
    finally:
        _counters.remove(traffic)


class _CudaArray:
    """A CUDA buffer the library handed over, for torch.as_tensor (no copy)."""

    def __init__(self, ptr: int, shape: tuple[int, ...]):
        # stream None: the library's work and torch's collectives are on the
        # same (current) stream, so no synchronisation is needed.
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": "<f4",
            "data": (ptr, False),
            "version": 3,
            "strides": None,
            "stream": None,
        }


def as_torch(desc: _lib.gnlp_tensor) -> torch.Tensor:
    """A float32 torch tensor over the memory a gnlp_tensor describes (no copy)."""
    if desc.dtype != _lib.GNLP_FLOAT32:
        raise GradNormLoRPError(f"collective buffer of gnlp_dtype {desc.dtype}, want float32", _lib.GNLP_ERR_DTYPE)
    shape = tuple(desc.shape[i] for i in range(desc.ndim))
    cuda = desc.device_type == _lib.GNLP_DEVICE_CUDA
    device = torch.device("cuda", desc.device_index) if cuda else torch.device("cpu")
    n = math.prod(shape)
    if n == 0:
        return torch.empty(shape, dtype=torch.float32, device=device)
    if cuda:
        return torch.as_tensor(_CudaArray(desc.data, shape), device=device)
    return torch.frombuffer((ctypes.c_float * n).from_address(desc.data), dtype=torch.float32).view(shape)


class _Collective:
    """The gnlp_collective_fn of one gnlp_step_sharded call: torch.distributed
    on `group`. An exception is kept (and the library told: nonzero) to be
    raised once the library has returned."""

    def __init__(self, group: dist.ProcessGroup):
        self.group = group
        self.world = dist.get_world_size(group)
        self.error: BaseException | None = None
        self.fn = _lib.COLLECTIVE_FN(self._call)

    def _call(self, ctx, op, send, recv) -> int:
        try:
            self._run(op, as_torch(send.contents) if send else None, as_torch(recv.contents))
            return 0
        except Exception as e:  # noqa: BLE001 -- raised again after the library returns
            self.error = e
            return 1

    def _run(self, op: int, send: torch.Tensor | None, recv: torch.Tensor) -> None:
        if op == _lib.GNLP_COLLECTIVE_SUM:
            dist.all_reduce(recv, op=dist.ReduceOp.SUM, group=self.group)
            sent = recv
        elif op == _lib.GNLP_COLLECTIVE_MAX:
            dist.all_reduce(recv, op=dist.ReduceOp.MAX, group=self.group)
            sent = recv
        elif op == _lib.GNLP_COLLECTIVE_GATHER_ROWS:
            sent = self._gather_rows(send, recv)
        else:
            raise GradNormLoRPError(f"unknown gnlp_collective_op {op}", _lib.GNLP_ERR_INVALID_ARGUMENT)
        for traffic in _counters:
            traffic.add(_OP_NAMES[op], sent.numel() * sent.element_size())

    def _gather_rows(self, send: torch.Tensor, recv: torch.Tensor) -> torch.Tensor:
        """recv <- every rank's rows at its torch.chunk offset: the blocks are
        padded to ceil(rows / world) rows for all_gather_into_tensor."""
        chunk = -(-recv.shape[0] // self.world)
        padded = send.new_zeros((chunk, *recv.shape[1:]))
        padded[: send.shape[0]] = send
        out = recv.new_empty((self.world * chunk, *recv.shape[1:]))
        dist.all_gather_into_tensor(out, padded, group=self.group)
        recv.copy_(out[: recv.shape[0]])
        return padded


def step(items: ctypes.Array, shards: ctypes.Array, group: dist.ProcessGroup, stream=None) -> None:
    """One gnlp_step_sharded call with collectives on `group`. A Python error
    inside a collective is chained onto the library's GradNormLoRPError."""
    collective = _Collective(group)
    try:
        _lib.step_sharded(items, shards, collective.fn, stream)
    except GradNormLoRPError as err:
        if collective.error is not None:
            raise err from collective.error
        raise


# ------------------------------------------------------------ checkpoints


def _describe_shape(dtype: torch.dtype, shape: tuple[int, ...]) -> _lib.gnlp_tensor:
    """A data-less gnlp_tensor (layout queries read dtype, ndim and shape)."""
    desc = _lib.gnlp_tensor(dtype=_lib.gnlp_dtype_of(dtype), ndim=len(shape))
    for i, d in enumerate(shape):
        desc.shape[i] = d
    desc.strides[0] = shape[1] if len(shape) == 2 else 1
    desc.strides[1] = 1
    return desc


def row_sharded_names(dtype: torch.dtype, shape: tuple[int, ...], cfg: _lib.gnlp_config) -> set[str]:
    """The state buffers of a parameter of whole `shape` that are split by
    rows under sharding (the others are replicated): those whose size
    follows the rows a rank holds, found by comparing the whole layout with
    that of rank 1 of 2 (which holds fewer rows)."""
    rows = shape[0]
    whole = {name: s for name, _, s, _ in _lib.state_layout(_describe_shape(dtype, shape), cfg)}
    first, count = _split(rows, 2, 1)
    probe = _lib.gnlp_shard(global_rows=rows, row_offset=first, rank=1, world_size=2)
    fewer = {name: s for name, _, s, _ in
             _lib.shard_state_layout(_describe_shape(dtype, (count, *shape[1:])), probe, cfg)}
    return {name for name, s in whole.items() if fewer[name] != s}


class _Plan:
    """How one sharded parameter's state maps onto its whole-matrix state:
    which buffers are row-sharded, and their whole shapes."""

    def __init__(self, p: torch.Tensor, cfg: _lib.gnlp_config):
        whole_shape = tuple(p.shape)
        self.rows = whole_shape[0]
        self.shard = shard_of(p)
        self.mesh = p.device_mesh
        self.bits = cfg.optim_bits
        self.whole = {
            name: (dtype, shape)
            for name, dtype, shape, _ in _lib.state_layout(_describe_shape(p.dtype, whole_shape), cfg)
        }
        self.row_sharded = row_sharded_names(p.dtype, whole_shape, cfg)

    def codes_per_row(self, name: str) -> int:
        """Bytes per whole-matrix row of a row-sharded quantised buffer."""
        nbytes = math.prod(self.whole[name][1])
        if nbytes % self.rows:
            raise GradNormLoRPError(
                f"state buffer {name!r} ({self.bits}-bit codes, {nbytes} bytes for {self.rows} rows) does not "
                f"split into whole rows, so it cannot be checkpointed row-sharded (4-bit codes of an odd row "
                f"length share a byte between rows); use optim_bits 8 or 32",
                _lib.GNLP_ERR_SHAPE,
            )
        return nbytes // self.rows

    def first_block(self, codes: str) -> int:
        """The first absmax block this rank's elements of `codes` touch."""
        values_per_row = self.codes_per_row(codes) * (8 // self.bits)
        return self.shard.row_offset * values_per_row // 256

    def is_absmax_of_sharded(self, name: str) -> bool:
        return name.endswith("_absmax") and name[: -len("_absmax")] in self.row_sharded


def export_state(p: torch.Tensor, state: dict[str, Any], cfg: _lib.gnlp_config) -> dict[str, Any]:
    """The checkpoint form of a sharded parameter's state: row-sharded
    buffers as Shard(0) DTensors of the whole buffer (quantised codes as
    rows x bytes-per-row), the absmax of row-sharded quantised buffers as the
    whole vector (a block split between ranks is stored once; agreed with a
    max over the ranks, so with 8/4-bit state every rank must call this, as
    torch.distributed.checkpoint does), replicated buffers as they are."""
    from torch.distributed.tensor import DTensor, Shard

    plan = _Plan(p, cfg)
    out: dict[str, Any] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor) or name not in plan.row_sharded:
            out[name] = value
        elif plan.is_absmax_of_sharded(name):
            out[name] = _whole_absmax(
                value, plan.first_block(name[: -len("_absmax")]), plan.whole[name][1][0], plan.mesh.get_group()
            )
        else:
            shape = plan.whole[name][1]
            if value.dtype == torch.uint8:
                shape = (plan.rows, plan.codes_per_row(name))
                value = value.view(-1, shape[1])
            out[name] = DTensor.from_local(
                value,
                plan.mesh,
                [Shard(0)],
                run_check=False,
                shape=torch.Size(shape),
                stride=tuple(_contiguous_strides(shape)),
            )
    return out


def _whole_absmax(local: torch.Tensor, first: int, blocks: int, group) -> torch.Tensor:
    whole = local.new_zeros(blocks)
    whole[first : first + local.numel()] = local
    dist.all_reduce(whole, op=dist.ReduceOp.MAX, group=group)  # absmax >= 0: max keeps each block's value
    return whole


def import_state(where: str, p: torch.Tensor, saved: dict[str, Any], cfg: _lib.gnlp_config) -> dict[str, Any]:
    """This rank's state buffers from a checkpoint made by :func:`export_state`
    (at any world size), or from a state dict of whole tensors (e.g. a full
    state dict). Raises ValueError naming the buffer when one does not fit."""
    plan = _Plan(p, cfg)
    names = sorted(plan.whole)
    have = sorted(k for k in saved if k != "step")
    if have != names:
        raise ValueError(
            f"{where} (sharded, global shape {_shape(p)}): saved state has buffers {have}, "
            f"but its group's config needs {names}"
        )
    out: dict[str, Any] = {k: v for k, v in saved.items() if k == "step"}
    first, rows = plan.shard.row_offset, _split(plan.rows, plan.shard.world_size, plan.shard.rank)[1]
    for name in names:
        dtype, shape = plan.whole[name]
        value = saved[name]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{where}: saved state buffer {name!r} is not a tensor")
        if plan.is_absmax_of_sharded(name):
            _check_shape(where, name, _full(value), shape)
            codes = name[: -len("_absmax")]
            start = plan.first_block(codes)
            count = _blocks_touched(start, first, rows, plan.codes_per_row(codes) * (8 // plan.bits))
            out[name] = _full(value)[start : start + count]
        elif name in plan.row_sharded and dtype == torch.uint8:
            whole = (plan.rows, plan.codes_per_row(name))
            own = _own_rows(where, name, value, whole, first, rows, p)
            # 8-bit codes keep the buffer's shape, 4-bit ones are packed flat (the layout's rule)
            out[name] = own.reshape(rows, *shape[1:]) if plan.bits == 8 else own.reshape(-1)
        elif name in plan.row_sharded:
            out[name] = _own_rows(where, name, value, shape, first, rows, p)
        else:
            value = _full(value)
            _check_shape(where, name, value, shape)
            out[name] = value
    return out


def _blocks_touched(first_block: int, first_row: int, rows: int, values_per_row: int) -> int:
    if rows == 0:
        return 0
    end = (first_row + rows) * values_per_row
    return -(-end // 256) - first_block


def _full(value: torch.Tensor) -> torch.Tensor:
    return value.full_tensor() if is_dtensor(value) else value


def _own_rows(
    where: str, name: str, value: torch.Tensor, shape: tuple[int, ...], first: int, rows: int, p: torch.Tensor
) -> torch.Tensor:
    """This rank's rows of a saved row-sharded buffer of whole shape `shape`:
    the local part of a DTensor sharded as p, else rows of the whole tensor."""
    from torch.distributed.tensor import Shard

    if (
        is_dtensor(value)
        and value.device_mesh == p.device_mesh
        and tuple(value.placements) == (Shard(0),)
        and tuple(value.shape) == shape
    ):
        return value.to_local()
    value = _full(value)
    if value.dtype == torch.uint8 and value.dim() == 1 and value.numel() == math.prod(shape):
        value = value.view(shape)  # codes saved flat, as an unsharded optimizer keeps them
    _check_shape(where, name, value, shape)
    return value[first : first + rows]


def _check_shape(where: str, name: str, value: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(value.shape) != tuple(shape):
        raise ValueError(
            f"{where}: saved state buffer {name!r} has shape {tuple(value.shape)}, want {tuple(shape)} "
            f"(the whole buffer); the checkpoint was made for another shape or config"
        )


def _contiguous_strides(shape: tuple[int, ...]) -> list[int]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= max(d, 1)
    return strides[::-1]


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape) or "scalar"
