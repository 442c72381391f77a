package cpu

import (
	"math"

	"github.com/gradnormlorp/gradnormlorp/core"
)

var _ core.Refresher = Backend{}

// qrBlock is the number of columns orthonormalised together: earlier
// columns are projected out of a block with two GEMMs, columns inside a
// block one by one.
const qrBlock = 32

// dependentTol: a column whose residual after projection is below this
// fraction of its norm adds nothing new (float32 rounding leaves about
// 1e-7 of it) and is replaced.
const dependentTol = 1e-5

// Orthonormalize computes a thin QR of a (m x k) by block classical
// Gram-Schmidt with reorthogonalisation (CGS2) in float32 on the transpose,
// so that every vector is contiguous and projections are GEMMs. Two passes
// make the columns orthonormal to rounding whatever the conditioning;
// dependent columns are replaced by unit vectors orthogonal to the others
// (see core.Refresher).
func (Backend) Orthonormalize(a, r core.Tensor) error {
	m, k := a.Rows(), a.Cols()
	if k > m {
		return core.Errorf(core.CodeInternal, "orthonormalize: %d columns of length %d", k, m)
	}
	src := f32(a)
	tb := getScratch(k * m)
	defer putScratch(tb)
	t := *tb // t[i*m : (i+1)*m] is column i
	transposeInto(t, src, m, k)

	var rr []float32
	if r.Data != nil {
		rr = f32(r)
	} else {
		rb := getScratch(k * k)
		defer putScratch(rb)
		rr = *rb
	}
	clear(rr)
	sb := getScratch(k*qrBlock + k)
	defer putScratch(sb)
	s, orig := (*sb)[:k*qrBlock], (*sb)[k*qrBlock:]
	for i := range k {
		orig[i] = norm(t[i*m : (i+1)*m])
	}

	next := 0 // next unit vector to try as a replacement
	for j0 := 0; j0 < k; j0 += qrBlock {
		j1 := min(j0+qrBlock, k)
		nb := j1 - j0
		blk := t[j0*m : j1*m]
		if j0 > 0 {
			for range 2 {
				// S = T[0:j0] T[j0:j1]^T, T[j0:j1] -= S^T T[0:j0].
				gemm(false, true, j0, nb, m, 1, t, m, blk, m, s, nb)
				gemmAcc(true, false, nb, m, j0, -1, s, nb, t, m, blk, m)
				for l := 0; l < j0; l++ {
					for c := 0; c < nb; c++ {
						rr[l*k+j0+c] += s[l*nb+c]
					}
				}
			}
		}
		for i := j0; i < j1; i++ {
			v := t[i*m : (i+1)*m]
			for range 2 {
				for l := j0; l < i; l++ {
					d := float32(dot(v, t[l*m:(l+1)*m]))
					axpy(v, -d, t[l*m:(l+1)*m])
					rr[l*k+i] += d
				}
			}
			nrm := norm(v)
			if nrm > 0 && float64(nrm) > dependentTol*float64(orig[i]) {
				rr[i*k+i] = nrm
				scaleInPlace(v, 1/nrm)
				continue
			}
			rr[i*k+i] = 0
			next = completeBasis(t, m, i, next)
		}
	}
	transposeInto(src, t, k, m)
	return nil
}

// completeBasis sets column i of t to a unit vector orthogonal to columns
// 0..i-1, trying e_next, e_next+1, ...; it returns the next candidate.
func completeBasis(t []float32, m, i, next int) int {
	v := t[i*m : (i+1)*m]
	for tries := 0; tries < m; tries++ {
		e := (next + tries) % m
		clear(v)
		v[e] = 1
		for range 2 {
			for l := 0; l < i; l++ {
				u := t[l*m : (l+1)*m]
				axpy(v, -float32(dot(v, u)), u)
			}
		}
		if nrm := norm(v); nrm > 0.5 {
			scaleInPlace(v, 1/nrm)
			return e + 1
		}
	}
	panic("cpu: no unit vector completes an orthonormal basis") // i < m: impossible
}

// transposeInto writes the transpose of src (rows x cols) into dst.
func transposeInto(dst, src []float32, rows, cols int) {
	const tile = 32
	for i0 := 0; i0 < rows; i0 += tile {
		for j0 := 0; j0 < cols; j0 += tile {
			for i := i0; i < min(i0+tile, rows); i++ {
				row := src[i*cols : (i+1)*cols]
				for j := j0; j < min(j0+tile, cols); j++ {
					dst[j*rows+i] = row[j]
				}
			}
		}
	}
}

// FixSigns applies the sign rule to the rows (byRows) or columns of a.
func (Backend) FixSigns(a core.Tensor, byRows bool) error {
	rows, cols := a.Rows(), a.Cols()
	v := f32(a)
	if byRows {
		for i := 0; i < rows; i++ {
			row := v[i*cols : (i+1)*cols]
			if row[argMaxAbs(row)] < 0 {
				scaleInPlace(row, -1)
			}
		}
		return nil
	}
	bb := getScratch(2 * cols)
	defer putScratch(bb)
	// best/val: magnitude and value of each column's first entry of largest
	// magnitude (a strict > scan keeps the first of equal magnitudes).
	best, val := (*bb)[:cols], (*bb)[cols:]
	copy(val, v[:cols])
	for j := range best {
		best[j] = abs32(val[j])
	}
	for i := 1; i < rows; i++ {
		row := v[i*cols : (i+1)*cols]
		for j, x := range row {
			if abs32(x) > best[j] {
				best[j], val[j] = abs32(x), x
			}
		}
	}
	for i := 0; i < rows; i++ {
		row := v[i*cols : (i+1)*cols]
		for j := range row {
			if val[j] < 0 {
				row[j] = -row[j]
			}
		}
	}
	return nil
}

// argMaxAbs is the index of the first entry of largest magnitude.
func argMaxAbs(v []float32) int {
	best, bv := 0, float32(-1)
	for i, x := range v {
		if a := abs32(x); a > bv {
			best, bv = i, a
		}
	}
	return best
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }
