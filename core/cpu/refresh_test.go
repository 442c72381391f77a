package cpu

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// checkQR verifies Q^T Q = I, R upper triangular and a = Q R.
func checkQR(t *testing.T, a0, q, r []float32, m, k int, tol float64, msg string) {
	t.Helper()
	for i := 0; i < k; i++ {
		for j := 0; j < k; j++ {
			var d float64
			for p := 0; p < m; p++ {
				d += float64(q[p*k+i]) * float64(q[p*k+j])
			}
			want := 0.0
			if i == j {
				want = 1
			}
			require.InDelta(t, want, d, tol, "%s: Q^T Q [%d,%d]", msg, i, j)
			if r != nil && i > j {
				require.Zero(t, r[i*k+j], "%s: R below the diagonal", msg)
			}
		}
	}
	if r == nil {
		return
	}
	var scale float64
	for _, x := range a0 {
		scale = math.Max(scale, math.Abs(float64(x)))
	}
	for p := 0; p < m; p++ {
		for j := 0; j < k; j++ {
			var s float64
			for i := 0; i < k; i++ {
				s += float64(q[p*k+i]) * float64(r[i*k+j])
			}
			require.InDelta(t, float64(a0[p*k+j]), s, tol*math.Max(scale, 1e-30)*float64(k), "%s: (QR)[%d,%d]", msg, p, j)
		}
	}
}

func TestOrthonormalize(t *testing.T) {
	rng := newRNG(8)
	for _, s := range [][2]int{{5, 3}, {40, 40}, {300, 70}, {1376, 128}} {
		m, k := s[0], s[1]
		a := randn(rng, m*k)
		// Make it ill-conditioned: column j scaled by 10^(-6 j / k).
		for p := 0; p < m; p++ {
			for j := 0; j < k; j++ {
				a[p*k+j] *= float32(math.Pow(10, -6*float64(j)/float64(k)))
			}
		}
		a0 := append([]float32(nil), a...)
		r := make([]float32, k*k)
		require.NoError(t, b.Orthonormalize(tensor(a, m, k), tensor(r, k, k)))
		checkQR(t, a0, a, r, m, k, 2e-5, "random")
	}
	// Rank-deficient: zero matrix, repeated and zero columns.
	m, k := 50, 20
	for name, fill := range map[string]func(a []float32){
		"zero": func(a []float32) {},
		"repeated": func(a []float32) {
			col := randn(rng, m)
			for p := 0; p < m; p++ {
				for j := 0; j < k; j++ {
					a[p*k+j] = col[p] * float32(j%3+1)
				}
			}
		},
		"zero columns": func(a []float32) {
			copy(a, randn(rng, m*k))
			for p := 0; p < m; p++ {
				a[p*k+3], a[p*k+17] = 0, 0
			}
		},
	} {
		a := make([]float32, m*k)
		fill(a)
		a0 := append([]float32(nil), a...)
		r := make([]float32, k*k)
		require.NoError(t, b.Orthonormalize(tensor(a, m, k), tensor(r, k, k)))
		checkQR(t, a0, a, r, m, k, 2e-5, name)
	}
}

func TestFixSigns(t *testing.T) {
	rows := []float32{0.1, -0.9, 0.3, 0.5, -0.5, 0.2}
	require.NoError(t, b.FixSigns(tensor(rows, 2, 3), true))
	assert.Equal(t, []float32{-0.1, 0.9, -0.3, 0.5, -0.5, 0.2}, rows)
	cols := []float32{ // columns (0.1, -0.9, 0.3) and (-0.5, 0.5, 0.2)
		0.1, -0.5,
		-0.9, 0.5,
		0.3, 0.2,
	}
	require.NoError(t, b.FixSigns(tensor(cols, 3, 2), false))
	assert.Equal(t, []float32{-0.1, 0.5, 0.9, -0.5, -0.3, -0.2}, cols)
}
