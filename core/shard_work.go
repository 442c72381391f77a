package core

// The two halves of one sharded item's step (see StepSharded), mirroring
// Item.prepare and Item.commit (step.go) on this rank's rows.

// workspace is the float32 scratch of item it's step: held from prepare to
// commit (dg, R, decoded projectors; a plain AdamW parameter's new weights
// when its moments are quantised), and transient (dV of the local rows,
// P^T dV for "full", the compensation's scratch on the local rows, then
// either the refresh's whole dV and scratch or the decoded moments and
// their codec scratch).
func (l *shardedLayout) workspace(it *Item) (held, transient int) {
	plan := l.whole.plan
	moments := 0
	if l.moments.quantized {
		_, n := l.moments.span(0, l.rows)
		moments = 2*n + codecScratchElems + 2*l.shard.WorldSize
	}
	if !plan.Projected {
		if l.moments.quantized {
			held = (it.Param.Bytes() + 3) / 4
		}
		return held, moments
	}
	held = l.rows + l.lowRank.Numel()
	for _, spec := range l.specs {
		if spec.Name == BufProjLeftAbsmax {
			held += plan.M * plan.K
		}
		if spec.Name == BufProjRightAbsmax {
			held += plan.K * plan.N
		}
	}
	transient = l.rows*plan.N + plan.compensationScratchElems(l.rows, l.lowRank.Numel())
	if plan.Sides == SideLeft|SideRight {
		transient += plan.K * plan.N
	}
	if it.refreshes() {
		moments = max(moments, plan.M*plan.N+plan.refreshScratchElems())
	}
	return held, transient + moments
}

// shardWork names the workspace regions of one item (see workspace).
type shardWork struct {
	dg, r, newWeights Tensor
	dv, tmp           Tensor
	back, r0, dgAgain Tensor // the compensation's (as workspace's, step.go)
	rest              Tensor // the refresh's or the moments' scratch
}

// work names item i's state and workspace; quantised projectors' views
// point at their decoded copies.
func (s *shardedStep) work(i int) (state, shardWork) {
	it, j := &s.items[i], &s.jobs[i]
	l, plan := j.l, j.l.whole.plan
	st := namedState(l.whole, it.State)
	held := arena{ws: j.held}
	var w shardWork
	switch {
	case plan.Projected:
		w.dg, w.r = held.take(Shape{l.rows}), held.take(l.lowRank)
		for _, p := range [2]*projector{&st.left, &st.right} {
			if p.packed.Codes.Data != nil {
				p.view = held.take(p.packed.Shape)
			}
		}
	case l.moments.quantized && it.Param.Bytes() > 0:
		w.newWeights = Tensor{Data: j.held.Data, DType: it.Param.DType, Shape: it.Param.Shape}
	}
	t := arena{ws: s.transient}
	if plan.Projected {
		w.dv = t.take(Shape{l.rows, plan.N})
		if plan.Sides == SideLeft|SideRight {
			w.tmp = t.take(l.whole.tmp)
		}
		if plan.Compensated {
			w.back = t.take(w.dv.Shape)
			w.r0, w.dgAgain = t.ws.carve(t.off, l.lowRank), t.ws.carve(t.off, Shape{l.rows})
			t.off += max(l.lowRank.Numel(), l.rows)
		}
	}
	w.rest = t.ws.carve(t.off, Shape{t.ws.Shape.Numel() - t.off})
	return st, w
}

// localRows is st with the left projector cut to this rank's rows of P,
// which is what this rank's rows of dV meet in P^T dV and P R.
func (l *shardedLayout) localRows(st state) state {
	if st.left.view.Data != nil {
		k := l.whole.plan.K
		st.left.view = st.left.view.carve(l.shard.RowOffset*k, Shape{l.rows, k})
	}
	return st
}

// do runs f unless a local error has occurred, recording its error.
func (s *shardedStep) do(i int, f func() error) {
	if s.err == nil {
		s.fail(i, f())
	}
}

