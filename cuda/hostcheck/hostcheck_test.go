package hostcheck

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/x448/float16"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/core/cpu"
	"github.com/gradnormlorp/gradnormlorp/core/quant"
)

var dtypes = []core.DType{core.Float32, core.BFloat16, core.Float16}

var formats = []quant.Format{quant.Signed8, quant.Unsigned8, quant.Signed4, quant.Unsigned4}

func newRNG(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 11)) }

// buf is 4-byte aligned host storage for any tensor.
func buf(bytes int) []float32 { return make([]float32, max(1, (bytes+3)/4)) }

func tensorOf(b []float32, dt core.DType, shape ...int) core.Tensor {
	return core.Tensor{Data: unsafe.Pointer(&b[0]), DType: dt, Shape: shape}
}

func bytesOf(t core.Tensor) []byte { return unsafe.Slice((*byte)(t.Data), t.Bytes()) }

func f32s(t core.Tensor) []float32 { return unsafe.Slice((*float32)(t.Data), t.Shape.Numel()) }

// clone copies a tensor into fresh storage.
func clone(t core.Tensor) core.Tensor {
	c := tensorOf(buf(t.Bytes()), t.DType, t.Shape...)
	copy(bytesOf(c), bytesOf(t))
	return c
}

// randTensor fills a tensor of dtype with normal values (rounded to dtype
// by the CPU backend's own store path: a zero-moment AdamW step with
// step size -1 and decay 0 writes w = grad... simpler: through RowNorms-free
// conversion below).
func randTensor(rng *rand.Rand, dt core.DType, scale float64, shape ...int) core.Tensor {
	t := tensorOf(buf(core.Shape(shape).Numel()*dt.Size()), dt, shape...)
	n := t.Shape.Numel()
	for i := 0; i < n; i++ {
		v := float32(rng.NormFloat64() * scale)
		switch dt {
		case core.Float32:
			f32s(t)[i] = v
		case core.BFloat16:
			unsafe.Slice((*uint16)(t.Data), n)[i] = F32ToBF16(v)
		default:
			unsafe.Slice((*uint16)(t.Data), n)[i] = float16.Fromfloat32(v).Bits()
		}
	}
	return t
}

// ulp is the tolerance, relative to the largest magnitude of a tensor, of
// values that went through the same float32 math in another association
// (the CPU backend is free to reorder sums and products) and were then
// rounded to dtype: a 16-bit result may land one unit in the last place
// away.
var ulp = map[core.DType]float64{core.Float32: 2e-6, core.BFloat16: 8e-3, core.Float16: 1e-3}

// requireCloseT compares two tensors of the same parameter dtype or float32.
func requireCloseT(t *testing.T, want, got core.Tensor, what string) {
	t.Helper()
	requireClose(t, asF32(want), asF32(got), ulp[want.DType], what)
}

func requireSameBytes(t *testing.T, want, got core.Tensor, what string) {
	t.Helper()
	require.Equal(t, bytesOf(want), bytesOf(got), "%s differs from core/cpu", what)
}

// ---------------------------------------------------------------- scalars

func TestQuantTablesAreCoreQuant(t *testing.T) {
	for _, f := range formats {
		for i, v := range f.Code() {
			require.Equal(t, math.Float32bits(v), math.Float32bits(QuantValue(f.Bits, f.Signed, i)), "%v entry %d", f, i)
		}
	}
}

func TestQuantNearestIsCoreQuant(t *testing.T) {
	rng := newRNG(1)
	for _, f := range formats {
		c := f.Code()
		xs := []float32{0, 1, -1, 2, -2, float32(math.Inf(1)), float32(math.Inf(-1)), 1e-30, -1e-30}
		for i := range c {
			xs = append(xs, c[i], math.Nextafter32(c[i], 2), math.Nextafter32(c[i], -2))
			if i+1 < len(c) {
				mid := (c[i] + c[i+1]) / 2
				xs = append(xs, mid, math.Nextafter32(mid, 2), math.Nextafter32(mid, -2))
			}
		}
		for range 20000 {
			xs = append(xs, float32(rng.Float64()*2.4-1.2), float32(rng.NormFloat64()*1e-3))
		}
		for _, x := range xs {
			require.Equal(t, c.Nearest(x), QuantNearest(f.Bits, f.Signed, x), "%v nearest(%g)", f, x)
		}
	}
}

