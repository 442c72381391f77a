//go:build gnlpfuzz

// The C ABI fuzz target's harness (fuzz_test.go; make fuzz). Built only
// with the gnlpfuzz tag: test files cannot use cgo, and the library must
// not carry it.

package main

/*
#include <stdlib.h>
#include <string.h>
#include "gradnormlorp.h"

const char *gnlp_last_error(void);
*/
import "C"

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"
)

// fuzzInput reads choices from the fuzzer's bytes (zeros once exhausted).
type fuzzInput struct{ b []byte }

func (r *fuzzInput) byte() byte {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *fuzzInput) pick(n int) int { return int(r.byte()) % n }

// chance is true with probability about k/256.
func (r *fuzzInput) chance(k int) bool { return int(r.byte()) < k }

func (r *fuzzInput) u32() uint32 {
	var b [4]byte
	for i := range b {
		b[i] = r.byte()
	}
	return binary.LittleEndian.Uint32(b[:])
}

var interestingFloats = []float64{0, -1, 1e-3, 0.9, 0.999, 1, 2, 1e-8, math.NaN(), math.Inf(1), math.Inf(-1), 1e39, 1e300, -1e-3, 5e-324, 1e38}

func (r *fuzzInput) float() float64 {
	if r.chance(200) {
		return interestingFloats[r.pick(len(interestingFloats))]
	}
	return float64(math.Float32frombits(r.u32()))
}

var interestingInts = []int64{0, -1, 1, 2, 3, 4, 8, 16, 32, 200, math.MaxInt32, math.MinInt32, 1 << 40, math.MaxInt64}

func (r *fuzzInput) int() int64 {
	if r.chance(220) {
		return interestingInts[r.pick(len(interestingInts))]
	}
	return int64(int32(r.u32()))
}

// value is a weight or gradient entry: mostly ordinary, sometimes extreme.
func (r *fuzzInput) value() float32 {
	switch r.pick(16) {
	case 0:
		return float32(r.float())
	case 1:
		return math.Float32frombits(r.u32())
	}
	return float32(int(r.byte())-128) / 64
}

// fuzzCase owns the C memory of one case.
type fuzzCase struct {
	in     fuzzInput
	allocs []unsafe.Pointer
	owned  []ownedBuf // memory the library may write, to compare after a failure
}

type ownedBuf struct {
	p     unsafe.Pointer
	bytes int
	f32   bool // a float32 parameter: finite after a successful step
	param bool
}

func (c *fuzzCase) alloc(bytes int) unsafe.Pointer {
	p := C.calloc(C.size_t(max(bytes, 1)), 1)
	c.allocs = append(c.allocs, p)
	return p
}

func (c *fuzzCase) free() {
	for _, p := range c.allocs {
		C.free(p)
	}
}

// tensor describes (and backs with memory) a tensor of small shape, or, with
// probability, one with a bad field.
func (c *fuzzCase) tensor(dtype, ndim int32, m, n int64) C.gnlp_tensor {
	var t C.gnlp_tensor
	t.dtype, t.ndim = C.int32_t(dtype), C.int32_t(ndim)
	t.shape[0], t.shape[1] = C.int64_t(m), C.int64_t(n)
	t.strides[0], t.strides[1] = C.int64_t(n), 1
	if ndim == 1 {
		t.strides[0] = 1
	}
	numel := int64(1)
	for i := 0; i < int(min(max(ndim, 0), 2)); i++ {
		numel *= max(int64(t.shape[i]), 1)
	}
	if numel <= 1<<16 {
		t.data = c.alloc(int(numel) * 4) // room for any dtype
	}
	return t
}

// mutate spoils one field of t now and then.
func (c *fuzzCase) mutate(t *C.gnlp_tensor) {
	if !c.in.chance(24) {
		return
	}
	switch c.in.pick(8) {
	case 0:
		t.data = nil
	case 1:
		t.dtype = C.int32_t(c.in.int())
	case 2:
		t.ndim = C.int32_t(c.in.pick(4))
	case 3:
		t.shape[c.in.pick(2)] = C.int64_t(c.in.pick(5) - 1) // only ever smaller or empty
	case 4:
		t.strides[c.in.pick(2)] = C.int64_t(c.in.int())
	case 5:
		t.device_type = C.int32_t([]int32{2, -1, 7}[c.in.pick(3)]) // never CUDA: host memory
	case 6:
		t.device_index = C.int32_t(c.in.int())
	case 7:
		t.data = unsafe.Add(t.data, 1) // misaligned
	}
}

