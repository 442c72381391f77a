// Package quant is blockwise quantisation with dynamic (non-linear) codes:
// the storage format of 8-bit and 4-bit optimizer state.
//
// A block of BlockSize values is stored as one code per value (a byte for
// 8 bits, a nibble for 4 bits, two to a byte, low nibble first) plus the
// block's absolute maximum in float32. A code indexes a sorted table of
// values in [-1, 1] (signed formats: first moments, projectors) or [0, 1]
// (unsigned: second moments); the value is table[code] * absmax.
//
// The tables are dynamic tree codes (Dettmers, "8-bit approximations for
// parallelism in deep learning", 2016; used by bitsandbytes' 8-bit
// optimizers): magnitudes are spread over decades, with more fraction
// points in the larger decades, so both large and tiny entries of a block
// keep a relative precision that linear codes lose.
//
// The unsigned 4-bit code has no zero (Li et al., "Memory Efficient
// Optimizers with 4-bit States", NeurIPS 2023, call this the zero-point
// problem): with a zero, a sparse gradient's small second moments round to
// 0 while their first moments do not, and m1 / (sqrt(m2) + eps) explodes;
// measured on an embedding, 93% of the second moments decoded to 0 after 30
// steps and training diverged. Without it a second moment is at least
// Unsigned4.Code()[0] (0.0025) times its block's absmax, which bounds the
// update. The 8-bit unsigned code's smallest non-zero value is 1.7e-7,
// far below anything that matters, so it keeps bitsandbytes' zero.
package quant

import (
	"fmt"
	"math"
	"slices"
	"sort"
)

// BlockSize is the number of values sharing one absmax, as in bitsandbytes'
// blockwise optimizer states.
const BlockSize = 256

// MinQuantizedElems is the size below which state stays float32: the saving
// is negligible and small tensors (biases, norms) are sensitive.
const MinQuantizedElems = 4096

// Format is a quantised storage format.
type Format struct {
	Bits   int  // 8 or 4
	Signed bool // code over [-1, 1] rather than [0, 1]
}

// The formats of optimizer state.
var (
	Signed8   = Format{8, true}
	Unsigned8 = Format{8, false}
	Signed4   = Format{4, true}
	Unsigned4 = Format{4, false}
)

func (f Format) String() string {
	sign := "unsigned"
	if f.Signed {
		sign = "signed"
	}
	return fmt.Sprintf("%s %d-bit", sign, f.Bits)
}

// Code is a sorted table of the 2^Bits representable values of a format.
type Code []float32

var codes = map[Format]Code{
	Signed8: dynamicCode(Signed8), Unsigned8: dynamicCode(Unsigned8),
	Signed4: dynamicCode(Signed4), Unsigned4: dynamicCode(Unsigned4),
}

// Code returns the format's table.
func (f Format) Code() Code { return codes[f] }

// Bytes is the storage size of n codes.
func (f Format) Bytes(n int) int { return (n*f.Bits + 7) / 8 }

// Blocks is the number of blocks (and absmax values) of n values.
func Blocks(n int) int { return (n + BlockSize - 1) / BlockSize }

// dynamicCode builds a format's table. With D = Bits-1 decades, decade
// d = 0..D-1 (scale 10^(d-D+1)) gets 2^(d+extra) points at the midpoints of
// an even split of [0.1, 1] x scale, where extra is 0 for signed codes
// (whose sign takes a bit) and 1 for unsigned ones; then 0 and 1 are added,
// and signed codes get the mirror images of the points. That is
// 2 (2^D - 1) + 2 = 2^Bits values for signed codes and 2^(D+1) - 2 + 2 for
// unsigned ones. -1 itself is not representable: the most negative signed
// value is -(1 - 0.45/2^(D-1)). The unsigned 4-bit code gives its zero's
// slot to the smallest decade instead (3 points: 0.0025, 0.0055, 0.0085).
func dynamicCode(f Format) Code {
	decades := f.Bits - 1
	extra := 1
	if f.Signed {
		extra = 0
	}
	zeroFree := f == Unsigned4
	var pos []float64
	for d := 0; d < decades; d++ {
		points := 1 << (d + extra)
		if zeroFree && d == 0 {
			points++
		}
		scale := math.Pow(10, float64(d-decades+1))
		step := 0.9 / float64(points)
		for i := 0; i < points; i++ {
			pos = append(pos, scale*(0.1+step*(float64(i)+0.5)))
		}
	}
	values := append([]float64{1}, pos...)
	if !zeroFree {
		values = append(values, 0)
	}
	if f.Signed {
		for _, v := range pos {
			values = append(values, -v)
		}
	}
	slices.Sort(values)
	if len(values) != 1<<f.Bits {
		panic(fmt.Sprintf("quant: %v code has %d values", f, len(values)))
	}
	c := make(Code, len(values))
	for i, v := range values {
		c[i] = float32(v)
	}
	return c
}

// Nearest returns the index of the table value closest to x (ties to the
// lower index).
func (c Code) Nearest(x float32) uint8 {
	hi := sort.Search(len(c), func(i int) bool { return c[i] >= x })
	if hi == 0 {
		return 0
	}
	if hi == len(c) {
		return uint8(len(c) - 1)
	}
	if x-c[hi-1] <= c[hi]-x {
		return uint8(hi - 1)
	}
	return uint8(hi)
}

// Encode quantises one block of values (at most BlockSize) into out, which
// holds f.Bytes(len(vals)) bytes, and returns the block's absmax.
func (f Format) Encode(vals []float32, out []byte) (absmax float32) {
	for _, v := range vals {
		absmax = max(absmax, float32(math.Abs(float64(v))))
	}
	c := f.Code()
	inv := float32(0)
	if absmax > 0 {
		inv = 1 / absmax
	}
	if f.Bits == 8 {
		for i, v := range vals {
			out[i] = c.Nearest(v * inv)
		}
		return absmax
	}
	for i := 0; i < len(vals); i += 2 {
		lo := c.Nearest(vals[i] * inv)
		hi := uint8(0)
		if i+1 < len(vals) {
			hi = c.Nearest(vals[i+1] * inv)
		}
		out[i/2] = lo | hi<<4
	}
	return absmax
}

// Decode expands the codes of one block into out (len(out) values).
func (f Format) Decode(codes []byte, absmax float32, out []float32) {
	c := f.Code()
	if f.Bits == 8 {
		for i := range out {
			out[i] = c[codes[i]] * absmax
		}
		return
	}
	for i := range out {
		q := codes[i/2] >> (4 * (i % 2)) & 0xf
		out[i] = c[q] * absmax
	}
}
