package core

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCompensationFactor(t *testing.T) {
	shape := Shape{4, 3}
	// ||S|| = 3, ||R|| = 2, ||N|| = 1: c = 0.5, c ||S|| = 1.5.
	n := residualNorms{residual: 9, grad: 4, update: 1}
	for _, tc := range []struct {
		name          string
		prev          float32
		wantC, wantNm float64
	}{
		{"first step: no limit", 0, 0.5, 1.5},
		{"growth under the limit", 1.49, 0.5, 1.5},
		{"limited to 1.01x", 1, 0.5 * 1.01 / 1.5, 1.01},
	} {
		c, norm, err := compensationFactor(n, tc.prev, shape)
		require.NoError(t, err, tc.name)
		assert.InDelta(t, tc.wantC, c, 1e-7, tc.name)
		assert.InDelta(t, tc.wantNm, norm, 1e-6, tc.name)
	}
	c, norm, err := compensationFactor(residualNorms{residual: 9}, 1, shape)
	require.NoError(t, err)
	assert.Zero(t, c, "R = 0: nothing to scale by")
	assert.Zero(t, norm)

	_, _, err = compensationFactor(residualNorms{residual: 1e80, grad: 1, update: 1}, 0, shape)
	assert.Equal(t, CodeNonFinite, CodeOf(err), "c ||S|| beyond float32")
	for _, prev := range []float32{-1, float32(math.NaN()), float32(math.Inf(1))} {
		_, _, err = compensationFactor(n, prev, shape)
		assert.Equal(t, CodeNonFinite, CodeOf(err), "stored norm %g", prev)
		assert.ErrorContains(t, err, BufCompensationNorm)
	}
}
