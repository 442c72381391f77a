package core

import "github.com/gradnormlorp/gradnormlorp/core/quant"

// Quantised row-sharded state keeps the whole tensor's block grid: block j
// holds elements [256 j, 256 j + 256) of the whole tensor, so a rank's
// elements may start and end inside a block that other ranks share. Such a
// block's absmax is the max over every rank's part of it, agreed with one
// Max; encoded with it, each rank's codes are the whole tensor's codes.
// Everything here is written over Backend's Encode, Decode and Copy on
// whole or partial blocks.

// codesPart is a run of a rank's elements [lo, hi) (local indices) covered
// by local absmax entries [block, block+blocks). partial: one block that
// other ranks share.
type codesPart struct {
	lo, hi, block, blocks int
	partial               bool
}

// shardCodes is one rank's view of a row-sharded quantised tensor.
type shardCodes struct {
	codes, absmax Tensor // local codes (flat) and absmax
	format        quant.Format
	lo, n, total  int   // first global element, local elements, whole elements
	starts        []int // every rank's first element, -1 for ranks without any
}

// newShardCodes describes the local part of codes of a moment tensor laid
// out by c for shard sh.
func newShardCodes(codes, absmax Tensor, f quant.Format, c shardedCodes, sh Shard) shardCodes {
	first, rows := sh.rowsOf(sh.Rank)
	lo, n := c.span(first, rows)
	sc := shardCodes{absmax: absmax, format: f, lo: lo, n: n, total: c.total, starts: make([]int, sh.WorldSize)}
	sc.codes = Tensor{Data: codes.Data, DType: Uint8, Shape: Shape{codes.Shape.Numel()}}
	for k := range sc.starts {
		kFirst, kRows := sh.rowsOf(k)
		sc.starts[k] = -1
		if kRows > 0 {
			sc.starts[k], _ = c.span(kFirst, kRows)
		}
	}
	return sc
}

// parts splits the local elements at block boundaries: a partial first
// and/or last block, and the run of whole blocks between them.
func (s shardCodes) parts() []codesPart {
	if s.n == 0 {
		return nil
	}
	bs := quant.BlockSize
	first, last := s.lo/bs, (s.lo+s.n-1)/bs
	var out []codesPart
	for j := first; j <= last; j++ {
		glo, ghi := max(s.lo, j*bs), min(s.lo+s.n, (j+1)*bs)
		p := codesPart{lo: glo - s.lo, hi: ghi - s.lo, block: j - first, blocks: 1,
			partial: ghi-glo < min(bs, s.total-j*bs)}
		if k := len(out) - 1; k >= 0 && !p.partial && !out[k].partial {
			out[k].hi, out[k].blocks = p.hi, out[k].blocks+1
			continue
		}
		out = append(out, p)
	}
	return out
}

// packed is the part p of the local codes as a Packed tensor of its own.
func (s shardCodes) packed(p codesPart) Packed {
	f := s.format
	return Packed{
		Codes:  s.codes.carve(f.Bytes(p.lo), Shape{f.Bytes(p.hi - p.lo)}),
		Absmax: s.absmax.carve(p.block, Shape{p.blocks}),
		Format: f,
		Shape:  Shape{p.hi - p.lo},
	}
}

// decode expands the local codes into vals (float32, n elements).
func (s shardCodes) decode(b Backend, vals Tensor) error {
	for _, p := range s.parts() {
		if err := b.Decode(s.packed(p), vals.carve(p.lo, Shape{p.hi - p.lo})); err != nil {
			return err
		}
	}
	return nil
}

// codecScratchElems is the float32 scratch of a sharded encode: one block of
// values and one of codes.
const codecScratchElems = quant.BlockSize + quant.BlockSize/4

// partialAbsmax writes into agree[k] (one entry per rank) this rank's
// absmax of its part of the block where rank k's elements start, for every
// rank k whose first block this rank touches (the entries of other ranks
// stay 0, which a Max over absmax values >= 0 ignores). After a Max over
// the ranks, agree[k] is the absmax of that whole block: every block split
// between ranks is the first block of one of them.
func (s shardCodes) partialAbsmax(b Backend, vals, agree, scratch Tensor) error {
	if s.n == 0 {
		return nil
	}
	bs := quant.BlockSize
	first, last := s.lo/bs, (s.lo+s.n-1)/bs
	codes := scratch.carve(bs, Shape{bs / 4})
	for k, start := range s.starts {
		j := start / bs
		if start < 0 || j < first || j > last {
			continue
		}
		glo, ghi := max(s.lo, j*bs), min(s.lo+s.n, (j+1)*bs)
		part := Packed{Codes: bytesOf(codes, s.format.Bytes(ghi-glo)), Absmax: agree.carve(k, Shape{1}), Format: s.format, Shape: Shape{ghi - glo}}
		if err := b.Encode(vals.carve(glo-s.lo, Shape{ghi - glo}), part); err != nil {
			return err
		}
	}
	return nil
}

// encode quantises vals into the local codes, the blocks split between
// ranks with the absmax agreed in agree (see partialAbsmax): such a block
// is encoded padded with one value equal to its agreed absmax, which makes
// Encode use exactly that absmax.
func (s shardCodes) encode(b Backend, vals, agree, scratch Tensor) error {
	bs := quant.BlockSize
	block, codes := scratch.carve(0, Shape{bs}), scratch.carve(bs, Shape{bs / 4})
	for _, p := range s.parts() {
		if !p.partial {
			if err := b.Encode(vals.carve(p.lo, Shape{p.hi - p.lo}), s.packed(p)); err != nil {
				return err
			}
			continue
		}
		if err := s.encodePadded(b, p, vals, agree, block, codes); err != nil {
			return err
		}
	}
	return nil
}

// encodePadded encodes the split block of part p: its n values and, after
// them, the agreed absmax, so that Encode finds exactly that absmax; the
// codes of the n values are then copied out.
func (s shardCodes) encodePadded(b Backend, p codesPart, vals, agree, block, codes Tensor) error {
	n := p.hi - p.lo
	k := s.rankStartingIn((s.lo + p.lo) / quant.BlockSize)
	padded, dst := block.carve(0, Shape{n + 1}), s.packed(p)
	if err := b.Copy(padded.carve(0, Shape{n}), vals.carve(p.lo, Shape{n})); err != nil {
		return err
	}
	if err := b.Copy(padded.carve(n, Shape{1}), agree.carve(k, Shape{1})); err != nil {
		return err
	}
	scratch := Packed{Codes: bytesOf(codes, s.format.Bytes(n+1)), Absmax: dst.Absmax, Format: s.format, Shape: Shape{n + 1}}
	if err := b.Encode(padded, scratch); err != nil {
		return err
	}
	return b.Copy(dst.Codes, bytesOf(codes, dst.Codes.Shape[0]))
}

// rankStartingIn is a rank whose first element lies in block j (one
// exists for every block split between ranks).
func (s shardCodes) rankStartingIn(j int) int {
	for k, start := range s.starts {
		if start >= 0 && start/quant.BlockSize == j {
			return k
		}
	}
	panic("no rank starts in a split block")
}

// bytesOf views the start of float32 scratch t as n bytes.
func bytesOf(t Tensor, n int) Tensor {
	return Tensor{Data: t.Data, DType: Uint8, Shape: Shape{n}}
}
