//go:build !amd64

package cpu

func adamWAVX(w, g, m1, m2 *float32, n int, c *adamConsts) { panic("no AVX2") }
func adamDirAVX(x, m1, m2 *float32, n int, c *adamConsts)  { panic("no AVX2") }
func dotAVX(a, b *float32, n int, lanes *[8]float64)       { panic("no AVX2") }
func axpbyNormAVX(x *float32, a float32, y *float32, b float32, n int, lanes *[8]float64) {
	panic("no AVX2")
}
func scaleAVX(x *float32, f float32, n int)                 { panic("no AVX2") }
func wngRowAVX(out, g, w *float32, ratio, c float32, n int) { panic("no AVX2") }
func finiteAVX(x *float32, n int) bool                      { panic("no AVX2") }

func axpyAVX(x *float32, a float32, y *float32, n int) { panic("no AVX2") }
