package cpu

import (
	"fmt"
	"testing"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
)

// llamaConfig is a LLaMA model's shape (GaLore's configs: untied lm_head).
type llamaConfig struct {
	name                         string
	hidden, inter, layers, vocab int
	rank                         int
}

var (
	llama60M  = llamaConfig{"llama60m", 512, 1376, 8, 32000, 128}
	llama130M = llamaConfig{"llama130m", 768, 2048, 12, 32000, 256}
)

// paramShape is one parameter of the model; projected ones are the q, k, v,
// o, gate, up and down weights.
type paramShape struct {
	name      string
	shape     core.Shape
	projected bool
}

func (c llamaConfig) params() []paramShape {
	h, f := c.hidden, c.inter
	ps := []paramShape{{"embed_tokens", core.Shape{c.vocab, h}, false}}
	for l := 0; l < c.layers; l++ {
		for _, n := range []string{"q", "k", "v", "o"} {
			ps = append(ps, paramShape{fmt.Sprintf("layers.%d.%s_proj", l, n), core.Shape{h, h}, true})
		}
		ps = append(ps,
			paramShape{fmt.Sprintf("layers.%d.gate_proj", l), core.Shape{f, h}, true},
			paramShape{fmt.Sprintf("layers.%d.up_proj", l), core.Shape{f, h}, true},
			paramShape{fmt.Sprintf("layers.%d.down_proj", l), core.Shape{h, f}, true},
			paramShape{fmt.Sprintf("layers.%d.input_layernorm", l), core.Shape{h}, false},
			paramShape{fmt.Sprintf("layers.%d.post_attention_layernorm", l), core.Shape{h}, false})
	}
	return append(ps, paramShape{"norm", core.Shape{h}, false}, paramShape{"lm_head", core.Shape{c.vocab, h}, false})
}

// model holds parameters, gradients and state of a whole model in Go
// memory, ready to step.
type model struct {
	items []core.Item
	keep  [][]float32
}

func (m *model) alloc(n int) core.Tensor {
	buf := make([]float32, max(n, 1))
	m.keep = append(m.keep, buf)
	return core.Tensor{Data: unsafe.Pointer(&buf[0]), DType: core.Float32}
}

// newModel builds the model with random weights and gradients and
// initialised state. refresh selects the projector refresh of the config.
func newModel(tb testing.TB, c llamaConfig, cfg core.Config) *model {
	m := &model{}
	rng := newRNG(42)
	for _, p := range c.params() {
		pc := cfg
		if !p.projected {
			pc.Rank = 0
		} else {
			pc.Rank = c.rank
		}
		w, g := m.alloc(p.shape.Numel()), m.alloc(p.shape.Numel())
		w.Shape, g.Shape = p.shape, p.shape
		ws, gs := f32(w), f32(g)
		for i := range ws {
			ws[i] = float32(rng.NormFloat64()) * 0.02
			gs[i] = float32(rng.NormFloat64()) * 1e-3
		}
		specs, err := core.Layout(core.Float32, p.shape, pc)
		if err != nil {
			tb.Fatal(err)
		}
		state := make([]core.Tensor, len(specs))
		for i, s := range specs {
			state[i] = m.alloc((s.Bytes() + 3) / 4)
			state[i].DType, state[i].Shape = s.DType, s.Shape
		}
		if err := core.Init(Backend{}, w, state, pc); err != nil {
			tb.Fatal(err)
		}
		m.items = append(m.items, core.Item{Param: w, Grad: g, State: state, Config: pc})
	}
	return m
}

// step runs one batched step of every parameter at step number t.
func (m *model) step(tb testing.TB, t int64) {
	for i := range m.items {
		m.items[i].Step = t
	}
	if err := (Backend{}).StepBatch(m.items); err != nil {
		tb.Fatal(err)
	}
}

// randomProjectors fills every float32 projector with a random orthonormal
// basis, as a stand-in for the previous refresh (the exact first refresh of
// a whole model takes minutes with gonum's SVD).
func (m *model) randomProjectors(tb testing.TB) {
	rng := newRNG(9)
	for _, it := range m.items {
		specs, err := core.Layout(it.Param.DType, it.Param.Shape, it.Config)
		if err != nil {
			tb.Fatal(err)
		}
		for i, s := range specs {
			if s.DType != core.Float32 || (s.Name != core.BufProjLeft && s.Name != core.BufProjRight) {
				continue
			}
			v := f32(it.State[i])
			copy(v, randn(rng, len(v)))
			rows, cols := s.Shape[0], s.Shape[1]
			if s.Name == core.BufProjLeft { // m x k: orthonormal columns
				if err := (Backend{}).Orthonormalize(it.State[i], core.Tensor{}); err != nil {
					tb.Fatal(err)
				}
				continue
			}
			t := make([]float32, len(v)) // k x n: orthonormal rows
			transposeInto(t, v, rows, cols)
			tt := core.Tensor{Data: unsafe.Pointer(&t[0]), DType: core.Float32, Shape: core.Shape{cols, rows}}
			if err := (Backend{}).Orthonormalize(tt, core.Tensor{}); err != nil {
				tb.Fatal(err)
			}
			transposeInto(v, t, cols, rows)
		}
	}
}
