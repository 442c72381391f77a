package cpu

import (
	"math"
	"unsafe"

	"github.com/x448/float16"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// f32 views a float32 tensor as a slice.
func f32(t core.Tensor) []float32 {
	return unsafe.Slice((*float32)(t.Data), t.Shape.Numel())
}

// rows gives row access to a parameter-dtype matrix (a vector is one
// column) as float32, converting bfloat16 and float16 on the fly.
type rows struct {
	dtype core.DType
	cols  int
	f32   []float32
	u16   []uint16
}

func rowsOf(t core.Tensor) rows {
	r := rows{dtype: t.DType, cols: t.Cols()}
	if t.DType == core.Float32 {
		r.f32 = f32(t)
	} else {
		r.u16 = unsafe.Slice((*uint16)(t.Data), t.Shape.Numel())
	}
	return r
}

// load returns row i as float32: the row itself for float32 tensors,
// otherwise its values converted into buf (of length cols).
func (r rows) load(i int, buf []float32) []float32 {
	return r.loadRange(i*r.cols, (i+1)*r.cols, buf)
}

// store writes src into row i (see storeRange).
func (r rows) store(i int, src []float32) []float32 {
	return r.storeRange(i*r.cols, src)
}

// loadRange returns elements [lo, hi) as float32, converted into buf
// unless the tensor is float32.
func (r rows) loadRange(lo, hi int, buf []float32) []float32 {
	switch r.dtype {
	case core.Float32:
		return r.f32[lo:hi]
	case core.BFloat16:
		for j, h := range r.u16[lo:hi] {
			buf[j] = bf16ToF32(h)
		}
	default:
		for j, h := range r.u16[lo:hi] {
			buf[j] = float16.Frombits(h).Float32()
		}
	}
	return buf[:hi-lo]
}

// storeRange writes src at element lo, rounding to nearest even for 16-bit
// dtypes, and returns the values as stored (rounded) in float32.
func (r rows) storeRange(lo int, src []float32) []float32 {
	hi := lo + len(src)
	switch r.dtype {
	case core.Float32:
		dst := r.f32[lo:hi]
		copy(dst, src)
		return dst
	case core.BFloat16:
		dst := r.u16[lo:hi]
		for j, v := range src {
			dst[j] = f32ToBF16(v)
			src[j] = bf16ToF32(dst[j])
		}
	default:
		dst := r.u16[lo:hi]
		for j, v := range src {
			dst[j] = float16.Fromfloat32(v).Bits()
			src[j] = float16.Frombits(dst[j]).Float32()
		}
	}
	return src
}

// rangeFinite reports whether elements [lo, hi) hold no NaN or Inf.
func (r rows) rangeFinite(lo, hi int) bool {
	switch r.dtype {
	case core.Float32:
		return finite32(r.f32[lo:hi])
	case core.BFloat16:
		for _, h := range r.u16[lo:hi] {
			if h&0x7f80 == 0x7f80 {
				return false
			}
		}
	default:
		for _, h := range r.u16[lo:hi] {
			if h&0x7c00 == 0x7c00 {
				return false
			}
		}
	}
	return true
}

func bf16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// f32ToBF16 rounds to nearest even, keeping NaNs quiet NaNs.
func f32ToBF16(v float32) uint16 {
	b := math.Float32bits(v)
	if v != v {
		return uint16(b>>16) | 0x40
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

// allFinite reports whether no element is NaN or Inf.
func (r rows) allFinite() bool {
	return r.rangeFinite(0, max(len(r.f32), len(r.u16)))
}
