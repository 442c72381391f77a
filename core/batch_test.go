package core_test

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/core/cpu"
)

// faulty is the CPU backend with a fault injected into the prepare phase
// of the item whose first moment is at target: AdamDirection on it does
// its work (so the state has changed) and then fails or panics.
type faulty struct {
	cpu.Backend
	target unsafe.Pointer
	panics bool
}

func (f faulty) AdamDirection(x core.Tensor, mom core.Moments, h core.AdamParams) error {
	if err := f.Backend.AdamDirection(x, mom, h); err != nil || mom.M1.Data != f.target {
		return err
	}
	if f.panics {
		panic("injected")
	}
	return core.Errorf(core.CodeNumerical, "injected failure")
}

// batchOf builds projected parameters of several sizes and a plain AdamW
// vector, stepped twice so that state is not trivial.
func batchOf(t *testing.T) ([]*param, []core.Item) {
	cfg := projected(3, core.ProjStd)
	ps := []*param{newParam(t, 40, 24, cfg, 1), newParam(t, 16, 30, cfg, 2), newParam(t, 24, 24, cfg, 3), newVector(t, 7, cfg)}
	rng := rand.New(rand.NewPCG(5, 6))
	for step := int64(1); step <= 2; step++ {
		for _, p := range ps {
			require.NoError(t, p.step(t, step, rng))
		}
	}
	items := make([]core.Item, len(ps))
	for i, p := range ps {
		for k := range p.grad {
			p.grad[k] = float32(rng.NormFloat64())
		}
		items[i] = p.item
	}
	return ps, items
}

func newVector(t *testing.T, n int, cfg core.Config) *param {
	p := &param{w: make([]float32, n), grad: make([]float32, n)}
	for i := range p.w {
		p.w[i] = float32(i) - 3
	}
	specs, err := core.Layout(core.Float32, core.Shape{n}, cfg)
	require.NoError(t, err)
	tensors := make([]core.Tensor, len(specs))
	for i, s := range specs {
		buf := make([]float32, (s.Bytes()+3)/4)
		p.state = append(p.state, buf)
		tensors[i] = tensorOf(buf, s.Shape)
	}
	p.item = core.Item{Param: tensorOf(p.w, core.Shape{n}), Grad: tensorOf(p.grad, core.Shape{n}), State: tensors, Config: cfg}
	require.NoError(t, core.Init(cpu.Backend{}, p.item.Param, tensors, cfg))
	return p
}

// TestBatchFailureInApplyChangesNothing injects a failure (an error, then a
// panic) into the apply phase of one item, at a refresh step and at a
// regular one: every parameter and state buffer of the batch is
// bit-identical to before.
func TestBatchFailureInApplyChangesNothing(t *testing.T) {
	for _, panics := range []bool{false, true} {
		for _, step := range []int64{4, 5} { // gap 3: step 4 refreshes
			for target := 0; target < 3; target++ {
				ps, items := batchOf(t)
				var before [][]float32
				for _, p := range ps {
					w, st := clone(p)
					before = append(before, w)
					before = append(before, st...)
				}
				for i := range items {
					items[i].Step = step
				}
				b := faulty{target: items[target].State[0].Data, panics: panics}
				err := core.StepBatch(b, b, items)
				require.Error(t, err)
				var ie *core.ItemError
				require.True(t, errors.As(err, &ie), "%v", err)
				assert.Equal(t, target, ie.Index)
				if panics {
					assert.Equal(t, core.CodeInternal, core.CodeOf(err))
				} else {
					assert.Equal(t, core.CodeNumerical, core.CodeOf(err))
				}
				var after [][]float32
				for _, p := range ps {
					after = append(after, p.w)
					after = append(after, p.state...)
				}
				for k := range before {
					assert.Equal(t, bits(before[k]), bits(after[k]), "panic %v step %d target %d: buffer %d changed", panics, step, target, k)
				}
				// The same batch then steps normally.
				require.NoError(t, cpu.Backend{}.StepBatch(items))
				assert.NotEqual(t, bits(before[0]), bits(ps[0].w))
			}
		}
	}
}

func bits(v []float32) []uint32 {
	out := make([]uint32, len(v))
	for i, x := range v {
		out[i] = math.Float32bits(x)
	}
	return out
}

// TestBatchRefusesOverlappingTensors: the same parameter twice, or a state
// buffer shared by two parameters, is refused before anything changes.
func TestBatchRefusesOverlappingTensors(t *testing.T) {
	_, items := batchOf(t)
	twice := append([]core.Item{}, items[0], items[1], items[0])
	err := cpu.Backend{}.StepBatch(twice)
	require.Error(t, err)
	assert.Equal(t, core.CodeInvalidArgument, core.CodeOf(err))
	assert.Regexp(t, `items\[[02]\]\.\w+(\[\d\])? and items\[[02]\]\.\w+(\[\d\])? overlap in memory`, err.Error())

	shared := append([]core.Item{}, items...)
	shared[1].State = append([]core.Tensor{}, shared[1].State...)
	shared[1].State[3] = core.Tensor{Data: shared[0].State[3].Data, DType: shared[1].State[3].DType, Shape: shared[1].State[3].Shape}
	err = cpu.Backend{}.StepBatch(shared)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "overlap in memory")

	// A gradient read by two items is fine: only written memory matters.
	sameGrad := append([]core.Item{}, items[0], items[2])
	sameGrad[1].Grad = core.Tensor{Data: items[0].Grad.Data, DType: core.Float32, Shape: core.Shape{24, 24}}
	assert.NoError(t, cpu.Backend{}.StepBatch(sameGrad))
}

// TestNonFiniteOrOverflowingStepIsRefused: an Inf weight entering a
// refresh step (once a hang in the SVD) and a huge finite gradient (once
// NaN weights) are refused with nothing changed.
func TestNonFiniteOrOverflowingStepIsRefused(t *testing.T) {
	cfg := projected(8, core.ProjStd)
	cfg.UpdateProjGap = 10
	for _, c := range []struct {
		name   string
		spoil  func(p *param)
		substr string
	}{
		{"inf weight", func(p *param) { p.w[5] = float32(math.Inf(1)) }, "weight-norm gradient dV holds NaN or Inf"},
		{"huge gradient", func(p *param) {
			for i := range p.grad {
				p.grad[i] = 1e38
			}
		}, "overflow float32"},
	} {
		p := newParam(t, 64, 48, cfg, 9)
		rng := rand.New(rand.NewPCG(1, 2))
		for step := int64(1); step <= 10; step++ {
			require.NoError(t, p.step(t, step, rng))
		}
		for i := range p.grad {
			p.grad[i] = float32(rng.NormFloat64())
		}
		c.spoil(p)
		w, st := clone(p)
		p.item.Step = 11
		err := cpu.Backend{}.StepBatch([]core.Item{p.item})
		require.Error(t, err, c.name)
		assert.Equal(t, core.CodeNonFinite, core.CodeOf(err), c.name)
		assert.Contains(t, err.Error(), c.substr, c.name)
		assert.Equal(t, bits(w), bits(p.w), c.name)
		for k := range st {
			assert.Equal(t, bits(st[k]), bits(p.state[k]), "%s: state %d", c.name, k)
		}
	}
}