func TestFloat16ConversionsAreX448(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		want := float16.Frombits(uint16(h)).Float32()
		got := F16ToF32(uint16(h))
		if want != want {
			require.True(t, got != got, "half %#04x: want NaN", h)
			continue
		}
		require.Equal(t, math.Float32bits(want), math.Float32bits(got), "half %#04x", h)
		// every rounding boundary: the value, the midpoint to the next half
		// and the floats right beside it
		next := float16.Frombits(uint16(h) + 1).Float32()
		if h&0x7fff < 0x7c00 && next == next {
			mid := want + (next-want)/2
			for _, v := range []float32{want, mid, math.Nextafter32(mid, float32(math.Inf(1))), math.Nextafter32(mid, float32(math.Inf(-1)))} {
				require.Equal(t, float16.Fromfloat32(v).Bits(), F32ToF16(v), "float %g (%#08x)", v, math.Float32bits(v))
			}
		}
	}
	rng := newRNG(2)
	for range 1 << 20 {
		v := math.Float32frombits(rng.Uint32())
		if v != v {
			continue
		}
		require.Equal(t, float16.Fromfloat32(v).Bits(), F32ToF16(v), "float %g", v)
	}
}

// bf16 is core/cpu's rounding (round to nearest even, NaN stays quiet).
func bf16(v float32) uint16 {
	b := math.Float32bits(v)
	if v != v {
		return uint16(b>>16) | 0x40
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

func TestBFloat16Conversions(t *testing.T) {
	rng := newRNG(3)
	for range 1 << 20 {
		v := math.Float32frombits(rng.Uint32())
		require.Equal(t, bf16(v), F32ToBF16(v), "float %#08x", math.Float32bits(v))
	}
	for h := 0; h < 1<<16; h++ {
		require.Equal(t, uint32(h)<<16, math.Float32bits(BF16ToF32(uint16(h))))
	}
}

// ---------------------------------------------------------------- primitives

func TestAllFinite(t *testing.T) {
	for _, dt := range dtypes {
		x := randTensor(newRNG(4), dt, 1, 33)
		for _, b := range []core.Backend{cpu.Backend{}, Backend{}} {
			ok, err := b.AllFinite(x)
			require.NoError(t, err)
			assert.True(t, ok)
		}
		for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
			y := clone(x)
			switch dt {
			case core.Float32:
				f32s(y)[17] = bad
			case core.BFloat16:
				unsafe.Slice((*uint16)(y.Data), 33)[17] = bf16(bad)
			default:
				unsafe.Slice((*uint16)(y.Data), 33)[17] = float16.Fromfloat32(bad).Bits()
			}
			ok, _ := Backend{}.AllFinite(y)
			assert.False(t, ok, "%v with %v", dt, bad)
		}
	}
}

func TestRowNorms(t *testing.T) {
	for _, dt := range dtypes {
		w := randTensor(newRNG(5), dt, 2, 7, 300)
		want, got := tensorOf(buf(28), core.Float32, 7), tensorOf(buf(28), core.Float32, 7)
		require.NoError(t, cpu.Backend{}.RowNorms(w, want))
		require.NoError(t, Backend{}.RowNorms(w, got))
		requireCloseT(t, want, got, fmt.Sprintf("%v row norms", dt))
	}
}

func TestSumSquaresAndAxpby(t *testing.T) {
	const n = 70001 // over one CPU chunk, not a multiple of a block
	rng := newRNG(6)
	a, b := randTensor(rng, core.Float32, 1, n), randTensor(rng, core.Float32, 1, n)
	for _, other := range []core.Tensor{{}, b} {
		want, err := cpu.Backend{}.SumSquares(a, other)
		require.NoError(t, err)
		got, err := Backend{}.SumSquares(a, other)
		require.NoError(t, err)
		assert.InEpsilon(t, want, got, 1e-12, "second operand %v", other.Data != nil)
	}
	want, got := clone(b), clone(b)
	require.NoError(t, cpu.Backend{}.Axpby(-0.7, a, 1.3, want))
	require.NoError(t, Backend{}.Axpby(-0.7, a, 1.3, got))
	require.Equal(t, f32s(want), f32s(got), "axpby rounds once per product and once for the sum")
}

// rowState gives magnitudes with a zero row (0), a row whose direction norm
// is zero (1), a negative magnitude (2) and ordinary rows.
func rowState(rng *rand.Rand, m int) (g, s core.Tensor) {
	g, s = tensorOf(buf(4*m), core.Float32, m), tensorOf(buf(4*m), core.Float32, m)
	for i := 0; i < m; i++ {
		f32s(g)[i] = float32(1 + rng.Float64())
		f32s(s)[i] = float32(0.5 + rng.Float64())
	}
	f32s(g)[0] = 0
	f32s(s)[1] = 0
	f32s(g)[2] = -f32s(g)[2]
	return g, s
}

func TestWeightNormGrad(t *testing.T) {
	const m, n = 9, 301
	for _, dt := range dtypes {
		rng := newRNG(6)
		w, grad := randTensor(rng, dt, 1, m, n), randTensor(rng, dt, 1, m, n)
		g, s := rowState(rng, m)
		var out [2][2]core.Tensor
		for i, b := range []core.Backend{cpu.Backend{}, Backend{}} {
			out[i] = [2]core.Tensor{tensorOf(buf(4*m), core.Float32, m), tensorOf(buf(4*m*n), core.Float32, m, n)}
			require.NoError(t, b.WeightNormGrad(w, grad, g, s, out[i][0], out[i][1]))
		}
		requireCloseT(t, out[0][0], out[1][0], fmt.Sprintf("%v dg", dt))
		requireCloseT(t, out[0][1], out[1][1], fmt.Sprintf("%v dv", dt))
		assert.Zero(t, f32s(out[1][0])[0], "zero row: dg")
		assert.Zero(t, f32s(out[1][0])[1], "zero direction norm: dg")
		assert.Equal(t, asF32(grad)[:2*n], f32s(out[1][1])[:2*n], "zero rows pass the gradient through")
	}
}

func TestWeightNormUpdate(t *testing.T) {
	const m, n = 10, 257
	h := core.NewAdamParams(0, 0, 0, 0.01, 0.999)
	for _, dt := range dtypes {
		rng := newRNG(7)
		w := randTensor(rng, dt, 1, m, n)
		g, s := rowState(rng, m)
		u := randTensor(rng, core.Float32, 1, m, n)
		ng := randTensor(rng, core.Float32, 1, m)
		// Row 3: V vanishes exactly (dvlow = s w / g / step).
		f32s(g)[3], f32s(s)[3] = 1, 1
		for j := 0; j < n; j++ {
			f32s(u)[3*n+j] = 0
		}
		zeroRow := func(t core.Tensor) {
			if dt == core.Float32 {
				clear(f32s(t)[3*n : 4*n])
			} else {
				clear(unsafe.Slice((*uint16)(t.Data), m*n)[3*n : 4*n])
			}
		}
		zeroRow(w)
		var res [2][3]core.Tensor
		for i, b := range []core.Backend{cpu.Backend{}, Backend{}} {
			res[i] = [3]core.Tensor{clone(w), clone(g), clone(s)}
			require.NoError(t, b.WeightNormUpdate(res[i][0], res[i][1], res[i][2], u, ng, h))
		}
		for k, what := range []string{"w", "g", "s"} {
			requireCloseT(t, res[0][k], res[1][k], fmt.Sprintf("%v %s", dt, what))
		}
		assert.Less(t, f32s(res[1][1])[2], float32(0), "a negative magnitude stays negative")
		assert.Zero(t, f32s(res[1][1])[3], "vanished direction: g")
		assert.Zero(t, f32s(res[1][2])[3], "vanished direction: s")
	}
}

// moments allocates moments of n elements in `bits` (32, 8 or 4), filled by
// a few CPU AdamDirection steps so quantised blocks hold varied codes.
func moments(t *testing.T, n, bits int, rng *rand.Rand) core.Moments {
	var mom core.Moments
	if bits == 32 {
		mom = core.Moments{M1: tensorOf(buf(4*n), core.Float32, n), M2: tensorOf(buf(4*n), core.Float32, n)}
	} else {
		bytes := quant.Format{Bits: bits}.Bytes(n)
		nb := quant.Blocks(n)
		mom = core.Moments{
			M1: tensorOf(buf(bytes), core.Uint8, bytes), M2: tensorOf(buf(bytes), core.Uint8, bytes),
			Absmax1: tensorOf(buf(4*nb), core.Float32, nb), Absmax2: tensorOf(buf(4*nb), core.Float32, nb),
			Bits: bits,
		}
	}
	h := core.NewAdamParams(0.9, 0.999, 1e-8, 1e-3, 1)
	for range 3 {
		require.NoError(t, cpu.Backend{}.AdamDirection(randTensor(rng, core.Float32, 1, n), mom, h))
	}
	return mom
}

func cloneMoments(m core.Moments) core.Moments {
	c := core.Moments{M1: clone(m.M1), M2: clone(m.M2), Bits: m.Bits}
	if m.Quantized() {
		c.Absmax1, c.Absmax2 = clone(m.Absmax1), clone(m.Absmax2)
	}
	return c
}

// requireCloseMoments compares moments: float32 within rounding; quantised
// ones decoded, where a value that sits at a rounding boundary of the code
// may take the neighbouring code (at most one code step: 0.9/2^(bits-2) of
// the block absmax, the widest spacing of the signed table), and absmax
// within float32 rounding.
func requireCloseMoments(t *testing.T, want, got core.Moments, elems int, what string) {
	t.Helper()
	if !want.Quantized() {
		requireCloseT(t, want.M1, got.M1, what+" m1")
		requireCloseT(t, want.M2, got.M2, what+" m2")
		return
	}
	requireCloseT(t, want.Absmax1, got.Absmax1, what+" absmax1")
	requireCloseT(t, want.Absmax2, got.Absmax2, what+" absmax2")
	f1, f2 := want.Formats()
	step := 0.9 / float64(int(1)<<(want.Bits-2))
	for _, c := range []struct {
		f      quant.Format
		w, g   core.Tensor
		aw, ag core.Tensor
		name   string
	}{{f1, want.M1, got.M1, want.Absmax1, got.Absmax1, "m1"}, {f2, want.M2, got.M2, want.Absmax2, got.Absmax2, "m2"}} {
		dw, dg := make([]float32, elems), make([]float32, elems)
		cpu.Backend{}.Decode(core.Packed{Codes: c.w, Absmax: c.aw, Format: c.f}, tensorOf(dw, core.Float32, elems))
		cpu.Backend{}.Decode(core.Packed{Codes: c.g, Absmax: c.ag, Format: c.f}, tensorOf(dg, core.Float32, elems))
		mismatched := 0
		for i := range dw {
			a := float64(f32s(c.aw)[i/quant.BlockSize])
			d := math.Abs(float64(dw[i]) - float64(dg[i]))
			require.LessOrEqual(t, d, step*a*1.0001+1e-30, "%s %s[%d]: %g vs %g (absmax %g)", what, c.name, i, dw[i], dg[i], a)
			if dw[i] != dg[i] {
				mismatched++
			}
		}
		assert.LessOrEqual(t, mismatched, max(2, elems/100), "%s %s: codes that differ", what, c.name)
	}
}

func TestAdamDirection(t *testing.T) {
	h := core.NewAdamParams(0.9, 0.99, 1e-8, 1e-3, 0.99)
	for _, bits := range []int{32, 8, 4} {
		for _, n := range []int{4096, 5000, 4097} { // whole blocks, a partial block, an odd tail
			rng := newRNG(8)
			mom := moments(t, n, bits, rng)
			x := randTensor(rng, core.Float32, 1, n)
			var res [2]core.Moments
			var xs [2]core.Tensor
			for i, b := range []core.Backend{cpu.Backend{}, Backend{}} {
				res[i], xs[i] = cloneMoments(mom), clone(x)
				require.NoError(t, b.AdamDirection(xs[i], res[i], h))
			}
			what := fmt.Sprintf("%d-bit n=%d", bits, n)
			requireCloseT(t, xs[0], xs[1], what+" direction")
			requireCloseMoments(t, res[0], res[1], n, what)
		}
	}
}

func TestAdamW(t *testing.T) {
	h := core.NewAdamParams(0.9, 0.999, 1e-8, 1e-3, 0.9999)
	for _, dt := range dtypes {
		for _, bits := range []int{32, 8, 4} {
			const n = 4099
			rng := newRNG(9)
			mom := moments(t, n, bits, rng)
			w, grad := randTensor(rng, dt, 1, n), randTensor(rng, dt, 1, n)
			var res [2]core.Moments
			var ws [2]core.Tensor
			for i, b := range []core.Backend{cpu.Backend{}, Backend{}} {
				res[i], ws[i] = cloneMoments(mom), clone(w)
				require.NoError(t, b.AdamW(ws[i], grad, res[i], h))
			}
			what := fmt.Sprintf("%v %d-bit", dt, bits)
			requireCloseT(t, ws[0], ws[1], what+" w")
			requireCloseMoments(t, res[0], res[1], n, what)
		}
	}
}

func TestEncodeDecodeBitExact(t *testing.T) {
	for _, f := range formats {
		for _, n := range []int{4096, 4097, 300} {
			rng := newRNG(10)
			src := randTensor(rng, core.Float32, 0.1, n)
			if !f.Signed {
				for i, v := range f32s(src) {
					f32s(src)[i] = v * v
				}
			}
			// one all-zero block
			clear(f32s(src)[:min(n, quant.BlockSize)])
			bytes, nb := f.Bytes(n), quant.Blocks(n)
			var packed [2]core.Packed
			var dec [2]core.Tensor
			for i, b := range []core.Backend{cpu.Backend{}, Backend{}} {
				packed[i] = core.Packed{Codes: tensorOf(buf(bytes), core.Uint8, bytes), Absmax: tensorOf(buf(4*nb), core.Float32, nb), Format: f, Shape: core.Shape{n}}
				require.NoError(t, b.Encode(src, packed[i]))
				dec[i] = tensorOf(buf(4*n), core.Float32, n)
				require.NoError(t, b.Decode(packed[i], dec[i]))
			}
			what := fmt.Sprintf("%v n=%d", f, n)
			requireSameBytes(t, packed[0].Codes, packed[1].Codes, what+" codes")
			requireSameBytes(t, packed[0].Absmax, packed[1].Absmax, what+" absmax")
			requireSameBytes(t, dec[0], dec[1], what+" decoded")
		}
	}
}

// requireClose compares float32 tensors with a tolerance relative to the
// largest magnitude of want.
func requireClose(t *testing.T, want, got []float32, rel float64, what string) {
	t.Helper()
	var scale float64
	for _, v := range want {
		scale = max(scale, math.Abs(float64(v)))
	}
	scale = max(scale, 1e-30)
	for i := range want {
		d := math.Abs(float64(want[i]) - float64(got[i]))
		require.False(t, math.IsNaN(float64(got[i])), "%s[%d] is NaN", what, i)
		require.LessOrEqual(t, d/scale, rel, "%s[%d]: want %g, got %g", what, i, want[i], got[i])
	}
}

func TestMatMulPlumbing(t *testing.T) {
	rng := newRNG(11)
	const m, k, n = 13, 7, 5
	for _, ta := range []bool{false, true} {
		for _, tb := range []bool{false, true} {
			as := []int{m, k}
			if ta {
				as = []int{k, m}
			}
			bs := []int{k, n}
			if tb {
				bs = []int{n, k}
			}
			a, b := randTensor(rng, core.Float32, 1, as...), randTensor(rng, core.Float32, 1, bs...)
			want, got := tensorOf(buf(4*m*n), core.Float32, m, n), tensorOf(buf(4*m*n), core.Float32, m, n)
			require.NoError(t, cpu.Backend{}.MatMul(ta, a, tb, b, 0.5, want))
			require.NoError(t, Backend{}.MatMul(ta, a, tb, b, 0.5, got))
			requireClose(t, f32s(want), f32s(got), 1e-6, fmt.Sprintf("matmul transA=%v transB=%v", ta, tb))
		}
	}
	// Shape disagreement is reported, not computed.
	a, b := randTensor(rng, core.Float32, 1, 3, 4), randTensor(rng, core.Float32, 1, 5, 2)
	err := Backend{}.MatMul(false, a, false, b, 1, tensorOf(buf(24), core.Float32, 3, 2))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "matmul shapes disagree")
}

