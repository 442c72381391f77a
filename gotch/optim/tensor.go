package optim

import (
	"errors"
	"strings"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/sugarme/gotch"
	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"
)

// view is what core needs of a gotch tensor, read through libtch's C calls
// (no ts.Tensor wrapper is made: each costs ~100 KB of Go memory until
// its finalizer runs).
type view struct {
	data  unsafe.Pointer
	dtype core.DType
	dims  [2]int64
	ndim  int
}

// inspect checks that c is a dense CPU tensor of a parameter dtype with 1
// or 2 dimensions and returns its view. param names the parameter in
// errors, ofGrad says c is its gradient. dims is scratch for libtorch to
// write the shape into (an allocation of its own: memory handed to cgo
// escapes). The caller holds its OS thread (libtorch's error text is
// thread-local).
func inspect(c lib.Ctensor, param string, ofGrad bool, dims *[2]int64) (view, error) {
	// Built on errors only: the steady state allocates nothing.
	what := func() string {
		if ofGrad {
			return "gradient of " + param
		}
		return param
	}
	if lib.AtIsSparse(c) {
		return view{}, core.Errorf(core.CodeInvalidArgument, "%s is sparse: GradNormLoRP steps dense tensors", what())
	}
	// libtch reads at_device's C int as a Go int: only the low 32 bits
	// are the device (-1: CPU).
	switch dev := int32(lib.AtDevice(c)); {
	case dev >= 0:
		return view{}, core.Errorf(core.CodeDevice,
			"%s is on CUDA device %d: the gotch front end steps CPU tensors only (CUDA is not yet supported here; the C ABI and the Python package do step CUDA tensors)", what(), dev)
	case dev != -1:
		return view{}, core.Errorf(core.CodeDevice, "%s is on a device that is neither the CPU nor CUDA: the gotch front end steps CPU tensors only", what())
	}
	ndim := int(lib.AtDim(c))
	if ndim != 1 && ndim != 2 {
		return view{}, core.Errorf(core.CodeShape, "%s has %d dimensions: GradNormLoRP steps 1-D and 2-D tensors", what(), ndim)
	}
	lib.AtShape(c, unsafe.Pointer(&dims[0]))
	v := view{ndim: ndim, dims: *dims}
	gdt := gotch.CKind2DType(lib.AtScalarType(c))
	dt, ok := coreDType(gdt)
	if !ok {
		return view{}, core.Errorf(core.CodeDType, "%s has dtype %v: supported are float32, bfloat16 and float16", what(), gdt)
	}
	v.dtype = dt
	if !lib.AtIsContiguous(c) {
		return view{}, core.Errorf(core.CodeNotContiguous,
			"%s is not contiguous (a strided or transposed view): the optimizer works in place on dense row-major memory; for nn.Linear pass the VarStore's variable, not the transposed Ws", what())
	}
	v.data = lib.AtDataPtr(c)
	if err := libtorchError(); err != nil {
		return view{}, core.Errorf(core.CodeInvalidArgument, "%s: %w", what(), err)
	}
	if v.data == nil {
		return view{}, core.Errorf(core.CodeNullPointer, "%s has no data", what())
	}
	return v, nil
}

// coreDType maps a gotch dtype to core's, for parameters and gradients.
func coreDType(dt gotch.DType) (core.DType, bool) {
	switch dt {
	case gotch.Float:
		return core.Float32, true
	case gotch.BFloat16:
		return core.BFloat16, true
	case gotch.Half:
		return core.Float16, true
	}
	return 0, false
}

// shape is v's shape as core's Shape (allocates: not for the steady state).
func (v view) shape() core.Shape {
	s := make(core.Shape, v.ndim)
	for i := range s {
		s[i] = int(v.dims[i])
	}
	return s
}

// sameShape reports whether v has shape s.
func (v view) sameShape(s core.Shape) bool {
	if len(s) != v.ndim {
		return false
	}
	for i, d := range s {
		if int64(d) != v.dims[i] {
			return false
		}
	}
	return true
}

// libtorchError returns libtorch's pending error on this thread, if any,
// without the Go stack trace ts.TorchErr appends.
func libtorchError() error {
	err := ts.TorchErr()
	if err == nil {
		return nil
	}
	return errors.New(libtorchMessage(err))
}

// libtorchMessage is the first line of a ts.TorchErr error.
func libtorchMessage(err error) string {
	msg := strings.TrimPrefix(err.Error(), "Libtorch API Error: ")
	msg, _, _ = strings.Cut(msg, "\n")
	return "libtorch: " + msg
}
