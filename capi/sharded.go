package main

/*
#include <stdlib.h>
#include "gradnormlorp.h"

// Go cannot call a C function pointer itself.
static int32_t gnlpCallCollective(gnlp_collective_fn fn, void *ctx, int32_t op,
                                  const gnlp_tensor *send, const gnlp_tensor *recv) {
    return fn(ctx, op, send, recv);
}
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/core/cpu"
)

// The row-sharded calls (ABI minor 2): conversions and the collective
// callback; the step itself is core.StepSharded.

// shardFromC converts a gnlp_shard (checked against the split by core).
func shardFromC(s *C.gnlp_shard, what string) (core.Shard, error) {
	if s == nil {
		return core.Shard{}, nullError(what)
	}
	return core.Shard{GlobalRows: int(s.global_rows), RowOffset: int(s.row_offset), Rank: int(s.rank), WorldSize: int(s.world_size)}, nil
}

//export gnlp_shard_state_layout
func gnlp_shard_state_layout(param *C.gnlp_tensor, shard *C.gnlp_shard, config *C.gnlp_config, specs *C.gnlp_buffer_spec, capacity C.int32_t, count *C.int32_t) C.gnlp_status {
	return run(func() error {
		shape, cfg, err := layoutQuery(param, config, specs, capacity, count, true)
		if err != nil {
			return err
		}
		sh, err := shardFromC(shard, "shard")
		if err != nil {
			return err
		}
		layout, err := core.ShardLayout(core.DType(param.dtype), shape, sh, cfg)
		if err != nil {
			return err
		}
		return writeSpecs(layout, specs, capacity, count)
	})
}

//export gnlp_shard_state_init
func gnlp_shard_state_init(param *C.gnlp_tensor, shard *C.gnlp_shard, state *C.gnlp_tensor, nState C.int32_t, config *C.gnlp_config, stream unsafe.Pointer) C.gnlp_status {
	return run(func() error {
		cfg, err := configFromC(config)
		if err != nil {
			return err
		}
		sh, err := shardFromC(shard, "shard")
		if err != nil {
			return err
		}
		p, st, b, err := initArgs(param, state, nState, stream, true)
		if err != nil {
			return err
		}
		return core.ShardInit(b, p, sh, st, cfg)
	})
}

//export gnlp_step_sharded
func gnlp_step_sharded(items *C.gnlp_step_item, shards *C.gnlp_shard, n C.int32_t, collective C.gnlp_collective_fn, ctx unsafe.Pointer, stream unsafe.Pointer) C.gnlp_status {
	return run(func() error {
		if collective == nil {
			return nullError("collective")
		}
		batch, d, err := batchFromC(items, n, true)
		if err != nil {
			return err
		}
		if n > 0 && shards == nil {
			return nullError("shards")
		}
		cs := unsafe.Slice(shards, int(n))
		sh := make([]core.Shard, len(cs))
		for i := range cs {
			if sh[i], err = shardFromC(&cs[i], fmt.Sprintf("shards[%d]", i)); err != nil {
				return err
			}
		}
		c := &callback{fn: collective, ctx: ctx, device: d}
		if d.typ == C.GNLP_DEVICE_CPU {
			return core.StepSharded(cpu.Backend{}, cpu.Backend{}, batch, sh, c)
		}
		b, err := backendFor(d, stream)
		if err != nil {
			return err
		}
		x, ok := b.(core.Executor)
		if !ok {
			return core.Errorf(core.CodeBackendUnavailable, "the %v backend cannot run sharded steps", d)
		}
		return core.StepSharded(b, x, batch, sh, c)
	})
}

// callback is a core.Collective over the caller's gnlp_collective_fn.
type callback struct {
	fn     C.gnlp_collective_fn
	ctx    unsafe.Pointer
	device device
}

func (c *callback) Sum(t core.Tensor) error { return c.call(C.GNLP_COLLECTIVE_SUM, nil, &t) }
func (c *callback) Max(t core.Tensor) error { return c.call(C.GNLP_COLLECTIVE_MAX, nil, &t) }
func (c *callback) GatherRows(local, whole core.Tensor) error {
	return c.call(C.GNLP_COLLECTIVE_GATHER_ROWS, &local, &whole)
}

var collectiveNames = map[C.int32_t]string{
	C.GNLP_COLLECTIVE_SUM: "sum", C.GNLP_COLLECTIVE_MAX: "max", C.GNLP_COLLECTIVE_GATHER_ROWS: "gather_rows",
}

// call describes the tensors to C and calls the callback. Scratch lent
// by the CPU backend is Go memory, which the caller writes: it is pinned
// for the call.
func (c *callback) call(op C.int32_t, send, recv *core.Tensor) error {
	var pin runtime.Pinner
	defer pin.Unpin()
	describe := func(t *core.Tensor) *C.gnlp_tensor {
		if t == nil {
			return nil
		}
		if t.Data != nil {
			pin.Pin(t.Data)
		}
		d := (*C.gnlp_tensor)(C.calloc(1, C.size_t(unsafe.Sizeof(C.gnlp_tensor{}))))
		d.data = t.Data
		d.dtype = C.int32_t(t.DType)
		d.ndim = C.int32_t(len(t.Shape))
		stride := int64(1)
		for i := len(t.Shape) - 1; i >= 0; i-- {
			d.shape[i], d.strides[i] = C.int64_t(t.Shape[i]), C.int64_t(stride)
			stride *= int64(max(t.Shape[i], 1))
		}
		d.device_type, d.device_index = C.int32_t(c.device.typ), C.int32_t(c.device.index)
		return d
	}
	s, r := describe(send), describe(recv)
	defer C.free(unsafe.Pointer(s))
	defer C.free(unsafe.Pointer(r))
	if rc := C.gnlpCallCollective(c.fn, c.ctx, op, s, r); rc != 0 {
		return fmt.Errorf("the %s callback returned %d", collectiveNames[op], int32(rc))
	}
	return nil
}
