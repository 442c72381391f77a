// Package hostcheck runs the CUDA backend's arithmetic on the host, so that
// it is tested on machines without a GPU.
//
// The kernels of cuda/gnlp_cuda.cu take every per-element, per-row and
// per-block formula from cuda/kernel_math.cuh, and every row-major/
// column-major translation for cuBLAS and cuSOLVER from cuda/plumbing.h.
// This package compiles those two headers with the host C++ compiler
// (hostcheck.cc runs them in sequential loops shaped like the kernels, with
// a reference column-major gemm and a Jacobi SVD in place of the libraries)
// and exposes the result as a core.Backend on host memory. Its tests
// compare it with core/cpu primitive by primitive and step by step.
package hostcheck

/*
#cgo CXXFLAGS: -std=c++17 -O2 -Wall -Wextra
#include "hostcheck.h"
*/
import "C"

import (
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// Backend is core.Backend computed by the CUDA backend's host-compiled
// math. The zero value is ready to use.
type Backend struct{}

var _ core.Backend = Backend{}

func adamC(h core.AdamParams) C.hc_adam {
	return C.hc_adam{beta1: C.float(h.Beta1), beta2: C.float(h.Beta2),
		one_minus_beta1: C.float(h.OneMinusBeta1), one_minus_beta2: C.float(h.OneMinusBeta2), eps: C.float(h.Eps),
		step_size: C.float(h.StepSize), decay: C.float(h.Decay)}
}

func momentsC(m core.Moments) C.hc_moments {
	c := C.hc_moments{m1: m.M1.Data, m2: m.M2.Data, bits: 32}
	if m.Quantized() {
		c.a1 = (*C.float)(m.Absmax1.Data)
		c.a2 = (*C.float)(m.Absmax2.Data)
		c.bits = C.int32_t(m.Bits)
	}
	return c
}

func f32p(t core.Tensor) *C.float { return (*C.float)(t.Data) }

func i64(v int) C.int64_t { return C.int64_t(v) }

func b32(v bool) C.int32_t {
	if v {
		return 1
	}
	return 0
}

// errText holds a message written by the C side.
type errText [512]C.char

func (e *errText) ptr() *C.char { return &e[0] }

func (e *errText) err(rc C.int) error {
	return core.Errorf(core.Code(rc), "%s", C.GoString(e.ptr()))
}

// AllFinite reports whether t holds no NaN or Inf.
func (Backend) AllFinite(t core.Tensor) (bool, error) {
	return C.hc_all_finite(t.Data, C.int32_t(t.DType), i64(t.Shape.Numel())) != 0, nil
}

// Zero sets t to zero.
func (Backend) Zero(t core.Tensor) error {
	clear(unsafe.Slice((*byte)(t.Data), t.Bytes()))
	return nil
}

// Copy copies src into dst.
func (Backend) Copy(dst, src core.Tensor) error {
	copy(unsafe.Slice((*byte)(dst.Data), dst.Bytes()), unsafe.Slice((*byte)(src.Data), src.Bytes()))
	return nil
}

// SumSquares is the kernels' sum of squares, in one sequential pass.
func (Backend) SumSquares(a, b core.Tensor) (float64, error) {
	return float64(C.hc_sum_squares(f32p(a), f32p(b), i64(a.Shape.Numel()))), nil
}

// Axpby sets y = alpha x + beta y.
func (Backend) Axpby(alpha float32, x core.Tensor, beta float32, y core.Tensor) error {
	C.hc_axpby(C.float(alpha), f32p(x), C.float(beta), f32p(y), i64(y.Shape.Numel()))
	return nil
}

var _ core.HostIO = Backend{}

// ToHost copies src (float32, host memory here) into dst.
func (Backend) ToHost(dst []float32, src core.Tensor) error {
	copy(dst, unsafe.Slice((*float32)(src.Data), len(dst)))
	return nil
}

// FromHost copies src into dst (float32).
func (Backend) FromHost(dst core.Tensor, src []float32) error {
	copy(unsafe.Slice((*float32)(dst.Data), len(src)), src)
	return nil
}

// RowNorms writes the norm of each row of w into out.
func (Backend) RowNorms(w, out core.Tensor) error {
	C.hc_row_norms(w.Data, C.int32_t(w.DType), i64(w.Rows()), i64(w.Cols()), f32p(out))
	return nil
}

// WeightNormGrad computes dg and dv (see core.Backend).
func (Backend) WeightNormGrad(w, grad, g, s, dg, dv core.Tensor) error {
	C.hc_weight_norm_grad(w.Data, grad.Data, C.int32_t(w.DType), i64(w.Rows()), i64(w.Cols()),
		f32p(g), f32p(s), f32p(dg), f32p(dv))
	return nil
}

// SingularVectors runs plumbing.h's call sequence with a Jacobi SVD.
func (Backend) SingularVectors(a, left, right core.Tensor) error {
	var e errText
	var kl, kr int
	if left.Data != nil {
		kl = left.Cols()
	}
	if right.Data != nil {
		kr = right.Rows()
	}
	if rc := C.hc_singular_vectors(f32p(a), i64(a.Rows()), i64(a.Cols()), f32p(left), i64(kl), f32p(right), i64(kr), e.ptr(), C.size_t(len(e))); rc != 0 {
		return e.err(rc)
	}
	return nil
}

// MatMul runs plumbing.h's row-major to column-major translation with a
// reference column-major gemm.
func (Backend) MatMul(transA bool, a core.Tensor, transB bool, b core.Tensor, alpha float32, c core.Tensor) error {
	var e errText
	if rc := C.hc_matmul(b32(transA), f32p(a), i64(a.Rows()), i64(a.Cols()), b32(transB), f32p(b), i64(b.Rows()), i64(b.Cols()),
		C.float(alpha), f32p(c), i64(c.Rows()), i64(c.Cols()), e.ptr(), C.size_t(len(e))); rc != 0 {
		return e.err(rc)
	}
	return nil
}

// AdamDirection updates the moments and overwrites x with the direction.
func (Backend) AdamDirection(x core.Tensor, mom core.Moments, h core.AdamParams) error {
	C.hc_adam_direction(f32p(x), i64(x.Shape.Numel()), momentsC(mom), adamC(h))
	return nil
}

// WeightNormUpdate finishes a projected step (see core.Backend).
func (Backend) WeightNormUpdate(w, g, s, dvlow, ng core.Tensor, h core.AdamParams) error {
	C.hc_weight_norm_update(w.Data, C.int32_t(w.DType), i64(w.Rows()), i64(w.Cols()), f32p(g), f32p(s), f32p(dvlow), f32p(ng), adamC(h))
	return nil
}

// Encode quantises src into dst.
func (Backend) Encode(src core.Tensor, dst core.Packed) error {
	C.hc_encode(f32p(src), i64(src.Shape.Numel()), (*C.uint8_t)(dst.Codes.Data), f32p(dst.Absmax),
		C.int32_t(dst.Format.Bits), b32(dst.Format.Signed))
	return nil
}

// Decode expands src into dst.
func (Backend) Decode(src core.Packed, dst core.Tensor) error {
	C.hc_decode((*C.uint8_t)(src.Codes.Data), f32p(src.Absmax), C.int32_t(src.Format.Bits), b32(src.Format.Signed),
		i64(dst.Shape.Numel()), f32p(dst))
	return nil
}

// AdamW applies plain AdamW.
func (Backend) AdamW(w, grad core.Tensor, mom core.Moments, h core.AdamParams) error {
	C.hc_adamw(w.Data, grad.Data, C.int32_t(w.DType), i64(w.Shape.Numel()), momentsC(mom), adamC(h))
	return nil
}

// F16ToF32 and the other scalar functions expose kernel_math.cuh's
// conversions and quantiser for exhaustive tests.
func F16ToF32(h uint16) float32 { return float32(C.hc_f16_to_f32(C.uint16_t(h))) }

// F32ToF16 rounds to float16 bits.
func F32ToF16(v float32) uint16 { return uint16(C.hc_f32_to_f16(C.float(v))) }

// BF16ToF32 widens bfloat16 bits.
func BF16ToF32(h uint16) float32 { return float32(C.hc_bf16_to_f32(C.uint16_t(h))) }

// F32ToBF16 rounds to bfloat16 bits.
func F32ToBF16(v float32) uint16 { return uint16(C.hc_f32_to_bf16(C.float(v))) }

// QuantNearest is the code index of x in a format's table.
func QuantNearest(bits int, signed bool, x float32) uint8 {
	return uint8(C.hc_quant_nearest(C.int32_t(bits), b32(signed), C.float(x)))
}

// QuantValue is entry i of a format's table as compiled into the kernels.
func QuantValue(bits int, signed bool, i int) float32 {
	return float32(C.hc_quant_value(C.int32_t(bits), b32(signed), C.int32_t(i)))
}
