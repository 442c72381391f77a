package main

import (
	"cmp"
	"runtime"
	"slices"
	"sync"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// workspaces recycles float32 scratch between steps so the steady state
// allocates nothing. Entries are *[]float32.
var workspaces sync.Pool

func getWorkspace(elems int) *[]float32 {
	if ws, ok := workspaces.Get().(*[]float32); ok && cap(*ws) >= elems {
		*ws = (*ws)[:elems]
		return ws
	}
	ws := make([]float32, elems)
	return &ws
}

// workspaceTensor views the pooled slice as a core tensor.
func workspaceTensor(ws *[]float32) core.Tensor {
	t := core.Tensor{DType: core.Float32, Shape: core.Shape{len(*ws)}}
	if len(*ws) > 0 {
		t.Data = unsafePointer(&(*ws)[0])
	}
	return t
}

// stepAll validates every item (gradients included) before changing any,
// then applies them in parallel, largest first, one workspace per worker.
func stepAll(items []core.Item) error {
	type job struct {
		item *core.Item
		plan core.Plan
		idx  int
	}
	jobs := make([]job, len(items))
	for i := range items {
		plan, err := items[i].Validate(backend)
		if err != nil {
			return atItem(items, i, err)
		}
		jobs[i] = job{&items[i], plan, i}
	}
	slices.SortStableFunc(jobs, func(a, b job) int {
		return cmp.Compare(b.item.Param.Shape.Numel(), a.item.Param.Shape.Numel())
	})

	workers := min(runtime.GOMAXPROCS(0), len(jobs))
	next := make(chan job)
	errs := make([]error, len(items))
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				errs[j.idx] = applyGuarded(j.item, j.plan)
			}
		}()
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return atItem(items, i, err)
		}
	}
	return nil
}

// applyGuarded applies one item with pooled scratch; a panic in a worker
// becomes an error rather than killing the host process.
func applyGuarded(it *core.Item, plan core.Plan) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = core.Errorf(core.CodeInternal, "internal error (please report): %v", r)
		}
	}()
	ws := getWorkspace(plan.WorkspaceElems())
	defer workspaces.Put(ws)
	return it.Apply(backend, plan, workspaceTensor(ws))
}

// atItem locates an error in a batch of more than one item.
func atItem(items []core.Item, i int, err error) error {
	if len(items) == 1 {
		return err
	}
	return core.Errorf(core.CodeOf(err), "items[%d]: %s", i, err.Error())
}
