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
	specs := l.specs
	if len(state) != len(specs) {
		return nil, Errorf(CodeShape, "got %d state buffers, want %d for a %v parameter under this config (query the state layout)", len(state), len(specs), param.Shape)
	}
	for i, spec := range specs {
		st := state[i]
		if st.Data == nil {
			return nil, Errorf(CodeNullPointer, "state buffer %d (%s) is null", i, spec.Name)
		}
		if st.DType != spec.DType {
			return nil, Errorf(CodeDType, "state buffer %d (%s) has dtype %v, want %v", i, spec.Name, st.DType, spec.DType)
		}
		if !st.Shape.Equal(spec.Shape) {
			return nil, Errorf(CodeShape, "state buffer %d (%s) has shape %v, want %v", i, spec.Name, st.Shape, spec.Shape)
		}
	}
	return l, nil
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
// changing it, including that the gradient is finite, and returns its plan.
func (it *Item) Validate(b Backend) (Plan, error) {
	if err := it.Config.Validate(); err != nil {
		return Plan{}, err
	}
	if err := CheckParam(it.Param.DType, it.Param.Shape); err != nil {
		return Plan{}, err
	}
	if it.Param.Data == nil {
		return Plan{}, Errorf(CodeNullPointer, "parameter data is null")
	}
	if it.Grad.Data == nil {
		return Plan{}, Errorf(CodeNullPointer, "gradient data is null")
	}
	if !it.Grad.Shape.Equal(it.Param.Shape) {
		return Plan{}, Errorf(CodeShape, "gradient shape %v differs from parameter shape %v", it.Grad.Shape, it.Param.Shape)
	}
	if it.Grad.DType != it.Param.DType {
		return Plan{}, Errorf(CodeDType, "gradient dtype %v differs from parameter dtype %v", it.Grad.DType, it.Param.DType)
	}
	if it.Step < 1 {
		return Plan{}, Errorf(CodeInvalidArgument, "invalid step %d (steps count from 1)", it.Step)
	}
	l, err := checkState(it.Param, it.State, it.Config)
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

// Apply performs the step of a validated item. ws is float32 scratch of at
// least plan.WorkspaceElems() elements.
func (it *Item) Apply(b Backend, plan Plan, ws Tensor) error {
	h := it.Config.adamParams(it.Step)
	l, err := layoutOf(it.Param.DType, it.Param.Shape, it.Config)
	if err != nil {
		return err
	}
	st := namedState(l, it.State)
	if !plan.Projected {
		return b.AdamW(it.Param, it.Grad, st.moments, h)
	}
	if ws.DType != Float32 || ws.Shape.Numel() < plan.WorkspaceElems() {
		return Errorf(CodeInternal, "workspace of %d float32 elements is smaller than the %d needed", ws.Shape.Numel(), plan.WorkspaceElems())
	}
	scratch := arena{ws: ws}
	dg := scratch.take(l.row)
	dv := scratch.take(l.full)
	r := scratch.take(l.lowRank)
	var tmp Tensor // P^T dV or N Q, for "full" only
	if plan.Sides == SideLeft|SideRight {
		tmp = scratch.take(l.tmp)
	}
	// Quantised projectors are decoded into workspace; float32 ones are used
	// in place.
	for _, p := range [2]*projector{&st.left, &st.right} {
		if p.packed.Codes.Data != nil {
			p.view = scratch.take(p.packed.Shape)
		}
	}

	if err := b.WeightNormGrad(it.Param, it.Grad, st.magnitude, st.directionNorm, dg, dv); err != nil {
		return err
	}
	// Decode on every step, so all steps use the projector exactly as
	// stored (and a warm-started refresh starts from it).
	if err := decodeProjectors(b, st); err != nil {
		return err
	}
	if (it.Step-1)%int64(it.Config.UpdateProjGap) == 0 {
		if err := refresh(b, l, it, st, dv, &scratch); err != nil {
			return err
		}
		for _, p := range [2]projector{st.left, st.right} {
			if p.packed.Codes.Data != nil {
				if err := b.Encode(p.view, p.packed); err != nil {
					return err
				}
			}
		}
		if err := decodeProjectors(b, st); err != nil {
			return err
		}
	}
	if err := project(b, plan, st, dv, r, tmp); err != nil {
		return err
	}
	if err := b.AdamDirection(r, st.moments, h); err != nil {
		return err
	}
	// dv is dead after the projection; it receives the update projected back.
	if err := projectBack(b, plan, st, r, float32(it.Config.Scale), dv, tmp); err != nil {
		return err
	}
	if err := b.AdamDirection(dg, st.magnitudeMoments, h); err != nil {
		return err
	}
	return b.WeightNormUpdate(it.Param, st.magnitude, st.directionNorm, dv, dg, h)
}

// Step validates and applies one item.
func Step(b Backend, it *Item, ws Tensor) error {
	plan, err := it.Validate(b)
	if err != nil {
		return err
	}
	return it.Apply(b, plan, ws)
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
