package cpu

import (
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
		b.Run(c.name+"/refresh", func(b *testing.B) {
			for range b.N {
				m.step(b, int64(cfg.UpdateProjGap)+1)
			}
		})
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
