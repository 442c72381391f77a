package core

import "github.com/gradnormlorp/gradnormlorp/core/quant"

// Item is one parameter's share of an optimizer step.
type Item struct {
	Param  Tensor   // updated in place
	Grad   Tensor   // read only
	State  []Tensor // in Layout order
	Config Config
	Step   int64 // 1-based
}

// checkState verifies that state matches the layout of param under cfg and
// returns that layout.
func checkState(param Tensor, state []Tensor, cfg Config) (*cachedLayout, error) {
	l, err := layoutOf(param.DType, param.Shape, cfg)
	if err != nil {
		return nil, err
	}
	if err := checkBuffers(state, l.specs, param.Shape); err != nil {
		return nil, err
	}
	return l, nil
}

// checkBuffers verifies that state matches specs, the layout of a
// parameter of shape `shape`. An empty buffer (of a rank holding no rows of
// a sharded parameter) may have no data.
func checkBuffers(state []Tensor, specs []BufferSpec, shape Shape) error {
	if len(state) != len(specs) {
		return Errorf(CodeShape, "got %d state buffers, want %d for a %v parameter under this config (query the state layout)", len(state), len(specs), shape)
	}
	for i, spec := range specs {
		st := state[i]
		if st.Data == nil && spec.Bytes() > 0 {
			return Errorf(CodeNullPointer, "state buffer %d (%s) is null", i, spec.Name)
		}
		if st.DType != spec.DType {
			return Errorf(CodeDType, "state buffer %d (%s) has dtype %v, want %v", i, spec.Name, st.DType, spec.DType)
		}
		if !st.Shape.Equal(spec.Shape) {
			return Errorf(CodeShape, "state buffer %d (%s) has shape %v, want %v", i, spec.Name, st.Shape, spec.Shape)
		}
	}
	return nil
}

// Init fills freshly allocated state for param: moments and projectors
// zero, magnitude and direction norm set to the row norms of param.
func Init(b Backend, param Tensor, state []Tensor, cfg Config) error {
	if param.Data == nil {
		return Errorf(CodeNullPointer, "parameter data is null")
	}
	l, err := checkState(param, state, cfg)
	if err != nil {
		return err
	}
	for _, st := range state {
		if err := b.Zero(st); err != nil {
			return err
		}
	}
	if !l.plan.Projected {
		return nil
	}
	bufs := namedState(l, state)
	if err := b.RowNorms(param, bufs.magnitude); err != nil {
		return err
	}
	return b.RowNorms(param, bufs.directionNorm)
}

// Validate checks everything about an item that can be checked without
// changing it, including that the gradient is finite, and returns its
// plan. (A projected item's weights are checked through the intermediates
// they reach, in prepare, without a pass of their own; a plain AdamW
// item's are not read into anything but themselves.)
func (it *Item) Validate(b Backend) (Plan, error) {
	l, err := it.check()
	if err != nil {
		return Plan{}, err
	}
	finite, err := b.AllFinite(it.Grad)
	if err != nil {
		return Plan{}, err
	}
	if !finite {
		return Plan{}, Errorf(CodeNonFinite, "gradient of the %v parameter holds NaN or Inf; step refused, nothing changed", it.Param.Shape)
	}
	return l.plan, nil
}

// check validates everything but the tensors' values.
func (it *Item) check() (*cachedLayout, error) {
	if err := it.Config.Validate(); err != nil {
		return nil, err
	}
	if err := CheckParam(it.Param.DType, it.Param.Shape); err != nil {
		return nil, err
	}
	if it.Param.Data == nil {
		return nil, Errorf(CodeNullPointer, "parameter data is null")
	}
	if it.Grad.Data == nil {
		return nil, Errorf(CodeNullPointer, "gradient data is null")
	}
	if !it.Grad.Shape.Equal(it.Param.Shape) {
		return nil, Errorf(CodeShape, "gradient shape %v differs from parameter shape %v", it.Grad.Shape, it.Param.Shape)
	}
	if it.Grad.DType != it.Param.DType {
		return nil, Errorf(CodeDType, "gradient dtype %v differs from parameter dtype %v", it.Grad.DType, it.Param.DType)
	}
	if it.Step < 1 {
		return nil, Errorf(CodeInvalidArgument, "invalid step %d (steps count from 1)", it.Step)
	}
	return checkState(it.Param, it.State, it.Config)
}

