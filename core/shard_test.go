package core_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/core/cpu"
)

// group is an in-process stand-in for a process group: ranks are
// goroutines, and each collective deposits every rank's buffer, waits for
// all, and combines them in rank order (so every rank gets the same bits).
type group struct {
	size    int
	mu      sync.Mutex
	cond    *sync.Cond
	arrived int
	gen     int
	slots   [][]float32
	calls   []string // rank 0's sequence of ops
	broken  bool     // every collective fails, on every rank (an aborted communicator)
}

func newGroup(size int) *group {
	g := &group{size: size, slots: make([][]float32, size)}
	g.cond = sync.NewCond(&g.mu)
	return g
}

// barrier waits until every rank has called it.
func (g *group) barrier() {
	g.mu.Lock()
	defer g.mu.Unlock()
	gen := g.gen
	g.arrived++
	if g.arrived == g.size {
		g.arrived, g.gen = 0, g.gen+1
		g.cond.Broadcast()
		return
	}
	for gen == g.gen {
		g.cond.Wait()
	}
}

// exchange publishes mine and returns every rank's contribution.
func (g *group) exchange(rank int, mine []float32, use func(all [][]float32)) {
	g.slots[rank] = mine
	g.barrier()
	use(g.slots)
	g.barrier()
}

type rankCollective struct {
	g    *group
	rank int
}

func floats(t core.Tensor) []float32 {
	if t.Shape.Numel() == 0 {
		return nil
	}
	return unsafe.Slice((*float32)(t.Data), t.Shape.Numel())
}

func (c rankCollective) record(op string) error {
	if c.rank == 0 {
		c.g.calls = append(c.g.calls, op)
	}
	if c.g.broken {
		return fmt.Errorf("rank %d: connection reset", c.rank)
	}
	return nil
}

func (c rankCollective) reduce(op string, t core.Tensor, f func(a, b float32) float32) error {
	if err := c.record(op); err != nil {
		return err
	}
	mine := append([]float32(nil), floats(t)...)
	out := floats(t)
	c.g.exchange(c.rank, mine, func(all [][]float32) {
		for i := range out {
			acc := all[0][i]
			for _, o := range all[1:] {
				acc = f(acc, o[i])
			}
			out[i] = acc
		}
	})
	return nil
}

func (c rankCollective) Sum(t core.Tensor) error {
	return c.reduce("sum", t, func(a, b float32) float32 { return a + b })
}

func (c rankCollective) Max(t core.Tensor) error {
	return c.reduce("max", t, func(a, b float32) float32 { return max(a, b) })
}

func (c rankCollective) GatherRows(local, whole core.Tensor) error {
	if err := c.record("gather_rows"); err != nil {
		return err
	}
	out := floats(whole)
	c.g.exchange(c.rank, append([]float32(nil), floats(local)...), func(all [][]float32) {
		off := 0
		for _, part := range all {
			off += copy(out[off:], part)
		}
	})
	return nil
}

// shardedParam is one parameter, whole (the reference, stepped by
// StepBatch) and split by rows over the ranks (stepped by StepSharded).
type shardedParam struct {
	shape core.Shape
	cfg   core.Config
	whole *param
	// control is the whole parameter stepped on gradients whose elements
	// are moved by about one float32 rounding, up or down at random: how
	// far rounding alone moves the single-process run.
	control *param
	shards  []core.Shard
	local   [][]float32   // per rank: weights
	grads   [][]float32   // per rank: gradient rows
	state   [][][]float32 // per rank, per buffer
	items   []core.Item   // per rank
}

func cols(shape core.Shape) int {
	if len(shape) == 2 {
		return shape[1]
	}
	return 1
}

