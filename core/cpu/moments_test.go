package cpu

import (
	"math"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/core/quant"
)

// TestQuantizedAdamTracksFloatAdam runs 8-bit and float32 Adam side by side
// over 20 steps of gradients with entries across 3 decades; the 8-bit
// directions stay close to the float32 ones.
func TestQuantizedAdamTracksFloatAdam(t *testing.T) {
	const n = 3*quant.BlockSize + 17 // a partial last block
	rng := newRNG(11)
	h := core.NewAdamParams(0.9, 0.999, 1e-8, 0, 0)
	f1, f2 := make([]float32, n), make([]float32, n)
	q1, q2 := make([]uint8, n), make([]uint8, n)
	blocks := quant.Blocks(n)
	a1, a2 := make([]float32, blocks), make([]float32, blocks)
	fmom := core.Moments{M1: tensor(f1, n), M2: tensor(f2, n), Bits: 32}
	qmom := core.Moments{
		M1: bytesTensor(q1), M2: bytesTensor(q2),
		Absmax1: tensor(a1, blocks), Absmax2: tensor(a2, blocks), Bits: 8,
	}
	require.True(t, qmom.Quantized())
	scale := randn(rng, n)
	for step := 0; step < 20; step++ {
		g := randn(rng, n)
		for i := range g {
			g[i] *= float32(math.Pow(10, -float64(i%3))) * (1 + 0.1*scale[i])
		}
		xf, xq := append([]float32(nil), g...), append([]float32(nil), g...)
		require.NoError(t, b.AdamDirection(tensor(xf, n), fmom, h))
		require.NoError(t, b.AdamDirection(tensor(xq, n), qmom, h))
		var num, den float64
		for i := range xf {
			d := float64(xf[i] - xq[i])
			num += d * d
			den += float64(xf[i]) * float64(xf[i])
		}
		// Entries 100x below their block maximum keep about 2 significant
		// digits in the dynamic code, hence a few percent of error overall.
		assert.Less(t, math.Sqrt(num/den), 0.12, "step %d: relative direction error", step)
	}
	for i := range a1 {
		assert.Positive(t, a1[i])
		assert.Positive(t, a2[i])
	}
}

func bytesTensor(b []uint8) core.Tensor {
	return core.Tensor{Data: unsafe.Pointer(&b[0]), DType: core.Uint8, Shape: core.Shape{len(b)}}
}
