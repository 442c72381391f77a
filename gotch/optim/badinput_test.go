package optim

import (
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/stretchr/testify/require"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/nn"
	"github.com/sugarme/gotch/ts"
)

func requireCode(t *testing.T, err error, code core.Code, contains string) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, code, core.CodeOf(err), err.Error())
	require.Contains(t, err.Error(), contains)
}

func TestRejectsBadParameters(t *testing.T) {
	pinThread(t)
	rng := rand.New(rand.NewPCG(11, 12))
	vs := nn.NewVarStore(gotch.CPU)
	lin := nn.NewLinear(vs.Root(), 4, 3, &nn.LinearConfig{WsInit: nn.NewUniformInit(-1, 1), Bias: false})
	for _, c := range []struct {
		name     string
		param    *ts.Tensor
		code     core.Code
		contains string
	}{
		{"float64", leaf(rng, gotch.Double, 4, 3), core.CodeDType, `parameter "g0.0" has dtype Double: supported are float32, bfloat16 and float16`},
		{"int64", ts.MustOfSlice([]int64{1, 2, 3}), core.CodeDType, "has dtype Int64"},
		{"transposed", leaf(rng, gotch.Float, 4, 3).MustT(false), core.CodeNotContiguous, `parameter "g0.0" is not contiguous`},
		{"nn.Linear.Ws", lin.Ws, core.CodeNotContiguous, "not the transposed Ws"},
		{"3-D", leaf(rng, gotch.Float, 2, 3, 4), core.CodeShape, "has 3 dimensions"},
		{"nil", nil, core.CodeNullPointer, `parameter "g0.0" is nil`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := New(Group{Params: []*ts.Tensor{c.param}, Config: DefaultConfig()})
			requireCode(t, err, c.code, c.contains)
		})
	}
}

func TestRejectsBadGroups(t *testing.T) {
	pinThread(t)
	rng := rand.New(rand.NewPCG(13, 14))
	p := leaf(rng, gotch.Float, 4, 3)
	_, err := New(Group{Params: []*ts.Tensor{p, p}, Config: DefaultConfig()})
	requireCode(t, err, core.CodeInvalidArgument, `parameter "g0.1" is also "g0.0"`)

	bad := DefaultConfig()
	bad.ProjType = 9
	_, err = New(Group{Params: []*ts.Tensor{p}, Config: bad})
	requireCode(t, err, core.CodeUnknownOption, "group 0: unknown proj_type 9")

	_, err = New(Group{Params: []*ts.Tensor{p}, Names: []string{"a", "b"}, Config: DefaultConfig()})
	requireCode(t, err, core.CodeInvalidArgument, "2 names for 1 parameters")
}

// snapshot copies every parameter and state byte of o.
func snapshot(o *Optimizer) [][]byte {
	var out [][]byte
	for i, p := range o.params {
		out = append(out, append([]byte(nil), memory(p.t)...))
		out = append(out, stateBytes(o, i)...)
	}
	return out
}

// A parameter resized in place after the optimizer was built no longer
// fits its state: the step is refused and nothing changes.
func TestShapeChangedIsRefused(t *testing.T) {
	pinThread(t)
	rng := rand.New(rand.NewPCG(15, 16))
	a, b := leaf(rng, gotch.Float, 8, 6), leaf(rng, gotch.Float, 5, 4)
	cfg := DefaultConfig()
	cfg.Rank = 2
	opt, err := New(Group{Params: []*ts.Tensor{a, b}, Names: []string{"a", "b"}, Config: cfg})
	require.NoError(t, err)
	backward(t, rng, []*ts.Tensor{a, b})
	require.NoError(t, opt.Step())

	backward(t, rng, []*ts.Tensor{a, b})
	b.MustRequiresGrad_(false) // libtorch resizes no tensor that requires grad
	b.MustResize_([]int64{4, 5})
	b.MustRequiresGrad_(true)
	before := snapshot(opt)
	err = opt.Step()
	requireCode(t, err, core.CodeShape, `parameter "b" has shape (4, 5) now but (5, 4) when the optimizer was built`)
	require.Equal(t, before, snapshot(opt))
	require.Equal(t, int64(1), opt.params[0].step)
}

// A non-finite gradient anywhere refuses the whole step: no parameter,
// state or step counter changes, and a first step initialises again later.
func TestNonFiniteGradientChangesNothing(t *testing.T) {
	pinThread(t)
	rng := rand.New(rand.NewPCG(17, 18))
	a, b := leaf(rng, gotch.Float, 8, 6), leaf(rng, gotch.Float, 6)
	cfg := DefaultConfig()
	cfg.Rank = 2
	opt, err := New(Group{Params: []*ts.Tensor{a, b}, Names: []string{"a", "b"}, Config: cfg})
	require.NoError(t, err)
	for step := 0; step < 2; step++ {
		require.NoError(t, opt.ZeroGrad())
		backward(t, rng, []*ts.Tensor{a, b})
		grad := b.MustGrad(false)
		saved := unsafe.Slice((*float32)(grad.MustDataPtr()), 6)[3]
		unsafe.Slice((*float32)(grad.MustDataPtr()), 6)[3] = float32(math.NaN())
		before := snapshot(opt)
		requireCode(t, opt.Step(), core.CodeNonFinite, `parameter "b"`)
		require.Equal(t, before, snapshot(opt))
		require.Equal(t, int64(step), opt.params[0].step)

		unsafe.Slice((*float32)(grad.MustDataPtr()), 6)[3] = saved
		require.NoError(t, opt.Step())
		require.Equal(t, int64(step+1), opt.params[0].step)
	}
}

func TestDroppedParameterIsRefused(t *testing.T) {
	pinThread(t)
	rng := rand.New(rand.NewPCG(19, 20))
	p := leaf(rng, gotch.Float, 4, 3)
	opt, err := New(Group{Params: []*ts.Tensor{p}, Names: []string{"w"}, Config: DefaultConfig()})
	require.NoError(t, err)
	p.MustDrop()
	requireCode(t, opt.Step(), core.CodeNullPointer, `parameter "w" was dropped`)
	requireCode(t, opt.ZeroGrad(), core.CodeNullPointer, `parameter "w" was dropped`)
}