func newShardedParam(t *testing.T, shape core.Shape, cfg core.Config, world int, seed uint64) *shardedParam {
	rng := rand.New(rand.NewPCG(seed, 9))
	sp := &shardedParam{shape: shape, cfg: cfg, whole: &param{w: make([]float32, shape.Numel())}}
	for i := range sp.whole.w {
		sp.whole.w[i] = float32(rng.NormFloat64())
	}
	sp.whole = wholeParam(t, shape, cfg, sp.whole.w)
	sp.control = wholeParam(t, shape, cfg, append([]float32(nil), sp.whole.w...))

	rows, c := shape[0], cols(shape)
	chunk := (rows + world - 1) / world
	for k := range world {
		first := min(k*chunk, rows)
		n := min(chunk, rows-first)
		sh := core.Shard{GlobalRows: rows, RowOffset: first, Rank: k, WorldSize: world}
		localShape := append(core.Shape{n}, shape[1:]...)
		w := append([]float32(nil), sp.whole.w[first*c:(first+n)*c]...)
		g := make([]float32, n*c)
		specs, err := core.ShardLayout(core.Float32, localShape, sh, cfg)
		require.NoError(t, err)
		var bufs [][]float32
		state := allocate(specs, &bufs)
		it := core.Item{Param: maybeTensor(w, localShape), Grad: maybeTensor(g, localShape), State: state, Config: cfg}
		require.NoError(t, core.ShardInit(cpu.Backend{}, it.Param, sh, state, cfg))
		sp.shards, sp.local, sp.grads = append(sp.shards, sh), append(sp.local, w), append(sp.grads, g)
		sp.state, sp.items = append(sp.state, bufs), append(sp.items, it)
	}
	return sp
}

// wholeParam is an unsharded parameter with weights w.
func wholeParam(t *testing.T, shape core.Shape, cfg core.Config, w []float32) *param {
	p := &param{w: w, grad: make([]float32, len(w))}
	specs, err := core.Layout(core.Float32, shape, cfg)
	require.NoError(t, err)
	p.item = core.Item{Param: tensorOf(p.w, shape), Grad: tensorOf(p.grad, shape), State: allocate(specs, nil), Config: cfg}
	require.NoError(t, core.Init(cpu.Backend{}, p.item.Param, p.item.State, cfg))
	return p
}

// maybeTensor wraps buf, which may be empty (a rank without rows).
func maybeTensor(buf []float32, shape core.Shape) core.Tensor {
	if len(buf) == 0 {
		return core.Tensor{DType: core.Float32, Shape: shape}
	}
	return tensorOf(buf, shape)
}

// allocate makes zeroed state buffers for specs (kept in *keep if given).
func allocate(specs []core.BufferSpec, keep *[][]float32) []core.Tensor {
	out := make([]core.Tensor, len(specs))
	for i, s := range specs {
		buf := make([]float32, (s.Bytes()+3)/4)
		if keep != nil {
			*keep = append(*keep, buf)
		}
		out[i] = maybeTensor(buf, s.Shape)
		out[i].DType = s.DType
	}
	return out
}

// newGrad draws the whole gradient and hands each rank its rows.
func (sp *shardedParam) newGrad(rng *rand.Rand) {
	for i := range sp.whole.grad {
		sp.whole.grad[i] = float32(rng.NormFloat64())
	}
	for i, v := range sp.whole.grad {
		sp.control.grad[i] = v * (1 + 1.2e-7*float32(2*rng.IntN(2)-1))
	}
	c := cols(sp.shape)
	for k, sh := range sp.shards {
		copy(sp.grads[k], sp.whole.grad[sh.RowOffset*c:])
	}
}

// stepAll steps every rank's items concurrently and returns each rank's error.
func stepAll(g *group, params []*shardedParam, step int64) []error {
	errs := make([]error, g.size)
	var wg sync.WaitGroup
	for k := range g.size {
		wg.Add(1)
		go func() {
			defer wg.Done()
			items := make([]core.Item, len(params))
			shards := make([]core.Shard, len(params))
			for i, sp := range params {
				items[i], shards[i] = sp.items[k], sp.shards[k]
				items[i].Step = step
			}
			errs[k] = core.StepSharded(cpu.Backend{}, cpu.Backend{}, items, shards, rankCollective{g, k})
		}()
	}
	wg.Wait()
	return errs
}

