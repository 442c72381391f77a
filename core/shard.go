package core

import (
	"github.com/gradnormlorp/gradnormlorp/core/quant"
)

// Row sharding, as FSDP2 stores parameters: rank k of WorldSize holds a
// block of whole rows of each parameter (torch.chunk's split), and a
// sharded step (StepSharded, shard_step.go) applies SPEC §1 to every whole
// matrix. State follows the math: what is per row lives with the row
// (magnitude, direction norm, their moments; the moments of a right
// projection dV Q^T, whose rows are dV's; a plain AdamW parameter's
// moments), what spans rows is replicated (projectors, the moments of a
// left or full projection).

// Shard locates this rank's rows of a row-sharded parameter (gnlp_shard).
type Shard struct {
	GlobalRows, RowOffset int
	Rank, WorldSize       int
}

// rowsOf is rank k's block of rows under torch.chunk's split: its first
// row and its row count (0 for trailing ranks when rows are few).
func (s Shard) rowsOf(k int) (first, count int) {
	chunk := (s.GlobalRows + s.WorldSize - 1) / s.WorldSize
	first = min(k*chunk, s.GlobalRows)
	return first, min(chunk, s.GlobalRows-first)
}

// check validates the shard against the local part's row count.
func (s Shard) check(localRows int) error {
	switch {
	case s.WorldSize < 1:
		return Errorf(CodeInvalidArgument, "shard world_size is %d, must be >= 1", s.WorldSize)
	case s.Rank < 0 || s.Rank >= s.WorldSize:
		return Errorf(CodeInvalidArgument, "shard rank is %d, must be in [0, %d)", s.Rank, s.WorldSize)
	case s.GlobalRows < 1:
		return Errorf(CodeShape, "shard global_rows is %d, must be >= 1", s.GlobalRows)
	}
	first, count := s.rowsOf(s.Rank)
	if s.RowOffset != first || localRows != count {
		return Errorf(CodeShape, "torch.chunk's split of %d rows over %d ranks gives rank %d rows [%d, %d), but the shard says row_offset %d and the local part has %d rows", s.GlobalRows, s.WorldSize, s.Rank, first, first+count, s.RowOffset, localRows)
	}
	return nil
}

// shardedLayout is the layout of one rank's share of a parameter: the whole
// parameter's layout (plan, projector shapes) and this rank's buffers.
type shardedLayout struct {
	whole      *cachedLayout
	shard      Shard
	rows       int          // local rows
	specs      []BufferSpec // this rank's buffers, in the whole layout's order
	rowSharded []bool       // per buffer: this rank's rows of it (else replicated)
	lowRank    Shape        // this rank's projected gradient R
	moments    shardedCodes // the moments' codes, when row-sharded and quantised
}

// shardedCodes places one rank's elements of a row-sharded quantised
// tensor of valuesPerRow values per row in the whole tensor's block grid.
type shardedCodes struct {
	quantized    bool
	valuesPerRow int
	total        int // elements of the whole tensor
}

// rowSharded reports whether the buffer `name` of a parameter under plan
// is split by rows.
func rowSharded(name string, plan Plan) bool {
	switch name {
	case BufMagnitude, BufDirectionNorm, BufMagnitudeExpAvg, BufMagnitudeExpAvgSq:
		return true
	case BufExpAvg, BufExpAvgSq, BufExpAvgAbsmax, BufExpAvgSqAbsmax:
		return !plan.Projected || plan.Sides == SideRight
	}
	return false
}

// momentValuesPerRow is the number of moment values per parameter row of a
// row-sharded moment buffer: k for a right projection, the row length for
// plain AdamW.
func momentValuesPerRow(plan Plan) int {
	switch {
	case plan.Projected:
		return plan.K
	case plan.N > 0:
		return plan.N
	}
	return 1
}

// ShardLayout lists the state buffers of this rank's rows (of shape
// local) of a parameter row-sharded as sh: the whole parameter's buffers,
// same names and order, row-sharded ones cut to this rank's rows.
func ShardLayout(dtype DType, local Shape, sh Shard, cfg Config) ([]BufferSpec, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l, err := shardLayoutOf(dtype, local, sh, cfg)
	if err != nil {
		return nil, err
	}
	return l.specs, nil
}

