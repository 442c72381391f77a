// Package quant is blockwise 8-bit quantisation with a dynamic
// (non-linear) code, the storage format of 8-bit Adam moments.
//
// A block of BlockSize values is stored as one byte per value plus the
// block's absolute maximum in float32. A byte indexes a sorted table of 256
// values in [-1, 1] (signed code, for first moments) or [0, 1] (unsigned
// code, for second moments); the value is table[byte] * absmax.
//
// The table is a dynamic tree code (Dettmers, "8-bit approximations for
// parallelism in deep learning", 2016; used by bitsandbytes' 8-bit
// optimizers): magnitudes are spread over decades, 10^-6 .. 1, with more
// fraction points in the larger decades, so both large and tiny entries of a
// block keep a relative precision that linear 8-bit codes lose.
package quant

import (
	"math"
	"slices"
	"sort"
)

// BlockSize is the number of values sharing one absmax, as in bitsandbytes'
// blockwise optimizer states.
const BlockSize = 256

// MinQuantizedElems is the size below which a moment stays float32: the
// saving is negligible and small tensors (biases, norms) are sensitive.
const MinQuantizedElems = 4096

// Code is a sorted table of 256 representable values.
type Code [256]float32

// Signed and Unsigned are the codes of first and second moments.
var (
	Signed   = dynamicCode(true)
	Unsigned = dynamicCode(false)
)

// dynamicCode builds the table. For decade d = 0..6 (scale 10^(d-6)) it
// places 2^(d+extra) points at the midpoints of an even split of
// [0.1, 1] x scale, where extra is 0 for the signed code (whose sign takes a
// bit) and 1 for the unsigned one; then adds 0 and 1, and for the signed
// code the mirror images of the points. Signed: 2*127 + 2 = 256 values, so
// -1 itself is not representable (the most negative value is -0.99...);
// unsigned: 254 + 2.
func dynamicCode(signed bool) *Code {
	extra := 1
	if signed {
		extra = 0
	}
	var pos []float64
	for d := 0; d < 7; d++ {
		points := 1 << (d + extra)
		scale := math.Pow(10, float64(d-6))
		step := 0.9 / float64(points)
		for i := 0; i < points; i++ {
			pos = append(pos, scale*(0.1+step*(float64(i)+0.5)))
		}
	}
	values := []float64{0, 1}
	values = append(values, pos...)
	if signed {
		for _, v := range pos {
			values = append(values, -v)
		}
	}
	slices.Sort(values)
	var c Code
	if len(values) != len(c) {
		panic("quant: dynamic code does not have 256 values")
	}
	for i, v := range values {
		c[i] = float32(v)
	}
	return &c
}

// nearest returns the index of the table value closest to x (ties to the
// lower index).
func (c *Code) nearest(x float32) uint8 {
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

// Quantize encodes vals (one block) into out and returns the block absmax.
func (c *Code) Quantize(vals []float32, out []uint8) (absmax float32) {
	for _, v := range vals {
		absmax = max(absmax, float32(math.Abs(float64(v))))
	}
	if absmax == 0 {
		zero := c.nearest(0)
		for i := range out[:len(vals)] {
			out[i] = zero
		}
		return 0
	}
	inv := 1 / absmax
	for i, v := range vals {
		out[i] = c.nearest(v * inv)
	}
	return absmax
}

// Dequantize decodes one block into out.
func (c *Code) Dequantize(codes []uint8, absmax float32, out []float32) {
	for i, q := range codes {
		out[i] = c[q] * absmax
	}
}

// Blocks is the number of blocks of n values.
func Blocks(n int) int { return (n + BlockSize - 1) / BlockSize }
