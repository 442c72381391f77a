package cpu

import (
	"math/rand/v2"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// tensor wraps a float32 slice as a core tensor of the given shape.
func tensor(data []float32, shape ...int) core.Tensor {
	return core.Tensor{Data: unsafe.Pointer(&data[0]), DType: core.Float32, Shape: shape}
}

// tensor16 wraps 16-bit storage.
func tensor16(data []uint16, dtype core.DType, shape ...int) core.Tensor {
	return core.Tensor{Data: unsafe.Pointer(&data[0]), DType: dtype, Shape: shape}
}

func randn(rng *rand.Rand, n int) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(rng.NormFloat64())
	}
	return out
}

var dtypes = []core.DType{core.Float32, core.BFloat16, core.Float16}

func newRNG(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 7)) }
