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
	f1, f2 := mom.Formats()
	parallelRows((n+block-1)/block, block, func(blo, bhi int) {
		buf := newBlockScratch(block)
		for b := blo; b < bhi; b++ {
			lo, hi := b*block, min((b+1)*block, n)
			if !mom.Quantized() {
				fn(lo, f32(mom.M1)[lo:hi], f32(mom.M2)[lo:hi], buf)
				continue
			}
			c1, c2 := blockCodes(mom.M1, f1, lo, hi), blockCodes(mom.M2, f2, lo, hi)
			a1, a2 := f32(mom.Absmax1), f32(mom.Absmax2)
			m1, m2 := buf.m1[:hi-lo], buf.m2[:hi-lo]
			f1.Decode(c1, a1[b], m1)
			f2.Decode(c2, a2[b], m2)
			fn(lo, m1, m2, buf)
			a1[b] = f1.Encode(m1, c1)
			a2[b] = f2.Encode(m2, c2)
		}
	})
}

// blockCodes is the slice of codes holding elements [lo, hi) of one block.
func blockCodes(codes core.Tensor, f quant.Format, lo, hi int) []byte {
	start := f.Bytes(lo) // lo is a multiple of the block size: a whole byte
	return u8(codes)[start : start+f.Bytes(hi-lo)]
}

// Encode quantises src into dst block by block.
func (Backend) Encode(src core.Tensor, dst core.Packed) error {
	vals, absmax := f32(src), f32(dst.Absmax)
	n := len(vals)
	parallelRows(quant.Blocks(n), quant.BlockSize, func(blo, bhi int) {
		for b := blo; b < bhi; b++ {
			lo, hi := b*quant.BlockSize, min((b+1)*quant.BlockSize, n)
			absmax[b] = dst.Format.Encode(vals[lo:hi], blockCodes(dst.Codes, dst.Format, lo, hi))
		}
	})
	return nil
}

// Decode expands src into dst block by block.
func (Backend) Decode(src core.Packed, dst core.Tensor) error {
	vals, absmax := f32(dst), f32(src.Absmax)
	n := len(vals)
	parallelRows(quant.Blocks(n), quant.BlockSize, func(blo, bhi int) {
		for b := blo; b < bhi; b++ {
			lo, hi := b*quant.BlockSize, min((b+1)*quant.BlockSize, n)
			src.Format.Decode(blockCodes(src.Codes, src.Format, lo, hi), absmax[b], vals[lo:hi])
		}
	})
	return nil
}

func u8(t core.Tensor) []uint8 { return unsafe.Slice((*uint8)(t.Data), t.Shape.Numel()) }
