package core

import "github.com/gradnormlorp/gradnormlorp/core/quant"

// AdamParams are the per-step scalars of the Adam form used everywhere:
// m1 = b1 m1 + (1-b1) x, m2 = b2 m2 + (1-b2) x^2, N = m1 / (sqrt(m2) + eps),
// with the bias correction folded into StepSize and the decoupled weight
// decay factor 1 - lr * weight_decay in Decay. OneMinusBeta1/2 are rounded
// from float64 (as PyTorch passes 1 - beta to its kernels), not computed from
// the float32 betas: 1 - float32(0.999) is off by 2.4e-8, a 2e-5 relative
// error in every second-moment update.
type AdamParams struct {
	Beta1, Beta2                 float32
	OneMinusBeta1, OneMinusBeta2 float32
	Eps                          float32
	StepSize                     float32
	Decay                        float32
}

// NewAdamParams rounds the float64 scalars of one step to AdamParams.
func NewAdamParams(beta1, beta2, eps, stepSize, decay float64) AdamParams {
	return AdamParams{
		Beta1: float32(beta1), Beta2: float32(beta2),
		OneMinusBeta1: float32(1 - beta1), OneMinusBeta2: float32(1 - beta2),
		Eps: float32(eps), StepSize: float32(stepSize), Decay: float32(decay),
	}
}

// Moments are Adam's first and second moments in one of two formats:
// float32 tensors (Bits 0 or 32, Absmax1 and Absmax2 zero), or blockwise codes of
// Bits 8 or 4 (uint8 storage; the signed code for M1, the unsigned one for
// M2, see package quant) with one float32 absmax per quant.BlockSize values.
type Moments struct {
	M1, M2           Tensor
	Absmax1, Absmax2 Tensor
	Bits             int
}

// Quantized reports whether the moments are stored as codes.
func (m Moments) Quantized() bool { return m.Bits > 0 && m.Bits < 32 }

// Formats are the quantisation formats of M1 and M2 (quantised moments only).
func (m Moments) Formats() (quant.Format, quant.Format) {
	return quant.Format{Bits: m.Bits, Signed: true}, quant.Format{Bits: m.Bits, Signed: false}
}

// Packed is a float tensor of Shape stored as blockwise codes of Format
// (uint8 Codes, float32 Absmax per quant.BlockSize values): the storage of
// low-bit projectors.
type Packed struct {
	Codes, Absmax Tensor
	Format        quant.Format
	Shape         Shape
}

// Backend performs the numerical primitives of a step on one kind of
// memory. It knows nothing of the schedule: core decides what runs when.
// Errors from MatMul, WeightNormUpdate and AdamW on validated input are
// backend faults: they run in a step's commit phase (step.go), which the
// batch promise counts on not to fail.
// Parameters and gradients are float32, bfloat16 or float16; everything
// else is float32. All tensors are contiguous and row-major, and vectors
// of per-row values have one element per row of the matrix they describe.
type Backend interface {
	// AllFinite reports whether t holds no NaN or Inf.
	AllFinite(t Tensor) (bool, error)
	// Zero sets every element of t to 0.
	Zero(t Tensor) error
	// Copy copies src into dst (same dtype and shape, not overlapping).
	Copy(dst, src Tensor) error
	// RowNorms writes the Euclidean norm of each row of w into out.
	RowNorms(w, out Tensor) error
	// WeightNormGrad computes the exact weight-norm gradients of every row.
	// With D_i = w_i / g_i: dg_i = <grad_i, D_i> and
	// dv_i = (g_i / s_i) (grad_i - dg_i D_i). A row with g_i == 0 has no
	// direction: dg_i = 0 and dv_i = grad_i.
	WeightNormGrad(w, grad, g, s, dg, dv Tensor) error
	// SingularVectors writes the leading singular vectors of a (m x n):
	// into the columns of left (m x k) and/or the rows of right (k x n); a
	// side whose Data is nil is not wanted. Each vector is flipped so that
	// its entry of largest magnitude (the first, on ties) is positive.
	// Nothing is written unless the whole factorisation succeeds.
	SingularVectors(a, left, right Tensor) error
	// MatMul computes c = alpha * op(a) * op(b), op transposing when asked.
	MatMul(transA bool, a Tensor, transB bool, b Tensor, alpha float32, c Tensor) error
	// AdamDirection updates the moments from x and overwrites x with the
	// Adam direction m1 / (sqrt(m2) + eps), computed from the updated
	// moments before they are (re)quantised.
	AdamDirection(x Tensor, mom Moments, h AdamParams) error
	// WeightNormUpdate finishes a projected step row by row. For a row with
	// g_i != 0: V = s_i w_i / g_i - StepSize dvlow_i,
	// g_i = (g_i - StepSize ng_i) Decay, s_i = ||V||, w_i = g_i V / s_i (a
	// row whose V vanishes becomes a zero row). For a zero row:
	// w_i = w_i Decay - StepSize dvlow_i and g_i = s_i = ||w_i||. w is
	// written in its own dtype; the norms are of the values written.
	WeightNormUpdate(w, g, s, dvlow, ng Tensor, h AdamParams) error
	// Encode quantises src (float32, of dst.Shape) into dst.
	Encode(src Tensor, dst Packed) error
	// Decode expands src into dst (float32, of src.Shape).
	Decode(src Packed, dst Tensor) error
	// AdamW applies plain AdamW: w = w Decay - StepSize N with the moments
	// updated from grad (which is not modified).
	AdamW(w, grad Tensor, mom Moments, h AdamParams) error
	// SumSquares returns the sum over all elements of (a - b)^2, the
	// difference rounded to float32 and the sum accumulated in float64, or
	// of a^2 when b.Data is nil (b otherwise of a's shape). Its result
	// depends on the data alone, not on thread counts or timing.
	SumSquares(a, b Tensor) (float64, error)
	// Axpby sets y = alpha x + beta y elementwise (same shape).
	Axpby(alpha float32, x Tensor, beta float32, y Tensor) error
}

// Refresher is the optional extension of a Backend that the subspace
// refresh (Config.Refresh == RefreshSubspace, refresh.go) needs besides
// MatMul and SingularVectors. A backend without it refreshes by exact SVD
// whatever the config says. Both methods work on float32 row-major
// matrices in the backend's memory.
type Refresher interface {
	// Orthonormalize computes a thin QR factorisation a = Q R of a (m x k,
	// k <= m) and overwrites a with Q, whose k columns are orthonormal,
	// and, unless r.Data is nil, writes the upper-triangular R (k x k) into
	// r. Which orthonormal basis of span(a) Q is (column signs, the
	// completion below) is the backend's choice: the refresh's result does
	// not depend on it. If the columns of a are (numerically) linearly
	// dependent, Q is still a full set of k orthonormal columns: columns
	// that add nothing new are replaced by unit vectors orthogonal to the
	// others, with a zero diagonal in R, and a = Q R still holds to
	// rounding. A zero a is valid input. Nothing may be NaN for finite a.
	Orthonormalize(a, r Tensor) error
	// FixSigns applies the sign rule to the vectors stored in a: each row
	// (byRows, a is k x n) or each column (!byRows, a is m x k) is negated
	// when its entry of largest magnitude (the first such entry, on ties)
	// is negative.
	FixSigns(a Tensor, byRows bool) error
}
