// Command capi is libgradnormlorp, the C ABI of include/gradnormlorp.h,
// built with `go build -buildmode=c-shared`. It validates and translates C
// arguments into core's types and reports core's errors as status codes with
// per-thread messages; the algorithm itself lives in package core.
package main

/*
#cgo CFLAGS: -I${SRCDIR}/../include -DGNLP_TYPES_ONLY
#include <stdlib.h>
#include "gradnormlorp.h"

void gnlpSetError(const char *msg, size_t len);
*/
import "C"

import (
	"fmt"
	"runtime/debug"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
)

var versionC = C.CString(version) // lives as long as the library

func main() {}

// fail records err as this thread's error text and returns its status.
func fail(err error) C.gnlp_status {
	msg := err.Error()
	C.gnlpSetError((*C.char)(unsafe.Pointer(unsafe.StringData(msg))), C.size_t(len(msg)))
	return C.gnlp_status(core.CodeOf(err))
}

// guard turns a panic inside an exported call into GNLP_ERR_INTERNAL instead
// of taking the host process down. Use as `defer guard(&status)`.
func guard(status *C.gnlp_status) {
	if r := recover(); r != nil {
		*status = fail(core.Errorf(core.CodeInternal, "internal error (please report): %v\n%s", r, debug.Stack()))
	}
}

// run executes body under guard and converts its error to a status.
func run(body func() error) (status C.gnlp_status) {
	defer guard(&status)
	if err := body(); err != nil {
		return fail(err)
	}
	return C.GNLP_OK
}

func nullError(what string) error {
	return core.Errorf(core.CodeNullPointer, "%s is NULL", what)
}

// configFromC converts and validates a gnlp_config.
func configFromC(c *C.gnlp_config) (core.Config, error) {
	if c == nil {
		return core.Config{}, nullError("config")
	}
	cfg := core.Config{
		LR: float64(c.lr), Beta1: float64(c.beta1), Beta2: float64(c.beta2),
		Eps: float64(c.eps), WeightDecay: float64(c.weight_decay), Scale: float64(c.scale),
		Rank: int(c.rank), UpdateProjGap: int(c.update_proj_gap),
		ProjType: core.ProjType(c.proj_type), CorrectBias: c.correct_bias != 0,
		OptimBits: int(c.optim_bits), Refresh: core.RefreshMode(c.refresh),
		Compensation: core.CompensationMode(c.compensation),
	}
	return cfg, cfg.Validate()
}

func configToC(cfg core.Config) C.gnlp_config {
	correctBias := 0
	if cfg.CorrectBias {
		correctBias = 1
	}
	return C.gnlp_config{
		lr: C.double(cfg.LR), beta1: C.double(cfg.Beta1), beta2: C.double(cfg.Beta2),
		eps: C.double(cfg.Eps), weight_decay: C.double(cfg.WeightDecay), scale: C.double(cfg.Scale),
		rank: C.int32_t(cfg.Rank), update_proj_gap: C.int32_t(cfg.UpdateProjGap),
		proj_type: C.int32_t(cfg.ProjType), correct_bias: C.int32_t(correctBias),
		optim_bits: C.int32_t(cfg.OptimBits), refresh: C.int32_t(cfg.Refresh),
		compensation: C.int32_t(cfg.Compensation),
	}
}

// tensorFromC checks a gnlp_tensor (pointer, dtype, rank, shape, strides,
// alignment, device) and converts it. `what` names it in messages.
func tensorFromC(t *C.gnlp_tensor, what string) (core.Tensor, error) {
	return convertTensor(t, what, false)
}

// convertTensor is tensorFromC; with allowEmpty, the first dimension may
// be 0 (a rank's rows of a sharded parameter), and then data may be NULL.
func convertTensor(t *C.gnlp_tensor, what string, allowEmpty bool) (core.Tensor, error) {
	if t == nil {
		return core.Tensor{}, nullError(what)
	}
	dtype := core.DType(t.dtype)
	if dtype.Size() == 0 {
		return core.Tensor{}, core.Errorf(core.CodeDType, "%s has unknown dtype %d", what, int32(t.dtype))
	}
	shape, err := shapeOf(t, what, allowEmpty)
	if err != nil {
		return core.Tensor{}, err
	}
	ndim := len(shape)
	// Row-major contiguity; the stride of a dimension of size 1 is free.
	want := int64(1)
	for i := ndim - 1; i >= 0; i-- {
		if got := int64(t.strides[i]); shape[i] != 1 && got != want {
			return core.Tensor{}, core.Errorf(core.CodeNotContiguous, "%s is not contiguous: shape %v with strides %v (call .contiguous())", what, shape, stridesOf(t))
		}
		want *= int64(shape[i])
	}
	if _, err := deviceFromC(t, what); err != nil {
		return core.Tensor{}, err
	}
	if shape.Numel() == 0 {
		return core.Tensor{DType: dtype, Shape: shape}, nil
	}
	if t.data == nil {
		return core.Tensor{}, core.Errorf(core.CodeNullPointer, "%s data is NULL", what)
	}
	if uintptr(t.data)%uintptr(dtype.Size()) != 0 {
		return core.Tensor{}, core.Errorf(core.CodeMisaligned, "%s data %p is not aligned to its %v elements", what, t.data, dtype)
	}
	return core.Tensor{Data: t.data, DType: dtype, Shape: shape}, nil
}

// shapeOf reads the rank and shape of t, rejecting empty dimensions but,
// with allowEmpty, a first dimension of 0.
func shapeOf(t *C.gnlp_tensor, what string, allowEmpty bool) (core.Shape, error) {
	ndim := int(t.ndim)
	if ndim != 1 && ndim != 2 {
		return nil, core.Errorf(core.CodeShape, "%s has %d dimensions; only 1 and 2 are supported", what, ndim)
	}
	shape := make(core.Shape, ndim)
	for i := range shape {
		shape[i] = int(t.shape[i])
		if shape[i] <= 0 && !(allowEmpty && i == 0 && shape[i] == 0) {
			return nil, core.Errorf(core.CodeShape, "%s has non-positive dimension %d in shape %v", what, shape[i], shape)
		}
	}
	return shape, nil
}

func stridesOf(t *C.gnlp_tensor) []int64 {
	s := make([]int64, int(t.ndim))
	for i := range s {
		s[i] = int64(t.strides[i])
	}
	return s
}

// convertState converts the caller's state array; with allowEmpty, buffers
// may be empty (a rank's rows of a sharded parameter).
func convertState(state *C.gnlp_tensor, n C.int32_t, allowEmpty bool) ([]core.Tensor, error) {
	if n < 0 || n > C.GNLP_MAX_STATE {
		return nil, core.Errorf(core.CodeInvalidArgument, "n_state is %d, must be in [0, %d]", int32(n), C.GNLP_MAX_STATE)
	}
	if n > 0 && state == nil {
		return nil, nullError("state")
	}
	cs := unsafe.Slice(state, int(n))
	out := make([]core.Tensor, len(cs))
	for i := range cs {
		t, err := convertTensor(&cs[i], fmt.Sprintf("state[%d]", i), allowEmpty)
		if err != nil {
			return nil, err
		}
		out[i] = t
	}
	return out, nil
}
