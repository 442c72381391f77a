package core

import (
	"cmp"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"
	"unsafe"
)

// The batch promise: StepBatch validates every item, then prepares every
// item (the half of a step that can fail, see step.go), and only then
// commits any. An error from validation or preparation, in any item,
// restores the snapshot of every prepared item's state, so parameters and
// state are bit-identical to before. Commit is arithmetic on values
// prepare checked; an error there (a backend fault or a bug) is reported
// as an internal error, its state rolled back, and the parameters already
// committed stay stepped.
//
// Backends provide only primitives: Backend's arithmetic, and Executor's
// way of spreading items over the hardware and lending scratch.

// Executor is what a backend adds to Backend to run a batch.
type Executor interface {
	// ForEach calls w.Run(i) for every i in [0, n), possibly concurrently,
	// and returns when all calls have returned.
	ForEach(n int, w Work)
	// Scratch lends n float32 elements of the backend's memory; give them
	// back with Release(token).
	Scratch(n int) (t Tensor, token any, err error)
	Release(token any)
}

// Work is a loop body for Executor.ForEach.
type Work interface{ Run(i int) }

// ItemError locates an error in a batch.
type ItemError struct {
	Index int
	Err   error
}

func (e *ItemError) Error() string { return fmt.Sprintf("items[%d]: %v", e.Index, e.Err) }
func (e *ItemError) Unwrap() error { return e.Err }

// StepBatch steps every item or, on error, none (see above). Items are
// prepared and committed largest first. An error of a batch of more than
// one item is an *ItemError.
func StepBatch(b Backend, x Executor, items []Item) error {
	n := len(items)
	bt := pooled[batch](&batches)
	bt.b, bt.x, bt.items = b, x, items
	bt.jobs = resize(bt.jobs, n)
	bt.order = resize(bt.order, n)
	defer bt.release()

	bt.runPhase(phaseValidate)
	err := bt.firstError()
	if err == nil {
		err = bt.checkOverlaps()
	}
	if err != nil {
		return err
	}
	for i := range bt.order {
		bt.order[i] = int32(i)
	}
	slices.SortStableFunc(bt.order, func(p, q int32) int {
		return cmp.Compare(items[q].Param.Shape.Numel(), items[p].Param.Shape.Numel())
	})
	bt.runPhase(phasePrepare)
	if err := bt.firstError(); err != nil {
		bt.runPhase(phaseRollback)
		return err
	}
	bt.runPhase(phaseCommit)
	if err := bt.firstError(); err != nil {
		bt.runPhase(phaseRollback)
		return commitError(err)
	}
	return nil
}

func commitError(err error) error {
	return &Error{Code: CodeInternal, Msg: fmt.Sprintf("internal error while writing parameters (please report; the items committed before it were stepped, the others are unchanged): %v", err), Err: err}
}

const (
	phaseValidate = iota
	phasePrepare
	phaseCommit
	phaseRollback
)

// batch is one StepBatch call in flight, pooled so the steady state
// allocates nothing.
type batch struct {
	b     Backend
	x     Executor
	items []Item
	jobs  []job
	order []int32
	spans []span
	phase int
}

// job is one item's progress through a batch.
type job struct {
	l          *cachedLayout
	held       Tensor // held workspace and state snapshot, from prepare to the end
	heldToken  any
	snapshotOK bool // the snapshot holds the state from before the batch
	committed  bool
	err        error
	// compensation is c of a compensated step, from prepare to commit.
	compensation float32
}

var batches sync.Pool

func (bt *batch) runPhase(p int) {
	bt.phase = p
	bt.x.ForEach(len(bt.items), bt)
}

// Run does item i's share of the current phase (items by size from
// prepare on); a panic (a bug) becomes its error.
func (bt *batch) Run(u int) {
	i := u
	if bt.phase != phaseValidate {
		i = int(bt.order[u])
	}
	j := &bt.jobs[i]
	if j.err != nil && bt.phase != phaseRollback {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			j.err = Errorf(CodeInternal, "internal error (please report): %v\n%s", r, debug.Stack())
		}
	}()
	it := &bt.items[i]
	switch bt.phase {
	case phaseValidate:
		if _, err := it.Validate(bt.b); err != nil {
			j.err = err
			return
		}
		j.l, j.err = layoutOf(it.Param.DType, it.Param.Shape, it.Config)
	case phasePrepare:
		j.err = bt.prepare(it, j)
	case phaseCommit:
		j.err = bt.withTransient(j, func(transient Tensor) error { return it.commit(bt.b, j, transient) })
		j.committed = j.err == nil
	case phaseRollback:
		if j.snapshotOK && !j.committed {
			if err := j.restore(bt.b, it); err != nil && j.err == nil {
				j.err = err
			}
		}
	}
}

func (bt *batch) prepare(it *Item, j *job) error {
	if !j.l.plan.Projected {
		return nil
	}
	held, token, err := bt.x.Scratch(j.l.held.Numel())
	if err != nil {
		return err
	}
	j.held, j.heldToken = held, token
	if err := j.snapshot(bt.b, it); err != nil {
		return err
	}
	return bt.withTransient(j, func(transient Tensor) error { return it.prepare(bt.b, j, transient) })
}

