package cpu

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// withoutAVX runs f with the assembly kernels turned off.
func withoutAVX(f func()) {
	saved := hasAVX2FMA
	hasAVX2FMA = false
	defer func() { hasAVX2FMA = saved }()
	f()
}

// TestKernelsMatchGoFallbackBitForBit: results do not depend on whether the
// processor has AVX2.
func TestKernelsMatchGoFallbackBitForBit(t *testing.T) {
	if !hasAVX2FMA {
		t.Skip("no AVX2: only the Go code runs here")
	}
	rng := newRNG(5)
	h := core.NewAdamParams(0.9, 0.999, 1e-8, 1.3e-3, 0.9999)
	for _, n := range []int{1, 7, 8, 9, 31, 32, 33, 100, 1376} {
		w, g, m1, m2 := randn(rng, n), randn(rng, n), randn(rng, n), randn(rng, n)
		for i := range m2 {
			m2[i] = m2[i] * m2[i]
		}
		type out struct{ a, b, c, d []float32 }
		run := func(f func(o out)) (out, out) {
			var r [2]out
			for k, off := range []bool{false, true} {
				o := out{append([]float32(nil), w...), append([]float32(nil), g...), append([]float32(nil), m1...), append([]float32(nil), m2...)}
				if off {
					withoutAVX(func() { f(o) })
				} else {
					f(o)
				}
				r[k] = o
			}
			return r[0], r[1]
		}
		a, b := run(func(o out) { adamW(o.a, o.b, o.c, o.d, h) })
		assert.Equal(t, b, a, "adamW n=%d", n)
		a, b = run(func(o out) { adamDirection(o.b, o.c, o.d, h) })
		assert.Equal(t, b, a, "adamDirection n=%d", n)
		a, b = run(func(o out) { weightNormGradRow(o.a, o.b, o.c, 0.7, -0.3) })
		assert.Equal(t, b, a, "weightNormGradRow n=%d", n)
		a, b = run(func(o out) { axpy(o.a, -0.37, o.b) })
		assert.Equal(t, b, a, "axpy n=%d", n)
		a, b = run(func(o out) { scaleInPlace(o.a, 1.7) })
		assert.Equal(t, b, a, "scale n=%d", n)
		var na, nb float32
		a, b = run(func(o out) {
			v := axpbyNorm(o.a, 0.9, o.b, -0.01)
			if hasAVX2FMA {
				na = v
			} else {
				nb = v
			}
		})
		assert.Equal(t, b, a, "axpbyNorm n=%d", n)
		assert.Equal(t, nb, na, "axpbyNorm norm n=%d", n)
		var da, db float64
		da = dot(w, g)
		withoutAVX(func() { db = dot(w, g) })
		assert.Equal(t, db, da, "dot n=%d", n)

		for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
			v := append([]float32(nil), w...)
			assert.True(t, finite32(v))
			v[n-1] = bad
			assert.False(t, finite32(v), "n=%d bad=%v last", n, bad)
			v[n-1], v[0] = 0, bad
			assert.False(t, finite32(v), "n=%d bad=%v first", n, bad)
		}
	}
}
