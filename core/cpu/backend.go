package cpu

import (
	"math"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// Backend implements core.Backend on host memory. The zero value is ready
// to use and safe for concurrent use on different tensors.
type Backend struct{}

var _ core.Backend = Backend{}

// AllFinite reports whether t holds no NaN or Inf.
func (Backend) AllFinite(t core.Tensor) (bool, error) {
	return rowsOf(t).allFinite(), nil
}

// Zero sets t to zero.
func (Backend) Zero(t core.Tensor) error {
	clear(unsafeBytes(t))
	return nil
}

// RowNorms writes the norm of each row of w into out.
func (Backend) RowNorms(w, out core.Tensor) error {
	src, norms := rowsOf(w), f32(out)
	parallelRows(w.Rows(), w.Cols(), func(lo, hi int) {
		buf := make([]float32, w.Cols())
		for i := lo; i < hi; i++ {
			norms[i] = norm(src.load(i, buf))
		}
	})
	return nil
}

// WeightNormGrad computes dg and dv row by row (see core.Backend).
func (Backend) WeightNormGrad(w, grad, g, s, dg, dv core.Tensor) error {
	ws, gs := rowsOf(w), rowsOf(grad)
	mag, dirNorm, dgs, dvs := f32(g), f32(s), f32(dg), f32(dv)
	cols := w.Cols()
	parallelRows(w.Rows(), cols, func(lo, hi int) {
		wbuf, gbuf := make([]float32, cols), make([]float32, cols)
		for i := lo; i < hi; i++ {
			wr, gr := ws.load(i, wbuf), gs.load(i, gbuf)
			out := dvs[i*cols : (i+1)*cols]
			gi, si := mag[i], dirNorm[i]
			if gi == 0 || si == 0 {
				dgs[i] = 0
				copy(out, gr)
				continue
			}
			inv := 1 / gi
			var dot float64
			for j, v := range wr {
				dot += float64(gr[j]) * float64(v*inv)
			}
			d := float32(dot)
			ratio := gi / si
			for j, v := range wr {
				out[j] = ratio * (gr[j] - d*(v*inv))
			}
			dgs[i] = d
		}
	})
	return nil
}

// WeightNormUpdate finishes a projected step row by row (see core.Backend).
func (Backend) WeightNormUpdate(w, g, s, dvlow, ng core.Tensor, h core.AdamParams) error {
	ws := rowsOf(w)
	mag, dirNorm, upd, ngs := f32(g), f32(s), f32(dvlow), f32(ng)
	cols := w.Cols()
	parallelRows(w.Rows(), cols, func(lo, hi int) {
		buf := make([]float32, cols)
		for i := lo; i < hi; i++ {
			wr := ws.load(i, buf)
			if ws.dtype == core.Float32 {
				wr = append(buf[:0], wr...) // work on a copy, store writes back
			}
			u := upd[i*cols : (i+1)*cols]
			gi, si := mag[i], dirNorm[i]
			if gi == 0 || si == 0 {
				for j := range wr {
					wr[j] = wr[j]*h.Decay - h.StepSize*u[j]
				}
				n := norm(ws.store(i, wr))
				mag[i], dirNorm[i] = n, n
				continue
			}
			inv := 1 / gi
			for j := range wr {
				wr[j] = si*(wr[j]*inv) - h.StepSize*u[j]
			}
			newG := (gi - h.StepSize*ngs[i]) * h.Decay
			newS := norm(wr)
			if newS == 0 {
				clear(wr)
				newG = 0
			} else {
				f := newG / newS
				for j := range wr {
					wr[j] *= f
				}
			}
			ws.store(i, wr)
			mag[i], dirNorm[i] = newG, newS
		}
	})
	return nil
}

// AdamDirection updates the moments from x and overwrites x with the
// direction.
func (Backend) AdamDirection(x core.Tensor, mom core.Moments, h core.AdamParams) error {
	xs := f32(x)
	forMomentBlocks(mom, len(xs), func(lo int, m1, m2 []float32, _ *blockScratch) {
		for i := range m1 {
			xs[lo+i] = adam(xs[lo+i], &m1[i], &m2[i], h)
		}
	})
	return nil
}

// AdamW applies plain AdamW to w (see core.Backend).
func (Backend) AdamW(w, grad core.Tensor, mom core.Moments, h core.AdamParams) error {
	ws, gs := rowsOf(w), rowsOf(grad)
	forMomentBlocks(mom, w.Shape.Numel(), func(lo int, m1, m2 []float32, buf *blockScratch) {
		hi := lo + len(m1)
		wr := append(buf.a[:0], ws.loadRange(lo, hi, buf.a)...) // a copy: storeRange writes back
		gr := gs.loadRange(lo, hi, buf.b)
		for i, g := range gr {
			n := adam(g, &m1[i], &m2[i], h)
			wr[i] = wr[i]*h.Decay - h.StepSize*n
		}
		ws.storeRange(lo, wr)
	})
	return nil
}

// adam advances one pair of moments by x and returns m1 / (sqrt(m2) + eps).
func adam(x float32, m1, m2 *float32, h core.AdamParams) float32 {
	*m1 = h.Beta1**m1 + (1-h.Beta1)*x
	*m2 = h.Beta2**m2 + (1-h.Beta2)*x*x
	return *m1 / (float32(math.Sqrt(float64(*m2))) + h.Eps)
}

// norm is the Euclidean norm, accumulated in float64.
func norm(v []float32) float32 {
	var sum float64
	for _, x := range v {
		sum += float64(x) * float64(x)
	}
	return float32(math.Sqrt(sum))
}
