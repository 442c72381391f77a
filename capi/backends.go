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
	"github.com/gradnormlorp/gradnormlorp/core/cpu"
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
		if t.device_index != 0 {
			return device{}, core.Errorf(core.CodeDevice, "%s is a CPU tensor with device_index %d (must be 0)", what, int32(t.device_index))
		}
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

// stepOn steps items, all on device d, with core's batch promise
// (core.StepBatch): the CPU backend runs items in parallel with pooled
// workspaces; the CUDA backend enqueues them one after another on stream.
//
// CUDA, asynchronous form (async: nonfinite is a device int32, or nil for
// a private flag): every finiteness check ORs into the flag instead of
// being waited for, and every kernel that changes parameters or state does
// nothing once it is set.
func stepOn(d device, stream unsafe.Pointer, items []core.Item, async bool, nonfinite unsafe.Pointer) error {
	if d.typ == C.GNLP_DEVICE_CPU {
		return cpu.Backend{}.StepBatch(items)
	}
	b, err := cuda.New(int(d.index), stream)
	if err != nil {
		return err
	}
	if async {
		flag := nonfinite
		if flag == nil {
			if flag, err = b.Alloc(4); err != nil {
				return err
			}
			defer b.Free(flag)
			if err := b.ZeroBytes(flag, 4); err != nil {
				return err
			}
		}
		b.Flag, b.Skip = flag, flag
	}
	return core.StepBatch(b, b, items)
}

//export gnlp_step_batch_async
func gnlp_step_batch_async(items *C.gnlp_step_item, n C.int32_t, stream unsafe.Pointer, nonfinite *C.int32_t) C.gnlp_status {
	return run(func() error {
		batch, d, err := batchFromC(items, n, false)
		if err != nil {
			return err
		}
		return stepOn(d, stream, batch, d.typ == C.GNLP_DEVICE_CUDA, unsafe.Pointer(nonfinite))
	})
}
