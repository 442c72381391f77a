package core_test

import (
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/core/cpu"
)

func projected(rank int, pt core.ProjType) core.Config {
	cfg := core.DefaultConfig()
	cfg.Rank, cfg.ProjType, cfg.UpdateProjGap = rank, pt, 3
	return cfg
}

func TestLayoutPerProjType(t *testing.T) {
	type want struct{ r, left, right core.Shape }
	cases := []struct {
		shape core.Shape
		pt    core.ProjType
		want  want
	}{
		{core.Shape{8, 4}, core.ProjStd, want{core.Shape{8, 2}, nil, core.Shape{2, 4}}},
		{core.Shape{4, 8}, core.ProjStd, want{core.Shape{2, 8}, core.Shape{4, 2}, nil}},
		{core.Shape{6, 6}, core.ProjStd, want{core.Shape{6, 2}, nil, core.Shape{2, 6}}},
		{core.Shape{8, 4}, core.ProjReverseStd, want{core.Shape{2, 4}, core.Shape{8, 2}, nil}},
		{core.Shape{4, 8}, core.ProjReverseStd, want{core.Shape{4, 2}, nil, core.Shape{2, 8}}},
		{core.Shape{6, 6}, core.ProjReverseStd, want{core.Shape{2, 6}, core.Shape{6, 2}, nil}},
		{core.Shape{8, 4}, core.ProjLeft, want{core.Shape{2, 4}, core.Shape{8, 2}, nil}},
		{core.Shape{8, 4}, core.ProjRight, want{core.Shape{8, 2}, nil, core.Shape{2, 4}}},
		{core.Shape{8, 4}, core.ProjFull, want{core.Shape{2, 2}, core.Shape{8, 2}, core.Shape{2, 4}}},
	}
	for _, c := range cases {
		specs, err := core.Layout(core.BFloat16, c.shape, projected(2, c.pt))
		require.NoError(t, err)
		byName := map[string]core.BufferSpec{}
		for _, s := range specs {
			byName[s.Name] = s
			assert.Equal(t, core.Float32, s.DType, "state is float32 whatever the parameter dtype")
		}
		msg := c.pt.String() + " " + c.shape.String()
		assert.Equal(t, c.want.r, byName[core.BufExpAvg].Shape, msg)
		assert.Equal(t, c.want.r, byName[core.BufExpAvgSq].Shape, msg)
		assert.Equal(t, c.want.left, byName[core.BufProjLeft].Shape, msg)
		assert.Equal(t, c.want.right, byName[core.BufProjRight].Shape, msg)
		assert.Equal(t, core.Shape{c.shape[0]}, byName[core.BufMagnitude].Shape, msg)
		assert.Equal(t, 4*c.shape[0], byName[core.BufDirectionNorm].Bytes(), msg)
	}
}

func TestLayoutClampsRankAndFallsBackToAdamW(t *testing.T) {
	specs, err := core.Layout(core.Float32, core.Shape{5, 3}, projected(100, core.ProjFull))
	require.NoError(t, err)
	assert.Equal(t, core.Shape{3, 3}, specs[0].Shape, "rank is min(r, m, n)")

	for _, c := range []struct {
		shape core.Shape
		cfg   core.Config
	}{
		{core.Shape{7}, projected(4, core.ProjStd)}, // 1-D: never projected
		{core.Shape{7, 3}, core.DefaultConfig()},    // rank 0: AdamW
	} {
		specs, err := core.Layout(core.Float16, c.shape, c.cfg)
		require.NoError(t, err)
		require.Len(t, specs, 2)
		assert.Equal(t, core.BufExpAvg, specs[0].Name)
		assert.Equal(t, c.shape, specs[1].Shape)
	}
}

func TestConfigValidateNamesTheProblem(t *testing.T) {
	cases := map[string]func(*core.Config){
		"lr":              func(c *core.Config) { c.LR = -1 },
		"eps":             func(c *core.Config) { c.Eps = math.NaN() },
		"beta2":           func(c *core.Config) { c.Beta2 = 1 },
		"rank":            func(c *core.Config) { c.Rank = -3 },
		"update_proj_gap": func(c *core.Config) { c.Rank, c.UpdateProjGap = 2, 0 },
		"proj_type":       func(c *core.Config) { c.ProjType = 9 },
		"optim_bits":      func(c *core.Config) { c.OptimBits = 16 },
		"weight_decay":    func(c *core.Config) { c.WeightDecay = math.Inf(1) },
	}
	for name, mutate := range cases {
		cfg := core.DefaultConfig()
		mutate(&cfg)
		err := cfg.Validate()
		require.Error(t, err, name)
		assert.Contains(t, err.Error(), name)
	}
	_, err := core.ParseProjType("diagonal")
	assert.Equal(t, core.CodeUnknownOption, core.CodeOf(err))
	require.NoError(t, core.DefaultConfig().Validate())
}