// A validated item is stepped in two phases, so that a batch can keep its
// promise (batch.go):
//
//   - prepare does everything that can fail: the weight-norm gradients, the
//     projector refresh, the projection and Adam in the low-rank space. It
//     writes only the item's state buffers (which the caller snapshots
//     first) and its workspace, and checks every intermediate the rest of
//     the step reads for NaN and Inf (finite inputs can overflow float32).
//   - commit projects the update back and writes the parameter (and its
//     row norms). It is arithmetic on values prepare checked, and
//     cannot fail on validated input.
//
// Workspace: prepare and commit share the held region (dg, R and decoded
// projectors, which carry over) and use the transient region each for
// itself (dV, P^T dV for "full", refresh scratch), so a batch keeps only
// the small held regions of all its items between the phases.

// prepare runs the half of a step that can fail; plain AdamW items have
// nothing to prepare.
func (it *Item) prepare(b Backend, j *job, transient Tensor) error {
	l := j.l
	if !l.plan.Projected {
		return nil
	}
	h := it.Config.adamParams(it.Step)
	st, w := it.work(l, j.held, transient)
	if err := b.WeightNormGrad(it.Param, it.Grad, st.magnitude, st.directionNorm, w.dg, w.dv); err != nil {
		return err
	}
	// Decode on every step, so all steps use the projector exactly as
	// stored (and a warm-started refresh starts from it).
	if err := decodeProjectors(b, st); err != nil {
		return err
	}
	if it.refreshes() {
		// Checked before an SVD sees it: non-finite input can make an SVD
		// spin. (Without a refresh, NaN or Inf in dV reaches R, checked
		// below.)
		if err := requireFinite(b, w.dv, "its weight-norm gradient dV", it.Param.Shape); err != nil {
			return err
		}
		if err := refresh(b, l, it, st, w.dv, &w.refresh); err != nil {
			return err
		}
		if err := storeProjectors(b, st); err != nil {
			return err
		}
	}
	if err := project(b, l.plan, st, w.dv, w.r, w.tmp); err != nil {
		return err
	}
	var norms residualNorms
	if l.plan.Compensated {
		if err := residual(b, l.plan, st, &w, &norms); err != nil {
			return err
		}
	}
	if err := b.AdamDirection(w.r, st.moments, h); err != nil {
		return err
	}
	if err := b.AdamDirection(w.dg, st.magnitudeMoments, h); err != nil {
		return err
	}
	// What commit reads: the low-rank direction and the magnitude's (a
	// non-finite weight in a row makes that row's dg so).
	if err := requireFinite(b, w.r, "its projected update", it.Param.Shape); err != nil {
		return err
	}
	if err := requireFinite(b, w.dg, "its magnitude update", it.Param.Shape); err != nil {
		return err
	}
	if !l.plan.Compensated {
		return nil
	}
	var err error
	if norms.update, err = b.SumSquares(w.r, Tensor{}); err != nil {
		return err
	}
	if j.compensation, err = limitCompensation(b, compensationBuffer(l, it.State), norms, it.Param.Shape); err != nil {
		return err
	}
	return compensateLowRank(b, w.r, w.r0, j.compensation)
}

// residual keeps a copy of R (w.r0) and measures ||S||^2 = ||dV - back(R)||^2
// and ||R||^2 for a compensated step.
func residual(b Backend, plan Plan, st state, w *workspace, norms *residualNorms) error {
	if err := b.Copy(w.r0, w.r); err != nil {
		return err
	}
	if err := projectBack(b, plan, st, w.r, 1, w.back, w.tmp); err != nil {
		return err
	}
	var err error
	if norms.residual, err = b.SumSquares(w.dv, w.back); err != nil {
		return err
	}
	norms.grad, err = b.SumSquares(w.r, Tensor{})
	return err
}