// shardLayoutOf builds the sharded layout of a validated config.
func shardLayoutOf(dtype DType, local Shape, sh Shard, cfg Config) (*shardedLayout, error) {
	if len(local) != 1 && len(local) != 2 {
		return nil, Errorf(CodeShape, "parameter must be 1-D or 2-D, got %d dimensions", len(local))
	}
	if err := sh.check(local[0]); err != nil {
		return nil, err
	}
	whole := Shape{sh.GlobalRows}
	if len(local) == 2 {
		whole = Shape{sh.GlobalRows, local[1]}
	}
	if err := CheckParam(dtype, whole); err != nil {
		return nil, err
	}
	wl, err := layoutOf(dtype, whole, cfg)
	if err != nil {
		return nil, err
	}
	plan := wl.plan
	l := &shardedLayout{whole: wl, shard: sh, rows: local[0], lowRank: plan.LowRankShape()}
	if !plan.Projected || plan.Sides == SideRight {
		l.lowRank = Shape{l.rows, l.lowRank[1]}
		vpr := momentValuesPerRow(plan)
		l.moments = shardedCodes{quantized: plan.quantized(sh.GlobalRows * vpr), valuesPerRow: vpr, total: sh.GlobalRows * vpr}
		if l.moments.quantized && plan.Bits == 4 && sh.WorldSize > 1 && l.moments.chunkValues(sh)%2 == 1 {
			return nil, Errorf(CodeShape, "4-bit moments of a %v parameter split over %d ranks would share a byte between ranks (%d values per rank's block of rows, odd); use optim_bits 8 or 32, an even rank, or another world size", whole, sh.WorldSize, l.moments.chunkValues(sh))
		}
	}
	l.specs = make([]BufferSpec, len(wl.specs))
	l.rowSharded = make([]bool, len(wl.specs))
	for i, spec := range wl.specs {
		l.specs[i] = spec
		if !rowSharded(spec.Name, plan) {
			continue
		}
		l.rowSharded[i] = true
		l.specs[i].Shape = l.localShape(spec, plan)
	}
	return l, nil
}

// chunkValues is the number of values in a full rank's block of rows.
func (c shardedCodes) chunkValues(sh Shard) int {
	_, chunk := sh.rowsOf(0)
	return chunk * c.valuesPerRow
}

// localShape is this rank's part of a row-sharded buffer.
func (l *shardedLayout) localShape(spec BufferSpec, plan Plan) Shape {
	switch {
	case spec.Name == BufExpAvgAbsmax || spec.Name == BufExpAvgSqAbsmax:
		lo, n := l.moments.span(l.shard.RowOffset, l.rows)
		return Shape{blocksTouched(lo, n)}
	case spec.DType == Uint8 && plan.Bits != 8:
		_, n := l.moments.span(l.shard.RowOffset, l.rows)
		return Shape{quant.Format{Bits: plan.Bits}.Bytes(n)}
	}
	shape := append(Shape{l.rows}, spec.Shape[1:]...)
	return shape
}

// span is the first element and element count of rows [first, first+rows)
// of the tensor.
func (c shardedCodes) span(first, rows int) (lo, n int) {
	return first * c.valuesPerRow, rows * c.valuesPerRow
}

// blocksTouched is the number of quant blocks that elements [lo, lo+n)
// touch.
func blocksTouched(lo, n int) int {
	if n == 0 {
		return 0
	}
	return (lo+n-1)/quant.BlockSize - lo/quant.BlockSize + 1
}

// ShardInit fills freshly allocated state of this rank's rows (local) of a
// row-sharded parameter: zeros, and the row norms of its own rows.
func ShardInit(b Backend, local Tensor, sh Shard, state []Tensor, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	l, err := shardLayoutOf(local.DType, local.Shape, sh, cfg)
	if err != nil {
		return err
	}
	if local.Data == nil && local.Shape.Numel() > 0 {
		return Errorf(CodeNullPointer, "parameter data is null")
	}
	if err := checkBuffers(state, l.specs, local.Shape); err != nil {
		return err
	}
	for _, st := range state {
		if st.Bytes() > 0 {
			if err := b.Zero(st); err != nil {
				return err
			}
		}
	}
	if !l.whole.plan.Projected || l.rows == 0 {
		return nil
	}
	bufs := namedState(l.whole, state)
	if err := b.RowNorms(local, bufs.magnitude); err != nil {
		return err
	}
	return b.RowNorms(local, bufs.directionNorm)
}
