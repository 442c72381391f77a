package cpu

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// TestSumSquares: against a float64 sum, and the same bits whatever the
// thread count (a compensated step's c must not depend on it).
func TestSumSquares(t *testing.T) {
	defer SetThreads(0)
	rng := newRNG(3)
	for _, n := range []int{1, 1000, 3*vectorChunk + 17} {
		a, b := randn(rng, n), randn(rng, n)
		var wantDiff, wantSelf float64
		for i := range a {
			d := float64(a[i] - b[i])
			wantDiff += d * d
			wantSelf += float64(a[i]) * float64(a[i])
		}
		var first float64
		for _, threads := range []int{1, 2, 3} {
			SetThreads(threads)
			got, err := Backend{}.SumSquares(tensor(a, n), tensor(b, n))
			require.NoError(t, err)
			self, err := Backend{}.SumSquares(tensor(a, n), core.Tensor{})
			require.NoError(t, err)
			assert.InDelta(t, wantDiff, got, 1e-12*math.Max(wantDiff, 1), "n %d", n)
			assert.InDelta(t, wantSelf, self, 1e-12*math.Max(wantSelf, 1), "n %d", n)
			if threads == 1 {
				first = got
			}
			assert.Equal(t, math.Float64bits(first), math.Float64bits(got), "n %d, %d threads", n, threads)
		}
	}
}

func TestAxpby(t *testing.T) {
	rng := newRNG(4)
	n := 2*vectorChunk + 5
	x, y := randn(rng, n), randn(rng, n)
	want := make([]float64, n)
	for i := range want {
		want[i] = -0.5*float64(x[i]) + 2*float64(y[i])
	}
	require.NoError(t, Backend{}.Axpby(-0.5, tensor(x, n), 2, tensor(y, n)))
	for i := range y {
		assert.InDelta(t, want[i], float64(y[i]), 1e-6*math.Abs(want[i])+1e-7, "element %d", i)
	}
}
