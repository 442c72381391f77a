package main

/*
#include "gradnormlorp.h"
*/
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/core/cpu"
)

var backend core.Backend = cpu.Backend{}

//export gnlp_version
func gnlp_version() *C.char { return versionC }

//export gnlp_abi_version
func gnlp_abi_version() C.int32_t { return C.GNLP_ABI_VERSION }

//export gnlp_config_default
func gnlp_config_default() C.gnlp_config { return configToC(core.DefaultConfig()) }

//export gnlp_state_layout
func gnlp_state_layout(param *C.gnlp_tensor, config *C.gnlp_config, specs *C.gnlp_buffer_spec, capacity C.int32_t, count *C.int32_t) C.gnlp_status {
	return run(func() error {
		shape, cfg, err := layoutQuery(param, config, specs, capacity, count, false)
		if err != nil {
			return err
		}
		layout, err := core.Layout(core.DType(param.dtype), shape, cfg)
		if err != nil {
			return err
		}
		return writeSpecs(layout, specs, capacity, count)
	})
}

// layoutQuery checks the arguments of a layout query and returns the
// param's shape (only dtype and shape matter: the param need not exist
// yet) and the config. allowEmpty: a rank's rows of a sharded parameter.
func layoutQuery(param *C.gnlp_tensor, config *C.gnlp_config, specs *C.gnlp_buffer_spec, capacity C.int32_t, count *C.int32_t, allowEmpty bool) (core.Shape, core.Config, error) {
	switch {
	case param == nil:
		return nil, core.Config{}, nullError("param")
	case count == nil:
		return nil, core.Config{}, nullError("count")
	case capacity > 0 && specs == nil:
		return nil, core.Config{}, nullError("specs")
	}
	cfg, err := configFromC(config)
	if err != nil {
		return nil, core.Config{}, err
	}
	shape, err := shapeOf(param, "param", allowEmpty)
	return shape, cfg, err
}

// writeSpecs reports a layout into the caller's specs array.
func writeSpecs(layout []core.BufferSpec, specs *C.gnlp_buffer_spec, capacity C.int32_t, count *C.int32_t) error {
	*count = C.int32_t(len(layout))
	if int(capacity) < len(layout) {
		return core.Errorf(core.CodeBufferTooSmall, "specs has room for %d buffers, the layout has %d", int32(capacity), len(layout))
	}
	out := unsafe.Slice(specs, len(layout))
	for i, b := range layout {
		out[i] = bufferSpecToC(b)
	}
	return nil
}

func bufferSpecToC(b core.BufferSpec) C.gnlp_buffer_spec {
	var s C.gnlp_buffer_spec
	name := unsafe.Slice((*byte)(unsafe.Pointer(&s.name[0])), len(s.name))
	copy(name[:len(name)-1], b.Name)
	s.dtype = C.int32_t(b.DType)
	s.ndim = C.int32_t(len(b.Shape))
	for i, d := range b.Shape {
		s.shape[i] = C.int64_t(d)
	}
	s.bytes = C.int64_t(b.Bytes())
	return s
}

//export gnlp_state_init
func gnlp_state_init(param *C.gnlp_tensor, state *C.gnlp_tensor, nState C.int32_t, config *C.gnlp_config, stream unsafe.Pointer) C.gnlp_status {
	return run(func() error {
		cfg, err := configFromC(config)
		if err != nil {
			return err
		}
		p, st, b, err := initArgs(param, state, nState, stream, false)
		if err != nil {
			return err
		}
		return core.Init(b, p, st, cfg)
	})
}

// initArgs converts the arguments of a state init: the parameter (its
// values seed the magnitudes), the state and the backend of their device.
// allowEmpty: a rank's rows of a sharded parameter.
func initArgs(param, state *C.gnlp_tensor, nState C.int32_t, stream unsafe.Pointer, allowEmpty bool) (core.Tensor, []core.Tensor, core.Backend, error) {
	p, err := convertTensor(param, "param", allowEmpty)
	if err != nil {
		return core.Tensor{}, nil, nil, err
	}
	st, err := convertState(state, nState, allowEmpty)
	if err != nil {
		return core.Tensor{}, nil, nil, err
	}
	d, err := sameDevice(param, nil, state, nState, "")
	if err != nil {
		return core.Tensor{}, nil, nil, err
	}
	b, err := backendFor(d, stream)
	return p, st, b, err
}

