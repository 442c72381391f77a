package cpu

import (
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/core/quant"
)

// floatBlock is the chunk of float32 moments one task handles.
const floatBlock = 4096

// blockScratch is one worker's float32 buffers for a block: dequantised
// moments and, for callers, two more (a, b) for parameter and gradient.
type blockScratch struct{ m1, m2, a, b []float32 }

func newBlockScratch(n int) *blockScratch {
	buf := make([]float32, 4*n)
	return &blockScratch{buf[:n], buf[n : 2*n], buf[2*n : 3*n], buf[3*n:]}
}

// forMomentBlocks calls fn, in parallel, for consecutive blocks of the n
// moment elements, with float32 views of the block's moments starting at
// element lo. Quantised moments are decoded before fn and re-encoded, with
// a fresh absmax, after it.
func forMomentBlocks(mom core.Moments, n int, fn func(lo int, m1, m2 []float32, buf *blockScratch)) {
	block := floatBlock
	if mom.Quantized() {
		block = quant.BlockSize
	}
	parallelRows((n+block-1)/block, block, func(blo, bhi int) {
		buf := newBlockScratch(block)
		for b := blo; b < bhi; b++ {
			lo, hi := b*block, min((b+1)*block, n)
			if !mom.Quantized() {
				fn(lo, f32(mom.M1)[lo:hi], f32(mom.M2)[lo:hi], buf)
				continue
			}
			c1, c2 := u8(mom.M1)[lo:hi], u8(mom.M2)[lo:hi]
			a1, a2 := f32(mom.Absmax1), f32(mom.Absmax2)
			m1, m2 := buf.m1[:hi-lo], buf.m2[:hi-lo]
			quant.Signed.Dequantize(c1, a1[b], m1)
			quant.Unsigned.Dequantize(c2, a2[b], m2)
			fn(lo, m1, m2, buf)
			a1[b] = quant.Signed.Quantize(m1, c1)
			a2[b] = quant.Unsigned.Quantize(m2, c2)
		}
	})
}

func u8(t core.Tensor) []uint8 { return unsafe.Slice((*uint8)(t.Data), t.Shape.Numel()) }