func (sp *shardedParam) gathered() []float32 {
	var out []float32
	for _, w := range sp.local {
		out = append(out, w...)
	}
	return out
}

func relDiff(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	return math.Sqrt(num / den)
}

// TestShardedStepMatchesWholeMatrix: several parameters split over 2, 3
// and 4 ranks (uneven splits, a rank without rows), every proj_type, 32, 8
// and 4 bits, both refreshes, three refreshes in 7 steps: the weights
// follow the unsharded step of the whole matrices, and replicated state is
// identical on every rank.
func TestShardedStepMatchesWholeMatrix(t *testing.T) {
	type tc struct {
		world, bits int
		pt          core.ProjType
		refresh     core.RefreshMode
		comp        core.CompensationMode
	}
	var cases []tc
	for _, pt := range []core.ProjType{core.ProjStd, core.ProjReverseStd, core.ProjRight, core.ProjLeft, core.ProjFull} {
		cases = append(cases, tc{3, 32, pt, core.RefreshSVD, core.CompensationNone}, tc{3, 8, pt, core.RefreshSVD, core.CompensationNone},
			tc{3, 32, pt, core.RefreshSVD, core.CompensationResidual})
	}
	cases = append(cases, tc{2, 4, core.ProjStd, core.RefreshSVD, core.CompensationNone}, tc{4, 8, core.ProjStd, core.RefreshSubspace, core.CompensationNone},
		tc{2, 32, core.ProjFull, core.RefreshSubspace, core.CompensationNone}, tc{4, 32, core.ProjLeft, core.RefreshSVD, core.CompensationNone},
		tc{4, 8, core.ProjStd, core.RefreshSubspace, core.CompensationResidual}, tc{2, 4, core.ProjLeft, core.RefreshSVD, core.CompensationResidual})
	for _, c := range cases {
		t.Run(fmt.Sprintf("world%d/%dbit/%v/%v/%v", c.world, c.bits, c.pt, c.refresh, c.comp), func(t *testing.T) {
			cfg := core.DefaultConfig()
			cfg.Rank, cfg.ProjType, cfg.UpdateProjGap, cfg.OptimBits, cfg.Refresh = 8, c.pt, 3, c.bits, c.refresh
			cfg.Compensation = c.comp
			cfg.LR, cfg.Scale = 1e-2, 0.25
			shapes := []core.Shape{{600, 40}, {40, 600}, {5000}, {5, 6}}
			var params []*shardedParam
			for i, s := range shapes {
				params = append(params, newShardedParam(t, s, cfg, c.world, uint64(i+1)))
			}
			g := newGroup(c.world)
			rng := rand.New(rand.NewPCG(5, 5))
			for step := int64(1); step <= 7; step++ {
				var whole []core.Item
				for _, sp := range params {
					sp.newGrad(rng)
					for _, p := range []*param{sp.whole, sp.control} {
						p.item.Step = step
						whole = append(whole, p.item)
					}
				}
				require.NoError(t, cpu.Backend{}.StepBatch(whole))
				for k, err := range stepAll(g, params, step) {
					require.NoError(t, err, "rank %d", k)
				}
			}
			for i, sp := range params {
				// Within 1e-5, or (where Adam amplifies rounding, as on the
				// off-diagonal of "full"'s R, zero in exact arithmetic at a
				// refresh) within an order of magnitude of how far rounding
				// alone moves the run.
				rounding := relDiff(sp.control.w, sp.whole.w)
				got := relDiff(sp.gathered(), sp.whole.w)
				t.Logf("%v: sharded vs whole %.2e, rounding alone %.2e", sp.shape, got, rounding)
				assert.Less(t, got, max(1e-5, 10*rounding), "weights of %v", sp.shape)
				for b := range sp.state[0] {
					if !sp.items[0].State[b].Shape.Equal(sp.whole.item.State[b].Shape) {
						continue // row-sharded
					}
					for k := 1; k < c.world; k++ {
						assert.Equal(t, bitsOf(sp.state[0][b]), bitsOf(sp.state[k][b]), "param %d buffer %d: replicated state differs on rank %d", i, b, k)
					}
				}
			}
		})
	}
}