func TestSingularVectorsPlumbing(t *testing.T) {
	for _, sh := range [][2]int{{12, 8}, {8, 12}, {10, 10}, {1, 6}, {6, 1}} {
		m, n := sh[0], sh[1]
		q := min(m, n)
		for _, k := range []int{q, max(1, q-3)} {
			rng := newRNG(uint64(12 + m*n + k))
			a := randTensor(rng, core.Float32, 1, m, n)
			var left, right [2]core.Tensor
			for i, b := range []core.Backend{cpu.Backend{}, Backend{}} {
				left[i], right[i] = tensorOf(buf(4*m*k), core.Float32, m, k), tensorOf(buf(4*k*n), core.Float32, k, n)
				require.NoError(t, b.SingularVectors(a, left[i], right[i]))
			}
			what := fmt.Sprintf("%dx%d k=%d", m, n, k)
			requireClose(t, f32s(left[0]), f32s(left[1]), 2e-5, what+" left")
			requireClose(t, f32s(right[0]), f32s(right[1]), 2e-5, what+" right")
			// one side only
			l := tensorOf(buf(4*m*k), core.Float32, m, k)
			require.NoError(t, Backend{}.SingularVectors(a, l, core.Tensor{}))
			requireSameBytes(t, left[1], l, what+" left alone")
		}
	}
}

