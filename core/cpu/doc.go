// Package cpu is the host-memory backend of core: the numerical primitives
// of a GradNormLoRP step written for the CPU, with fp32 arithmetic for every
// parameter dtype.
//
// Matrix products use a packed, blocked SGEMM with an AVX2/FMA assembly
// micro-kernel (gonum's BLAS where AVX2 is missing); elementwise passes
// (Adam, AdamW, the weight-norm rows, the finiteness check) have AVX2
// kernels that are bit-identical to their Go fallbacks. Work runs in
// parallel on a fixed set of helper goroutines shared by nested loops
// (parallel.go), and StepBatch steps many parameters at once. The steady
// state (a step without projector refresh) allocates nothing. The exact
// projector refresh uses gonum's SVD in float64.
package cpu
