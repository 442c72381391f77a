//go:build !amd64

package cpu

// hasAVX2FMA is false off amd64: the portable code paths are used.
var hasAVX2FMA = false

func sgemmKernel6x16(k int, a, b, c *float32, ldc int, acc int) {
	panic("cpu: no assembly GEMM kernel on this architecture")
}

func sgemmKernel6x16U(k int, a *float32, lda int, b, c *float32, ldc int, acc int) {
	panic("cpu: no assembly GEMM kernel on this architecture")
}
