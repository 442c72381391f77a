package cpu

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/x448/float16"
)

func TestBFloat16RoundsToNearestEven(t *testing.T) {
	cases := []struct {
		in   float32
		want uint16
	}{
		{1, 0x3f80},
		{-2, 0xc000},
		{math.Float32frombits(0x3f808000), 0x3f80}, // exact tie, even below
		{math.Float32frombits(0x3f818000), 0x3f82}, // exact tie, even above
		{math.Float32frombits(0x3f808001), 0x3f81}, // just above the tie
		{float32(math.Inf(1)), 0x7f80},
		{math.MaxFloat32, 0x7f80}, // rounds up to Inf, as torch does
	}
	for _, c := range cases {
		assert.Equalf(t, c.want, f32ToBF16(c.in), "f32ToBF16(%v)", c.in)
	}
	nan := f32ToBF16(float32(math.NaN()))
	assert.True(t, math.IsNaN(float64(bf16ToF32(nan))), "NaN stays NaN")
	for _, h := range []uint16{0x0000, 0x3f80, 0xc2f7, 0x0001, 0x7f7f} {
		assert.Equal(t, h, f32ToBF16(bf16ToF32(h)), "round trip of %#x", h)
	}
}

func TestRowsStoreReturnsRoundedValues(t *testing.T) {
	for _, dt := range []struct {
		name  string
		dtype int
	}{{"bf16", 1}, {"fp16", 2}} {
		buf := make([]uint16, 3)
		r := rowsOf(tensor16(buf, dtypes[dt.dtype], 1, 3))
		vals := []float32{1.0001, -3.14159, 65504}
		stored := r.store(0, append([]float32(nil), vals...))
		back := r.load(0, make([]float32, 3))
		assert.Equal(t, stored, back, dt.name)
		assert.InDelta(t, 3.14159, -back[1], 0.02, dt.name)
	}
	// fp16 rounding is the library's nearest-even conversion.
	assert.Equal(t, float16.Fromfloat32(0.1).Bits(), uint16(0x2e66))
}

func TestAllFiniteDetectsEveryDType(t *testing.T) {
	f := []float32{1, 2, float32(math.Inf(-1))}
	assert.False(t, rowsOf(tensor(f, 3)).allFinite())
	f[2] = 0
	assert.True(t, rowsOf(tensor(f, 3)).allFinite())
	b := []uint16{0x3f80, 0x7fc0}
	assert.False(t, rowsOf(tensor16(b, dtypes[1], 2)).allFinite())
	h := []uint16{0x3c00, 0x7c00}
	assert.False(t, rowsOf(tensor16(h, dtypes[2], 2)).allFinite())
	h[1] = 0x7bff // largest finite half
	assert.True(t, rowsOf(tensor16(h, dtypes[2], 2)).allFinite())
}
