package cpu

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gradnormlorp/gradnormlorp/core"
)

var b Backend

func TestRowNorms(t *testing.T) {
	w := []float32{3, 4, 0, 0, 1, 0}
	out := make([]float32, 3)
	require.NoError(t, b.RowNorms(tensor(w, 3, 2), tensor(out, 3)))
	assert.Equal(t, []float32{5, 0, 1}, out)
}

// TestWeightNormGradIsExact checks dg and dV against finite differences of
// a nonlinear loss L(W) with W_i = g_i V_i / ||V_i||, in float64.
func TestWeightNormGradIsExact(t *testing.T) {
	const m, n = 4, 5
	rng := newRNG(1)
	v := make([]float64, m*n)
	for i := range v {
		v[i] = rng.NormFloat64()
	}
	g := []float64{1.5, -0.7, 2.0, 0.3}
	weights := func(g, v []float64) []float64 {
		w := make([]float64, m*n)
		for i := 0; i < m; i++ {
			var s float64
			for j := 0; j < n; j++ {
				s += v[i*n+j] * v[i*n+j]
			}
			s = math.Sqrt(s)
			for j := 0; j < n; j++ {
				w[i*n+j] = g[i] * v[i*n+j] / s
			}
		}
		return w
	}
	loss := func(w []float64) float64 {
		var l float64
		for i, x := range w {
			l += math.Sin(x) * float64(i%3+1)
		}
		return l
	}
	w64 := weights(g, v)
	w32, grad := make([]float32, m*n), make([]float32, m*n)
	for i, x := range w64 {
		w32[i] = float32(x)
		grad[i] = float32(math.Cos(x) * float64(i%3+1))
	}
	// State as the optimizer holds it: g, and s = ||V|| of this V.
	g32, s32 := make([]float32, m), make([]float32, m)
	for i := 0; i < m; i++ {
		g32[i] = float32(g[i])
		var s float64
		for j := 0; j < n; j++ {
			s += v[i*n+j] * v[i*n+j]
		}
		s32[i] = float32(math.Sqrt(s))
	}
	dg, dv := make([]float32, m), make([]float32, m*n)
	require.NoError(t, b.WeightNormGrad(tensor(w32, m, n), tensor(grad, m, n), tensor(g32, m), tensor(s32, m), tensor(dg, m), tensor(dv, m, n)))

	const h = 1e-6
	for i := 0; i < m; i++ {
		gp, gm := append([]float64(nil), g...), append([]float64(nil), g...)
		gp[i] += h
		gm[i] -= h
		fd := (loss(weights(gp, v)) - loss(weights(gm, v))) / (2 * h)
		// dg is defined against D = W/g, the unit direction.
		assert.InDelta(t, fd, float64(dg[i]), 1e-4, "dg[%d]", i)
		for j := 0; j < n; j++ {
			vp, vm := append([]float64(nil), v...), append([]float64(nil), v...)
			vp[i*n+j] += h
			vm[i*n+j] -= h
			fd := (loss(weights(g, vp)) - loss(weights(g, vm))) / (2 * h)
			assert.InDelta(t, fd, float64(dv[i*n+j]), 1e-4, "dV[%d,%d]", i, j)
		}
	}
}

func TestWeightNormGradZeroRowPassesGradientThrough(t *testing.T) {
	w := []float32{0, 0, 1, 0}
	grad := []float32{0.5, -2, 3, 4}
	g, s := []float32{0, 1}, []float32{0, 1}
	dg, dv := make([]float32, 2), make([]float32, 4)
	require.NoError(t, b.WeightNormGrad(tensor(w, 2, 2), tensor(grad, 2, 2), tensor(g, 2), tensor(s, 2), tensor(dg, 2), tensor(dv, 2, 2)))
	assert.Equal(t, []float32{0, 3}, dg)
	assert.Equal(t, []float32{0.5, -2, 0, 4}, dv) // row 1: G minus its component along D
}

func TestAdamMatchesClosedForm(t *testing.T) {
	h := core.NewAdamParams(0.9, 0.99, 1e-8, 0, 0)
	x := []float32{2, -1}
	m1, m2 := make([]float32, 2), make([]float32, 2)
	require.NoError(t, b.AdamDirection(tensor(x, 2), core.Moments{M1: tensor(m1, 2), M2: tensor(m2, 2)}, h))
	// First step: m1 = 0.1 x, m2 = 0.01 x^2, direction = 0.1x / (0.1|x| + eps).
	assert.InDeltaSlice(t, []float32{0.2, -0.1}, m1, 1e-7)
	assert.InDeltaSlice(t, []float32{0.04, 0.01}, m2, 1e-7)
	assert.InDeltaSlice(t, []float32{1, -1}, x, 1e-6)
}

