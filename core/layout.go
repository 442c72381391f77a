package core

import (
	"sync"

	"github.com/gradnormlorp/gradnormlorp/core/quant"
)

// Names of state buffers. The low-rank moments reuse torch.optim.AdamW's
// names so that users reading optimizer.state find what they expect.
const (
	BufExpAvg            = "exp_avg"              // M1: first moment (projected shape, or param shape for AdamW)
	BufExpAvgSq          = "exp_avg_sq"           // M2: second moment
	BufExpAvgAbsmax      = "exp_avg_absmax"       // 8-bit M1: per-block absmax
	BufExpAvgSqAbsmax    = "exp_avg_sq_absmax"    // 8-bit M2: per-block absmax
	BufProjLeft          = "proj_left"            // P: m x k, orthonormal columns
	BufProjRight         = "proj_right"           // Q: k x n, orthonormal rows
	BufProjLeftAbsmax    = "proj_left_absmax"     // low-bit P: per-block absmax
	BufProjRightAbsmax   = "proj_right_absmax"    // low-bit Q: per-block absmax
	BufMagnitude         = "magnitude"            // g: per-row magnitude
	BufDirectionNorm     = "direction_norm"       // s: per-row norm of the direction V
	BufMagnitudeExpAvg   = "magnitude_exp_avg"    // a1
	BufMagnitudeExpAvgSq = "magnitude_exp_avg_sq" // a2
	BufCompensationNorm  = "compensation_norm"    // the last compensated residual's norm (one float)
)

// BufferSpec describes one state buffer the caller must allocate.
type BufferSpec struct {
	Name  string
	DType DType
	Shape Shape
}

// Bytes is the exact size of the buffer.
func (b BufferSpec) Bytes() int { return b.Shape.Numel() * b.DType.Size() }

// Side is a set of projector sides.
type Side uint8

const (
	SideLeft  Side = 1 << iota // P: project rows' space, R = P^T dV
	SideRight                  // Q: project columns' space, R = dV Q^T
)

// Plan is what a parameter of a given shape gets under a config: plain AdamW,
// or weight normalisation with a rank-K projection on the chosen sides.
type Plan struct {
	Projected bool
	M, N, K   int  // parameter rows, columns and the effective rank
	Sides     Side // projector sides (projected only)
	Bits      int  // optim_bits: 32, or the width of quantised state
	Subspace  bool // refresh by subspace iteration (needs refresh scratch)
	// Compensated: the residual outside the subspace is added back
	// (CompensationResidual; needs a copy of R and residual scratch).
	Compensated bool
}

// quantized reports whether a state tensor of n elements is stored as codes:
// under low-bit configs, all but small tensors.
func (p Plan) quantized(n int) bool { return p.Bits < 32 && n >= quant.MinQuantizedElems }

// PlanFor decides how a parameter is optimised. 1-D parameters, and any
// parameter under a config with Rank 0, get plain AdamW.
func PlanFor(shape Shape, cfg Config) Plan {
	if cfg.Rank == 0 || len(shape) != 2 {
		p := Plan{Bits: cfg.OptimBits}
		if len(shape) > 0 {
			p.M = shape[0]
		}
		if len(shape) == 2 {
			p.N = shape[1]
		}
		return p
	}
	m, n := shape[0], shape[1]
	p := Plan{Projected: true, M: m, N: n, K: min(cfg.Rank, m, n), Bits: cfg.OptimBits,
		Subspace: cfg.Refresh == RefreshSubspace, Compensated: cfg.Compensation == CompensationResidual}
	switch cfg.ProjType {
	case ProjStd:
		p.Sides = SideLeft
		if m >= n {
			p.Sides = SideRight
		}
	case ProjReverseStd:
		p.Sides = SideRight
		if m >= n {
			p.Sides = SideLeft
		}
	case ProjLeft:
		p.Sides = SideLeft
	case ProjRight:
		p.Sides = SideRight
	case ProjFull:
		p.Sides = SideLeft | SideRight
	}
	return p
}

// LowRankShape is the shape of the projected gradient R and its moments.
func (p Plan) LowRankShape() Shape {
	rows, cols := p.M, p.N
	if p.Sides&SideLeft != 0 {
		rows = p.K
	}
	if p.Sides&SideRight != 0 {
		cols = p.K
	}
	return Shape{rows, cols}
}

