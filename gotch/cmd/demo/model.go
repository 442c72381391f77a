package main

import (
	"math"
	"math/rand/v2"

	"github.com/sugarme/gotch/nn"
	"github.com/sugarme/gotch/ts"
)

// mlp is a byte-level language model: the embeddings of the last ctx
// bytes, concatenated, through two GELU layers (the second residual) to
// logits over the next byte.
type mlp struct {
	ctx, dim       int64
	emb            *ts.Tensor // (256, dim)
	w1, b1, w2, b2 *ts.Tensor // (hidden, ctx*dim), (hidden), (hidden, hidden), (hidden)
	head, headBias *ts.Tensor // (256, hidden), (256)
}

// newMLP adds the model's variables to vs with PyTorch's default init
// (nn.Embedding: N(0, 1); nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
// weight and bias), drawn from rng: gotch's own Linear init gives weights of RMS ~1.
func newMLP(vs *nn.VarStore, rng *rand.Rand, ctx, dim, hidden int64) *mlp {
	root := vs.Root()
	normal := func(name string, dims ...int64) *ts.Tensor {
		return param(root.Sub(name), "weight", dims, func() float64 { return rng.NormFloat64() })
	}
	linear := func(name string, in, out int64) (*ts.Tensor, *ts.Tensor) {
		bound := 1 / math.Sqrt(float64(in))
		uniform := func() float64 { return bound * (2*rng.Float64() - 1) }
		p := root.Sub(name)
		return param(p, "weight", []int64{out, in}, uniform), param(p, "bias", []int64{out}, uniform)
	}
	m := &mlp{ctx: ctx, dim: dim, emb: normal("emb", 256, dim)}
	m.w1, m.b1 = linear("fc1", ctx*dim, hidden)
	m.w2, m.b2 = linear("fc2", hidden, hidden)
	m.head, m.headBias = linear("head", hidden, 256)
	return m
}

// param adds a trainable variable with values from draw.
func param(p *nn.Path, name string, dims []int64, draw func() float64) *ts.Tensor {
	n := int64(1)
	for _, d := range dims {
		n *= d
	}
	vals := make([]float32, n)
	for i := range vals {
		vals[i] = float32(draw())
	}
	return p.MustAdd(name, ts.MustOfSlice(vals).MustView(dims, true), true)
}

// logits maps a batch of contexts (batch, ctx) to (batch, 256).
func (m *mlp) logits(x *ts.Tensor) *ts.Tensor {
	batch := x.MustSize()[0]
	e := ts.MustEmbedding(m.emb, x, -1, false, false).MustView([]int64{batch, m.ctx * m.dim}, true)
	h := ts.MustLinear(e, m.w1, m.b1).MustGelu("none", true)
	e.MustDrop()
	r := ts.MustLinear(h, m.w2, m.b2).MustGelu("none", true)
	h = h.MustAdd(r, true)
	r.MustDrop()
	out := ts.MustLinear(h, m.head, m.headBias)
	h.MustDrop()
	return out
}

// loss is the mean cross-entropy of the next bytes y (batch) given x.
func (m *mlp) loss(x, y *ts.Tensor) *ts.Tensor {
	logits := m.logits(x)
	loss := logits.CrossEntropyForLogits(y)
	logits.MustDrop()
	return loss
}

// batch draws n contexts and their next bytes from data.
func batch(data []byte, rng *rand.Rand, n int, ctx int64) (x, y *ts.Tensor) {
	xs := make([]int64, int64(n)*ctx)
	ys := make([]int64, n)
	for i := range n {
		at := rng.IntN(len(data) - int(ctx))
		for j := range ctx {
			xs[int64(i)*ctx+j] = int64(data[at+int(j)])
		}
		ys[i] = int64(data[at+int(ctx)])
	}
	return ts.MustOfSlice(xs).MustView([]int64{int64(n), ctx}, true), ts.MustOfSlice(ys)
}

// evalLoss is the mean loss over fixed held-out batches, without autograd.
func (m *mlp) evalLoss(batches [][2]*ts.Tensor) float64 {
	var sum float64
	ts.NoGrad(func() {
		for _, b := range batches {
			l := m.loss(b[0], b[1])
			sum += l.MustFloat64Value([]int64{})
			l.MustDrop()
		}
	})
	return sum / float64(len(batches))
}