// prepare computes item i's step into its state and held workspace. It
// returns only a failed collective; a local error is recorded (s.err) and
// the remaining computation skipped, the collectives still made.
func (s *shardedStep) prepare(i int) error {
	it, l := &s.items[i], s.jobs[i].l
	plan, b := l.whole.plan, s.b
	h := it.Config.adamParams(it.Step)
	st, w := s.work(i)
	if !plan.Projected {
		if !l.moments.quantized {
			return nil // plain AdamW on float32 moments is elementwise: all in commit
		}
		if w.newWeights.Data != nil {
			s.do(i, func() error { return b.Copy(w.newWeights, it.Param) })
		}
		return s.quantizedMoments(i, st.moments, w.rest, func(m Moments) error { return b.AdamW(w.newWeights, it.Grad, m, h) })
	}
	rows := l.rows > 0
	if rows {
		s.do(i, func() error { return b.WeightNormGrad(it.Param, it.Grad, st.magnitude, st.directionNorm, w.dg, w.dv) })
	}
	s.do(i, func() error { return decodeProjectors(b, st) })
	if it.refreshes() {
		// Every rank refreshes from the whole dV, so all get the projectors
		// of the whole matrix, bit for bit.
		scratch := arena{ws: w.rest}
		whole := scratch.take(l.whole.full)
		if err := s.c.GatherRows(w.dv, whole); err != nil {
			return collectiveError("gather of dV's rows", err)
		}
		s.do(i, func() error { return requireFinite(b, whole, "its weight-norm gradient dV", l.whole.full) })
		s.do(i, func() error { return refresh(b, l.whole, it, st, whole, &scratch) })
		s.do(i, func() error { return storeProjectors(b, st) })
	}
	local := l.localRows(st)
	switch {
	case plan.Sides == SideRight:
		if rows {
			s.do(i, func() error { return project(b, plan, local, w.dv, w.r, w.tmp) })
		}
	default: // P^T dV sums over rows, so over ranks
		s.do(i, func() error {
			if rows {
				return project(b, plan, local, w.dv, w.r, w.tmp)
			}
			return b.Zero(w.r)
		})
		if err := s.c.Sum(w.r); err != nil {
			return collectiveError("sum of the projected gradient", err)
		}
	}
	var norms residualNorms
	if plan.Compensated {
		s.do(i, func() error { return s.residual(i, local, w, &norms) })
	}
	if l.moments.quantized {
		if err := s.quantizedMoments(i, st.moments, w.rest, func(m Moments) error { return b.AdamDirection(w.r, m, h) }); err != nil {
			return err
		}
	} else if w.r.Shape.Numel() > 0 {
		s.do(i, func() error { return b.AdamDirection(w.r, st.moments, h) })
	}
	if rows {
		s.do(i, func() error { return b.AdamDirection(w.dg, st.magnitudeMoments, h) })
		s.do(i, func() error { return requireFinite(b, w.r, "its projected update", l.whole.full) })
		s.do(i, func() error { return requireFinite(b, w.dg, "its magnitude update", l.whole.full) })
	}
	if plan.Compensated {
		return s.compensate(i, w, norms)
	}
	return nil
}

// residual is the sharded form of residual (step.go): R copied, and this
// rank's shares of ||S||^2 (its rows) and ||R||^2.
func (s *shardedStep) residual(i int, local state, w shardWork, norms *residualNorms) error {
	l, b := s.jobs[i].l, s.b
	if w.r.Shape.Numel() > 0 {
		if err := b.Copy(w.r0, w.r); err != nil {
			return err
		}
	}
	if l.rows > 0 {
		if err := projectBack(b, l.whole.plan, local, w.r, 1, w.back, w.tmp); err != nil {
			return err
		}
		var err error
		if norms.residual, err = b.SumSquares(w.dv, w.back); err != nil {
			return err
		}
	}
	var err error
	norms.grad, err = s.ownSquares(i, w.r)
	return err
}

// ownSquares is this rank's share of the sum of squares of a tensor shaped
// like R: all of its rows of a row-sharded R, all of a replicated R on
// rank 0 only.
func (s *shardedStep) ownSquares(i int, r Tensor) (float64, error) {
	if r.Shape.Numel() == 0 || (s.jobs[i].l.whole.plan.Sides != SideRight && s.shards[i].Rank != 0) {
		return 0, nil
	}
	return s.b.SumSquares(r, Tensor{})
}

