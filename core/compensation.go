package core

import "math"

// Compensation (CompensationResidual) adds back the part of the direction
// gradient that the projection drops, as Fira does for plain weights:
//
//	S = dV - back(R),  c = ||N|| / ||R||,  update = scale (back(N) + c S)
//
// with N the low-rank Adam direction and Frobenius norms over the whole
// matrix (one factor per matrix, not Fira's one per column, so that a
// sharded step agrees on it with one sum of three numbers). Fira's limiter
// keeps c ||S|| from growing more than compensationGrowth times per step:
// the state buffer compensation_norm holds its last value (0 sets no
// limit). Since back(N) + c S = back(N - c R) + c dV, prepare leaves
// N - c R where the low-rank direction was, and commit recomputes dV
// (WeightNormGrad is deterministic) rather than holding an m x n buffer
// between the phases.

// residualNorms are the squared Frobenius norms a compensation factor
// is computed from.
type residualNorms struct {
	residual float64 // ||S||^2
	grad     float64 // ||R||^2
	update   float64 // ||N||^2
}

// compensationFactor returns c and the limited norm c ||S|| to store,
// given the stored norm of the previous step. It refuses values that are
// not finite in float32, for the update and for scale-free c dV.
func compensationFactor(n residualNorms, prev float32, shape Shape) (c, norm float32, err error) {
	if !(prev >= 0) || math.IsInf(float64(prev), 0) {
		return 0, 0, Errorf(CodeNonFinite, "the %v parameter's state buffer %s holds %g (want a finite value >= 0); step refused, nothing changed", shape, BufCompensationNorm, prev)
	}
	phi := 0.0
	if n.grad > 0 {
		phi = math.Sqrt(n.update / n.grad)
	}
	limited := phi * math.Sqrt(n.residual)
	if prev > 0 && limited > compensationGrowth*float64(prev) {
		phi *= compensationGrowth * float64(prev) / limited
		limited = compensationGrowth * float64(prev)
	}
	// ||c dV|| <= c (||S|| + ||back(R)||) and ||back(R)|| = ||R|| for
	// orthonormal projectors.
	bound := phi * (math.Sqrt(n.residual) + math.Sqrt(n.grad))
	if !finite32(phi) || !finite32(limited) || !finite32(bound) {
		return 0, 0, Errorf(CodeNonFinite, "the %v parameter's step is not finite: its compensation (||S||^2 %g, ||R||^2 %g, ||N||^2 %g) overflows float32; step refused, nothing changed", shape, n.residual, n.grad, n.update)
	}
	return float32(phi), float32(limited), nil
}

func finite32(x float64) bool { return !math.IsNaN(x) && math.Abs(x) <= math.MaxFloat32 }

// compensationBuffer is the state buffer holding the last limited norm.
func compensationBuffer(l *cachedLayout, state []Tensor) Tensor {
	for i, spec := range l.specs {
		if spec.Name == BufCompensationNorm {
			return state[i]
		}
	}
	return Tensor{}
}

// limitCompensation reads the previous norm from buf, computes c and
// writes the new norm back.
func limitCompensation(b Backend, buf Tensor, n residualNorms, shape Shape) (float32, error) {
	io, ok := b.(HostIO)
	if !ok {
		return 0, Errorf(CodeBackendUnavailable, "this backend cannot run compensation=residual (it lacks host transfers)")
	}
	var prev [1]float32
	if err := io.ToHost(prev[:], buf); err != nil {
		return 0, err
	}
	c, norm, err := compensationFactor(n, prev[0], shape)
	if err != nil {
		return 0, err
	}
	prev[0] = norm
	return c, io.FromHost(buf, prev[:])
}

// compensateLowRank turns the low-rank Adam direction r = N into N - c R
// (r0 holds R).
func compensateLowRank(b Backend, r, r0 Tensor, c float32) error {
	if c == 0 {
		return nil
	}
	return b.Axpby(-c, r0, 1, r)
}

// compensatedUpdate writes into out the update scale (back(r) + c dV) of a
// compensated step (r = N - c R, dv = dV): out, tmp as projectBack's.
func compensatedUpdate(b Backend, plan Plan, st state, r, dv Tensor, scale, c float32, out, tmp Tensor) error {
	if err := projectBack(b, plan, st, r, scale, out, tmp); err != nil {
		return err
	}
	if c == 0 {
		return nil
	}
	return b.Axpby(scale*c, dv, 1, out)
}