// TestShardedStepCommunicatesWhatTheMathNeeds pins the collectives of a
// step: the two agreements, a gather of dV at a refresh, a sum for a left
// projection, a max for row-sharded 8-bit moments, nothing for a right
// projection.
func TestShardedStepCommunicatesWhatTheMathNeeds(t *testing.T) {
	cfg := core.DefaultConfig()
	cfg.Rank, cfg.UpdateProjGap, cfg.OptimBits = 8, 2, 8
	right := newShardedParam(t, core.Shape{600, 40}, cfg, 2, 1) // R = dV Q^T: 600 x 8, quantised, row-sharded
	left := newShardedParam(t, core.Shape{40, 600}, cfg, 2, 2)  // R = P^T dV: 8 x 600, replicated
	params := []*shardedParam{right, left}
	rng := rand.New(rand.NewPCG(1, 1))
	for step, want := range map[int64][]string{
		1: {"max", "gather_rows", "max", "gather_rows", "sum", "max"},
		2: {"max", "max", "sum", "max"},
	} {
		g := newGroup(2)
		for s := int64(1); s < step; s++ {
			for _, sp := range params {
				sp.newGrad(rng)
			}
			require.NoError(t, errorsOf(stepAll(g, params, s)))
		}
		g.calls = nil
		for _, sp := range params {
			sp.newGrad(rng)
		}
		require.NoError(t, errorsOf(stepAll(g, params, step)))
		assert.Equal(t, want, g.calls, "step %d", step)
	}
}

