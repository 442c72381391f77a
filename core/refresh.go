package core

// Projector refresh by subspace iteration (Config.Refresh ==
// RefreshSubspace), written once over Backend primitives: MatMul,
// SingularVectors (on a small k x k matrix) and the Refresher extension
// (Orthonormalize, FixSigns).
//
// The exact refresh takes the top-k singular vectors of dV (m x n) from a
// full SVD. Between two refreshes the gradient's dominant subspace moves
// slowly, so the previous projector is an excellent start: with V0 its
// right basis (n x k), a few rounds of orthogonal (subspace) iteration
//
//	C = orth(dV V), V = orth(dV^T C)
//
// converge on the dominant right subspace at the rate sigma_{k+1}/sigma_k
// per round from a start that is already close, then Rayleigh-Ritz turns
// the basis into ordered singular vectors: with dV V = C R (thin QR) and
// the small SVD R = U_r S W_r^T, the right singular vectors of dV are
// approximately V W_r and the left ones C U_r, ordered by S. Finally the
// sign rule is applied as for the exact SVD. The left side runs the same
// iteration on dV^T. Cost: 2 SubspaceIterations + 1 products of dV with an
// n x k or m x k matrix (as many flops as 1 + 2 SubspaceIterations halves of a
// regular step's projections), thin QRs of m x k and n x k matrices, and one
// k x k SVD, instead of a full SVD of dV.
//
// The first refresh of a parameter (step 1) has no previous projector and
// is exact. A backend that does not implement Refresher refreshes exactly.

// SubspaceIterations is the number of rounds of subspace iteration of a
// warm-started refresh (each: one product with dV^T and one with dV). On
// real gradients (bench/step.py: a small LLaMA on tinyshakespeare, the
// previous projector 50 or 200 training steps old) the refreshed projector
// captures >= 0.999 of the energy of the exact top-k subspace with one
// round, >= 0.9997 with two (the old projector alone: 0.62 to 0.96); one
// round costs 3 products with dV and 3 thin QRs, two cost 5 and 5.
const SubspaceIterations = 1

// refreshScratchElems is the float32 scratch of a subspace refresh: C
// (m x k), V (n x k), R, and the two k x k factors of its SVD.
func (p Plan) refreshScratchElems() int {
	if !p.Projected || !p.Subspace {
		return 0
	}
	return (p.M + p.N + 3*p.K) * p.K
}

// refresh writes new projectors for dv into the float32 views of st (which
// hold the previous projectors on entry).
func refresh(b Backend, l *cachedLayout, it *Item, st state, dv Tensor, scratch *arena) error {
	rb, ok := b.(Refresher)
	if !l.plan.Subspace || !ok || it.Step == 1 {
		return b.SingularVectors(dv, st.left.view, st.right.view)
	}
	return subspaceRefresh(b, rb, l, st, dv, scratch)
}

func subspaceRefresh(b Backend, rb Refresher, l *cachedLayout, st state, dv Tensor, scratch *arena) error {
	plan := l.plan
	c := scratch.take(l.mk)  // left basis, m x k
	v := scratch.take(l.nk)  // right basis, n x k
	r := scratch.take(l.kk)  // triangular factor
	wr := scratch.take(l.kk) // right singular vectors of r, as rows
	var ur Tensor            // left singular vectors of r, as columns ("full" only)
	if plan.Sides == SideLeft|SideRight {
		ur = scratch.take(l.kk)
	}
	// mul runs one matrix product, keeping the first error.
	var err error
	mul := func(transA bool, a Tensor, transB bool, x Tensor, out Tensor) {
		if err == nil {
			err = b.MatMul(transA, a, transB, x, 1, out)
		}
	}
	orth := func(a, r Tensor) {
		if err == nil {
			err = rb.Orthonormalize(a, r)
		}
	}

	if plan.Sides&SideRight != 0 {
		// Start from the previous right basis Q (k x n): C = dV Q^T.
		mul(false, dv, true, st.right.view, c)
		for range SubspaceIterations {
			orth(c, Tensor{})
			mul(true, dv, false, c, v) // V = dV^T C
			orth(v, Tensor{})
			mul(false, dv, false, v, c) // C = dV V
		}
		orth(c, r) // dV V = C R
		if err != nil {
			return err
		}
		if err := b.SingularVectors(r, ur, wr); err != nil {
			return err
		}
		// Right singular vectors V W_r, stored as the rows of Q = W_r^T V^T.
		mul(false, wr, true, v, st.right.view)
		if plan.Sides&SideLeft != 0 {
			mul(false, c, false, ur, st.left.view) // P = C U_r
		}
	} else {
		// Left only: the same on dV^T, from the previous P (m x k).
		mul(true, dv, false, st.left.view, v) // V = dV^T P
		for range SubspaceIterations {
			orth(v, Tensor{})
			mul(false, dv, false, v, c) // C = dV V
			orth(c, Tensor{})
			mul(true, dv, false, c, v) // V = dV^T C
		}
		orth(v, r) // dV^T C = V R, so dV ~ C W_r S U_r^T V^T on the subspace
		if err != nil {
			return err
		}
		if err := b.SingularVectors(r, Tensor{}, wr); err != nil {
			return err
		}
		mul(false, c, true, wr, st.left.view) // P = C W_r
	}
	if err != nil {
		return err
	}
	if plan.Sides&SideRight != 0 {
		if err := rb.FixSigns(st.right.view, true); err != nil {
			return err
		}
	}
	if plan.Sides&SideLeft != 0 {
		return rb.FixSigns(st.left.view, false)
	}
	return nil
}
