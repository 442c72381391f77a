package optim

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/stretchr/testify/require"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/nn"
	"github.com/sugarme/gotch/ts"
)

// fixture is a set of groups covering every kind of state: projected
// float32 (std, full, subspace refresh), 8-bit projected, 1-D and 2-D
// AdamW, 4-bit AdamW, and a bfloat16 matrix.
func fixture(rng *rand.Rand) []Group {
	lowRank := DefaultConfig()
	lowRank.Rank, lowRank.UpdateProjGap, lowRank.Scale = 4, 2, 0.25
	full := lowRank
	full.ProjType, full.Refresh = core.ProjFull, core.RefreshSubspace
	eightBit := lowRank
	eightBit.Rank, eightBit.ProjType, eightBit.OptimBits = 64, core.ProjRight, 8
	adamw := DefaultConfig()
	fourBit := adamw
	fourBit.OptimBits = 4
	return []Group{
		{Config: lowRank, Params: []*ts.Tensor{leaf(rng, gotch.Float, 24, 16), leaf(rng, gotch.Float, 12, 20), leaf(rng, gotch.Float, 16)}},
		{Config: full, Params: []*ts.Tensor{leaf(rng, gotch.Float, 18, 14)}},
		{Config: eightBit, Params: []*ts.Tensor{leaf(rng, gotch.Float, 96, 128)}},
		{Config: adamw, Params: []*ts.Tensor{leaf(rng, gotch.Float, 10, 8), leaf(rng, gotch.Float, 7), leaf(rng, gotch.BFloat16, 16, 8)}},
		{Config: fourBit, Params: []*ts.Tensor{leaf(rng, gotch.Float, 64, 80)}},
	}
}

func allParams(groups []Group) []*ts.Tensor {
	var ps []*ts.Tensor
	for _, g := range groups {
		ps = append(ps, g.Params...)
	}
	return ps
}

// lrAt is a schedule the tests set with SetLR before every step.
func lrAt(step int) float64 { return 2e-3 / float64(step) }

// TestStepMatchesCore runs the front end on gotch tensors and core's batch
// step on Go copies of the same parameters and gradients, and requires
// every parameter and state byte to agree after every step (refreshes
// included).
func TestStepMatchesCore(t *testing.T) {
	pinThread(t)
	rng := rand.New(rand.NewPCG(1, 2))
	groups := fixture(rng)
	params := allParams(groups)
	opt, err := New(groups...)
	require.NoError(t, err)

	type ref struct {
		param, grad *hostCopy
		state       []*hostCopy
		cfg         Config
	}
	var refs []ref
	for gi, g := range groups {
		for _, p := range g.Params {
			dt, _ := coreDType(p.DType())
			shape := core.Shape{}
			for _, d := range p.MustSize() {
				shape = append(shape, int(d))
			}
			specs, err := core.Layout(dt, shape, g.Config)
			require.NoError(t, err)
			r := ref{param: newHostCopy(dt, shape, memory(p)), grad: newHostCopy(dt, shape, nil), cfg: groups[gi].Config}
			for _, s := range specs {
				r.state = append(r.state, newHostCopy(s.DType, s.Shape, nil))
			}
			refs = append(refs, r)
		}
	}

	for step := 1; step <= 5; step++ {
		require.NoError(t, opt.ZeroGrad())
		backward(t, rng, params)
		require.NoError(t, opt.SetLR(lrAt(step)))
		require.NoError(t, opt.Step())

		items := make([]core.Item, len(refs))
		for i, r := range refs {
			grad := params[i].MustGrad(false)
			copy(r.grad.bytes(), memory(grad))
			grad.MustDrop()
			state := make([]core.Tensor, len(r.state))
			for k, s := range r.state {
				state[k] = s.t
			}
			cfg := r.cfg
			cfg.LR = lrAt(step)
			if step == 1 {
				require.NoError(t, core.Init(backend, r.param.t, state, cfg))
			}
			items[i] = core.Item{Param: r.param.t, Grad: r.grad.t, State: state, Config: cfg, Step: int64(step)}
		}
		require.NoError(t, backend.StepBatch(items))

		for i, r := range refs {
			require.Truef(t, bytes.Equal(memory(params[i]), r.param.bytes()), "step %d: parameter %s differs from core's step", step, opt.params[i].name)
			for k, st := range stateBytes(opt, i) {
				require.Truef(t, bytes.Equal(st, r.state[k].bytes()), "step %d: state %s of %s differs from core's step", step, opt.params[i].specs[k].Name, opt.params[i].name)
			}
		}
	}
}

