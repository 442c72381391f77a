package core

import (
	"encoding/binary"
	"errors"
	"hash/fnv"
	"math"
)

// Collective reaches the other ranks of a sharded step. Every rank makes
// the same calls in the same order; tensors are float32 in the backend's
// memory.
type Collective interface {
	// Sum replaces t by its sum over the ranks.
	Sum(t Tensor) error
	// Max replaces t by its elementwise max over the ranks.
	Max(t Tensor) error
	// GatherRows writes every rank's rows (local, this rank's) into whole
	// at the rank's row offset of torch.chunk's split.
	GatherRows(local, whole Tensor) error
}

// HostIO is what a backend adds to Backend for sharded and compensated
// steps: moving a few values (the ranks' verdicts, a compensation's norm)
// between its memory and the host.
type HostIO interface {
	ToHost(dst []float32, src Tensor) error
	FromHost(dst Tensor, src []float32) error
}

// StepSharded steps this rank's rows of row-sharded parameters (items[i]
// holds the rows shards[i] describes; state in ShardLayout order) so that
// the result equals StepBatch on the whole parameters, all or none on
// every rank. Every rank calls it with the same items in the same order.
//
// The sequence of collectives depends only on what every rank shares (the
// items' whole shapes, configs and steps), so it is the same on every rank
// even when one of them fails: ranks agree on validation (one Max of a
// failure flag and a fingerprint of the items), compute the step (every
// item prepared, as in StepBatch: only state and workspace written),
// agree again (one Max), and only then write parameters. A rank that fails
// keeps making the calls, with whatever its buffers hold, so that no rank
// waits for it. What crosses ranks, per projected parameter: a refresh
// gathers dV (every rank then runs the same refresh on the whole dV, so
// projectors are identical); a left projection sums P^T dV (k x n), a full
// one P^T dV Q^T (k x k); row-sharded quantised moments agree on the
// absmax of blocks split between ranks (one Max of 2 x world_size values).
// A right projection dV Q^T and the per-row math need nothing.
//
// A failed collective is fatal for the step (the ranks' sequences no longer
// match): everything is rolled back and a CodeCollective error returned.
func StepSharded(b Backend, x Executor, items []Item, shards []Shard, c Collective) error {
	io, ok := b.(HostIO)
	if !ok {
		return Errorf(CodeBackendUnavailable, "this backend cannot step sharded parameters (it lacks host transfers); use CPU tensors")
	}
	if len(shards) != len(items) {
		return Errorf(CodeInvalidArgument, "%d shards for %d items: one shard describes each item", len(shards), len(items))
	}
	s := &shardedStep{b: b, x: x, io: io, c: c, items: items, shards: shards, jobs: make([]shardJob, len(items))}
	defer s.release()
	if err := s.run(); err != nil {
		if s.commitStarted {
			return commitError(err)
		}
		if rerr := s.rollback(); rerr != nil {
			return errors.Join(err, rerr)
		}
		return err
	}
	return nil
}

type shardedStep struct {
	b      Backend
	x      Executor
	io     HostIO
	c      Collective
	items  []Item
	shards []Shard
	jobs   []shardJob

	flags, transient Tensor // host-agreed verdicts; one item's transient workspace at a time
	tokens           []any  // scratch to give back
	err              error  // the first local error; later computation is skipped
	commitStarted    bool
}

// shardJob is one item's progress.
type shardJob struct {
	l          *shardedLayout
	held       Tensor // dg, R, decoded projectors, AdamW's new weights, state snapshot
	snapshotAt int
	snapshotOK bool
	// compensation is c of a compensated step, from prepare to commit.
	compensation float32
}

// fail records a local error (of item i, when the step has several).
func (s *shardedStep) fail(i int, err error) {
	if err != nil && s.err == nil {
		if len(s.items) > 1 {
			err = &ItemError{Index: i, Err: err}
		}
		s.err = err
	}
}

// collectiveError wraps the error of a collective call.
func collectiveError(what string, err error) error {
	return &Error{Code: CodeCollective, Msg: "sharded step: the collective " + what + " failed (nothing was changed): " + err.Error(), Err: err}
}

func (s *shardedStep) run() error {
	var err error
	if s.flags, err = s.scratch(3); err != nil {
		return err
	}
	for i := range s.items {
		s.fail(i, s.validate(i))
		if s.err != nil {
			break
		}
	}
	if s.err == nil {
		s.err = s.allocate()
	}
	if err := s.agree(s.fingerprint()); err != nil {
		return err
	}
	for i := range s.items {
		if err := s.prepare(i); err != nil {
			return err
		}
	}
	if err := s.agree(0); err != nil {
		return err
	}
	s.commitStarted = true
	for i := range s.items {
		if err := s.commit(i); err != nil {
			return err
		}
	}
	return nil
}

func (s *shardedStep) scratch(n int) (Tensor, error) {
	t, token, err := s.x.Scratch(n)
	if err != nil {
		return Tensor{}, err
	}
	s.tokens = append(s.tokens, token)
	return t, nil
}

