// Package cpu is the host-memory backend of core: the numerical primitives
// of a GradNormLoRP step written for the CPU, with fp32 arithmetic for every
// parameter dtype. Row passes run in parallel across cores; matrix products
// use gonum's BLAS and the projector refresh gonum's SVD.
package cpu
