package quant

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestCodesAreSortedAndSpanTheRange(t *testing.T) {
	for name, c := range map[string]*Code{"signed": Signed, "unsigned": Unsigned} {
		for i := 1; i < len(c); i++ {
			assert.Less(t, c[i-1], c[i], "%s code strictly increasing at %d", name, i)
		}
		assert.Equal(t, float32(1), c[255], name)
		assert.Contains(t, c[:], float32(0), name)
	}
	assert.InDelta(t, -1, Signed[0], 0.01)
	assert.Equal(t, float32(0), Unsigned[0])
}

// TestRoundTripErrorBound: every value comes back within half the gap
// between the two code points around it, times the block absmax; and the
// relative error of entries within a decade of the absmax is small.
func TestRoundTripErrorBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for name, c := range map[string]*Code{"signed": Signed, "unsigned": Unsigned} {
		for trial := 0; trial < 50; trial++ {
			vals := make([]float32, BlockSize)
			for i := range vals {
				v := float32(rng.NormFloat64() * math.Pow(10, -3*rng.Float64()))
				if c == Unsigned {
					v = v * v
				}
				vals[i] = v
			}
			codes := make([]uint8, BlockSize)
			absmax := c.Quantize(vals, codes)
			back := make([]float32, BlockSize)
			c.Dequantize(codes, absmax, back)
			for i, v := range vals {
				x := v / absmax
				hi := 1
				for hi < 255 && c[hi] < x {
					hi++
				}
				gap := float64(c[hi]-c[hi-1]) * float64(absmax)
				assert.LessOrEqual(t, math.Abs(float64(back[i]-v)), gap/2+1e-6*float64(absmax), "%s value %d", name, i)
				if math.Abs(float64(x)) > 0.5 {
					assert.InEpsilon(t, v, back[i], 0.015, "%s relative error near the absmax", name)
				}
			}
			assert.InEpsilon(t, absmax, slices.Max(abs(back)), 0.01, "absmax survives")
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
	codes := make([]uint8, 8)
	assert.Equal(t, float32(0), Signed.Quantize(make([]float32, 8), codes))
	back := make([]float32, 8)
	Signed.Dequantize(codes, 0, back)
	assert.Equal(t, make([]float32, 8), back)
}

func TestBlocks(t *testing.T) {
	assert.Equal(t, 1, Blocks(1))
	assert.Equal(t, 1, Blocks(256))
	assert.Equal(t, 2, Blocks(257))
}
