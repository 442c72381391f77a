package main

/*
#include <stdint.h>
#include "gradnormlorp.h"
*/
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/cuda"
)

// device is where a tensor lives: GNLP_DEVICE_CPU or GNLP_DEVICE_CUDA with
// an ordinal.
type device struct {
	typ   int32
	index int32
}

var cpuDevice = device{typ: C.GNLP_DEVICE_CPU}

func (d device) String() string {
	if d.typ == C.GNLP_DEVICE_CUDA {
		return fmt.Sprintf("cuda:%d", d.index)
	}
	return "cpu"
}

// deviceFromC validates a tensor's device fields.
func deviceFromC(t *C.gnlp_tensor, what string) (device, error) {
	switch t.device_type {
	case C.GNLP_DEVICE_CPU:
		return cpuDevice, nil
	case C.GNLP_DEVICE_CUDA:
		if t.device_index < 0 {
			return device{}, core.Errorf(core.CodeDevice, "%s has CUDA device index %d (must be >= 0)", what, int32(t.device_index))
		}
		return device{typ: C.GNLP_DEVICE_CUDA, index: int32(t.device_index)}, nil
	}
	return device{}, core.Errorf(core.CodeDevice, "%s has unknown device type %d", what, int32(t.device_type))
}

// sameDevice checks that every tensor of one call is on one device and
// returns it. prefix locates the tensors in a batch.
func sameDevice(param, grad *C.gnlp_tensor, state *C.gnlp_tensor, nState C.int32_t, prefix string) (device, error) {
	d, err := deviceFromC(param, prefix+"param")
	if err != nil {
		return device{}, err
	}
	check := func(t *C.gnlp_tensor, what string) error {
		o, err := deviceFromC(t, what)
		if err != nil {
			return err
		}
		if o != d {
			return core.Errorf(core.CodeDevice, "%s is on %v but %sparam is on %v: a parameter, its gradient and its state must share a device", what, o, prefix, d)
		}
		return nil
	}
	if grad != nil {
		if err := check(grad, prefix+"grad"); err != nil {
			return device{}, err
		}
	}
	if state != nil && nState > 0 && nState <= C.GNLP_MAX_STATE {
		for i, st := range unsafe.Slice(state, int(nState)) {
			if err := check(&st, fmt.Sprintf("%sstate[%d]", prefix, i)); err != nil {
				return device{}, err
			}
		}
	}
	return d, nil
}

// backendFor is the backend of a device: the CPU backend, or the CUDA one
// on the caller's stream (loading libgnlp_cuda.so on first use).
func backendFor(d device, stream unsafe.Pointer) (core.Backend, error) {
	if d.typ == C.GNLP_DEVICE_CPU {
		return backend, nil
	}
	return cuda.New(int(d.index), stream)
}

// stepOn validates and applies items, all on device d.
//
// CUDA, synchronous form (nonfinite == nil): every gradient's finiteness
// check is enqueued first, then the stream is waited for ONCE to read the
// verdicts, so a non-finite gradient is reported exactly and nothing has
// changed; the updates are then enqueued without further waits (a
// projector refresh waits once more per refreshed parameter, for the SVD's
// convergence flag).
//
// CUDA, asynchronous form (nonfinite != nil, a device int32 or the
// library's own flag when the caller passed NULL): no wait at all; the
// checks OR into the flag and every update kernel of the batch does
// nothing when it is set, so a non-finite gradient anywhere leaves every
// parameter and state untouched, and the caller learns of it by reading
// the flag when it likes.
func stepOn(d device, stream unsafe.Pointer, items []core.Item, async bool, nonfinite unsafe.Pointer) error {
	if d.typ == C.GNLP_DEVICE_CPU {
		return stepAll(items)
	}
	b, err := cuda.New(int(d.index), stream)
	if err != nil {
		return err
	}
	n := len(items)
	if n == 0 {
		return nil
	}
	flags, err := b.Alloc(4 * n)
	if err != nil {
		return err
	}
	defer b.Free(flags)
	if err := b.ZeroBytes(flags, 4*n); err != nil {
		return err
	}
	shared := flags
	if nonfinite != nil {
		shared = nonfinite
	}
	plans := make([]core.Plan, n)
	for i := range items {
		vb := b
		vb.Flag = unsafe.Add(flags, 4*i)
		if async {
			vb.Flag = shared
		}
		plans[i], err = items[i].Validate(vb)
		if err != nil {
			return atItem(items, i, err)
		}
	}
	if async {
		b.Skip = shared
	} else {
		verdicts := make([]int32, n)
		if err := b.Read(unsafe.Pointer(&verdicts[0]), flags, 4*n); err != nil {
			return err
		}
		for i, bad := range verdicts {
			if bad != 0 {
				return atItem(items, i, core.Errorf(core.CodeNonFinite, "gradient of the %v parameter holds NaN or Inf; step refused, nothing changed", items[i].Param.Shape))
			}
		}
	}
	for i := range items {
		if err := applyCUDA(b, &items[i], plans[i]); err != nil {
			return atItem(items, i, err)
		}
	}
	return nil
}

// applyCUDA applies one validated item with stream-ordered scratch.
func applyCUDA(b cuda.Backend, it *core.Item, plan core.Plan) error {
	elems := plan.WorkspaceElems()
	ws := core.Tensor{DType: core.Float32, Shape: core.Shape{elems}}
	if elems > 0 {
		p, err := b.Alloc(4 * elems)
		if err != nil {
			return err
		}
		defer b.Free(p)
		ws.Data = p
	}
	return it.Apply(b, plan, ws)
}

//export gnlp_step_batch_async
func gnlp_step_batch_async(items *C.gnlp_step_item, n C.int32_t, stream unsafe.Pointer, nonfinite *C.int32_t) C.gnlp_status {
	return run(func() error {
		batch, d, err := batchFromC(items, n)
		if err != nil {
			return err
		}
		return stepOn(d, stream, batch, d.typ == C.GNLP_DEVICE_CUDA, unsafe.Pointer(nonfinite))
	})
}