// commit finishes a prepared step: the update projected back, then the
// parameter and its row norms written (or plain AdamW).
func (it *Item) commit(b Backend, j *job, transient Tensor) error {
	l := j.l
	h := it.Config.adamParams(it.Step)
	if !l.plan.Projected {
		return b.AdamW(it.Param, it.Grad, namedState(l, it.State).moments, h)
	}
	st, w := it.work(l, j.held, transient)
	scale := float32(it.Config.Scale)
	update := w.dv // dv is free again: it receives the update projected back
	if l.plan.Compensated {
		// dV again, bit for bit: the inputs are those prepare read.
		if err := b.WeightNormGrad(it.Param, it.Grad, st.magnitude, st.directionNorm, w.dgAgain, w.dv); err != nil {
			return err
		}
		update = w.back
		if err := compensatedUpdate(b, l.plan, st, w.r, w.dv, scale, j.compensation, update, w.tmp); err != nil {
			return err
		}
	} else if err := projectBack(b, l.plan, st, w.r, scale, update, w.tmp); err != nil {
		return err
	}
	return b.WeightNormUpdate(it.Param, st.magnitude, st.directionNorm, update, w.dg, h)
}

// requireFinite refuses a step whose intermediate t overflowed float32.
func requireFinite(b Backend, t Tensor, what string, shape Shape) error {
	finite, err := b.AllFinite(t)
	if err != nil {
		return err
	}
	if !finite {
		return Errorf(CodeNonFinite, "the %v parameter's step is not finite: %s holds NaN or Inf (a weight or state value is NaN or Inf, or values too large overflow float32); step refused, nothing changed", shape, what)
	}
	return nil
}

// Step validates and steps one item with the caller's workspace ws (float32,
// at least PlanFor(...).WorkspaceElems() elements), keeping the batch
// promise for a batch of one: on error the item is unchanged.
func Step(b Backend, it *Item, ws Tensor) error {
	plan, err := it.Validate(b)
	if err != nil {
		return err
	}
	if ws.Shape.Numel() < plan.WorkspaceElems() || (plan.WorkspaceElems() > 0 && ws.DType != Float32) {
		return Errorf(CodeInternal, "workspace of %d float32 elements is smaller than the %d needed", ws.Shape.Numel(), plan.WorkspaceElems())
	}
	l, err := layoutOf(it.Param.DType, it.Param.Shape, it.Config)
	if err != nil {
		return err
	}
	j := job{l: l}
	if l.plan.Projected {
		j.held = ws.carve(0, l.held)
		if err := j.snapshot(b, it); err != nil {
			return err
		}
		transient := ws.carve(l.held.Numel(), l.transient)
		if err := it.prepare(b, &j, transient); err != nil {
			return j.rollback(b, it, err)
		}
		return it.commit(b, &j, transient)
	}
	return it.commit(b, &j, Tensor{})
}

// work names the workspace regions of a projected item and points the
// views of quantised projectors at their decoded copies.
func (it *Item) work(l *cachedLayout, held, transient Tensor) (state, workspace) {
	st := namedState(l, it.State)
	h := arena{ws: held}
	w := workspace{dg: h.take(l.row), r: h.take(l.lowRank)}
	// Quantised projectors are decoded into held workspace; float32 ones
	// are used in place.
	for _, p := range [2]*projector{&st.left, &st.right} {
		if p.packed.Codes.Data != nil {
			p.view = h.take(p.packed.Shape)
		}
	}
	t := arena{ws: transient}
	w.dv = t.take(l.full)
	if l.plan.Sides == SideLeft|SideRight {
		w.tmp = t.take(l.tmp)
	}
	w.refresh = t // what is left is refresh scratch, at other times the compensation's
	if l.plan.Compensated {
		w.back = t.take(l.full)
		w.r0, w.dgAgain = t.ws.carve(t.off, l.lowRank), t.ws.carve(t.off, l.row)
	}
	return st, w
}

// workspace is a projected item's scratch: dg, then the magnitude's Adam
// direction; R, then the low-rank Adam direction; dV, then the update
// projected back; P^T dV for "full"; the refresh's scratch. A compensated
// step's scratch overlaps the refresh's: back(R), later the update, and
// either R (r0, in prepare) or a dg (dgAgain, in commit).
type workspace struct {
	dg, r, dv, tmp    Tensor
	refresh           arena
	back, r0, dgAgain Tensor
}

// refreshes reports whether the item's step refreshes its projectors.
func (it *Item) refreshes() bool { return (it.Step-1)%int64(it.Config.UpdateProjGap) == 0 }

