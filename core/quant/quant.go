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
	"sync"
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

// lookups are the fast Nearest of each format, for Encode; each takes a
// millisecond to build, so it is built on first use.
var lookups = map[Format]func() *lookup{
	Signed8: lazyLookup(Signed8), Unsigned8: lazyLookup(Unsigned8),
	Signed4: lazyLookup(Signed4), Unsigned4: lazyLookup(Unsigned4),
}

func lazyLookup(f Format) func() *lookup {
	return sync.OnceValue(func() *lookup { return newLookup(codes[f]) })
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
// lower index), except that a positive x never takes a zero first entry
// (the unsigned 8-bit code's): a second moment stored as 0 beside a non-zero
// first moment would make Adam's step m/eps, thousands of times lr.
func (c Code) Nearest(x float32) uint8 {
	hi := sort.Search(len(c), func(i int) bool { return c[i] >= x })
	if hi == 0 {
		return 0
	}
	if hi == 1 && c[0] == 0 && x > 0 {
		return 1
	}
	if hi == len(c) {
		return uint8(len(c) - 1)
	}
	if x-c[hi-1] <= c[hi]-x {
		return uint8(hi - 1)
	}
	return uint8(hi)
}

// lookup finds Code.Nearest's answer without a search. Nearest is
// monotone in x, so code j+1 or above is the answer exactly when
// x >= above[j]; the thresholds are found by bisecting Nearest itself, which
// keeps its float32 rounding and tie rule without restating them. A table
// indexed by the top 16 bits of x's float32 representation (sign, exponent,
// 7 mantissa bits) gives the lowest answer within that bucket; buckets are
// 1/128 of an octave wide, so a step or two up the thresholds finishes.
// The arrays are fixed-size so that uint8 indices need no bounds checks.
type lookup struct {
	start [1 << 16]uint8
	code  [256]float32 // the code, then zeros
	above [256]float32 // above[:last]
	last  uint8        // the last code
}

func newLookup(c Code) *lookup {
	l := &lookup{last: uint8(len(c) - 1)}
	copy(l.code[:], c)
	for j := range int(l.last) {
		// Nearest(c[j]) = j and Nearest(c[j+1]) = j+1: bisect the float32s
		// between them, in order, for the first one above j.
		lo, hi := orderedBits(c[j]), orderedBits(c[j+1])
		for hi-lo > 1 {
			mid := lo + (hi-lo)/2
			if int(c.Nearest(fromOrderedBits(mid))) > j {
				hi = mid
			} else {
				lo = mid
			}
		}
		l.above[j] = fromOrderedBits(hi)
	}
	for b := range l.start {
		// The bucket's ends are its smallest and largest values (the other
		// way round for negatives); taking the lower answer of the two also
		// covers the buckets holding ±Inf and NaNs (whose answer is the last
		// code).
		first := math.Float32frombits(uint32(b) << 16)
		last := math.Float32frombits(uint32(b)<<16 | 0xffff)
		l.start[b] = min(c.Nearest(first), c.Nearest(last))
	}
	return l
}

// orderedBits maps float32s to integers in the same order (-0 just below
// +0), so bisection can step through every float32 between two values.
func orderedBits(x float32) int64 {
	b := math.Float32bits(x)
	if b>>31 != 0 {
		return -int64(b&^(1<<31)) - 1
	}
	return int64(b)
}

func fromOrderedBits(k int64) float32 {
	if k < 0 {
		return math.Float32frombits(uint32(-(k + 1)) | 1<<31)
	}
	return math.Float32frombits(uint32(k))
}

// nearest is c.Nearest(x) for the lookup's code. !(x < t) rather than
// x >= t sends NaN to the last code, as Nearest's search does.
func (l *lookup) nearest(x float32) uint8 {
	q := l.start[math.Float32bits(x)>>16]
	for q < l.last && !(x < l.above[q]) {
		q++
	}
	return q
}

// Encode quantises one block of values (at most BlockSize) into out, which
// holds f.Bytes(len(vals)) bytes, and returns the block's absmax.
func (f Format) Encode(vals []float32, out []byte) (absmax float32) {
	absmax = absMax(vals)
	l := lookups[f]()
	inv := float32(0)
	if absmax > 0 {
		inv = 1 / absmax
	}
	if f.Bits == 8 {
		for i, v := range vals {
			out[i] = l.nearest(v * inv)
		}
		return absmax
	}
	pairs := len(vals) / 2
	for i := range pairs {
		out[i] = l.nearest(vals[2*i]*inv) | l.nearest(vals[2*i+1]*inv)<<4
	}
	if len(vals)%2 == 1 {
		out[pairs] = l.nearest(vals[2*pairs] * inv)
	}
	return absmax
}

// absMax is the largest |v|, NaN if any v is NaN. Without NaNs the float
// order of magnitudes is the integer order of their bits, which compiles
// to branch-free code (the float max does not); four accumulators keep the
// loop off one dependency chain.
func absMax(vals []float32) float32 {
	const mag = 1<<31 - 1
	var m0, m1, m2, m3 uint32
	i := 0
	for ; i+4 <= len(vals); i += 4 {
		v := vals[i : i+4 : i+4]
		m0 = max(m0, math.Float32bits(v[0])&mag)
		m1 = max(m1, math.Float32bits(v[1])&mag)
		m2 = max(m2, math.Float32bits(v[2])&mag)
		m3 = max(m3, math.Float32bits(v[3])&mag)
	}
	for ; i < len(vals); i++ {
		m0 = max(m0, math.Float32bits(vals[i])&mag)
	}
	bits := max(m0, m1, m2, m3)
	if bits <= 0x7f800000 {
		return math.Float32frombits(bits)
	}
	absmax := float32(0) // a NaN: let float max pick which one, as before
	for _, v := range vals {
		absmax = max(absmax, float32(math.Abs(float64(v))))
	}
	return absmax
}

// Decode expands the codes of one block into out (len(out) values).
func (f Format) Decode(codes []byte, absmax float32, out []float32) {
	c := &lookups[f]().code
	if f.Bits == 8 {
		codes = codes[:len(out)]
		for i, q := range codes {
			out[i] = c[q] * absmax
		}
		return
	}
	pairs := len(out) / 2
	for i, q := range codes[:pairs] {
		out[2*i] = c[q&0xf] * absmax
		out[2*i+1] = c[q>>4] * absmax
	}
	if len(out)%2 == 1 {
		out[2*pairs] = c[codes[pairs]&0xf] * absmax
	}
}