func TestAdamWDecaysThenSteps(t *testing.T) {
	h := core.NewAdamParams(0.9, 0.999, 1e-8, 0.1, 0.5)
	for _, dt := range dtypes {
		w32 := []float32{4, -8}
		grad32 := []float32{1, -1}
		w, grad := storeAs(dt, w32), storeAs(dt, grad32)
		m1, m2 := make([]float32, 2), make([]float32, 2)
		require.NoError(t, b.AdamW(w, grad, core.Moments{M1: tensor(m1, 2), M2: tensor(m2, 2)}, h))
		w.Shape = core.Shape{1, 2}
		got := rowsOf(w).load(0, make([]float32, 2))
		// Uncorrected first step: N = 0.1 g / sqrt(0.001 g^2) = sqrt(10) sign(g).
		step := 0.1 * math.Sqrt(10)
		assert.InDeltaSlice(t, []float64{2 - step, -4 + step}, toF64(got), 0.02, dt.String())
	}
}

func toF64(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// storeAs builds a 1-D tensor of dtype holding vals (rounded).
func storeAs(dt core.DType, vals []float32) core.Tensor {
	n := len(vals)
	if dt == core.Float32 {
		return tensor(append([]float32(nil), vals...), n)
	}
	t := tensor16(make([]uint16, n), dt, 1, n)
	rowsOf(t).store(0, append([]float32(nil), vals...))
	t.Shape = core.Shape{n}
	return t
}

func TestWeightNormUpdate(t *testing.T) {
	h := core.NewAdamParams(0, 0, 0, 0.5, 0.9)
	// Row 0: normal. Row 1: zero row. Row 2: magnitude pushed negative.
	w := []float32{3, 4, 0, 0, 0, 2}
	g := []float32{5, 0, 2}
	s := []float32{10, 0, 1}
	dvlow := []float32{2, 0, 1, -1, 0, 0}
	ng := []float32{1, 7, 10}
	require.NoError(t, b.WeightNormUpdate(tensor(w, 3, 2), tensor(g, 3), tensor(s, 3), tensor(dvlow, 3, 2), tensor(ng, 3), h))

	// Row 0: V = 10*(0.6,0.8) - 0.5*(2,0) = (5,8); g = (5-0.5)*0.9 = 4.05.
	wantS0 := float32(math.Sqrt(89))
	assert.InDelta(t, 4.05, g[0], 1e-6)
	assert.InDelta(t, wantS0, s[0], 1e-5)
	assert.InDelta(t, 4.05*5/wantS0, w[0], 1e-5)
	assert.InDelta(t, 4.05*8/wantS0, w[1], 1e-5)
	// Row 1: W = 0*0.9 - 0.5*(1,-1); g = s = ||W||; ng ignored.
	assert.Equal(t, []float32{-0.5, 0.5}, w[2:4])
	assert.InDelta(t, math.Sqrt(0.5), g[1], 1e-7)
	assert.Equal(t, g[1], s[1])
	// Row 2: g = (2 - 5)*0.9 = -2.7 flips the row; no NaN.
	assert.InDelta(t, -2.7, g[2], 1e-6)
	assert.InDeltaSlice(t, []float32{0, -2.7}, w[4:6], 1e-6)
}

func TestWeightNormUpdateVanishingDirectionBecomesZeroRow(t *testing.T) {
	h := core.NewAdamParams(0, 0, 0, 1, 1)
	w, g, s := []float32{1, 0}, []float32{1}, []float32{1}
	require.NoError(t, b.WeightNormUpdate(tensor(w, 1, 2), tensor(g, 1), tensor(s, 1), tensor([]float32{1, 0}, 1, 2), tensor([]float32{0}, 1), h))
	assert.Equal(t, []float32{0, 0}, w)
	assert.Equal(t, []float32{0}, g)
	assert.Equal(t, []float32{0}, s)
}

func TestMatMulTransposes(t *testing.T) {
	a := []float32{1, 2, 3, 4, 5, 6}  // 2x3
	bm := []float32{1, 0, 0, 1, 1, 1} // 3x2 or 2x3
	c := make([]float32, 4)
	require.NoError(t, b.MatMul(false, tensor(a, 2, 3), false, tensor(bm, 3, 2), 2, tensor(c, 2, 2)))
	assert.Equal(t, []float32{8, 10, 20, 22}, c)
	c9 := make([]float32, 9)
	require.NoError(t, b.MatMul(true, tensor(a, 2, 3), false, tensor(bm[:4], 2, 2), 1, tensor(c9[:6], 3, 2)))
	assert.Equal(t, []float32{1, 4, 2, 5, 3, 6}, c9[:6])
	require.NoError(t, b.MatMul(false, tensor(a, 2, 3), true, tensor(a, 2, 3), 1, tensor(c, 2, 2)))
	assert.Equal(t, []float32{14, 32, 32, 77}, c)
	assert.Error(t, b.MatMul(false, tensor(a, 2, 3), false, tensor(a, 2, 3), 1, tensor(c, 2, 2)))
}

func TestSignFix(t *testing.T) {
	v := []float64{0.1, -0.9, 0.3}
	signFix(v)
	assert.Equal(t, []float64{-0.1, 0.9, -0.3}, v)
	tie := []float64{-0.5, 0.5}
	signFix(tie) // first of equal magnitudes decides
	assert.Equal(t, []float64{0.5, -0.5}, tie)
	pos := []float64{0.2, 0.7}
	signFix(pos)
	assert.Equal(t, []float64{0.2, 0.7}, pos)
}

// TestSingularVectorsRecoverKnownSubspace builds A = U diag(sigma) V^T with
// known factors and checks both sides, orthonormality and the sign rule.
func TestSingularVectorsRecoverKnownSubspace(t *testing.T) {
	const m, n, k = 7, 5, 3
	rng := newRNG(3)
	u := orthonormalColumns(randn(rng, m*n), m, n)
	v := orthonormalColumns(randn(rng, n*n), n, n)
	sigma := []float32{16, 8, 4, 2, 1}
	a := make([]float32, m*n)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var x float64
			for l := 0; l < n; l++ {
				x += float64(u[i*n+l]) * float64(sigma[l]) * float64(v[j*n+l])
			}
			a[i*n+j] = float32(x)
		}
	}
	left, right := make([]float32, m*k), make([]float32, k*n)
	require.NoError(t, b.SingularVectors(tensor(a, m, n), tensor(left, m, k), tensor(right, k, n)))
	for c := 0; c < k; c++ {
		var dotU, dotV float64
		best, bestV := 0, 0
		for i := 0; i < m; i++ {
			dotU += float64(left[i*k+c]) * float64(u[i*n+c])
			if math.Abs(float64(left[i*k+c])) > math.Abs(float64(left[best*k+c])) {
				best = i
			}
		}
		for j := 0; j < n; j++ {
			dotV += float64(right[c*n+j]) * float64(v[j*n+c])
			if math.Abs(float64(right[c*n+j])) > math.Abs(float64(right[c*n+bestV])) {
				bestV = j
			}
		}
		assert.InDelta(t, 1, math.Abs(dotU), 1e-5, "left vector %d spans u_%d", c, c)
		assert.InDelta(t, 1, math.Abs(dotV), 1e-5, "right vector %d spans v_%d", c, c)
		assert.Positive(t, left[best*k+c], "sign rule, left %d", c)
		assert.Positive(t, right[c*n+bestV], "sign rule, right %d", c)
	}
}

func TestSingularVectorsOfZeroMatrixAreFinite(t *testing.T) {
	left := make([]float32, 4*2)
	require.NoError(t, b.SingularVectors(tensor(make([]float32, 12), 4, 3), tensor(left, 4, 2), core.Tensor{}))
	for _, x := range left {
		assert.False(t, math.IsNaN(float64(x)))
	}
}

// orthonormalColumns runs Gram-Schmidt over the columns of an r x c matrix.
func orthonormalColumns(a []float32, r, c int) []float32 {
	for j := 0; j < c; j++ {
		for p := 0; p < j; p++ {
			var d float64
			for i := 0; i < r; i++ {
				d += float64(a[i*c+j]) * float64(a[i*c+p])
			}
			for i := 0; i < r; i++ {
				a[i*c+j] -= float32(d) * a[i*c+p]
			}
		}
		var s float64
		for i := 0; i < r; i++ {
			s += float64(a[i*c+j]) * float64(a[i*c+j])
		}
		for i := 0; i < r; i++ {
			a[i*c+j] /= float32(math.Sqrt(s))
		}
	}
	return a
}
