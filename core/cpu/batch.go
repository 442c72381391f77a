package cpu

import (
	"cmp"
	"slices"
	"sync"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// stepBatch is one StepBatch call in flight: its per-item plans, errors,
// order and workspace shapes, pooled so the steady state allocates nothing.
type stepBatch struct {
	b      Backend
	items  []core.Item
	plans  []core.Plan
	errs   []error
	order  []int32
	shapes []int // backing of each item's workspace Shape{n}
	apply  bool  // phase: false validates, true applies
}

var stepBatches sync.Pool

// StepBatch steps many parameters at once. Every item is validated
// (gradient finiteness included) before any is changed; then the items are
// applied in parallel, largest first, each with pooled scratch, the cores
// shared between items and the GEMMs and row passes inside them. On error
// it returns the index of the first failing item and its error; after a
// validation error nothing has changed.
func (b Backend) StepBatch(items []core.Item) (int, error) {
	n := len(items)
	bt := pooled[stepBatch](&stepBatches)
	bt.b, bt.items, bt.apply = b, items, false
	bt.plans = grow(bt.plans, n)
	bt.errs = grow(bt.errs, n)
	bt.order = grow(bt.order, n)
	bt.shapes = grow(bt.shapes, n)
	defer bt.release()

	parallelFor(n, bt)
	if i, err := bt.firstError(); err != nil {
		return i, err
	}
	for i := range bt.order {
		bt.order[i] = int32(i)
	}
	slices.SortStableFunc(bt.order, func(x, y int32) int {
		return cmp.Compare(items[y].Param.Shape.Numel(), items[x].Param.Shape.Numel())
	})
	bt.apply = true
	parallelFor(n, bt)
	return bt.firstError()
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	s = s[:n]
	clear(s)
	return s
}

func (bt *stepBatch) firstError() (int, error) {
	for i, err := range bt.errs {
		if err != nil {
			return i, err
		}
	}
	return -1, nil
}

func (bt *stepBatch) release() {
	bt.items = nil
	clear(bt.errs)
	stepBatches.Put(bt)
}

func (bt *stepBatch) run(u int) {
	if !bt.apply {
		bt.plans[u], bt.errs[u] = bt.validate(u)
		return
	}
	i := int(bt.order[u])
	bt.errs[i] = bt.step(i)
}

// validate checks item i; a panic (a bug) becomes an error.
func (bt *stepBatch) validate(i int) (plan core.Plan, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = core.Errorf(core.CodeInternal, "internal error (please report): %v", r)
		}
	}()
	return bt.items[i].Validate(bt.b)
}

// step applies validated item i with pooled workspace; a panic (a bug)
// becomes an error instead of killing the host process.
func (bt *stepBatch) step(i int) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = core.Errorf(core.CodeInternal, "internal error (please report): %v", r)
		}
	}()
	plan := bt.plans[i]
	elems := plan.WorkspaceElems()
	if elems == 0 {
		return bt.items[i].Apply(bt.b, plan, core.Tensor{DType: core.Float32})
	}
	buf := getScratch(elems)
	defer putScratch(buf)
	bt.shapes[i] = elems
	ws := core.Tensor{Data: unsafe.Pointer(&(*buf)[0]), DType: core.Float32, Shape: bt.shapes[i : i+1 : i+1]}
	return bt.items[i].Apply(bt.b, plan, ws)
}
