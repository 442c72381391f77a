package cpu

import (
	"sync"
	"sync/atomic"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// Backend implements core.Backend on host memory. The zero value is ready
// to use and safe for concurrent use on different tensors. Passes over rows
// or elements run in parallel on the package's helper goroutines and
// allocate nothing in the steady state.
type Backend struct{}

var _ core.Backend = Backend{}

// finiteTask checks a tensor chunk by chunk.
type finiteTask struct {
	chunked
	t   rows
	bad atomic.Bool
}

var finiteTasks sync.Pool

func (t *finiteTask) Run(u int) {
	if t.bad.Load() {
		return
	}
	lo, hi := t.bounds(u)
	if !t.t.rangeFinite(lo, hi) {
		t.bad.Store(true)
	}
}

// AllFinite reports whether t holds no NaN or Inf.
func (Backend) AllFinite(t core.Tensor) (bool, error) {
	n := t.Shape.Numel()
	task := pooled[finiteTask](&finiteTasks)
	task.chunked = split(n, 1)
	task.t = rowsOf(t)
	task.bad.Store(false)
	parallelFor(task.count(), task)
	ok := !task.bad.Load()
	task.t = rows{}
	finiteTasks.Put(task)
	return ok, nil
}

// Zero sets t to zero.
func (Backend) Zero(t core.Tensor) error {
	clear(unsafeBytes(t))
	return nil
}

// RowNorms writes the norm of each row of w into out.
func (Backend) RowNorms(w, out core.Tensor) error {
	src, norms := rowsOf(w), f32(out)
	buf := getScratch(w.Cols())
	for i := range norms {
		norms[i] = norm(src.load(i, *buf))
	}
	putScratch(buf)
	return nil
}

// wngTask computes the weight-norm gradients of a chunk of rows.
type wngTask struct {
	chunked
	w, grad      rows
	g, s, dg, dv []float32
	cols         int
}

var wngTasks sync.Pool

func (t *wngTask) Run(u int) {
	lo, hi := t.bounds(u)
	t.rows(lo, hi, t.dv[lo*t.cols:hi*t.cols])
}

// rows computes rows [lo, hi): dg into t.dg, dV into out (row i at
// (i-lo)*cols).
func (t *wngTask) rows(lo, hi int, dv []float32) {
	cols := t.cols
	var buf *[]float32
	var wbuf, gbuf []float32
	if t.w.dtype != core.Float32 {
		buf = getScratch(2 * cols)
		wbuf, gbuf = (*buf)[:cols], (*buf)[cols:]
	}
	for i := lo; i < hi; i++ {
		wr, gr := t.w.load(i, wbuf), t.grad.load(i, gbuf)
		out := dv[(i-lo)*cols : (i-lo+1)*cols]
		gi, si := t.g[i], t.s[i]
		if gi == 0 || si == 0 {
			t.dg[i] = 0
			copy(out, gr)
			continue
		}
		inv := 1 / gi
		d := float32(dot(gr, wr) * float64(inv))
		weightNormGradRow(out, gr, wr, gi/si, d*inv)
		t.dg[i] = d
	}
	if buf != nil {
		putScratch(buf)
	}
}

// WeightNormGrad computes dg and dv row by row (see core.Backend).
func (Backend) WeightNormGrad(w, grad, g, s, dg, dv core.Tensor) error {
	t := pooled[wngTask](&wngTasks)
	*t = wngTask{
		chunked: split(w.Rows(), w.Cols()),
		w:       rowsOf(w), grad: rowsOf(grad),
		g: f32(g), s: f32(s), dg: f32(dg), dv: f32(dv), cols: w.Cols(),
	}
	parallelFor(t.count(), t)
	*t = wngTask{}
	wngTasks.Put(t)
	return nil
}

// wnuTask finishes a projected step for a chunk of rows.
type wnuTask struct {
	chunked
	w           rows
	g, s, u, ng []float32
	cols        int
	h           core.AdamParams
}

var wnuTasks sync.Pool

func (t *wnuTask) Run(u int) {
	lo, hi := t.bounds(u)
	t.rows(lo, hi, t.u[lo*t.cols:hi*t.cols])
}

// rows updates rows [lo, hi) with the update projected back in u (row i
// at (i-lo)*cols).
func (t *wnuTask) rows(lo, hi int, u []float32) {
	cols, h := t.cols, t.h
	var buf *[]float32
	if t.w.dtype != core.Float32 {
		buf = getScratch(cols)
	}
	for i := lo; i < hi; i++ {
		// For float32 the row itself is updated in place; otherwise a
		// float32 copy, rounded on store.
		var wr []float32
		if buf == nil {
			wr = t.w.f32[i*cols : (i+1)*cols]
		} else {
			wr = t.w.load(i, *buf)
		}
		upd := u[(i-lo)*cols : (i-lo+1)*cols]
		gi, si := t.g[i], t.s[i]
		if gi == 0 || si == 0 {
			n := axpbyNorm(wr, h.Decay, upd, -h.StepSize)
			if buf != nil {
				n = norm(t.w.store(i, wr)) // the norm of the values stored
			}
			t.g[i], t.s[i] = n, n
			continue
		}
		newS := axpbyNorm(wr, si/gi, upd, -h.StepSize) // V = s_i D_i - StepSize dVlow_i
		newG := (gi - h.StepSize*t.ng[i]) * h.Decay
		if newS == 0 {
			clear(wr)
			newG = 0
		} else {
			scaleInPlace(wr, newG/newS)
		}
		if buf != nil {
			t.w.store(i, wr)
		}
		t.g[i], t.s[i] = newG, newS
	}
	if buf != nil {
		putScratch(buf)
	}
}

// WeightNormUpdate finishes a projected step row by row (see core.Backend).
func (Backend) WeightNormUpdate(w, g, s, dvlow, ng core.Tensor, h core.AdamParams) error {
	t := pooled[wnuTask](&wnuTasks)
	*t = wnuTask{
		chunked: split(w.Rows(), w.Cols()),
		w:       rowsOf(w),
		g:       f32(g), s: f32(s), u: f32(dvlow), ng: f32(ng), cols: w.Cols(), h: h,
	}
	parallelFor(t.count(), t)
	*t = wnuTask{}
	wnuTasks.Put(t)
	return nil
}

// AdamDirection updates the moments from x and overwrites x with the
// direction.
func (Backend) AdamDirection(x core.Tensor, mom core.Moments, h core.AdamParams) error {
	runMoments(momentTask{kind: momentDirection, x: f32(x), mom: mom, h: h, n: x.Shape.Numel()})
	return nil
}

// AdamW applies plain AdamW to w (see core.Backend).
func (Backend) AdamW(w, grad core.Tensor, mom core.Moments, h core.AdamParams) error {
	runMoments(momentTask{kind: momentAdamW, w: rowsOf(w), grad: rowsOf(grad), mom: mom, h: h, n: w.Shape.Numel()})
	return nil
}
