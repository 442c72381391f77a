package cpu

// Assembly kernels of elem_amd64.s (AVX2); n is a multiple of 8 (32 for
// finiteAVX). See the Go fallbacks in elem.go for their semantics.

//go:noescape
func adamWAVX(w, grad, m1, m2 *float32, n int, c *adamConsts)

//go:noescape
func adamDirAVX(x, m1, m2 *float32, n int, c *adamConsts)

//go:noescape
func dotAVX(a, b *float32, n int, lanes *[8]float64)

//go:noescape
func axpbyNormAVX(x *float32, a float32, y *float32, b float32, n int, lanes *[8]float64)

//go:noescape
func scaleAVX(x *float32, f float32, n int)

//go:noescape
func wngRowAVX(out, grad, w *float32, ratio, c float32, n int)

//go:noescape
func finiteAVX(x *float32, n int) bool

//go:noescape
func axpyAVX(x *float32, a float32, y *float32, n int)
