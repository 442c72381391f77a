package core_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/core/cpu"
)

// lowRankStream yields gradients A_t diag(sigma) B_t^T + noise whose
// factors rotate slowly, like real gradients between refreshes.
type lowRankStream struct {
	m, n, r int
	a, b    []float64
	rng     *rand.Rand
}

func newLowRankStream(m, n, r int, seed uint64) *lowRankStream {
	rng := rand.New(rand.NewPCG(seed, 3))
	s := &lowRankStream{m: m, n: n, r: r, a: make([]float64, m*r), b: make([]float64, n*r), rng: rng}
	for i := range s.a {
		s.a[i] = rng.NormFloat64()
	}
	for i := range s.b {
		s.b[i] = rng.NormFloat64()
	}
	return s
}

func (s *lowRankStream) next(out []float32) {
	for i := range s.a {
		s.a[i] += 0.05 * s.rng.NormFloat64()
	}
	for i := range s.b {
		s.b[i] += 0.05 * s.rng.NormFloat64()
	}
	for i := 0; i < s.m; i++ {
		for j := 0; j < s.n; j++ {
			var v float64
			for l := 0; l < s.r; l++ {
				v += s.a[i*s.r+l] * s.b[j*s.r+l] * math.Pow(0.7, float64(l))
			}
			out[i*s.n+j] = float32(v + 1e-3*s.rng.NormFloat64())
		}
	}
}

// overlap is ||X^T Y||_F^2 / k for two m x k orthonormal bases: 1 when they
// span the same subspace.
func overlap(x, y []float32, m, k int, rows bool) float64 {
	at := func(v []float32, i, j int) float64 { // element i of basis vector j
		if rows {
			return float64(v[j*m+i])
		}
		return float64(v[i*k+j])
	}
	var s float64
	for a := 0; a < k; a++ {
		for b := 0; b < k; b++ {
			var d float64
			for i := 0; i < m; i++ {
				d += at(x, i, a) * at(y, i, b)
			}
			s += d * d
		}
	}
	return s / float64(k)
}

// TestSubspaceRefreshTracksExactSVD steps twin parameters with the same
// gradients, one refreshing by exact SVD and one by subspace iteration,
// for every projection side: the projectors span the same subspace, are
// orthonormal, ordered like the exact ones and follow the sign rule.
func TestSubspaceRefreshTracksExactSVD(t *testing.T) {
	const m, n, k = 48, 36, 6
	for _, pt := range []core.ProjType{core.ProjRight, core.ProjLeft, core.ProjFull} {
		cfgE := projected(k, pt)
		cfgE.UpdateProjGap = 4
		cfgS := cfgE
		cfgS.Refresh = core.RefreshSubspace
		exact, fast := newParam(t, m, n, cfgE, 7), newParam(t, m, n, cfgS, 7)
		stream := newLowRankStream(m, n, k+2, 11)
		for step := int64(1); step <= 17; step++ {
			stream.next(exact.grad)
			copy(fast.grad, exact.grad)
			for _, p := range []*param{exact, fast} {
				p.item.Step = step
				ws := make([]float32, core.PlanFor(p.item.Param.Shape, p.item.Config).WorkspaceElems())
				require.NoError(t, core.Step(cpu.Backend{}, &p.item, tensorOf(ws, core.Shape{len(ws)})))
			}
			if (step-1)%4 != 0 {
				continue
			}
			specs, err := core.Layout(core.Float32, core.Shape{m, n}, cfgE)
			require.NoError(t, err)
			for i, s := range specs {
				rows := s.Name == core.BufProjRight
				if !rows && s.Name != core.BufProjLeft {
					continue
				}
				dim := m
				if rows {
					dim = n
				}
				e, f := exact.state[i], fast.state[i]
				ov := overlap(e, f, dim, k, rows)
				if step > 1 {
					assert.NotEqual(t, e, f, "%v step %d: the subspace refresh ran (not the exact one)", pt, step)
				}
				t.Logf("%v step %d %s: overlap 1 - %.2e", pt, step, s.Name, 1-ov)
				assert.Greater(t, ov, 0.999, "%v step %d %s: subspace overlap", pt, step, s.Name)
				assert.InDelta(t, 1, overlap(f, f, dim, k, rows), 1e-5, "%v %s orthonormal", pt, s.Name)
				// Ordered like the exact vectors, and the sign rule makes
				// them equal up to rounding for well-separated values.
				for v := 0; v < 3; v++ {
					var d float64
					for x := 0; x < dim; x++ {
						if rows {
							d += float64(e[v*dim+x]) * float64(f[v*dim+x])
						} else {
							d += float64(e[x*k+v]) * float64(f[x*k+v])
						}
					}
					assert.Greater(t, d, 0.99, "%v step %d %s: vector %d", pt, step, s.Name, v)
				}
			}
		}
	}
}

// TestSubspaceRefreshWithQuantizedProjectors: low-bit projectors warm-start
// the refresh from their decoded values.
func TestSubspaceRefreshWithQuantizedProjectors(t *testing.T) {
	const m, n, k = 96, 128, 64 // Q: 64 x 128, quantised
	for _, bits := range []int{8, 4} {
		cfg := projected(k, core.ProjStd)
		cfg.OptimBits, cfg.UpdateProjGap, cfg.Refresh = bits, 3, core.RefreshSubspace
		p := newParam(t, m, n, cfg, 5)
		stream := newLowRankStream(m, n, 8, 2)
		for step := int64(1); step <= 10; step++ {
			stream.next(p.grad)
			p.item.Step = step
			ws := make([]float32, core.PlanFor(p.item.Param.Shape, cfg).WorkspaceElems())
			require.NoError(t, core.Step(cpu.Backend{}, &p.item, tensorOf(ws, core.Shape{len(ws)})))
		}
		for _, x := range p.w {
			require.False(t, math.IsNaN(float64(x)) || math.IsInf(float64(x), 0), "%d-bit", bits)
		}
	}
}
