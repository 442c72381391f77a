package cpu

import (
	"math"
	"unsafe"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/mat"

	"github.com/gradnormlorp/gradnormlorp/core"
)

func unsafeBytes(t core.Tensor) []byte {
	return unsafe.Slice((*byte)(t.Data), t.Bytes())
}

func transpose(t bool) blas.Transpose {
	if t {
		return blas.Trans
	}
	return blas.NoTrans
}

// MatMul computes c = alpha * op(a) * op(b) (see gemm).
func (Backend) MatMul(transA bool, a core.Tensor, transB bool, b core.Tensor, alpha float32, c core.Tensor) error {
	ar, ac := a.Rows(), a.Cols()
	if transA {
		ar, ac = ac, ar
	}
	br, bc := b.Rows(), b.Cols()
	if transB {
		br, bc = bc, br
	}
	if ac != br || c.Rows() != ar || c.Cols() != bc {
		return core.Errorf(core.CodeInternal, "matmul shapes disagree: op(a) %dx%d, op(b) %dx%d, c %v", ar, ac, br, bc, c.Shape)
	}
	gemm(transA, transB, ar, bc, ac, alpha, f32(a), a.Cols(), f32(b), b.Cols(), f32(c), c.Cols())
	return nil
}

// SingularVectors computes the leading singular vectors of a by an exact
// float64 SVD (LAPACK's gesvd in gonum) and applies the sign rule.
func (Backend) SingularVectors(a, left, right core.Tensor) error {
	m, n := a.Rows(), a.Cols()
	src := f32(a)
	data := make([]float64, len(src))
	for i, v := range src {
		data[i] = float64(v)
	}
	var kind mat.SVDKind
	if left.Data != nil {
		kind |= mat.SVDThinU
	}
	if right.Data != nil {
		kind |= mat.SVDThinV
	}
	var svd mat.SVD
	if !svd.Factorize(mat.NewDense(m, n, data), kind) {
		return core.Errorf(core.CodeNumerical, "SVD of the %dx%d weight-norm gradient did not converge", m, n)
	}
	if left.Data != nil {
		var u mat.Dense
		svd.UTo(&u)
		k := left.Cols()
		out := f32(left)
		for c := 0; c < k; c++ {
			col := mat.Col(nil, c, &u)
			signFix(col)
			for r, v := range col {
				out[r*k+c] = float32(v)
			}
		}
	}
	if right.Data != nil {
		var v mat.Dense
		svd.VTo(&v)
		k := right.Rows()
		out := f32(right)
		for r := 0; r < k; r++ {
			col := mat.Col(nil, r, &v)
			signFix(col)
			for c, x := range col {
				out[r*n+c] = float32(x)
			}
		}
	}
	return nil
}

// signFix flips v so that its entry of largest magnitude (the first, on
// ties) is positive: singular vectors are defined only up to sign, and the
// Adam moments carry across refreshes, so both sides must agree on it.
func signFix(v []float64) {
	best := 0
	for i, x := range v {
		if math.Abs(x) > math.Abs(v[best]) {
			best = i
		}
	}
	if v[best] < 0 {
		for i := range v {
			v[i] = -v[i]
		}
	}
}
