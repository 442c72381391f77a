package optim

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// BenchmarkStepOverhead times the front end's steady-state step against
// core's batch step on Go copies of the same tensors and reports the ratio
// (the cost of reading parameters and gradients through libtch).
func BenchmarkStepOverhead(b *testing.B) {
	pinThread(b)
	rng := rand.New(rand.NewPCG(31, 32))
	cfg := DefaultConfig()
	cfg.Rank, cfg.UpdateProjGap = 32, 1<<30
	var params []*ts.Tensor
	for range 8 {
		params = append(params, leaf(rng, gotch.Float, 256, 256), leaf(rng, gotch.Float, 256))
	}
	opt, err := New(Group{Params: params, Config: cfg})
	if err != nil {
		b.Fatal(err)
	}
	backward(b, rng, params)
	if err := opt.Step(); err != nil {
		b.Fatal(err)
	}
	items := make([]core.Item, len(params))
	for i := range params {
		p := &opt.params[i]
		grad := params[i].MustGrad(false)
		copied := func(src []byte) core.Tensor { return newHostCopy(p.dtype, p.shape, src).t }
		state := make([]core.Tensor, len(p.state))
		for k, st := range p.state {
			state[k] = newHostCopy(st.DType, st.Shape, stateBytes(opt, i)[k]).t
		}
		items[i] = core.Item{Param: copied(memory(params[i])), Grad: copied(memory(grad)), State: state, Config: cfg, Step: 2}
	}
	var front, direct time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if err := opt.Step(); err != nil {
			b.Fatal(err)
		}
		front += time.Since(start)
		start = time.Now()
		if err := backend.StepBatch(items); err != nil {
			b.Fatal(err)
		}
		direct += time.Since(start)
		for i := range items {
			items[i].Step++
		}
	}
	b.ReportMetric(float64(front.Nanoseconds())/float64(b.N), "front-ns/step")
	b.ReportMetric(float64(front)/float64(direct), "x-core")
}