func (c *fuzzCase) config() C.gnlp_config {
	cfg := gnlp_config_default()
	cfg.rank = C.int32_t([]int32{0, 1, 2, 4, 8}[c.in.pick(5)])
	cfg.update_proj_gap = C.int32_t(1 + c.in.pick(4))
	cfg.proj_type = C.int32_t(c.in.pick(5))
	cfg.optim_bits = C.int32_t([]int32{32, 8, 4}[c.in.pick(3)])
	cfg.refresh = C.int32_t(c.in.pick(2))
	cfg.compensation = C.int32_t(c.in.pick(2))
	for range c.in.pick(3) {
		switch f := c.in.pick(13); {
		case f < 6:
			*[]*C.double{&cfg.lr, &cfg.beta1, &cfg.beta2, &cfg.eps, &cfg.weight_decay, &cfg.scale}[f] = C.double(c.in.float())
		default:
			*[]*C.int32_t{&cfg.rank, &cfg.update_proj_gap, &cfg.proj_type, &cfg.correct_bias, &cfg.optim_bits, &cfg.refresh, &cfg.compensation}[f-6] = C.int32_t(c.in.int())
		}
	}
	return cfg
}

// item builds one parameter with its gradient and (usually valid) state.
func (c *fuzzCase) item() C.gnlp_step_item {
	var it C.gnlp_step_item
	dtype := int32(c.in.pick(3))
	ndim := int32(1 + c.in.pick(2))
	m, n := int64(1+c.in.pick(40)), int64(1+c.in.pick(40))
	it.config = c.config()
	it.param = c.tensor(dtype, ndim, m, n)
	it.grad = c.tensor(dtype, ndim, m, n)
	numel := m
	if ndim == 2 {
		numel *= n
	}
	for _, t := range []*C.gnlp_tensor{&it.param, &it.grad} {
		if t.data != nil {
			vals := unsafe.Slice((*float32)(t.data), int(numel))
			for i := range vals {
				vals[i] = c.in.value()
			}
		}
	}
	it.step = C.int64_t(1 + c.in.pick(6))
	if c.in.chance(16) {
		it.step = C.int64_t(c.in.int())
	}
	specs := make([]C.gnlp_buffer_spec, C.GNLP_MAX_STATE)
	var count C.int32_t
	state := (*C.gnlp_tensor)(c.alloc(int(unsafe.Sizeof(C.gnlp_tensor{})) * C.GNLP_MAX_STATE))
	states := unsafe.Slice(state, C.GNLP_MAX_STATE)
	if gnlp_state_layout(&it.param, &it.config, &specs[0], C.GNLP_MAX_STATE, &count) == C.GNLP_OK {
		for i := range int(count) {
			s := specs[i]
			states[i] = c.tensor(int32(s.dtype), int32(s.ndim), int64(s.shape[0]), int64(s.shape[1]))
		}
		gnlp_state_init(&it.param, state, count, &it.config, nil)
	} else {
		count = C.int32_t(c.in.pick(5))
		for i := range int(count) {
			states[i] = c.tensor(0, 1, int64(1+c.in.pick(40)), 0)
		}
	}
	it.state, it.n_state = state, count
	if c.in.chance(16) {
		it.n_state = C.int32_t(c.in.int())
	}
	c.mutate(&it.param)
	c.mutate(&it.grad)
	for i := range min(int(count), len(states)) {
		c.mutate(&states[i])
	}
	return it
}

// own records the memory the library may write for items.
func (c *fuzzCase) own(items []C.gnlp_step_item) {
	for _, it := range items {
		add := func(t C.gnlp_tensor, param bool) {
			if t.data == nil || t.ndim < 1 || t.ndim > 2 || t.shape[0] < 1 || t.shape[0] > 40 || (t.ndim == 2 && (t.shape[1] < 1 || t.shape[1] > 40)) {
				return
			}
			numel := int(t.shape[0])
			if t.ndim == 2 {
				numel *= int(t.shape[1])
			}
			c.owned = append(c.owned, ownedBuf{p: t.data, bytes: 4 * numel, f32: t.dtype == C.GNLP_FLOAT32, param: param})
		}
		add(it.param, true)
		if it.state != nil {
			for _, t := range unsafe.Slice(it.state, C.GNLP_MAX_STATE) {
				add(t, false)
			}
		}
	}
}

func (c *fuzzCase) snapshot() [][]byte {
	out := make([][]byte, len(c.owned))
	for i, o := range c.owned {
		out[i] = bytes.Clone(unsafe.Slice((*byte)(o.p), o.bytes))
	}
	return out
}

