package quant

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
)

var formats = []Format{Signed8, Unsigned8, Signed4, Unsigned4}

func TestCodesAreSortedAndSpanTheRange(t *testing.T) {
	for _, f := range formats {
		c := f.Code()
		assert.Len(t, c, 1<<f.Bits, f.String())
		for i := 1; i < len(c); i++ {
			assert.Less(t, c[i-1], c[i], "%v code strictly increasing at %d", f, i)
		}
		assert.Equal(t, float32(1), c[len(c)-1], f.String())
		switch {
		case f.Signed:
			assert.Contains(t, c, float32(0), f.String())
			assert.InDelta(t, -1, c[0], 0.25, f.String())
		case f == Unsigned4:
			assert.InDelta(t, 0.0025, c[0], 1e-9, "unsigned 4-bit has no zero")
		default:
			assert.Equal(t, float32(0), c[0], f.String())
		}
	}
	assert.InDelta(t, -1, Signed8.Code()[0], 0.01)
}

// TestUnsigned4SecondMomentsStayOffZero: a block with one large and many
// tiny second moments (a sparse gradient's) keeps the tiny ones at least
// c[0] times the absmax, so m1 / sqrt(m2) stays bounded.
func TestUnsigned4SecondMomentsStayOffZero(t *testing.T) {
	vals := make([]float32, BlockSize)
	vals[0] = 1
	for i := 1; i < len(vals); i++ {
		vals[i] = 1e-9 * float32(i)
	}
	codes := make([]byte, Unsigned4.Bytes(len(vals)))
	back := make([]float32, len(vals))
	Unsigned4.Decode(codes, Unsigned4.Encode(vals, codes), back)
	for i, v := range back {
		assert.GreaterOrEqual(t, v, Unsigned4.Code()[0], "value %d", i)
	}
}

// TestRoundTripErrorBound: every value comes back within half the gap
// between the two code points around it, times the block absmax; entries
// near the absmax keep a small relative error.
func TestRoundTripErrorBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	nearMax := map[int]float64{8: 0.015, 4: 0.21}
	for _, f := range formats {
		c := f.Code()
		for trial := 0; trial < 50; trial++ {
			n := BlockSize - trial%2 // odd lengths exercise the last nibble
			vals := make([]float32, n)
			for i := range vals {
				v := float32(rng.NormFloat64() * math.Pow(10, -3*rng.Float64()))
				if !f.Signed {
					v *= v
				}
				vals[i] = v
			}
			codes := make([]byte, f.Bytes(n))
			absmax := f.Encode(vals, codes)
			back := make([]float32, n)
			f.Decode(codes, absmax, back)
			for i, v := range vals {
				x := v / absmax
				hi := 1
				for hi < len(c)-1 && c[hi] < x {
					hi++
				}
				gap := float64(c[hi]-c[hi-1]) * float64(absmax)
				bound := gap / 2
				if x < c[0] { // below a zero-free code's smallest value
					bound = float64(c[0]-x) * float64(absmax)
				}
				assert.LessOrEqual(t, math.Abs(float64(back[i]-v)), bound+1e-6*float64(absmax), "%v value %d", f, i)
				if math.Abs(float64(x)) > 0.5 {
					assert.InEpsilon(t, v, back[i], nearMax[f.Bits], "%v relative error near the absmax", f)
				}
			}
			assert.InEpsilon(t, absmax, slices.Max(abs(back)), nearMax[f.Bits], "%v absmax survives", f)
		}
	}
}

func abs(v []float32) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(math.Abs(float64(x)))
	}
	return out
}

func TestZeroBlock(t *testing.T) {
	for _, f := range formats {
		codes := make([]byte, f.Bytes(9))
		assert.Equal(t, float32(0), f.Encode(make([]float32, 9), codes))
		back := make([]float32, 9)
		f.Decode(codes, 0, back)
		assert.Equal(t, make([]float32, 9), back)
	}
}

func TestSizes(t *testing.T) {
	assert.Equal(t, 1, Blocks(1))
	assert.Equal(t, 1, Blocks(256))
	assert.Equal(t, 2, Blocks(257))
	assert.Equal(t, 5, Signed4.Bytes(9))
	assert.Equal(t, 9, Unsigned8.Bytes(9))
}

// TestLookupMatchesNearest: Encode's table lookup gives Code.Nearest's
// answer for table values, exact midpoints and the float32s either side of
// them, ±0, ±Inf, NaN, values beyond ±1, both ends of every lookup bucket
// and random values at every scale.
func TestLookupMatchesNearest(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, f := range formats {
		c, l := f.Code(), lookups[f]()
		var xs []float32
		around := func(x float32) {
			xs = append(xs, x, -x,
				math.Nextafter32(x, float32(math.Inf(1))), math.Nextafter32(x, float32(math.Inf(-1))))
		}
		for i, v := range c {
			around(v)
			if i > 0 {
				around((c[i-1] + c[i]) / 2)
				around(float32((float64(c[i-1]) + float64(c[i])) / 2))
			}
		}
		for _, x := range []float32{0, 1, 1.5, 2, 1e30, float32(math.Inf(1)), float32(math.NaN()), math.MaxFloat32, math.SmallestNonzeroFloat32} {
			around(x)
		}
		for b := range uint32(1 << 16) {
			xs = append(xs, math.Float32frombits(b<<16), math.Float32frombits(b<<16|0xffff))
		}
		for range 1 << 20 {
			xs = append(xs, math.Float32frombits(rng.Uint32()),
				float32(rng.NormFloat64()*math.Pow(10, -8*rng.Float64())))
		}
		for _, x := range xs {
			if got, want := l.nearest(x), c.Nearest(x); got != want {
				t.Fatalf("%v: lookup(%g = %#08x) = %d, Nearest = %d", f, x, math.Float32bits(x), got, want)
			}
		}
	}
}

// BenchmarkCodec encodes and decodes one block of each format.
func BenchmarkCodec(b *testing.B) {
	rng := rand.New(rand.NewPCG(5, 6))
	vals := make([]float32, BlockSize)
	for i := range vals {
		vals[i] = float32(rng.NormFloat64() * 1e-3)
	}
	for _, f := range formats {
		codes := make([]byte, f.Bytes(BlockSize))
		back := make([]float32, BlockSize)
		b.Run(f.String(), func(b *testing.B) {
			for range b.N {
				f.Decode(codes, f.Encode(vals, codes), back)
			}
		})
	}
}
