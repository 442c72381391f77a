package core_test

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/gradnormlorp/gradnormlorp/core"
	"github.com/gradnormlorp/gradnormlorp/core/cpu"
)

// Example steps one 4x3 weight matrix with a rank-1 projection on the CPU
// backend: query the state layout, allocate and initialise the state, then
// step a batch (here of one item) with core's all-or-nothing promise.
func Example() {
	cfg := core.DefaultConfig()
	cfg.Rank, cfg.LR, cfg.WeightDecay = 1, 0.1, 0

	w := []float32{1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1}
	g := []float32{0.5, -0.5, 0, 0, 0.5, -0.5, 0.5, 0, -0.5, 0, 0, 0}
	shape := core.Shape{4, 3}
	param := core.Tensor{Data: unsafe.Pointer(&w[0]), DType: core.Float32, Shape: shape}
	grad := core.Tensor{Data: unsafe.Pointer(&g[0]), DType: core.Float32, Shape: shape}

	specs, err := core.Layout(core.Float32, shape, cfg)
	if err != nil {
		panic(err)
	}
	state := make([]core.Tensor, len(specs))
	for i, s := range specs {
		buf := make([]float32, (s.Bytes()+3)/4)
		state[i] = core.Tensor{Data: unsafe.Pointer(&buf[0]), DType: s.DType, Shape: s.Shape}
		fmt.Printf("%s %v\n", s.Name, s.Shape)
	}
	b := cpu.Backend{}
	if err := core.Init(b, param, state, cfg); err != nil {
		panic(err)
	}
	items := []core.Item{{Param: param, Grad: grad, State: state, Config: cfg, Step: 1}}
	if err := core.StepBatch(b, b, items); err != nil {
		panic(err)
	}
	fmt.Printf("row 0 after one step: %.4f\n", w[:3])

	// Bad input is refused with a clear error, and nothing changes.
	g[0] = float32(math.NaN())
	items[0].Step = 2
	err = core.StepBatch(b, b, items)
	fmt.Println(core.CodeOf(err) == core.CodeNonFinite, err)
	fmt.Printf("row 0 after the refused step: %.4f\n", w[:3])
	// Output:
	// exp_avg (4, 1)
	// exp_avg_sq (4, 1)
	// proj_right (1, 3)
	// magnitude (4)
	// direction_norm (4)
	// magnitude_exp_avg (4)
	// magnitude_exp_avg_sq (4)
	// row 0 after one step: [0.9000 0.0000 0.0000]
	// true gradient of the (4, 3) parameter holds NaN or Inf; step refused, nothing changed
	// row 0 after the refused step: [0.9000 0.0000 0.0000]
}