//export gnlp_workspace_size
func gnlp_workspace_size(param *C.gnlp_tensor, config *C.gnlp_config, bytes *C.int64_t) C.gnlp_status {
	return run(func() error {
		if bytes == nil {
			return nullError("bytes")
		}
		cfg, err := configFromC(config)
		if err != nil {
			return err
		}
		p, err := tensorFromC(param, "param")
		if err != nil {
			return err
		}
		if err := core.CheckParam(p.DType, p.Shape); err != nil {
			return err
		}
		*bytes = C.int64_t(4 * core.PlanFor(p.Shape, cfg).WorkspaceElems())
		return nil
	})
}

//export gnlp_step
func gnlp_step(param, grad *C.gnlp_tensor, state *C.gnlp_tensor, nState C.int32_t, config *C.gnlp_config, step C.int64_t, stream unsafe.Pointer) C.gnlp_status {
	return run(func() error {
		it, d, err := itemFromC(param, grad, state, nState, config, step, "", false)
		if err != nil {
			return err
		}
		return stepOn(d, stream, []core.Item{it}, false, nil)
	})
}

//export gnlp_step_batch
func gnlp_step_batch(items *C.gnlp_step_item, n C.int32_t, stream unsafe.Pointer) C.gnlp_status {
	return run(func() error {
		batch, d, err := batchFromC(items, n, false)
		if err != nil {
			return err
		}
		return stepOn(d, stream, batch, false, nil)
	})
}

// batchFromC converts a batch, whose items must all be on one device.
// allowEmpty: a sharded step's items, whose local rows may be none.
func batchFromC(items *C.gnlp_step_item, n C.int32_t, allowEmpty bool) ([]core.Item, device, error) {
	if n < 0 {
		return nil, device{}, core.Errorf(core.CodeInvalidArgument, "n_items is %d, must be >= 0", int32(n))
	}
	if n > 0 && items == nil {
		return nil, device{}, nullError("items")
	}
	cs := unsafe.Slice(items, int(n))
	batch := make([]core.Item, len(cs))
	d := cpuDevice
	for i := range cs {
		c := &cs[i]
		if c.reserved != 0 {
			return nil, device{}, core.Errorf(core.CodeInvalidArgument, "items[%d].reserved is %d, must be 0", i, int32(c.reserved))
		}
		it, di, err := itemFromC(&c.param, &c.grad, c.state, c.n_state, &c.config, c.step, fmt.Sprintf("items[%d].", i), allowEmpty)
		if err != nil {
			return nil, device{}, err
		}
		if i == 0 {
			d = di
		} else if di != d {
			return nil, device{}, core.Errorf(core.CodeDevice, "items[%d] is on %v but items[0] is on %v: one call steps the parameters of one device", i, di, d)
		}
		batch[i] = it
	}
	return batch, d, nil
}

// itemFromC converts one parameter's step arguments; prefix locates it in
// a batch for error messages.
func itemFromC(param, grad *C.gnlp_tensor, state *C.gnlp_tensor, nState C.int32_t, config *C.gnlp_config, step C.int64_t, prefix string, allowEmpty bool) (core.Item, device, error) {
	cfg, err := configFromC(config)
	if err != nil {
		return core.Item{}, device{}, located(prefix, err)
	}
	p, err := convertTensor(param, prefix+"param", allowEmpty)
	if err != nil {
		return core.Item{}, device{}, err
	}
	g, err := convertTensor(grad, prefix+"grad", allowEmpty)
	if err != nil {
		return core.Item{}, device{}, err
	}
	st, err := convertState(state, nState, allowEmpty)
	if err != nil {
		return core.Item{}, device{}, located(prefix, err)
	}
	d, err := sameDevice(param, grad, state, nState, prefix)
	if err != nil {
		return core.Item{}, device{}, err
	}
	return core.Item{Param: p, Grad: g, State: st, Config: cfg, Step: int64(step)}, d, nil
}

// located puts a batch item's prefix before err's message, keeping err.
func located(prefix string, err error) error {
	if prefix == "" {
		return err
	}
	return core.Errorf(core.CodeOf(err), "%s%w", prefix, err)
}
