package optim

import (
	"math/rand/v2"
	"runtime"
	"testing"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// pinThread keeps the test on one OS thread: libtorch's grad mode is per
// thread, and gotch's ts.NoGrad (used by nn's initialisers) switches it off
// and on again, on another thread if the goroutine moved in between, which
// leaves a thread with autograd off for whoever runs there next.
func pinThread(tb testing.TB) {
	runtime.LockOSThread()
	tb.Cleanup(runtime.UnlockOSThread)
}

// leaf makes a trainable CPU tensor of dtype with values drawn from rng.
func leaf(rng *rand.Rand, dtype gotch.DType, dims ...int64) *ts.Tensor {
	n := int64(1)
	for _, d := range dims {
		n *= d
	}
	vals := make([]float32, n)
	for i := range vals {
		vals[i] = float32(rng.NormFloat64()) * 0.5
	}
	t := ts.MustOfSlice(vals).MustView(dims, true)
	if dtype != gotch.Float {
		t = t.MustTotype(dtype, true)
	}
	t.MustRequiresGrad_(true)
	return t
}

// backward sets each parameter's gradient to draws from rng, through
// autograd: loss = sum_i sum(p_i * c_i), so grad p_i = c_i.
func backward(tb testing.TB, rng *rand.Rand, params []*ts.Tensor) {
	tb.Helper()
	var loss *ts.Tensor
	for _, p := range params {
		c := leaf(rng, p.DType(), p.MustSize()...)
		c.MustRequiresGrad_(false)
		term := p.MustMul(c, false).MustSum(gotch.Float, true)
		if loss == nil {
			loss = term
		} else {
			loss = loss.MustAdd(term, true)
		}
	}
	loss.MustBackward()
}

// memory aliases the bytes of a dense tensor.
func memory(t *ts.Tensor) []byte {
	n := int64(t.DType().Size())
	for _, d := range t.MustSize() {
		n *= d
	}
	return unsafe.Slice((*byte)(t.MustDataPtr()), n)
}

// hostCopy is a tensor's bytes copied into Go memory, viewed by core.
type hostCopy struct {
	buf []uint64
	t   core.Tensor
}

func newHostCopy(dtype core.DType, shape core.Shape, src []byte) *hostCopy {
	h := &hostCopy{buf: make([]uint64, (shape.Numel()*dtype.Size()+7)/8)}
	h.t = core.Tensor{Data: unsafe.Pointer(&h.buf[0]), DType: dtype, Shape: shape}
	if src != nil {
		copy(h.bytes(), src)
	}
	return h
}

func (h *hostCopy) bytes() []byte { return unsafe.Slice((*byte)(h.t.Data), h.t.Bytes()) }

// stateBytes copies every state buffer of o's parameter i.
func stateBytes(o *Optimizer, i int) [][]byte {
	p := &o.params[i]
	out := make([][]byte, len(p.state))
	for k, st := range p.state {
		out[k] = append([]byte(nil), unsafe.Slice((*byte)(st.Data), st.Bytes())...)
	}
	return out
}
