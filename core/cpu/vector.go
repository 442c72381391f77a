package cpu

import (
	"sync"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// vectorChunk is the elements of one unit of SumSquares and Axpby. It does
// not depend on the thread count, so that SumSquares adds the same partial
// sums in the same order however many threads run it.
const vectorChunk = 1 << 16

// sumSquaresTask sums (a - b)^2 chunk by chunk into partial.
type sumSquaresTask struct {
	a, b    []float32
	partial []float64
}

var sumSquaresTasks sync.Pool

func (t *sumSquaresTask) Run(u int) {
	lo, hi := u*vectorChunk, min((u+1)*vectorChunk, len(t.a))
	a := t.a[lo:hi]
	if t.b == nil {
		t.partial[u] = dot(a, a)
		return
	}
	// The difference in float32, as the kernels compute it, squared in float64.
	buf := getScratch(hi - lo)
	d := *buf
	copy(d, a)
	axpy(d, -1, t.b[lo:hi])
	t.partial[u] = dot(d, d)
	putScratch(buf)
}

// SumSquares returns the sum over all elements of (a - b)^2, or of a^2
// when b has no data (see core.Backend).
func (Backend) SumSquares(a, b core.Tensor) (float64, error) {
	n := a.Shape.Numel()
	units := (n + vectorChunk - 1) / vectorChunk
	t := pooled[sumSquaresTask](&sumSquaresTasks)
	t.a = f32(a)
	if b.Data != nil {
		t.b = f32(b)
	}
	if cap(t.partial) < units {
		t.partial = make([]float64, units)
	}
	t.partial = t.partial[:units]
	parallelFor(units, t)
	var s float64
	for _, p := range t.partial {
		s += p
	}
	t.a, t.b = nil, nil
	sumSquaresTasks.Put(t)
	return s, nil
}

// axpbyTask sets y = alpha x + beta y chunk by chunk.
type axpbyTask struct {
	x, y        []float32
	alpha, beta float32
}

var axpbyTasks sync.Pool

func (t *axpbyTask) Run(u int) {
	lo, hi := u*vectorChunk, min((u+1)*vectorChunk, len(t.y))
	axpbyNorm(t.y[lo:hi], t.beta, t.x[lo:hi], t.alpha)
}

// Axpby sets y = alpha x + beta y (see core.Backend).
func (Backend) Axpby(alpha float32, x core.Tensor, beta float32, y core.Tensor) error {
	n := y.Shape.Numel()
	t := pooled[axpbyTask](&axpbyTasks)
	*t = axpbyTask{x: f32(x), y: f32(y), alpha: alpha, beta: beta}
	parallelFor((n+vectorChunk-1)/vectorChunk, t)
	*t = axpbyTask{}
	axpbyTasks.Put(t)
	return nil
}