// compensate agrees on the squared norms (one Sum of three values: every
// rank then computes the same c from the same replicated
// compensation_norm) and turns N into N - c R.
func (s *shardedStep) compensate(i int, w shardWork, norms residualNorms) error {
	it, j := &s.items[i], &s.jobs[i]
	s.do(i, func() (err error) {
		norms.update, err = s.ownSquares(i, w.r)
		return err
	})
	host := []float32{float32(norms.residual), float32(norms.grad), float32(norms.update)}
	s.do(i, func() error { return s.io.FromHost(s.flags, host) })
	if err := s.c.Sum(s.flags); err != nil {
		return collectiveError("sum of the compensation's norms", err)
	}
	s.do(i, func() error { return s.io.ToHost(host, s.flags) })
	s.do(i, func() (err error) {
		whole := residualNorms{residual: float64(host[0]), grad: float64(host[1]), update: float64(host[2])}
		j.compensation, err = limitCompensation(s.b, compensationBuffer(j.l.whole, it.State), whole, j.l.whole.full)
		return err
	})
	if w.r.Shape.Numel() > 0 {
		s.do(i, func() error { return compensateLowRank(s.b, w.r, w.r0, j.compensation) })
	}
	return nil
}

// quantizedMoments runs update (an Adam pass) on this rank's row-sharded
// quantised moments: decoded to float32, updated, and encoded again with
// the absmax of blocks split between ranks agreed by one Max.
func (s *shardedStep) quantizedMoments(i int, mom Moments, scratch Tensor, update func(Moments) error) error {
	l, sh, b := s.jobs[i].l, s.shards[i], s.b
	f1, f2 := mom.Formats()
	c1 := newShardCodes(mom.M1, mom.Absmax1, f1, l.moments, sh)
	c2 := newShardCodes(mom.M2, mom.Absmax2, f2, l.moments, sh)
	a := arena{ws: scratch}
	m1, m2 := a.take(Shape{c1.n}), a.take(Shape{c1.n})
	codec, agree := a.take(Shape{codecScratchElems}), a.take(Shape{2 * sh.WorldSize})
	agree1, agree2 := agree.carve(0, Shape{sh.WorldSize}), agree.carve(sh.WorldSize, Shape{sh.WorldSize})
	if c1.n > 0 {
		s.do(i, func() error { return c1.decode(b, m1) })
		s.do(i, func() error { return c2.decode(b, m2) })
		s.do(i, func() error { return update(Moments{M1: m1, M2: m2, Bits: 32}) })
	}
	s.do(i, func() error { return b.Zero(agree) })
	s.do(i, func() error { return c1.partialAbsmax(b, m1, agree1, codec) })
	s.do(i, func() error { return c2.partialAbsmax(b, m2, agree2, codec) })
	if err := s.c.Max(agree); err != nil {
		return collectiveError("max of split blocks' absmax", err)
	}
	s.do(i, func() error { return c1.encode(b, m1, agree1, codec) })
	s.do(i, func() error { return c2.encode(b, m2, agree2, codec) })
	return nil
}

// commit writes item i's parameter rows from its prepared step.
func (s *shardedStep) commit(i int) error {
	it, l := &s.items[i], s.jobs[i].l
	plan, b := l.whole.plan, s.b
	if l.rows == 0 {
		return nil
	}
	h := it.Config.adamParams(it.Step)
	st, w := s.work(i)
	if !plan.Projected {
		if l.moments.quantized {
			return b.Copy(it.Param, w.newWeights)
		}
		return b.AdamW(it.Param, it.Grad, st.moments, h)
	}
	local, scale := l.localRows(st), float32(it.Config.Scale)
	update := w.dv
	if plan.Compensated {
		if err := b.WeightNormGrad(it.Param, it.Grad, st.magnitude, st.directionNorm, w.dgAgain, w.dv); err != nil {
			return err
		}
		update = w.back
		if err := compensatedUpdate(b, plan, local, w.r, w.dv, scale, s.jobs[i].compensation, update, w.tmp); err != nil {
			return err
		}
	} else if err := projectBack(b, plan, local, w.r, scale, update, w.tmp); err != nil {
		return err
	}
	return b.WeightNormUpdate(it.Param, st.magnitude, st.directionNorm, update, w.dg, h)
}
