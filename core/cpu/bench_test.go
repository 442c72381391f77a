package cpu

import (
	"fmt"
	"testing"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// BenchmarkStep is one full optimizer step over every parameter of a
// LLaMA-shaped model (random fp32 gradients): the non-refresh step, and the
// step that refreshes every projector. Run with GOMAXPROCS set to the thread
// count to compare, e.g.
//
//	GOMAXPROCS=2 go test ./core/cpu -run XXX -bench Step -benchtime 10x
func BenchmarkStep(b *testing.B) {
	for _, c := range []llamaConfig{llama60M, llama130M} {
		cfg := core.DefaultConfig()
		m := newModel(b, c, cfg)
		// Steps 2, 3, ... never refresh: the projectors stay as initialised
		// (zero), which costs the same arithmetic as any other.
		b.Run(c.name+"/step", func(b *testing.B) {
			t := int64(2)
			for range b.N {
				m.step(b, t)
				t = t%(int64(cfg.UpdateProjGap)-1) + 2 // never a refresh step
			}
		})
		// The refresh step: subspace iteration from the previous projectors
		// (here random orthonormal ones). The exact refresh (gonum's SVD) of
		// a whole model takes minutes: BenchmarkExactSVD times one matrix.
		sub := cfg
		sub.Refresh = core.RefreshSubspace
		ms := newModel(b, c, sub)
		ms.randomProjectors(b)
		b.Run(c.name+"/refresh-subspace", func(b *testing.B) {
			for range b.N {
				ms.step(b, int64(cfg.UpdateProjGap)+1)
			}
		})
	}
}

// BenchmarkStepBits is the non-refresh step of the 60M-shaped model with
// float32, 8-bit and 4-bit optimizer state: the quantised steps decode and
// re-encode every moment (and, at 4 bits, projector) block.
func BenchmarkStepBits(b *testing.B) {
	for _, bits := range []int{32, 8, 4} {
		cfg := core.DefaultConfig()
		cfg.OptimBits = bits
		m := newModel(b, llama60M, cfg)
		b.Run(fmt.Sprintf("%s/bits%d", llama60M.name, bits), func(b *testing.B) {
			t := int64(2)
			for range b.N {
				m.step(b, t)
				t = t%(int64(cfg.UpdateProjGap)-1) + 2 // never a refresh step
			}
		})
	}
}

// BenchmarkExactSVD times the exact refresh (SingularVectors) of one
// matrix of each projected shape.
func BenchmarkExactSVD(b *testing.B) {
	for _, c := range []llamaConfig{llama60M, llama130M} {
		seen := map[string]bool{}
		for _, p := range c.params() {
			key := p.shape.String()
			if !p.projected || seen[key] {
				continue
			}
			seen[key] = true
			plan := core.PlanFor(p.shape, core.Config{Rank: c.rank, ProjType: core.ProjStd, OptimBits: 32})
			a := tensor(randn(newRNG(1), p.shape.Numel()), p.shape[0], p.shape[1])
			var left, right core.Tensor
			if plan.Sides&core.SideLeft != 0 {
				left = tensor(make([]float32, plan.M*plan.K), plan.M, plan.K)
			}
			if plan.Sides&core.SideRight != 0 {
				right = tensor(make([]float32, plan.K*plan.N), plan.K, plan.N)
			}
			b.Run(c.name+"/"+key, func(b *testing.B) {
				for range b.N {
					if err := (Backend{}).SingularVectors(a, left, right); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestSteadyStateStepAllocatesNothing: a non-refresh batched step of a
// model with projected and AdamW parameters, float32 and 8-bit state,
// performs no heap allocation once pools and caches are warm.
func TestSteadyStateStepAllocatesNothing(t *testing.T) {
	small := llamaConfig{"small", 128, 352, 2, 4096, 32} // big enough for parallel passes and GEMMs
	for _, bits := range []int{32, 8} {
		cfg := core.DefaultConfig()
		cfg.OptimBits = bits
		m := newModel(t, small, cfg)
		m.step(t, 1)
		step := int64(2)
		for range 3 {
			m.step(t, step)
			step++
		}
		allocs := testing.AllocsPerRun(20, func() {
			m.step(t, step)
			step++
		})
		if allocs != 0 {
			t.Errorf("optim_bits %d: %v allocations per steady-state step, want 0", bits, allocs)
		}
	}
}