// storeProjectors quantises freshly computed projectors into their codes
// and decodes them again, so that steps use them exactly as stored.
func storeProjectors(b Backend, st state) error {
	for _, p := range [2]projector{st.left, st.right} {
		if p.packed.Codes.Data != nil {
			if err := b.Encode(p.view, p.packed); err != nil {
				return err
			}
		}
	}
	return decodeProjectors(b, st)
}

// decodeProjectors expands quantised projectors into their float32 views.
func decodeProjectors(b Backend, st state) error {
	for _, p := range [2]projector{st.left, st.right} {
		if p.packed.Codes.Data != nil {
			if err := b.Decode(p.packed, p.view); err != nil {
				return err
			}
		}
	}
	return nil
}

// project computes r = P^T dv, dv Q^T or P^T dv Q^T.
func project(b Backend, plan Plan, st state, dv, r, tmp Tensor) error {
	switch plan.Sides {
	case SideLeft:
		return b.MatMul(true, st.left.view, false, dv, 1, r)
	case SideRight:
		return b.MatMul(false, dv, true, st.right.view, 1, r)
	}
	if err := b.MatMul(true, st.left.view, false, dv, 1, tmp); err != nil {
		return err
	}
	return b.MatMul(false, tmp, true, st.right.view, 1, r)
}

// projectBack computes out = scale * (P r, r Q or P r Q).
func projectBack(b Backend, plan Plan, st state, r Tensor, scale float32, out, tmp Tensor) error {
	switch plan.Sides {
	case SideLeft:
		return b.MatMul(false, st.left.view, false, r, scale, out)
	case SideRight:
		return b.MatMul(false, r, false, st.right.view, scale, out)
	}
	if err := b.MatMul(false, r, false, st.right.view, 1, tmp); err != nil {
		return err
	}
	return b.MatMul(false, st.left.view, false, tmp, scale, out)
}

// arena hands out consecutive regions of a float32 workspace.
type arena struct {
	ws  Tensor
	off int
}

func (a *arena) take(shape Shape) Tensor {
	t := a.ws.carve(a.off, shape)
	a.off += shape.Numel()
	return t
}

// projector is one side's projector: view is its float32 values (the state
// buffer itself, or workspace holding the decoded codes when packed is set).
// Both are zero when the side is not projected.
type projector struct {
	view   Tensor
	packed Packed
}

// state names the buffers of a parameter.
type state struct {
	moments                  Moments
	left, right              projector
	magnitude, directionNorm Tensor
	magnitudeMoments         Moments
}

// namedState maps a checked state slice to names, following its layout.
func namedState(l *cachedLayout, bufs []Tensor) state {
	plan := l.plan
	var s state
	signed := quant.Format{Bits: plan.Bits, Signed: true}
	for i, spec := range l.specs {
		t := bufs[i]
		switch spec.Name {
		case BufExpAvg:
			s.moments.M1 = t
			if t.DType == Uint8 {
				s.moments.Bits = plan.Bits
			}
		case BufExpAvgAbsmax:
			s.moments.Absmax1 = t
		case BufExpAvgSq:
			s.moments.M2 = t
		case BufExpAvgSqAbsmax:
			s.moments.Absmax2 = t
		case BufProjLeft:
			s.left = storedProjector(t, l.left, signed)
		case BufProjLeftAbsmax:
			s.left.packed.Absmax = t
		case BufProjRight:
			s.right = storedProjector(t, l.right, signed)
		case BufProjRightAbsmax:
			s.right.packed.Absmax = t
		case BufMagnitude:
			s.magnitude = t
		case BufDirectionNorm:
			s.directionNorm = t
		case BufMagnitudeExpAvg:
			s.magnitudeMoments.M1 = t
		case BufMagnitudeExpAvgSq:
			s.magnitudeMoments.M2 = t
		}
	}
	return s
}

// storedProjector wraps a projector's state buffer: float32 values, or codes
// whose absmax buffer follows it in the layout.
func storedProjector(t Tensor, shape Shape, f quant.Format) projector {
	if t.DType == Float32 {
		return projector{view: t}
	}
	return projector{packed: Packed{Codes: t, Format: f, Shape: shape}}
}
