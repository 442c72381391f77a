package optim

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/stretchr/testify/require"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// run steps opt over params from step `from` to `to` with gradients from
// rng and the test schedule.
func run(t *testing.T, opt *Optimizer, params []*ts.Tensor, rng *rand.Rand, from, to int) {
	t.Helper()
	for step := from; step <= to; step++ {
		require.NoError(t, opt.ZeroGrad())
		backward(t, rng, params)
		require.NoError(t, opt.SetLR(lrAt(step)))
		require.NoError(t, opt.Step())
	}
}

// Stopping after 3 steps, saving, building a new optimizer and loading
// gives the trajectory of 6 uninterrupted steps, bit for bit (the first
// projector refresh after the restart included).
func TestSaveLoadResumesExactly(t *testing.T) {
	pinThread(t)
	straight := fixture(rand.New(rand.NewPCG(21, 22)))
	paramsA := allParams(straight)
	optA, err := New(straight...)
	require.NoError(t, err)
	run(t, optA, paramsA, rand.New(rand.NewPCG(23, 24)), 1, 6)

	resumed := fixture(rand.New(rand.NewPCG(21, 22)))
	paramsB := allParams(resumed)
	optB, err := New(resumed...)
	require.NoError(t, err)
	grads := rand.New(rand.NewPCG(23, 24))
	run(t, optB, paramsB, grads, 1, 3)
	path := filepath.Join(t.TempDir(), "opt.gob")
	require.NoError(t, optB.Save(path))

	// A new optimizer over the same tensors, as after a restart.
	for i := range resumed {
		resumed[i].Config.LR = 0.5
	}
	optC, err := New(resumed...)
	require.NoError(t, err)
	require.NoError(t, optC.Load(path))
	require.Equal(t, optB.LRs(), optC.LRs(), "the groups' configs are restored")
	run(t, optC, paramsB, grads, 4, 6)

	for i := range paramsA {
		require.Truef(t, bytes.Equal(memory(paramsA[i]), memory(paramsB[i])), "parameter %s differs after the resume", optA.params[i].name)
		require.Equal(t, stateBytes(optA, i), stateBytes(optC, i), optA.params[i].name)
		require.Equal(t, optA.params[i].step, optC.params[i].step)
	}
}

func TestLoadRefusesOtherOptimizers(t *testing.T) {
	pinThread(t)
	rng := rand.New(rand.NewPCG(25, 26))
	cfg := DefaultConfig()
	cfg.Rank = 2
	save := func(groups ...Group) string {
		opt, err := New(groups...)
		require.NoError(t, err)
		backward(t, rng, allParams(groups))
		require.NoError(t, opt.Step())
		path := filepath.Join(t.TempDir(), "opt.gob")
		require.NoError(t, opt.Save(path))
		return path
	}
	target := leaf(rng, gotch.Float, 8, 6)
	opt, err := New(Group{Params: []*ts.Tensor{target}, Config: cfg})
	require.NoError(t, err)
	backward(t, rng, []*ts.Tensor{target})
	require.NoError(t, opt.Step())
	before := snapshot(opt)
	lrs := opt.LRs()

	otherRank := cfg
	otherRank.Rank = 3
	garbage := filepath.Join(t.TempDir(), "garbage")
	require.NoError(t, os.WriteFile(garbage, []byte("not a checkpoint"), 0o644))
	good := save(Group{Params: []*ts.Tensor{leaf(rng, gotch.Float, 8, 6)}, Config: cfg})
	data, err := os.ReadFile(good)
	require.NoError(t, err)
	truncated := filepath.Join(t.TempDir(), "truncated")
	require.NoError(t, os.WriteFile(truncated, data[:len(data)-1], 0o644))
	trailing := filepath.Join(t.TempDir(), "trailing")
	require.NoError(t, os.WriteFile(trailing, append(data, 0), 0o644))

	for _, c := range []struct {
		name, path, contains string
	}{
		{"shape", save(Group{Params: []*ts.Tensor{leaf(rng, gotch.Float, 6, 8)}, Config: cfg}), `parameter "g0.0" is float32 (6, 8), here float32 (8, 6)`},
		{"dtype", save(Group{Params: []*ts.Tensor{leaf(rng, gotch.BFloat16, 8, 6)}, Config: cfg}), "is bfloat16 (8, 6), here float32 (8, 6)"},
		{"rank", save(Group{Params: []*ts.Tensor{leaf(rng, gotch.Float, 8, 6)}, Config: otherRank}), "another state layout"},
		{"groups", save(Group{Config: cfg}, Group{Params: []*ts.Tensor{leaf(rng, gotch.Float, 8, 6)}, Config: cfg}), "2 groups, this optimizer has 1"},
		{"garbage", garbage, "not an optimizer checkpoint of this version"},
		{"truncated", truncated, "truncated"},
		{"trailing data", trailing, "data past its last state buffer"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := opt.Load(c.path)
			requireCode(t, err, core.CodeInvalidArgument, c.contains)
			require.Equal(t, before, snapshot(opt), "a refused checkpoint changes nothing")
			require.Equal(t, lrs, opt.LRs())
		})
	}
	require.NoError(t, opt.Load(good), "the same layout loads")
}
