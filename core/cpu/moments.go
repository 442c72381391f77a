package cpu

import (
	"sync"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/core/quant"
)

// floatUnit is the number of float32 moment elements one parallel unit
// handles; quantised moments go by whole quant blocks, quantUnitBlocks at a
// time.
const (
	floatUnit       = 1 << 15
	quantUnitBlocks = 64
)

const (
	momentDirection = iota // x = Adam direction of x (AdamDirection)
	momentAdamW            // w = w Decay - StepSize direction(grad) (AdamW)
)

// momentTask is one Adam pass over n moment elements.
type momentTask struct {
	kind    int
	x       []float32 // momentDirection: input and output
	w, grad rows      // momentAdamW
	mom     core.Moments
	h       core.AdamParams
	n       int
	unit    int // elements per unit
}

var momentTasks sync.Pool

func runMoments(t momentTask) {
	t.unit = floatUnit
	if t.mom.Quantized() {
		t.unit = quant.BlockSize * quantUnitBlocks
	}
	units := (t.n + t.unit - 1) / t.unit
	if workers() == 1 || t.n <= t.unit {
		units = 1
		t.unit = t.n
	}
	p := pooled[momentTask](&momentTasks)
	*p = t
	parallelFor(units, p)
	*p = momentTask{}
	momentTasks.Put(p)
}

func (t *momentTask) Run(u int) {
	lo, hi := u*t.unit, min((u+1)*t.unit, t.n)
	if !t.mom.Quantized() {
		t.apply(lo, f32(t.mom.M1)[lo:hi], f32(t.mom.M2)[lo:hi], nil)
		return
	}
	// Quantised: decode a block, apply, re-encode with a fresh absmax.
	bs := quant.BlockSize
	buf := getScratch(4 * bs)
	f1, f2 := t.mom.Formats()
	a1, a2 := f32(t.mom.Absmax1), f32(t.mom.Absmax2)
	for blo := lo; blo < hi; blo += bs {
		bhi := min(blo+bs, hi)
		b := blo / bs
		c1, c2 := blockCodes(t.mom.M1, f1, blo, bhi), blockCodes(t.mom.M2, f2, blo, bhi)
		m1, m2 := (*buf)[:bhi-blo], (*buf)[bs:bs+bhi-blo]
		f1.Decode(c1, a1[b], m1)
		f2.Decode(c2, a2[b], m2)
		t.apply(blo, m1, m2, (*buf)[2*bs:])
		a1[b] = f1.Encode(m1, c1)
		a2[b] = f2.Encode(m2, c2)
	}
	putScratch(buf)
}

// apply runs the pass over elements [lo, lo+len(m1)) with float32 views of
// their moments; scratch (2*len(m1) floats, or nil) converts 16-bit
// parameters.
func (t *momentTask) apply(lo int, m1, m2, scratch []float32) {
	hi := lo + len(m1)
	h := t.h
	if t.kind == momentDirection {
		adamDirection(t.x[lo:hi], m1, m2, h)
		return
	}
	if t.w.dtype == core.Float32 {
		adamW(t.w.f32[lo:hi], t.grad.f32[lo:hi], m1, m2, h)
		return
	}
	var own *[]float32
	if scratch == nil {
		own = getScratch(2 * len(m1))
		scratch = *own
	}
	n := len(m1)
	wr := t.w.loadRange(lo, hi, scratch[:n])
	gr := t.grad.loadRange(lo, hi, scratch[n:2*n])
	adamW(wr, gr, m1, m2, h)
	t.w.storeRange(lo, wr)
	if own != nil {
		putScratch(own)
	}
}

// blockCodes is the slice of codes holding elements [lo, hi) of one block.
func blockCodes(codes core.Tensor, f quant.Format, lo, hi int) []byte {
	start := f.Bytes(lo) // lo is a multiple of the block size: a whole byte
	return u8(codes)[start : start+f.Bytes(hi-lo)]
}

// codecTask encodes or decodes a packed tensor, quantUnitBlocks blocks per
// unit.
type codecTask struct {
	encode bool
	vals   []float32
	packed core.Packed
}

var codecTasks sync.Pool

func (t *codecTask) Run(u int) {
	absmax := f32(t.packed.Absmax)
	n := len(t.vals)
	for b := u * quantUnitBlocks; b < min((u+1)*quantUnitBlocks, quant.Blocks(n)); b++ {
		lo, hi := b*quant.BlockSize, min((b+1)*quant.BlockSize, n)
		codes := blockCodes(t.packed.Codes, t.packed.Format, lo, hi)
		if t.encode {
			absmax[b] = t.packed.Format.Encode(t.vals[lo:hi], codes)
		} else {
			t.packed.Format.Decode(codes, absmax[b], t.vals[lo:hi])
		}
	}
}

func runCodec(encode bool, vals []float32, p core.Packed) {
	t := pooled[codecTask](&codecTasks)
	*t = codecTask{encode: encode, vals: vals, packed: p}
	units := (quant.Blocks(len(vals)) + quantUnitBlocks - 1) / quantUnitBlocks
	parallelFor(units, t)
	*t = codecTask{}
	codecTasks.Put(t)
}

// Encode quantises src into dst block by block.
func (Backend) Encode(src core.Tensor, dst core.Packed) error {
	runCodec(true, f32(src), dst)
	return nil
}

// Decode expands src into dst block by block.
func (Backend) Decode(src core.Packed, dst core.Tensor) error {
	runCodec(false, f32(dst), src)
	return nil
}

func u8(t core.Tensor) []uint8 { return unsafe.Slice((*uint8)(t.Data), t.Shape.Numel()) }