// param bundles host storage for one parameter and its state.
type param struct {
	w, grad []float32
	state   [][]float32
	item    core.Item
}

func newParam(t *testing.T, m, n int, cfg core.Config, seed uint64) *param {
	rng := rand.New(rand.NewPCG(seed, 1))
	p := &param{w: make([]float32, m*n), grad: make([]float32, m*n)}
	for i := range p.w {
		p.w[i] = float32(rng.NormFloat64())
	}
	shape := core.Shape{m, n}
	specs, err := core.Layout(core.Float32, shape, cfg)
	require.NoError(t, err)
	tensors := make([]core.Tensor, len(specs))
	for i, s := range specs {
		buf := make([]float32, (s.Bytes()+3)/4)
		p.state = append(p.state, buf)
		tensors[i] = tensorOf(buf, s.Shape)
		tensors[i].DType = s.DType
	}
	p.item = core.Item{Param: tensorOf(p.w, shape), Grad: tensorOf(p.grad, shape), State: tensors, Config: cfg}
	require.NoError(t, core.Init(cpu.Backend{}, p.item.Param, tensors, cfg))
	return p
}

func tensorOf(buf []float32, shape core.Shape) core.Tensor {
	return core.Tensor{Data: unsafe.Pointer(&buf[0]), DType: core.Float32, Shape: shape}
}

func (p *param) step(t *testing.T, step int64, rng *rand.Rand) error {
	for i := range p.grad {
		p.grad[i] = float32(rng.NormFloat64())
	}
	p.item.Step = step
	ws := make([]float32, max(1, core.PlanFor(p.item.Param.Shape, p.item.Config).WorkspaceElems()))
	return core.Step(cpu.Backend{}, &p.item, tensorOf(ws, core.Shape{len(ws)}))
}

func clone(p *param) (w []float32, state [][]float32) {
	w = append([]float32(nil), p.w...)
	for _, s := range p.state {
		state = append(state, append([]float32(nil), s...))
	}
	return w, state
}

func TestInitSetsMagnitudesToRowNorms(t *testing.T) {
	p := newParam(t, 3, 4, projected(2, core.ProjStd), 1)
	for i := 0; i < 3; i++ {
		var s float64
		for _, x := range p.w[i*4 : i*4+4] {
			s += float64(x) * float64(x)
		}
		assert.InDelta(t, math.Sqrt(s), p.state[3][i], 1e-6, "magnitude")
		assert.Equal(t, p.state[3][i], p.state[4][i], "direction norm starts equal to magnitude")
	}
}

func TestProjectorRefreshesOnlyEveryGap(t *testing.T) {
	p := newParam(t, 6, 4, projected(2, core.ProjRight), 2) // gap 3: refresh at 1, 4, 7
	rng := rand.New(rand.NewPCG(5, 5))
	var prev []float32
	for step := int64(1); step <= 7; step++ {
		require.NoError(t, p.step(t, step, rng))
		q := append([]float32(nil), p.state[2]...)
		if step > 1 {
			if (step-1)%3 == 0 {
				assert.NotEqual(t, prev, q, "refresh at step %d", step)
			} else {
				assert.Equal(t, prev, q, "no refresh at step %d", step)
			}
		}
		prev = q
		// Rows of Q stay orthonormal.
		for a := 0; a < 2; a++ {
			for b := 0; b < 2; b++ {
				var d float64
				for j := 0; j < 4; j++ {
					d += float64(q[a*4+j]) * float64(q[b*4+j])
				}
				want := 0.0
				if a == b {
					want = 1
				}
				assert.InDelta(t, want, d, 1e-5)
			}
		}
	}
	for _, x := range p.w {
		assert.False(t, math.IsNaN(float64(x)))
	}
}

func TestRefusedStepChangesNothing(t *testing.T) {
	p := newParam(t, 5, 3, projected(2, core.ProjStd), 3)
	rng := rand.New(rand.NewPCG(9, 9))
	require.NoError(t, p.step(t, 1, rng))
	w0, st0 := clone(p)

	p.grad[7] = float32(math.NaN())
	p.item.Step = 2
	_, err := p.item.Validate(cpu.Backend{})
	require.Error(t, err)
	assert.Equal(t, core.CodeNonFinite, core.CodeOf(err))
	assert.Contains(t, err.Error(), "NaN or Inf")
	w1, st1 := clone(p)
	assert.Equal(t, w0, w1)
	assert.Equal(t, st0, st1)
}

