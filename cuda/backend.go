package cuda

/*
#include "goapi.h"
*/
import "C"

import (
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// Backend implements core.Backend on the memory of one CUDA device, with
// all work enqueued on one stream. Values are cheap: make one per call.
//
// Host synchronisation: none, except
//   - AllFinite with Flag nil (it must return the answer);
//   - SingularVectors (a projector refresh) waits once, for the solver's
//     convergence flag;
//   - SumSquares (compensation=residual: three per projected matrix and
//     step) returns its sum;
//   - Read (explicit).
//
// With Flag set, AllFinite only records a non-finite tensor in *Flag and
// returns true: the caller decides later (one Read for a whole batch, or
// never, passing Flag on as Skip). With Skip set, every primitive that
// changes parameters or state is a no-op on the device when *Skip != 0.
type Backend struct {
	Lib    *Library
	Device int
	Stream unsafe.Pointer // cudaStream_t; nil = the legacy default stream
	Flag   unsafe.Pointer // device int32, or nil
	Skip   unsafe.Pointer // device int32, or nil
}

var _ core.Backend = Backend{}

// New loads the library and returns a backend for device and stream.
func New(device int, stream unsafe.Pointer) (Backend, error) {
	lib, err := Load()
	if err != nil {
		return Backend{}, err
	}
	return Backend{Lib: lib, Device: device, Stream: stream}, nil
}

func (b Backend) api() *C.gnlp_cuda_api { return (*C.gnlp_cuda_api)(unsafe.Pointer(b.Lib.api)) }
func (b Backend) dev() C.int32_t        { return C.int32_t(b.Device) }

func f32p(t core.Tensor) *C.float { return (*C.float)(t.Data) }
func i64(v int) C.int64_t         { return C.int64_t(v) }
func b32(v bool) C.int32_t {
	if v {
		return 1
	}
	return 0
}

func (b Backend) skip() *C.int32_t { return (*C.int32_t)(b.Skip) }

func adamC(h core.AdamParams) C.gnlp_cuda_adam {
	return C.gc_adam(C.float(h.Beta1), C.float(h.Beta2), C.float(h.OneMinusBeta1), C.float(h.OneMinusBeta2),
		C.float(h.Eps), C.float(h.StepSize), C.float(h.Decay))
}

func momentsC(m core.Moments) C.gnlp_cuda_moments {
	if m.Quantized() {
		return C.gc_moments(m.M1.Data, m.M2.Data, m.Absmax1.Data, m.Absmax2.Data, C.int32_t(m.Bits))
	}
	return C.gc_moments(m.M1.Data, m.M2.Data, nil, nil, 32)
}

// Alloc takes bytes of stream-ordered scratch from the library's pool.
func (b Backend) Alloc(bytes int) (unsafe.Pointer, error) {
	var e errText
	var p unsafe.Pointer
	err := e.check(C.gc_alloc(b.api(), b.dev(), i64(bytes), b.Stream, &p, e.ptr(), e.len()))
	return p, err
}

// Free returns scratch to the pool in stream order.
func (b Backend) Free(p unsafe.Pointer) error {
	var e errText
	return e.check(C.gc_free(b.api(), b.dev(), p, b.Stream, e.ptr(), e.len()))
}

// ZeroBytes clears bytes of device memory.
func (b Backend) ZeroBytes(p unsafe.Pointer, bytes int) error {
	var e errText
	return e.check(C.gc_zero(b.api(), b.dev(), p, i64(bytes), b.Stream, e.ptr(), e.len()))
}

// Read copies bytes of device memory into host memory, waiting for the
// stream. host must stay valid for the call only.
func (b Backend) Read(host, src unsafe.Pointer, bytes int) error {
	var e errText
	return e.check(C.gc_read(b.api(), b.dev(), host, src, i64(bytes), b.Stream, e.ptr(), e.len()))
}

// Write copies bytes of host memory into device memory, waiting for the
// stream.
func (b Backend) Write(dst, host unsafe.Pointer, bytes int) error {
	var e errText
	return e.check(C.gc_write(b.api(), b.dev(), dst, host, i64(bytes), b.Stream, e.ptr(), e.len()))
}

var _ core.HostIO = Backend{}

// ToHost copies src (float32) into dst, for sharded steps' verdicts.
func (b Backend) ToHost(dst []float32, src core.Tensor) error {
	return b.Read(unsafe.Pointer(&dst[0]), src.Data, 4*len(dst))
}

// FromHost copies src into dst (float32).
func (b Backend) FromHost(dst core.Tensor, src []float32) error {
	return b.Write(dst.Data, unsafe.Pointer(&src[0]), 4*len(src))
}

// ScratchPool reports the library's scratch pool on the device (bytes reserved
// from the driver, in use, high-water mark of in use), first returning
// unused memory to the driver when release is set.
func (b Backend) ScratchPool(release bool) (reserved, used, peak int64, err error) {
	var e errText
	var r, u, p C.int64_t
	err = e.check(C.gc_scratch_info(b.api(), b.dev(), b32(release), &r, &u, &p, e.ptr(), e.len()))
	return int64(r), int64(u), int64(p), err
}

// AllFinite reports whether t holds no NaN or Inf; see Backend for the
// deferred form with Flag set.
func (b Backend) AllFinite(t core.Tensor) (bool, error) {
	var e errText
	if b.Flag != nil {
		return true, e.check(C.gc_all_finite(b.api(), b.dev(), t.Data, C.int32_t(t.DType), i64(t.Shape.Numel()),
			(*C.int32_t)(b.Flag), b.Stream, e.ptr(), e.len()))
	}
	flag, err := b.Alloc(4)
	if err != nil {
		return false, err
	}
	defer b.Free(flag)
	if err := b.ZeroBytes(flag, 4); err != nil {
		return false, err
	}
	if err := e.check(C.gc_all_finite(b.api(), b.dev(), t.Data, C.int32_t(t.DType), i64(t.Shape.Numel()),
		(*C.int32_t)(flag), b.Stream, e.ptr(), e.len())); err != nil {
		return false, err
	}
	var bad int32
	if err := b.Read(unsafe.Pointer(&bad), flag, 4); err != nil {
		return false, err
	}
	return bad == 0, nil
}

// Zero sets t to zero.
func (b Backend) Zero(t core.Tensor) error { return b.ZeroBytes(t.Data, t.Bytes()) }

// RowNorms writes the norm of each row of w into out.
func (b Backend) RowNorms(w, out core.Tensor) error {
	var e errText
	return e.check(C.gc_row_norms(b.api(), b.dev(), w.Data, C.int32_t(w.DType), i64(w.Rows()), i64(w.Cols()),
		f32p(out), b.Stream, e.ptr(), e.len()))
}

// WeightNormGrad is the fused row pass (see core.Backend).
func (b Backend) WeightNormGrad(w, grad, g, s, dg, dv core.Tensor) error {
	var e errText
	return e.check(C.gc_weight_norm_grad(b.api(), b.dev(), w.Data, grad.Data, C.int32_t(w.DType), i64(w.Rows()),
		i64(w.Cols()), f32p(g), f32p(s), f32p(dg), f32p(dv), b.skip(), b.Stream, e.ptr(), e.len()))
}

// SingularVectors refreshes projectors by an exact float32 SVD on the
// device; it waits for the device once (see Backend).
func (b Backend) SingularVectors(a, left, right core.Tensor) error {
	var e errText
	var kl, kr int
	if left.Data != nil {
		kl = left.Cols()
	}
	if right.Data != nil {
		kr = right.Rows()
	}
	return e.check(C.gc_singular_vectors(b.api(), b.dev(), f32p(a), i64(a.Rows()), i64(a.Cols()), f32p(left), i64(kl),
		f32p(right), i64(kr), b.skip(), b.Stream, e.ptr(), e.len()))
}

// MatMul is cuBLAS gemm on row-major float32 tensors.
func (b Backend) MatMul(transA bool, a core.Tensor, transB bool, bt core.Tensor, alpha float32, c core.Tensor) error {
	var e errText
	return e.check(C.gc_matmul(b.api(), b.dev(), b32(transA), f32p(a), i64(a.Rows()), i64(a.Cols()), b32(transB),
		f32p(bt), i64(bt.Rows()), i64(bt.Cols()), C.float(alpha), f32p(c), i64(c.Rows()), i64(c.Cols()),
		b32(b.Lib.tf32), b.Stream, e.ptr(), e.len()))
}

// AdamDirection is the fused Adam direction (float32 or quantised moments).
func (b Backend) AdamDirection(x core.Tensor, mom core.Moments, h core.AdamParams) error {
	var e errText
	m, hc := momentsC(mom), adamC(h)
	return e.check(C.gc_adam_direction(b.api(), b.dev(), f32p(x), i64(x.Shape.Numel()), &m, &hc,
		b.skip(), b.Stream, e.ptr(), e.len()))
}

// WeightNormUpdate is the fused row update with write-back in w's dtype.
func (b Backend) WeightNormUpdate(w, g, s, dvlow, ng core.Tensor, h core.AdamParams) error {
	var e errText
	hc := adamC(h)
	return e.check(C.gc_weight_norm_update(b.api(), b.dev(), w.Data, C.int32_t(w.DType), i64(w.Rows()), i64(w.Cols()),
		f32p(g), f32p(s), f32p(dvlow), f32p(ng), &hc, b.skip(), b.Stream, e.ptr(), e.len()))
}

// Encode quantises src into dst block by block.
func (b Backend) Encode(src core.Tensor, dst core.Packed) error {
	var e errText
	return e.check(C.gc_encode(b.api(), b.dev(), f32p(src), i64(src.Shape.Numel()), (*C.uint8_t)(dst.Codes.Data), f32p(dst.Absmax),
		C.int32_t(dst.Format.Bits), b32(dst.Format.Signed), b.skip(), b.Stream, e.ptr(), e.len()))
}

// Decode expands src into dst.
func (b Backend) Decode(src core.Packed, dst core.Tensor) error {
	var e errText
	return e.check(C.gc_decode(b.api(), b.dev(), (*C.uint8_t)(src.Codes.Data), f32p(src.Absmax), C.int32_t(src.Format.Bits),
		b32(src.Format.Signed), i64(dst.Shape.Numel()), f32p(dst), b.Stream, e.ptr(), e.len()))
}

// AdamW is plain AdamW (float32 or quantised moments).
func (b Backend) AdamW(w, grad core.Tensor, mom core.Moments, h core.AdamParams) error {
	var e errText
	m, hc := momentsC(mom), adamC(h)
	return e.check(C.gc_adamw(b.api(), b.dev(), w.Data, grad.Data, C.int32_t(w.DType), i64(w.Shape.Numel()),
		&m, &hc, b.skip(), b.Stream, e.ptr(), e.len()))
}

// Copy copies src into dst (same dtype and shape), device to device, in
// stream order. A set Skip does not stop it: it restores snapshots.
func (b Backend) Copy(dst, src core.Tensor) error {
	var e errText
	return e.check(C.gc_copy(b.api(), b.dev(), dst.Data, src.Data, i64(src.Bytes()), b.Stream, e.ptr(), e.len()))
}

var _ core.Executor = Backend{}

// ForEach runs the items of a batch one after another: they share the
// stream, and each kernel already fills the device.
func (Backend) ForEach(n int, w core.Work) {
	for i := range n {
		w.Run(i)
	}
}

// Scratch lends n float32 elements of stream-ordered scratch.
func (b Backend) Scratch(n int) (core.Tensor, any, error) {
	p, err := b.Alloc(4 * n)
	if err != nil {
		return core.Tensor{}, nil, err
	}
	return core.Tensor{Data: p, DType: core.Float32, Shape: core.Shape{n}}, p, nil
}

// Release frees what Scratch lent, in stream order.
func (b Backend) Release(token any) { _ = b.Free(token.(unsafe.Pointer)) }

// SumSquares is the deterministic two-pass reduction of the kernels; it
// waits for the stream to return the sum (see Backend).
func (b Backend) SumSquares(a, other core.Tensor) (float64, error) {
	var e errText
	var out C.double
	err := e.check(C.gc_sum_squares(b.api(), b.dev(), f32p(a), f32p(other), i64(a.Shape.Numel()), &out,
		b.Stream, e.ptr(), e.len()))
	return float64(out), err
}

// Axpby sets y = alpha x + beta y; a set Skip makes it a no-op.
func (b Backend) Axpby(alpha float32, x core.Tensor, beta float32, y core.Tensor) error {
	var e errText
	return e.check(C.gc_axpby(b.api(), b.dev(), C.float(alpha), f32p(x), C.float(beta), f32p(y),
		i64(y.Shape.Numel()), b.skip(), b.Stream, e.ptr(), e.len()))
}