func (s *shardedStep) release() {
	for _, token := range s.tokens {
		s.x.Release(token)
	}
}

// agree makes every rank learn whether any failed and (fingerprint != 0)
// whether all step the same items: one Max of (failed, fp, -fp). It
// returns this rank's error, or an error saying another rank refused.
func (s *shardedStep) agree(fingerprint float32) error {
	failed := float32(0)
	if s.err != nil {
		failed = 1
	}
	host := []float32{failed, fingerprint, -fingerprint}
	if err := s.io.FromHost(s.flags, host); err != nil {
		return err
	}
	if err := s.c.Max(s.flags); err != nil {
		return collectiveError("max of the ranks' verdicts", err)
	}
	if err := s.io.ToHost(host, s.flags); err != nil {
		return err
	}
	switch {
	case s.err != nil:
		return s.err
	case host[0] != 0:
		return Errorf(CodeCollective, "sharded step refused on another rank (its error says why); nothing was changed")
	case host[1] != fingerprint || -host[2] != fingerprint:
		return Errorf(CodeInvalidArgument, "sharded step: the ranks step different parameters (whole shapes, configs or steps differ between ranks); every rank must step the same parameters in the same order; nothing was changed")
	}
	return nil
}

// fingerprint hashes what every rank must share into 24 bits (exact in
// float32), never 0.
func (s *shardedStep) fingerprint() float32 {
	h := fnv.New32a()
	put := func(v ...int64) {
		for _, x := range v {
			_ = binary.Write(h, binary.LittleEndian, x)
		}
	}
	put(int64(len(s.items)))
	for i := range s.items {
		it, sh := &s.items[i], s.shards[i]
		cfg := it.Config
		put(int64(it.Param.DType), int64(len(it.Param.Shape)), int64(sh.GlobalRows), int64(it.Param.Cols()), int64(sh.WorldSize), it.Step,
			int64(cfg.Rank), int64(cfg.UpdateProjGap), int64(cfg.ProjType), int64(cfg.OptimBits), int64(cfg.Refresh), int64(cfg.Compensation),
			int64(math.Float64bits(cfg.LR)), int64(math.Float64bits(cfg.WeightDecay)), int64(math.Float64bits(cfg.Scale)))
	}
	return float32(h.Sum32()&(1<<24-1) | 1)
}

// validate checks item i without changing anything.
func (s *shardedStep) validate(i int) error {
	it, sh := &s.items[i], s.shards[i]
	if err := it.Config.Validate(); err != nil {
		return err
	}
	l, err := shardLayoutOf(it.Param.DType, it.Param.Shape, sh, it.Config)
	if err != nil {
		return err
	}
	empty := it.Param.Shape.Numel() == 0
	switch {
	case it.Param.Data == nil && !empty:
		return Errorf(CodeNullPointer, "parameter data is null")
	case it.Grad.Data == nil && !empty:
		return Errorf(CodeNullPointer, "gradient data is null")
	case !it.Grad.Shape.Equal(it.Param.Shape):
		return Errorf(CodeShape, "gradient shape %v differs from parameter shape %v", it.Grad.Shape, it.Param.Shape)
	case it.Grad.DType != it.Param.DType:
		return Errorf(CodeDType, "gradient dtype %v differs from parameter dtype %v", it.Grad.DType, it.Param.DType)
	case it.Step < 1:
		return Errorf(CodeInvalidArgument, "invalid step %d (steps count from 1)", it.Step)
	}
	if err := checkBuffers(it.State, l.specs, it.Param.Shape); err != nil {
		return err
	}
	if !empty {
		finite, err := s.b.AllFinite(it.Grad)
		if err != nil {
			return err
		}
		if !finite {
			return Errorf(CodeNonFinite, "gradient of this rank's rows %v of the %v parameter holds NaN or Inf; step refused on every rank, nothing changed", it.Param.Shape, l.whole.full)
		}
	}
	s.jobs[i].l = l
	return nil
}

// allocate lends every item its held workspace and the step one transient
// workspace, large enough for any item (items are stepped one at a time).
func (s *shardedStep) allocate() error {
	transient := 0
	for i := range s.items {
		j := &s.jobs[i]
		held, trans := j.l.workspace(&s.items[i])
		j.snapshotAt = held
		snap := 0
		for _, st := range s.items[i].State {
			snap += (st.Bytes() + 3) / 4
		}
		var err error
		if j.held, err = s.scratch(max(held+snap, 1)); err != nil {
			return err
		}
		if err := snapshotState(s.b, j.held, j.snapshotAt, s.items[i].State); err != nil {
			return err
		}
		j.snapshotOK = true
		transient = max(transient, trans)
	}
	var err error
	s.transient, err = s.scratch(max(transient, 1))
	return err
}

func (s *shardedStep) rollback() error {
	var errs []error
	for i := range s.jobs {
		if j := &s.jobs[i]; j.snapshotOK {
			errs = append(errs, restoreState(s.b, j.held, j.snapshotAt, s.items[i].State))
		}
	}
	return errors.Join(errs...)
}