func errorsOf(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// TestShardedStepAllOrNone: a NaN gradient on one rank, or a failed
// collective, leaves every rank's weights and state as they were, and the
// ranks say why.
func TestShardedStepAllOrNone(t *testing.T) {
	cfg := core.DefaultConfig()
	cfg.Rank, cfg.UpdateProjGap, cfg.OptimBits = 8, 2, 8
	shapes := []core.Shape{{600, 40}, {40, 600}, {5000}}
	for _, fault := range []string{"nan", "collective", "overflow"} {
		t.Run(fault, func(t *testing.T) {
			var params []*shardedParam
			for i, s := range shapes {
				params = append(params, newShardedParam(t, s, cfg, 3, uint64(i+1)))
			}
			g := newGroup(3)
			rng := rand.New(rand.NewPCG(2, 2))
			for _, sp := range params {
				sp.newGrad(rng)
			}
			require.NoError(t, errorsOf(stepAll(g, params, 1)))
			for _, sp := range params {
				sp.newGrad(rng)
			}
			switch fault {
			case "nan":
				params[1].grads[2][7] = float32(math.NaN())
			case "collective":
				g.broken = true
			case "overflow":
				params[0].local[1][3] = math.MaxFloat32 // a finite weight whose row norm overflows
			}
			before := snapshotParams(params)
			errs := stepAll(g, params, 2)
			for k, err := range errs {
				require.Error(t, err, "rank %d", k)
			}
			switch fault {
			case "nan":
				assert.Equal(t, core.CodeNonFinite, core.CodeOf(errs[2]))
				assert.Contains(t, errs[2].Error(), "items[1]")
				assert.Equal(t, core.CodeCollective, core.CodeOf(errs[0]))
				assert.Contains(t, errs[0].Error(), "another rank")
			case "collective":
				for _, err := range errs {
					assert.Equal(t, core.CodeCollective, core.CodeOf(err))
					assert.Contains(t, err.Error(), "connection reset")
				}
			case "overflow":
				assert.Equal(t, core.CodeNonFinite, core.CodeOf(errs[1]))
			}
			assert.Equal(t, before, snapshotParams(params), "nothing changed on any rank")
		})
	}
}

// bitsOf is buf's bits (uint8 codes stored in []float32 may read as NaN).
func bitsOf(buf []float32) []uint32 {
	out := make([]uint32, len(buf))
	for i, v := range buf {
		out[i] = math.Float32bits(v)
	}
	return out
}

func snapshotParams(params []*shardedParam) [][][]uint32 {
	var out [][][]uint32
	for _, sp := range params {
		for k := range sp.local {
			bufs := [][]uint32{bitsOf(sp.local[k])}
			for _, s := range sp.state[k] {
				bufs = append(bufs, bitsOf(s))
			}
			out = append(out, bufs)
		}
	}
	return out
}

// TestShardedStepRefusesMismatchedRanks: ranks that step different
// parameters get an error instead of a wrong result or a hang.
func TestShardedStepRefusesMismatchedRanks(t *testing.T) {
	cfg := core.DefaultConfig()
	cfg.Rank = 4
	sp := newShardedParam(t, core.Shape{12, 10}, cfg, 2, 1)
	g := newGroup(2)
	sp.items[1].Config.LR = 5e-3
	for _, err := range stepAll(g, []*shardedParam{sp}, 1) {
		require.Error(t, err)
		assert.Contains(t, err.Error(), "ranks step different parameters")
	}
}

func TestShardLayoutChecksTheSplit(t *testing.T) {
	cfg := core.DefaultConfig()
	cfg.Rank = 4
	_, err := core.ShardLayout(core.Float32, core.Shape{3, 10}, core.Shard{GlobalRows: 12, RowOffset: 6, Rank: 1, WorldSize: 2}, cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "gives rank 1 rows [6, 12)")

	cfg.OptimBits = 4
	_, err = core.ShardLayout(core.Float32, core.Shape{1667}, core.Shard{GlobalRows: 5000, RowOffset: 1667, Rank: 1, WorldSize: 3}, cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "share a byte between ranks")

	specs, err := core.ShardLayout(core.Float32, core.Shape{0, 6}, core.Shard{GlobalRows: 5, RowOffset: 5, Rank: 3, WorldSize: 4}, core.DefaultConfig())
	require.NoError(t, err)
	assert.Equal(t, core.Shape{0, 6}, specs[0].Shape, "a rank without rows has empty row-sharded buffers")
}

// TestShardedCodesAreTheWholeCodes: 8-bit moments of a 1-D parameter split
// over 3 ranks (5000 values: rank blocks start inside quant blocks) are,
// concatenated, the unsharded step's codes byte for byte, and each rank's
// absmax entries are the unsharded ones of the blocks it touches.
func TestShardedCodesAreTheWholeCodes(t *testing.T) {
	cfg := core.DefaultConfig()
	cfg.OptimBits = 8
	sp := newShardedParam(t, core.Shape{5000}, cfg, 3, 4)
	g := newGroup(3)
	rng := rand.New(rand.NewPCG(8, 8))
	for step := int64(1); step <= 3; step++ {
		sp.newGrad(rng)
		sp.whole.item.Step = step
		require.NoError(t, cpu.Backend{}.StepBatch([]core.Item{sp.whole.item}))
		require.NoError(t, errorsOf(stepAll(g, []*shardedParam{sp}, step)))
	}
	assert.Equal(t, bitsOf(sp.whole.w), bitsOf(sp.gathered()))
	for b, spec := range sp.whole.item.State {
		whole := unsafe.Slice((*byte)(spec.Data), spec.Bytes())
		switch spec.DType {
		case core.Uint8:
			var got []byte
			for k := range sp.shards {
				local := sp.items[k].State[b]
				got = append(got, unsafe.Slice((*byte)(local.Data), local.Bytes())...)
			}
			assert.Equal(t, whole, got, "codes of buffer %d", b)
		default: // absmax: each rank's entries are the whole ones from its first block on
			wholeAbs := floats(spec)
			for k, sh := range sp.shards {
				local := floats(sp.items[k].State[b])
				first := sh.RowOffset / 256
				assert.Equal(t, bitsOf(wholeAbs[first:first+len(local)]), bitsOf(local), "absmax of buffer %d on rank %d", b, k)
			}
		}
	}
}