// withTransient runs f with transient workspace of j's item.
func (bt *batch) withTransient(j *job, f func(Tensor) error) error {
	if !j.l.plan.Projected {
		return f(Tensor{})
	}
	t, token, err := bt.x.Scratch(j.l.transient.Numel())
	if err != nil {
		return err
	}
	defer bt.x.Release(token)
	return f(t)
}

// firstError is the error of the first failing item, located when the
// batch has more than one.
func (bt *batch) firstError() error {
	for i := range bt.jobs {
		if err := bt.jobs[i].err; err != nil {
			if len(bt.items) == 1 {
				return err
			}
			return &ItemError{Index: i, Err: err}
		}
	}
	return nil
}

func (bt *batch) release() {
	for i := range bt.jobs {
		if bt.jobs[i].heldToken != nil {
			bt.x.Release(bt.jobs[i].heldToken)
		}
	}
	clear(bt.jobs)
	clear(bt.spans)
	bt.b, bt.x, bt.items = nil, nil, nil
	batches.Put(bt)
}

// snapshot copies the item's state into the end of its held workspace.
func (j *job) snapshot(b Backend, it *Item) error {
	if err := snapshotState(b, j.held, j.l.snapshotAt, it.State); err != nil {
		return err
	}
	j.snapshotOK = true
	return nil
}

// restore copies the snapshot back.
func (j *job) restore(b Backend, it *Item) error {
	return restoreState(b, j.held, j.l.snapshotAt, it.State)
}

// rollback restores the snapshot after err.
func (j *job) rollback(b Backend, it *Item, err error) error {
	if rerr := j.restore(b, it); rerr != nil {
		return errors.Join(err, rerr)
	}
	return err
}

// snapshotState copies state into held from float32 element `at` on, each
// buffer rounded up to whole float32s; restoreState copies it back.
func snapshotState(b Backend, held Tensor, at int, state []Tensor) error {
	return eachSnapshot(held, at, state, func(st, copy Tensor) error { return b.Copy(copy, st) })
}

func restoreState(b Backend, held Tensor, at int, state []Tensor) error {
	return eachSnapshot(held, at, state, func(st, copy Tensor) error { return b.Copy(st, copy) })
}

func eachSnapshot(held Tensor, at int, state []Tensor, f func(st, copy Tensor) error) error {
	off := at
	for _, st := range state {
		if st.Bytes() == 0 {
			continue
		}
		c := Tensor{Data: unsafe.Add(held.Data, 4*off), DType: st.DType, Shape: st.Shape}
		if err := f(st, c); err != nil {
			return err
		}
		off += (st.Bytes() + 3) / 4
	}
	return nil
}

// span is the memory of one tensor of a batch.
type span struct {
	lo, hi   uintptr
	item     int32
	written  bool
	what     string
	stateIdx int32
}

// checkOverlaps refuses a batch in which memory that a step writes
// (parameters, state) overlaps any other tensor of the batch: the same
// parameter twice, or a gradient or state buffer aliasing another's, would
// give results that depend on the order of work.
func (bt *batch) checkOverlaps() error {
	bt.spans = bt.spans[:0]
	add := func(t Tensor, item int, written bool, what string, idx int) {
		p := uintptr(t.Data)
		bt.spans = append(bt.spans, span{lo: p, hi: p + uintptr(t.Bytes()), item: int32(item), written: written, what: what, stateIdx: int32(idx)})
	}
	for i := range bt.items {
		it := &bt.items[i]
		add(it.Param, i, true, "param", -1)
		add(it.Grad, i, false, "grad", -1)
		for k, st := range it.State {
			add(st, i, true, "state", k)
		}
	}
	slices.SortFunc(bt.spans, func(a, b span) int { return cmp.Compare(a.lo, b.lo) })
	// Sorted by start, a span overlaps an earlier one iff it starts before
	// the furthest end seen so far: of all spans (which matters when it is
	// written) or of the written ones.
	var all, written span
	for _, s := range bt.spans {
		if s.lo < written.hi || (s.written && s.lo < all.hi) {
			other := written
			if s.lo >= written.hi {
				other = all
			}
			return Errorf(CodeInvalidArgument, "%s and %s overlap in memory: a step writes its parameter and state, so no tensor of a batch may share memory with another (the same parameter twice in one batch?)", bt.name(other), bt.name(s))
		}
		if s.hi > all.hi {
			all = s
		}
		if s.written && s.hi > written.hi {
			written = s
		}
	}
	return nil
}

func (bt *batch) name(s span) string {
	prefix := ""
	if len(bt.items) > 1 {
		prefix = fmt.Sprintf("items[%d].", s.item)
	}
	if s.stateIdx >= 0 {
		return fmt.Sprintf("%sstate[%d]", prefix, s.stateIdx)
	}
	return prefix + s.what
}

// pooled takes a *T from p, or a new one.
func pooled[T any](p *sync.Pool) *T {
	if v, ok := p.Get().(*T); ok {
		return v
	}
	return new(T)
}

// resize returns s with length n and zero elements, reusing its storage.
func resize[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	s = s[:n]
	clear(s)
	return s
}