func TestValidateRejectsMismatchedState(t *testing.T) {
	p := newParam(t, 5, 3, projected(2, core.ProjStd), 4)
	p.item.Step = 1
	bad := p.item
	bad.State = bad.State[:3]
	_, err := bad.Validate(cpu.Backend{})
	assert.Equal(t, core.CodeShape, core.CodeOf(err))

	bad = p.item
	bad.State = append([]core.Tensor(nil), p.item.State...)
	bad.State[0].Shape = core.Shape{5, 3}
	_, err = bad.Validate(cpu.Backend{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "exp_avg")

	bad = p.item
	bad.Grad.Shape = core.Shape{3, 5}
	_, err = bad.Validate(cpu.Backend{})
	assert.Equal(t, core.CodeShape, core.CodeOf(err))

	bad = p.item
	bad.Step = 0
	_, err = bad.Validate(cpu.Backend{})
	assert.Equal(t, core.CodeInvalidArgument, core.CodeOf(err))
}

func TestLayout8BitQuantizesOnlyLargeMoments(t *testing.T) {
	cfg := projected(64, core.ProjStd)
	cfg.OptimBits = 8
	specs, err := core.Layout(core.BFloat16, core.Shape{256, 128}, cfg) // R: 256 x 64
	require.NoError(t, err)
	names := []string{}
	for _, s := range specs {
		names = append(names, s.Name)
	}
	assert.Equal(t, []string{"exp_avg", "exp_avg_absmax", "exp_avg_sq", "exp_avg_sq_absmax", "proj_right", "proj_right_absmax",
		"magnitude", "direction_norm", "magnitude_exp_avg", "magnitude_exp_avg_sq"}, names)
	assert.Equal(t, core.Shape{64, 128}, specs[4].Shape, "8-bit codes keep the shape")
	assert.Equal(t, core.Uint8, specs[0].DType)
	assert.Equal(t, 256*64, specs[0].Bytes())
	assert.Equal(t, core.Shape{256 * 64 / 256}, specs[1].Shape)

	cfg.OptimBits = 4
	specs4, err := core.Layout(core.BFloat16, core.Shape{256, 128}, cfg)
	require.NoError(t, err)
	assert.Equal(t, core.Shape{256 * 64 / 2}, specs4[0].Shape, "4-bit codes pack two to a byte")
	assert.Equal(t, core.Shape{64 * 128 / 2}, specs4[4].Shape)

	small, err := core.Layout(core.Float32, core.Shape{100}, cfg) // AdamW, < 4096 elements
	require.NoError(t, err)
	assert.Equal(t, core.Float32, small[0].DType)
	big, err := core.Layout(core.Float32, core.Shape{5000}, cfg)
	require.NoError(t, err)
	assert.Len(t, big, 4)
	assert.Equal(t, core.Shape{20}, big[1].Shape, "ceil(5000/256) blocks")
}

// TestLowBitTrainingTracksFloat32 steps the same parameter with 32-, 8- and
// 4-bit state on a fixed, slowly varying gradient stream: low-bit updates
// stay close to the float32 ones, 8-bit closer than 4-bit.
func TestLowBitTrainingTracksFloat32(t *testing.T) {
	const m, n = 96, 128 // R: 96 x 64 (6144 elements): quantised
	run := func(bits int) []float32 {
		cfg := projected(64, core.ProjStd)
		cfg.OptimBits, cfg.UpdateProjGap, cfg.LR = bits, 10, 1e-2
		p := newParam(t, m, n, cfg, 21)
		rng := rand.New(rand.NewPCG(3, 3))
		base := make([]float32, m*n)
		for i := range base {
			base[i] = float32(rng.NormFloat64())
		}
		w0 := append([]float32(nil), p.w...)
		for step := int64(1); step <= 25; step++ {
			for i := range p.grad {
				p.grad[i] = base[i] + 0.3*float32(rng.NormFloat64())
			}
			p.item.Step = step
			ws := make([]float32, core.PlanFor(p.item.Param.Shape, cfg).WorkspaceElems())
			require.NoError(t, core.Step(cpu.Backend{}, &p.item, tensorOf(ws, core.Shape{len(ws)})))
		}
		for i := range w0 {
			w0[i] = p.w[i] - w0[i]
		}
		return w0
	}
	ref := run(32)
	relErr := func(got []float32) float64 {
		var num, den float64
		for i := range ref {
			d := float64(got[i] - ref[i])
			num += d * d
			den += float64(ref[i]) * float64(ref[i])
			require.False(t, math.IsNaN(float64(got[i])))
		}
		return math.Sqrt(num / den)
	}
	e8, e4 := relErr(run(8)), relErr(run(4))
	t.Logf("relative error of the weight change after 25 steps: 8-bit %.4f, 4-bit %.4f", e8, e4)
	// 4-bit codes keep about one significant digit per entry (a memory-first
	// mode; its cost in training loss is measured by the benchmarks).
	assert.Less(t, e8, 0.05)
	assert.Less(t, e4, 0.5)
	assert.Less(t, e8, e4)
}
