package core

import (
	"fmt"
	"unsafe"
)

// DType is the element type of a tensor. Its values (Float32, BFloat16,
// Float16, Uint8) are gnlp_dtype's, generated into abi_gen.go.
type DType int32

// Size is the size of one element in bytes.
func (d DType) Size() int {
	switch d {
	case Float32:
		return 4
	case BFloat16, Float16:
		return 2
	case Uint8:
		return 1
	}
	return 0
}

func (d DType) String() string {
	switch d {
	case Float32:
		return "float32"
	case BFloat16:
		return "bfloat16"
	case Float16:
		return "float16"
	case Uint8:
		return "uint8"
	}
	return fmt.Sprintf("dtype(%d)", int32(d))
}

// IsParamDType reports whether parameters and gradients may have this dtype.
func (d DType) IsParamDType() bool { return d == Float32 || d == BFloat16 || d == Float16 }

// Shape is the shape of a tensor of rank 1 ({n}) or 2 ({m, n}).
type Shape []int

// Numel is the number of elements.
func (s Shape) Numel() int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// Equal reports whether two shapes are identical.
func (s Shape) Equal(o Shape) bool {
	if len(s) != len(o) {
		return false
	}
	for i := range s {
		if s[i] != o[i] {
			return false
		}
	}
	return true
}

func (s Shape) String() string {
	switch len(s) {
	case 1:
		return fmt.Sprintf("(%d)", s[0])
	case 2:
		return fmt.Sprintf("(%d, %d)", s[0], s[1])
	}
	return fmt.Sprint([]int(s))
}

// Tensor is a contiguous row-major tensor in memory the backend can reach
// (host memory for the CPU backend). Data is never a Go-managed pointer
// handed across cgo; core only carries it.
type Tensor struct {
	Data  unsafe.Pointer
	DType DType
	Shape Shape
}

// Rows and Cols view a rank-1 tensor as one column (n x 1) and a rank-2
// tensor as itself.
func (t Tensor) Rows() int { return t.Shape[0] }

// Cols is the row length (1 for vectors).
func (t Tensor) Cols() int {
	if len(t.Shape) == 2 {
		return t.Shape[1]
	}
	return 1
}

// Bytes is the size of the tensor's data.
func (t Tensor) Bytes() int { return t.Shape.Numel() * t.DType.Size() }

// carve returns the region of t at element offset off with the given shape.
// The region must be inside t; an empty one has no data (a pointer past the
// end of Go memory would be invalid).
func (t Tensor) carve(off int, shape Shape) Tensor {
	if shape.Numel() == 0 {
		return Tensor{DType: t.DType, Shape: shape}
	}
	return Tensor{
		Data:  unsafe.Add(t.Data, off*t.DType.Size()),
		DType: t.DType,
		Shape: shape,
	}
}