// runFuzzCase decodes data into one ABI call and checks the header's
// promises: no crash, a known status with a message, GNLP_ERR_INTERNAL
// never, nothing changed on failure, and, under ordinary hyperparameters,
// no finite float32 weight made NaN or Inf by a successful step.
// It returns what broke, or "".
func runFuzzCase(data []byte) string {
	c := &fuzzCase{in: fuzzInput{data}}
	defer c.free()
	op := c.in.pick(4)
	n := 1
	if op == 0 { // only gnlp_step_batch takes several items
		n += c.in.pick(3)
	}
	items := unsafe.Slice((*C.gnlp_step_item)(c.alloc(int(unsafe.Sizeof(C.gnlp_step_item{}))*n)), n)
	for i := range items {
		items[i] = c.item()
	}
	if n > 1 && c.in.chance(24) { // the same parameter (or its state) twice
		j := 1 + c.in.pick(n-1)
		if c.in.chance(128) {
			items[j] = items[0]
		} else {
			items[j].state = items[0].state
		}
	}
	if c.in.chance(8) {
		items[0].reserved = C.int32_t(c.in.int())
	}
	c.own(items)
	before := c.snapshot()
	var status C.gnlp_status
	call := "gnlp_step_batch"
	switch op {
	case 0:
		status = gnlp_step_batch(&items[0], C.int32_t(n), nil)
	case 1:
		call = "gnlp_step"
		it := &items[0]
		status = gnlp_step(&it.param, &it.grad, it.state, it.n_state, &it.config, it.step, nil)
	case 2:
		call = "gnlp_state_layout"
		// Only the descriptor is read: any shape goes.
		it := &items[0]
		it.param.shape[0], it.param.shape[1] = C.int64_t(c.in.int()), C.int64_t(c.in.int())
		specs := make([]C.gnlp_buffer_spec, C.GNLP_MAX_STATE)
		var count C.int32_t
		status = gnlp_state_layout(&it.param, &it.config, &specs[0], C.int32_t(c.in.pick(C.GNLP_MAX_STATE+1)), &count)
		if status == C.GNLP_OK {
			for _, s := range specs[:count] {
				if s.bytes <= 0 {
					return fmt.Sprintf("gnlp_state_layout: buffer %s has %d bytes", C.GoString(&s.name[0]), int64(s.bytes))
				}
			}
		}
	case 3:
		call = "gnlp_config_validate"
		status = gnlp_config_validate(&items[0].config)
	}
	msg := C.GoString(C.gnlp_last_error())
	switch {
	case status > C.GNLP_ERR_CUDA: // gnlp_status is unsigned in cgo
		return fmt.Sprintf("%s returned unknown status %d", call, int(status))
	case status == C.GNLP_ERR_INTERNAL:
		return fmt.Sprintf("%s: internal error: %s", call, msg)
	case status != C.GNLP_OK && msg == "":
		return fmt.Sprintf("%s failed with status %d and no message", call, int(status))
	}
	after := c.snapshot()
	for i, o := range c.owned {
		if status != C.GNLP_OK && !bytes.Equal(before[i], after[i]) {
			return fmt.Sprintf("%s failed (%d: %s) but changed a buffer", call, int(status), msg)
		}
		stepped := call == "gnlp_step" || call == "gnlp_step_batch"
		if status == C.GNLP_OK && o.param && o.f32 && stepped && ordinary(items) && allFinite(before[i]) && !allFinite(after[i]) {
			return fmt.Sprintf("%s returned GNLP_OK and made a finite weight NaN or Inf", call)
		}
	}
	return ""
}

// ordinary reports whether every item's hyperparameters are ordinary ones:
// valid but extreme values (eps 0 with a zero gradient, lr 1e38) make
// weights NaN or Inf in torch.optim.AdamW too, and only the other promises
// hold for them.
func ordinary(items []C.gnlp_step_item) bool {
	for _, it := range items {
		c := it.config
		if !(c.lr <= 1 && c.eps >= 1e-12 && c.eps <= 1 && c.weight_decay <= 1 && math.Abs(float64(c.scale)) <= 100) {
			return false
		}
	}
	return true
}

// allFinite reports whether the float32s in b are all finite.
func allFinite(b []byte) bool {
	for i := 0; i+4 <= len(b); i += 4 {
		v := math.Float32frombits(binary.LittleEndian.Uint32(b[i:]))
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return false
		}
	}
	return true
}