// TestParametersMove guards the comparison above against a step that does
// nothing on either side.
func TestParametersMove(t *testing.T) {
	pinThread(t)
	rng := rand.New(rand.NewPCG(3, 4))
	groups := fixture(rng)
	params := allParams(groups)
	before := make([][]byte, len(params))
	for i, p := range params {
		before[i] = append([]byte(nil), memory(p)...)
	}
	opt, err := New(groups...)
	require.NoError(t, err)
	backward(t, rng, params)
	require.NoError(t, opt.Step())
	for i, p := range params {
		require.Falsef(t, bytes.Equal(before[i], memory(p)), "parameter %d did not change", i)
	}
}

func TestZeroGrad(t *testing.T) {
	pinThread(t)
	rng := rand.New(rand.NewPCG(5, 6))
	p := leaf(rng, gotch.Float, 6, 5)
	opt, err := New(Group{Params: []*ts.Tensor{p}, Config: DefaultConfig()})
	require.NoError(t, err)
	require.NoError(t, opt.ZeroGrad(), "no gradient yet is fine")
	backward(t, rng, []*ts.Tensor{p})
	require.NoError(t, opt.ZeroGrad())
	grad := p.MustGrad(false)
	require.Equal(t, make([]byte, 6*5*4), memory(grad))
}

// A parameter without a gradient is skipped, as PyTorch skips grad None.
func TestSkipsParametersWithoutGradient(t *testing.T) {
	pinThread(t)
	rng := rand.New(rand.NewPCG(7, 8))
	used, unused := leaf(rng, gotch.Float, 6, 5), leaf(rng, gotch.Float, 4, 3)
	cfg := DefaultConfig()
	cfg.Rank = 2
	opt, err := New(Group{Params: []*ts.Tensor{used, unused}, Config: cfg})
	require.NoError(t, err)
	before := append([]byte(nil), memory(unused)...)
	require.NoError(t, opt.Step(), "no gradients at all: nothing to do")
	require.Equal(t, int64(0), opt.params[0].step)
	backward(t, rng, []*ts.Tensor{used})
	require.NoError(t, opt.Step())
	require.Equal(t, before, memory(unused))
	require.Equal(t, int64(1), opt.params[0].step)
	require.Equal(t, int64(0), opt.params[1].step)
}

func TestFromVarStore(t *testing.T) {
	pinThread(t)
	vs := nn.NewVarStore(gotch.CPU)
	root := vs.Root()
	lin := nn.NewLinear(root.Sub("fc"), 12, 10, &nn.LinearConfig{WsInit: nn.NewUniformInit(-0.3, 0.3), BsInit: nn.NewUniformInit(-0.3, 0.3), Bias: true})
	emb := nn.NewEmbedding(root.Sub("emb"), 20, 12, nn.DefaultEmbeddingConfig())
	cfg := DefaultConfig()
	cfg.Rank = 4
	opt, err := FromVarStore(vs, cfg, func(name string) bool { return name == "fc.weight" })
	require.NoError(t, err)

	got := map[string]bool{}
	for _, p := range opt.params {
		got[p.name] = opt.configs[p.group].Rank > 0
	}
	require.Equal(t, map[string]bool{"fc.weight": true, "fc.bias": false, "emb.weight": false}, got)
	// Projected (10 x 12, std: left, rank 4): moments (4, 12), projector
	// (10, 4), four row vectors.
	want := int64(4 * (2*4*12 + 10*4 + 4*10))
	want += 4 * 2 * (10 + 20*12) // AdamW moments of the bias and the embedding
	require.Equal(t, want, opt.StateBytes())
	require.Equal(t, int64(8*(10*12+10+20*12)), opt.AdamWStateBytes())

	// By default every matrix is projected; frozen variables are left out.
	vs.Root().Sub("frozen").MustZerosNoTrain("table", []int64{3, 3})
	all, err := FromVarStore(vs, cfg, nil)
	require.NoError(t, err)
	got = map[string]bool{}
	for _, p := range all.params {
		got[p.name] = all.configs[p.group].Rank > 0 && len(p.shape) == 2
	}
	require.Equal(t, map[string]bool{"fc.weight": true, "fc.bias": false, "emb.weight": true}, got)

	// One step through the layers themselves.
	xs := ts.MustOfSlice([]int64{1, 5, 7}).MustView([]int64{3}, true)
	loss := lin.Forward(emb.Forward(xs)).MustSum(gotch.Float, true)
	loss.MustBackward()
	require.NoError(t, opt.Step())
	for _, p := range opt.params {
		require.Equal(t, int64(1), p.step, p.name)
	}
}

