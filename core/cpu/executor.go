package cpu

import (
	"sync"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
)

var _ core.Executor = Backend{}

// StepBatch steps many parameters at once with core's batch promise:
// items run in parallel (core.StepBatch orders them largest first), the
// cores shared between items and the GEMMs and row passes inside them.
func (b Backend) StepBatch(items []core.Item) error { return core.StepBatch(b, b, items) }

// ForEach runs w.Run(i) for i in [0, n) on the worker pool.
func (Backend) ForEach(n int, w core.Work) { parallelFor(n, w) }

// lent is scratch lent by Scratch: a pooled buffer and the shape of the
// tensor describing it (kept here so that lending allocates nothing).
type lent struct {
	buf   *[]float32
	shape [1]int
}

var lents sync.Pool

// Scratch lends n pooled float32 elements.
func (Backend) Scratch(n int) (core.Tensor, any, error) {
	l := pooled[lent](&lents)
	l.buf = getScratch(n)
	l.shape[0] = n
	return core.Tensor{Data: unsafe.Pointer(&(*l.buf)[0]), DType: core.Float32, Shape: l.shape[:]}, l, nil
}

// Release gives back what Scratch lent.
func (Backend) Release(token any) {
	l := token.(*lent)
	putScratch(l.buf)
	l.buf = nil
	lents.Put(l)
}

// Copy copies src into dst.
func (Backend) Copy(dst, src core.Tensor) error {
	copy(unsafeBytes(dst), unsafeBytes(src))
	return nil
}

var _ core.HostIO = Backend{}

// ToHost copies src (float32) into dst: both are host memory.
func (Backend) ToHost(dst []float32, src core.Tensor) error {
	copy(dst, f32(src))
	return nil
}

// FromHost copies src into dst (float32).
func (Backend) FromHost(dst core.Tensor, src []float32) error {
	copy(f32(dst), src)
	return nil
}
