package cpu

import (
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

// naiveGemm is the float64 reference of c = alpha op(a) op(b).
func naiveGemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int) []float64 {
	c := make([]float64, m*n)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for p := 0; p < k; p++ {
				var av, bv float32
				if transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				s += float64(av) * float64(bv)
			}
			c[i*n+j] = float64(alpha) * s
		}
	}
	return c
}

func TestGemmMatchesReference(t *testing.T) {
	rng := newRNG(11)
	shapes := [][3]int{{1, 1, 1}, {2, 3, 4}, {6, 16, 5}, {7, 17, 300}, {13, 250, 33},
		{150, 40, 520}, {300, 129, 64}, {64, 700, 260}, {200, 200, 200}}
	for _, s := range shapes {
		m, n, k := s[0], s[1], s[2]
		for _, ta := range []bool{false, true} {
			for _, tb := range []bool{false, true} {
				a, b := randn(rng, m*k), randn(rng, k*n)
				lda, ldb := k, n
				if ta {
					lda = m
				}
				if tb {
					ldb = k
				}
				c := make([]float32, m*n)
				for i := range c {
					c[i] = float32(math.NaN()) // must be overwritten
				}
				gemm(ta, tb, m, n, k, 0.5, a, lda, b, ldb, c, n)
				want := naiveGemm(ta, tb, m, n, k, 0.5, a, lda, b, ldb)
				tol := 1e-5 * math.Sqrt(float64(k)) * 4
				for i := range c {
					require.InDelta(t, want[i], float64(c[i]), tol, fmt.Sprintf("%dx%dx%d ta=%v tb=%v at %d", m, n, k, ta, tb, i))
				}
				// Accumulating: c += -2 op(a) op(b) gives -c.
				gemmAcc(ta, tb, m, n, k, -1, a, lda, b, ldb, c, n)
				for i := range c {
					require.InDelta(t, -want[i], float64(c[i]), 2*tol, fmt.Sprintf("acc %dx%dx%d ta=%v tb=%v at %d", m, n, k, ta, tb, i))
				}
			}
		}
	}
}

func BenchmarkGemm(b *testing.B) {
	rng := newRNG(1)
	for _, s := range [][3]int{{1376, 128, 512}, {1376, 512, 128}, {128, 1376, 512}, {512, 1376, 128}, {2048, 2048, 2048}} {
		m, n, k := s[0], s[1], s[2]
		a, bm, c := randn(rng, m*k), randn(rng, k*n), make([]float32, m*n)
		for _, impl := range []string{"ours", "gonum"} {
			b.Run(fmt.Sprintf("%s/%dx%dx%d", impl, m, n, k), func(b *testing.B) {
				for range b.N {
					if impl == "ours" {
						gemm(false, false, m, n, k, 1, a, k, bm, n, c, n)
					} else {
						gonumGemm(false, false, m, n, k, 1, a, k, bm, n, 0, c, n)
					}
				}
				b.ReportMetric(2*float64(m*n*k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOPS")
			})
		}
	}
}