// ---------------------------------------------------------------- whole steps

// param is one parameter with its state on the host.
type param struct {
	item core.Item
	bufs []core.Tensor
}

func newParam(t *testing.T, b core.Backend, w core.Tensor, cfg core.Config) *param {
	specs, err := core.Layout(w.DType, w.Shape, cfg)
	require.NoError(t, err)
	p := &param{}
	for _, s := range specs {
		p.bufs = append(p.bufs, tensorOf(buf(s.Bytes()), s.DType, s.Shape...))
	}
	p.item = core.Item{Param: clone(w), State: p.bufs, Config: cfg}
	require.NoError(t, core.Init(b, p.item.Param, p.bufs, cfg))
	return p
}

func (p *param) step(t *testing.T, b core.Backend, grad core.Tensor, step int64) {
	p.item.Grad, p.item.Step = grad, step
	ws := buf(4 * core.PlanFor(p.item.Param.Shape, p.item.Config).WorkspaceElems())
	require.NoError(t, core.Step(b, &p.item, tensorOf(ws, core.Float32, len(ws))))
}

// asF32 reads a parameter-dtype tensor as float32.
func asF32(x core.Tensor) []float32 {
	n := x.Shape.Numel()
	out := make([]float32, n)
	for i := range out {
		switch x.DType {
		case core.Float32:
			out[i] = f32s(x)[i]
		case core.BFloat16:
			out[i] = BF16ToF32(unsafe.Slice((*uint16)(x.Data), n)[i])
		default:
			out[i] = F16ToF32(unsafe.Slice((*uint16)(x.Data), n)[i])
		}
	}
	return out
}

