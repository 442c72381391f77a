// Package optim is GradNormLoRP for Go programs that train with gotch
// (libtorch). It is used like gotch's nn.Optimizer:
//
//	cfg := optim.DefaultConfig()
//	cfg.Rank, cfg.UpdateProjGap, cfg.Scale = 32, 200, 0.25
//	opt, err := optim.FromVarStore(vs, cfg, nil) // matrices projected, the rest AdamW
//	...
//	loss.MustBackward()
//	err = opt.Step()
//	err = opt.ZeroGrad()
//
// The step is package core's, run by the CPU backend directly on the
// tensors' memory (no copies). The state buffers are Go memory laid out by
// core: a gotch tensor per buffer would cost a libtorch handle and ~100 KB
// of Go memory each, and the CPU backend reads host memory either way.
// CUDA tensors are refused with an error: the CUDA backend is not wired to
// gotch yet.
package optim
