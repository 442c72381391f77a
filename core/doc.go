// Package core is the GradNormLoRP algorithm, written once for every device.
//
// It owns the schedule of one optimizer step (SPEC section 1): weight-norm
// gradients, projector refresh every update_proj_gap steps, Adam in the
// low-rank space, projection back and re-normalisation, and plain AdamW for
// parameters that are not projected. It also owns the state layout: which
// buffers a parameter needs, with their names, shapes, dtypes and bytes.
//
// The arithmetic itself lives behind the Backend interface, so the same
// schedule drives the CPU backend (package core/cpu) and device backends.
// core knows nothing of C, Python or CUDA: tensors are typed pointers.
package core