// LeftShape and RightShape are the shapes of the projectors P and Q.
func (p Plan) LeftShape() Shape  { return Shape{p.M, p.K} }
func (p Plan) RightShape() Shape { return Shape{p.K, p.N} }

// WorkspaceElems is the number of float32 scratch elements one step needs:
// the held region (kept from prepare to commit, step.go): dg (m), R, a
// float32 copy of each quantised projector, and a snapshot of the state
// for rollback; and the transient region: dV (m x n, later the update
// projected back), for "full" the intermediate P^T dV (k x n), then
// scratch that the refresh under refresh=subspace (m x k, n x k and three
// k x k, see refreshScratchElems) and, at other times, the compensation
// (see compensationScratchElems) share.
func (p Plan) WorkspaceElems() int {
	if !p.Projected {
		return 0
	}
	return p.heldElems() + p.snapshotElems() + p.transientElems()
}

func (p Plan) heldElems() int {
	elems := p.M + p.LowRankShape().Numel()
	if n := p.M * p.K; p.Sides&SideLeft != 0 && p.quantized(n) {
		elems += n
	}
	if n := p.K * p.N; p.Sides&SideRight != 0 && p.quantized(n) {
		elems += n
	}
	return elems
}

func (p Plan) transientElems() int {
	elems := p.M * p.N
	if p.Sides == SideLeft|SideRight {
		elems += p.K * p.N
	}
	return elems + max(p.refreshScratchElems(), p.compensationScratchElems(p.M, p.LowRankShape().Numel()))
}

// compensationScratchElems is the transient scratch of a compensated step
// on `rows` rows whose R has lowRank elements: a rows x n matrix (the
// projection back of R, later the update), then a copy of R in prepare or
// a dg (rows) in commit (compensation.go).
func (p Plan) compensationScratchElems(rows, lowRank int) int {
	if !p.Compensated {
		return 0
	}
	return rows*p.N + max(lowRank, rows)
}

// snapshotElems is the float32 elements a copy of the state takes (each
// buffer rounded up to whole float32s).
func (p Plan) snapshotElems() int {
	n := 0
	for _, s := range p.stateSpecs() {
		n += (s.Bytes() + 3) / 4
	}
	return n
}

// CheckParam validates a parameter's dtype and shape.
func CheckParam(dtype DType, shape Shape) error {
	if !dtype.IsParamDType() {
		return Errorf(CodeDType, "unsupported parameter dtype %v (supported: float32, bfloat16, float16)", dtype)
	}
	if len(shape) != 1 && len(shape) != 2 {
		return Errorf(CodeShape, "parameter must be 1-D or 2-D, got %d dimensions", len(shape))
	}
	for _, d := range shape {
		if d <= 0 {
			return Errorf(CodeShape, "parameter shape %v has an empty dimension", shape)
		}
	}
	return checkSizes(shape)
}

// momentSpecs lays out Adam moments of the given shape.
func (p Plan) momentSpecs(shape Shape) []BufferSpec {
	return append(p.storedSpecs(BufExpAvg, BufExpAvgAbsmax, shape),
		p.storedSpecs(BufExpAvgSq, BufExpAvgSqAbsmax, shape)...)
}

// storedSpecs lays out one float state tensor: float32, or codes plus
// per-block absmax when quantised. 8-bit codes keep the tensor's shape; 4-bit
// codes are packed two to a byte into a flat buffer.
func (p Plan) storedSpecs(name, absmaxName string, shape Shape) []BufferSpec {
	n := shape.Numel()
	if !p.quantized(n) {
		return []BufferSpec{{name, Float32, shape}}
	}
	codes := shape
	if p.Bits != 8 {
		codes = Shape{quant.Format{Bits: p.Bits}.Bytes(n)}
	}
	return []BufferSpec{{name, Uint8, codes}, {absmaxName, Float32, Shape{quant.Blocks(n)}}}
}

// Layout lists the state buffers of a parameter, in the order every step
// expects them.
func Layout(dtype DType, shape Shape, cfg Config) ([]BufferSpec, error) {
	if err := CheckParam(dtype, shape); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return PlanFor(shape, cfg).stateSpecs(), nil
}

// maxElems bounds every tensor and workspace the library lays out, so that
// byte counts (int64 in the C ABI) and element offsets cannot overflow.
const maxElems = 1 << 52

