// Command demo trains a byte-level MLP language model with gotch (libtorch)
// twice from the same initialisation: with GradNormLoRP (the hidden
// layers at low rank, embeddings and head by AdamW) and with AdamW alone,
// and prints the falling losses and the optimizer-state bytes of each.
//
//	make gotch-demo GOTCH_DEMO_ARGS="-steps 600 -rank 16"
package main

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/gradnormlorp/gradnormlorp/gotch/optim"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/nn"
	"github.com/sugarme/gotch/ts"
)

type options struct {
	corpus                    string
	steps, batch, evalBatches int
	ctx, dim, hidden          int64
	rank, gap                 int
	scale, lr                 float64
	seed                      uint64
}

func main() {
	var o options
	flag.StringVar(&o.corpus, "corpus", "../shared/data/tinyshakespeare.txt", "text file to train on (the last 10% is held out)")
	flag.IntVar(&o.steps, "steps", 400, "optimizer steps per run")
	flag.IntVar(&o.batch, "batch", 64, "contexts per batch")
	flag.IntVar(&o.evalBatches, "eval-batches", 8, "held-out batches per eval")
	flag.Int64Var(&o.ctx, "ctx", 32, "context length in bytes")
	flag.Int64Var(&o.dim, "dim", 32, "byte embedding width")
	flag.Int64Var(&o.hidden, "hidden", 512, "hidden width")
	flag.IntVar(&o.rank, "rank", 32, "GradNormLoRP projection rank")
	flag.IntVar(&o.gap, "update-proj-gap", 100, "steps between projector refreshes")
	flag.Float64Var(&o.scale, "scale", 1, "scale of the projected update")
	flag.Float64Var(&o.lr, "lr", 3e-3, "peak learning rate (5% warmup, cosine decay to 10%)")
	flag.Uint64Var(&o.seed, "seed", 0, "seed of the init and the batches")
	flag.Parse()
	// libtorch keeps grad mode (ts.NoGrad) and error text per OS thread:
	// a goroutine moving between threads would lose them.
	runtime.LockOSThread()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	text, err := os.ReadFile(o.corpus)
	if err != nil {
		return fmt.Errorf("reading the corpus: %w (pass -corpus FILE)", err)
	}
	held := len(text) / 10
	train, eval := text[:len(text)-held], text[len(text)-held:]
	if len(eval) <= int(o.ctx) {
		return fmt.Errorf("%s has %d bytes: too short for contexts of %d", o.corpus, len(text), o.ctx)
	}
	fmt.Printf("gotch demo: byte-level MLP (context %d, embedding %d, hidden %d) on %s (%d bytes, last 10%% held out)\n",
		o.ctx, o.dim, o.hidden, o.corpus, len(text))

	lowRank, err := train1(o, train, eval, true)
	if err != nil {
		return err
	}
	adamw, err := train1(o, train, eval, false)
	if err != nil {
		return err
	}
	fmt.Printf("\neval loss after %d steps: GradNormLoRP %.4f, AdamW %.4f\n", o.steps, lowRank.eval, adamw.eval)
	fmt.Printf("optimizer state: GradNormLoRP %s, AdamW %s (%.1f%% less)\n",
		kib(lowRank.stateBytes), kib(adamw.stateBytes), 100*(1-float64(lowRank.stateBytes)/float64(adamw.stateBytes)))
	return nil
}

type result struct {
	eval       float64
	stateBytes int64
}

// train1 trains a fresh model (same init and batches every run) with
// GradNormLoRP on fc1 and fc2 (lowRank) or AdamW everywhere.
func train1(o options, train, eval []byte, lowRank bool) (result, error) {
	vs := nn.NewVarStore(gotch.CPU)
	m := newMLP(vs, rand.New(rand.NewPCG(o.seed, 1)), o.ctx, o.dim, o.hidden)
	cfg := optim.DefaultConfig()
	cfg.WeightDecay = 0
	name := "AdamW (this optimizer with rank 0 everywhere)"
	if lowRank {
		cfg.Rank, cfg.UpdateProjGap, cfg.Scale = o.rank, o.gap, o.scale
		name = fmt.Sprintf("GradNormLoRP (rank %d on fc1, fc2; AdamW on the rest)", o.rank)
	}
	opt, err := optim.FromVarStore(vs, cfg, func(name string) bool {
		return strings.HasPrefix(name, "fc") && strings.HasSuffix(name, ".weight")
	})
	if err != nil {
		return result{}, err
	}
	fmt.Printf("\n%s\n", name)

	evalRng := rand.New(rand.NewPCG(o.seed, 2))
	evalSet := make([][2]*ts.Tensor, o.evalBatches)
	for i := range evalSet {
		x, y := batch(eval, evalRng, o.batch, o.ctx)
		evalSet[i] = [2]*ts.Tensor{x, y}
	}
	rng := rand.New(rand.NewPCG(o.seed, 3))
	every := max(o.steps/8, 1)
	start := time.Now()
	var trainSum float64
	var trainN int
	var res result
	for step := 1; step <= o.steps; step++ {
		if err := opt.SetLR(schedule(o, step)); err != nil {
			return result{}, err
		}
		x, y := batch(train, rng, o.batch, o.ctx)
		loss := m.loss(x, y)
		trainSum += loss.MustFloat64Value([]int64{})
		trainN++
		if err := opt.BackwardStep(loss); err != nil {
			return result{}, err
		}
		for _, t := range []*ts.Tensor{loss, x, y} {
			t.MustDrop()
		}
		if step%every == 0 || step == o.steps {
			res.eval = m.evalLoss(evalSet)
			fmt.Printf("  step %4d  train loss %.4f  eval loss %.4f  (%.1fs)\n",
				step, trainSum/float64(trainN), res.eval, time.Since(start).Seconds())
			trainSum, trainN = 0, 0
		}
	}
	res.stateBytes = opt.StateBytes()
	return res, nil
}

// schedule is a 5% linear warmup then a cosine decay to 10% of o.lr.
func schedule(o options, step int) float64 {
	warm := max(o.steps/20, 1)
	if step <= warm {
		return o.lr * float64(step) / float64(warm)
	}
	t := float64(step-warm) / float64(max(o.steps-warm, 1))
	return o.lr * (0.1 + 0.9*0.5*(1+math.Cos(math.Pi*t)))
}

func kib(n int64) string { return fmt.Sprintf("%.1f KiB", float64(n)/1024) }
