package cpu

// sgemmKernel6x16 computes one 6 x 16 tile: c[i*ldc+j] = (acc != 0 ? c : 0)
// + sum_p a[p*6+i] * b[p*16+j] (gemm_amd64.s; needs AVX2 and FMA).
//
//go:noescape
func sgemmKernel6x16(k int, a, b, c *float32, ldc int, acc int)

// sgemmKernel6x16U is sgemmKernel6x16 with A read in place: row i of the
// tile is a[i*lda:], k values.
//
//go:noescape
func sgemmKernel6x16U(k int, a *float32, lda int, b, c *float32, ldc int, acc int)