// TestStepsMatchCPU runs whole steps (refreshes included) through core with
// both backends, for every dtype, projection type and state width, plus
// plain AdamW, and compares parameters and float32 state.
func TestStepsMatchCPU(t *testing.T) {
	tol := map[core.DType]float64{core.Float32: 2e-5, core.BFloat16: 1e-2, core.Float16: 2e-3}
	for _, dt := range dtypes {
		for _, bits := range []int{32, 8, 4} {
			for _, pt := range []core.ProjType{core.ProjStd, core.ProjReverseStd, core.ProjLeft, core.ProjRight, core.ProjFull, -1} {
				cfg := core.DefaultConfig()
				cfg.OptimBits, cfg.UpdateProjGap, cfg.LR = bits, 2, 1e-2
				// At a refresh, "full" projects dV onto its own singular
				// vectors: the core is diagonal and its off-diagonal
				// entries are rounding noise, which Adam's m1/sqrt(m2)
				// would blow up to +-1 differently on each backend. An eps
				// above the noise keeps the comparison meaningful.
				cfg.Eps = 1e-4
				name := "adamw"
				if pt >= 0 {
					cfg.Rank, cfg.ProjType, name = 48, pt, pt.String()
				}
				if pt == core.ProjStd && bits == 8 {
					cfg.Compensation, name = core.CompensationResidual, name+"+residual"
				}
				t.Run(fmt.Sprintf("%v/%d-bit/%s", dt, bits, name), func(t *testing.T) {
					const m, n = 72, 96 // low-rank moments 72x48 or 48x96: quantised
					rng := newRNG(13)
					w := randTensor(rng, dt, 1, m, n)
					// one zero row
					if dt == core.Float32 {
						clear(f32s(w)[5*n : 6*n])
					} else {
						clear(unsafe.Slice((*uint16)(w.Data), m*n)[5*n : 6*n])
					}
					ref, got := newParam(t, cpu.Backend{}, w, cfg), newParam(t, Backend{}, w, cfg)
					for step := int64(1); step <= 4; step++ {
						grad := randTensor(rng, dt, 0.1, m, n)
						ref.step(t, cpu.Backend{}, grad, step)
						got.step(t, Backend{}, grad, step)
						requireClose(t, asF32(ref.item.Param), asF32(got.item.Param), tol[dt], fmt.Sprintf("step %d param", step))
					}
					specs, _ := core.Layout(dt, core.Shape{m, n}, cfg)
					for i, s := range specs {
						if s.DType == core.Float32 && s.Name != core.BufExpAvgAbsmax && s.Name != core.BufExpAvgSqAbsmax {
							// 4-bit projectors: an entry at a rounding boundary of
							// the 16-value code may take the neighbouring code
							// (a 0.11 absmax step), which shows in the moments.
							stateTol := map[int]float64{32: 1e-3, 8: 1e-3, 4: 3e-2}[bits]
							requireClose(t, f32s(ref.bufs[i]), f32s(got.bufs[i]), stateTol, s.Name)
						}
					}
				})
			}
		}
	}
}
