package cpu

import (
	"math"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// Elementwise kernels. Each runs its AVX2 assembly version over whole
// blocks of 8 when the processor has AVX2 (elem_amd64.s) and this Go code
// otherwise and on the tail; both do the same float32 operations in the
// same order, so results do not depend on the processor.

// adamConsts are the Adam scalars as the kernels read them.
type adamConsts struct {
	b1, omb1, b2, omb2, eps, stepSize, decay float32
}

func constsOf(h core.AdamParams) adamConsts {
	return adamConsts{h.Beta1, h.OneMinusBeta1, h.Beta2, h.OneMinusBeta2, h.Eps, h.StepSize, h.Decay}
}

// adamW advances the moments by g and sets w = w Decay - StepSize N with
// N = m1 / (sqrt(m2) + eps).
func adamW(w, g, m1, m2 []float32, h core.AdamParams) {
	c := constsOf(h)
	n := len(w)
	g, m1, m2 = g[:n], m1[:n], m2[:n]
	i := 0
	if hasAVX2FMA && n >= 8 {
		i = n &^ 7
		adamWAVX(&w[0], &g[0], &m1[0], &m2[0], i, &c)
	}
	for ; i < n; i++ {
		x := g[i]
		m1[i] = c.b1*m1[i] + c.omb1*x
		m2[i] = c.b2*m2[i] + c.omb2*x*x
		d := m1[i] / (float32(math.Sqrt(float64(m2[i]))) + c.eps)
		w[i] = w[i]*c.decay - c.stepSize*d
	}
}

// adamDirection advances the moments by x and overwrites x with
// m1 / (sqrt(m2) + eps).
func adamDirection(x, m1, m2 []float32, h core.AdamParams) {
	c := constsOf(h)
	n := len(x)
	m1, m2 = m1[:n], m2[:n]
	i := 0
	if hasAVX2FMA && n >= 8 {
		i = n &^ 7
		adamDirAVX(&x[0], &m1[0], &m2[0], i, &c)
	}
	for ; i < n; i++ {
		v := x[i]
		m1[i] = c.b1*m1[i] + c.omb1*v
		m2[i] = c.b2*m2[i] + c.omb2*v*v
		x[i] = m1[i] / (float32(math.Sqrt(float64(m2[i]))) + c.eps)
	}
}

// sumLanes reduces 8 float64 partial sums in a fixed order.
func sumLanes(l *[8]float64) float64 {
	return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

// dot is the inner product of a and b, accumulated in float64: element i
// goes to partial sum i mod 8 (whole blocks of 8), the tail after.
func dot(a, b []float32) float64 {
	n := len(a)
	b = b[:n]
	blocks := n &^ 7
	var lanes [8]float64
	if hasAVX2FMA && blocks > 0 {
		dotAVX(&a[0], &b[0], blocks, &lanes)
	} else {
		for i := 0; i < blocks; i += 8 {
			for j := range 8 {
				lanes[j] += float64(a[i+j]) * float64(b[i+j])
			}
		}
	}
	s := sumLanes(&lanes)
	for i := blocks; i < n; i++ {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

// norm is the Euclidean norm, accumulated in float64 as dot.
func norm(v []float32) float32 {
	return float32(math.Sqrt(dot(v, v)))
}

// axpbyNorm sets x = a x + b y and returns the norm of the new x (as norm).
func axpbyNorm(x []float32, a float32, y []float32, b float32) float32 {
	n := len(x)
	y = y[:n]
	blocks := n &^ 7
	var lanes [8]float64
	if hasAVX2FMA && blocks > 0 {
		axpbyNormAVX(&x[0], a, &y[0], b, blocks, &lanes)
	} else {
		for i := 0; i < blocks; i += 8 {
			for j := range 8 {
				v := a*x[i+j] + b*y[i+j]
				x[i+j] = v
				lanes[j] += float64(v) * float64(v)
			}
		}
	}
	s := sumLanes(&lanes)
	for i := blocks; i < n; i++ {
		v := a*x[i] + b*y[i]
		x[i] = v
		s += float64(v) * float64(v)
	}
	return float32(math.Sqrt(s))
}

// scaleInPlace multiplies x by f.
func scaleInPlace(x []float32, f float32) {
	i := 0
	if hasAVX2FMA && len(x) >= 8 {
		i = len(x) &^ 7
		scaleAVX(&x[0], f, i)
	}
	for ; i < len(x); i++ {
		x[i] *= f
	}
}

// weightNormGradRow sets out = ratio (g - c w): with c = dg/g_i this is
// ratio (g - dg D) for the unit row D = w / g_i.
func weightNormGradRow(out, g, w []float32, ratio, c float32) {
	n := len(out)
	g, w = g[:n], w[:n]
	i := 0
	if hasAVX2FMA && n >= 8 {
		i = n &^ 7
		wngRowAVX(&out[0], &g[0], &w[0], ratio, c, i)
	}
	for ; i < n; i++ {
		out[i] = ratio * (g[i] - c*w[i])
	}
}

// finite32 reports whether v holds no NaN or Inf.
func finite32(v []float32) bool {
	i := 0
	if hasAVX2FMA && len(v) >= 32 {
		i = len(v) &^ 31
		if !finiteAVX(&v[0], i) {
			return false
		}
	}
	var s float32
	for ; i < len(v); i++ {
		s += v[i] - v[i] // 0 for finite values, NaN otherwise
	}
	return s == 0
}

// axpy sets x += a y.
func axpy(x []float32, a float32, y []float32) {
	n := len(x)
	y = y[:n]
	i := 0
	if hasAVX2FMA && n >= 8 {
		i = n &^ 7
		axpyAVX(&x[0], a, &y[0], i)
	}
	for ; i < n; i++ {
		x[i] += a * y[i]
	}
}