// checkSizes refuses shapes whose element count (or workspace, about
// three times that) would overflow.
func checkSizes(shape Shape) error {
	n := 1
	for _, d := range shape {
		if d > maxElems/n {
			return Errorf(CodeShape, "parameter shape %v is too large (more than 2^52 elements)", shape)
		}
		n *= d
	}
	return nil
}

// stateSpecs lays out the state buffers of a plan.
func (p Plan) stateSpecs() []BufferSpec {
	if !p.Projected {
		shape := Shape{p.M}
		if p.N > 0 {
			shape = Shape{p.M, p.N}
		}
		return p.momentSpecs(shape)
	}
	specs := p.momentSpecs(p.LowRankShape())
	if p.Sides&SideLeft != 0 {
		specs = append(specs, p.storedSpecs(BufProjLeft, BufProjLeftAbsmax, p.LeftShape())...)
	}
	if p.Sides&SideRight != 0 {
		specs = append(specs, p.storedSpecs(BufProjRight, BufProjRightAbsmax, p.RightShape())...)
	}
	row := Shape{p.M}
	specs = append(specs,
		BufferSpec{BufMagnitude, Float32, row},
		BufferSpec{BufDirectionNorm, Float32, row},
		BufferSpec{BufMagnitudeExpAvg, Float32, row},
		BufferSpec{BufMagnitudeExpAvgSq, Float32, row},
	)
	if p.Compensated {
		specs = append(specs, BufferSpec{BufCompensationNorm, Float32, Shape{1}})
	}
	return specs
}

// layoutKey is everything a parameter's layout depends on.
type layoutKey struct {
	dtype      DType
	ndim, m, n int
	rank, bits int
	projType   ProjType
	refresh    RefreshMode
	compensate CompensationMode
}

// cachedLayout is the layout and plan of one layoutKey, with the shapes a
// step carves out of its workspace, built once: steps read it without
// allocating. Nothing in it may be modified.
type cachedLayout struct {
	specs              []BufferSpec
	plan               Plan
	row, full, lowRank Shape // (m), (m, n), the projected shape
	tmp                Shape // (k, n) for "full"
	left, right        Shape // projector shapes
	mk, nk, kk         Shape // refresh=subspace scratch: (m, k), (n, k), (k, k)
	held, transient    Shape // workspace regions (flat): held + snapshot, transient
	snapshotAt         int   // element offset of the snapshot in held
}

const maxCachedLayouts = 1 << 12

var layouts struct {
	sync.RWMutex
	m map[layoutKey]*cachedLayout
}

// layoutOf returns the (cached) layout of a checked parameter and config.
func layoutOf(dtype DType, shape Shape, cfg Config) (*cachedLayout, error) {
	key := layoutKey{dtype: dtype, ndim: len(shape), rank: cfg.Rank, bits: cfg.OptimBits, projType: cfg.ProjType, refresh: cfg.Refresh, compensate: cfg.Compensation}
	if len(shape) > 0 {
		key.m = shape[0]
	}
	if len(shape) > 1 {
		key.n = shape[1]
	}
	layouts.RLock()
	l := layouts.m[key]
	layouts.RUnlock()
	if l != nil {
		return l, nil
	}
	specs, err := Layout(dtype, shape, cfg)
	if err != nil {
		return nil, err
	}
	p := PlanFor(shape, cfg)
	l = &cachedLayout{specs: specs, plan: p}
	if p.Projected {
		l.row, l.full, l.lowRank = Shape{p.M}, Shape{p.M, p.N}, p.LowRankShape()
		l.tmp, l.left, l.right = Shape{p.K, p.N}, p.LeftShape(), p.RightShape()
		l.mk, l.nk, l.kk = Shape{p.M, p.K}, Shape{p.N, p.K}, Shape{p.K, p.K}
		l.snapshotAt = p.heldElems()
		l.held, l.transient = Shape{l.snapshotAt + p.snapshotElems()}, Shape{p.transientElems()}
	}
	layouts.Lock()
	if layouts.m == nil {
		layouts.m = make(map[layoutKey]*cachedLayout)
	}
	if len(layouts.m) < maxCachedLayouts {
		layouts.m[key] = l
	}
	layouts.Unlock()
	return l, nil
}