func TestSetLR(t *testing.T) {
	pinThread(t)
	rng := rand.New(rand.NewPCG(9, 10))
	opt, err := New(Group{Params: []*ts.Tensor{leaf(rng, gotch.Float, 3)}, Config: DefaultConfig()},
		Group{Params: []*ts.Tensor{leaf(rng, gotch.Float, 4)}, Config: DefaultConfig()})
	require.NoError(t, err)
	require.NoError(t, opt.SetLRs([]float64{0.1, 0.2}))
	require.Equal(t, []float64{0.1, 0.2}, opt.LRs())
	err = opt.SetLR(-1)
	require.ErrorContains(t, err, "invalid lr")
	require.Equal(t, []float64{0.1, 0.2}, opt.LRs(), "a refused rate changes nothing")
	require.ErrorContains(t, opt.SetLRs([]float64{0.1}), "1 learning rates for 2 groups")
	require.NoError(t, opt.SetLR(0.05))
	require.Equal(t, []float64{0.05, 0.05}, opt.LRs())
}

// The steady-state step (no projector refresh) makes no copies and no
// garbage: parameters and gradients are read in place, and no gotch tensor
// wrapper is made.
func TestStepAllocatesNothing(t *testing.T) {
	pinThread(t)
	rng := rand.New(rand.NewPCG(19, 20))
	groups := fixture(rng)
	for i := range groups {
		groups[i].Config.UpdateProjGap = 1000
	}
	opt, err := New(groups...)
	require.NoError(t, err)
	backward(t, rng, allParams(groups))
	require.NoError(t, opt.Step())
	allocs := testing.AllocsPerRun(20, func() {
		if err := opt.Step(); err != nil {
			t.Fatal(err)
		}
		if err := opt.ZeroGrad(); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs)
}

// BackwardStep is ZeroGrad, backward and Step: two optimizers over equal
// parameters, one driven each way, stay bit-identical.
func TestBackwardStep(t *testing.T) {
	pinThread(t)
	cfg := DefaultConfig()
	cfg.Rank, cfg.UpdateProjGap = 3, 2
	build := func() ([]*ts.Tensor, *Optimizer) {
		rng := rand.New(rand.NewPCG(41, 42))
		params := []*ts.Tensor{leaf(rng, gotch.Float, 9, 7), leaf(rng, gotch.Float, 7)}
		opt, err := New(Group{Params: params, Config: cfg})
		require.NoError(t, err)
		return params, opt
	}
	manual, optManual := build()
	driven, optDriven := build()
	coefs := rand.New(rand.NewPCG(43, 44))
	for range 3 {
		c := []*ts.Tensor{leaf(coefs, gotch.Float, 9, 7), leaf(coefs, gotch.Float, 7)}
		loss := func(params []*ts.Tensor) *ts.Tensor {
			return params[0].MustMul(c[0], false).MustSum(gotch.Float, true).MustAdd(params[1].MustMul(c[1], false).MustSum(gotch.Float, true), true)
		}
		require.NoError(t, optManual.ZeroGrad())
		loss(manual).MustBackward()
		require.NoError(t, optManual.Step())
		require.NoError(t, optDriven.BackwardStep(loss(driven)))
	}
	for i := range manual {
		require.Equal(t, memory(manual[i]), memory(driven[i]))
	}
	initial, _ := build()
	require.NotEqual(t, memory(initial[0]), memory(driven[0]), "the parameters moved")

	noGraph := ts.MustOnes([]int64{1}, gotch.Float, gotch.CPU)
	requireCode(t, optDriven.BackwardStep(noGraph), core.CodeInvalidArgument, "backward: libtorch: element 0 of tensors does not require grad")
}
