/*
 * gnlp_cuda.h — C interface of libgnlp_cuda.so, the CUDA backend of
 * gradnormlorp.
 *
 * libgradnormlorp.so (Go) loads this library with dlopen when the first
 * CUDA tensor arrives and calls these functions through dlsym'd pointers;
 * it is not meant as a public API (include/gradnormlorp.h is). One function
 * per primitive of core.Backend (core/backend.go), on device memory.
 *
 * Conventions
 * - Every function returns 0 on success or a gnlp_status code (the values
 *   of include/gradnormlorp.h, plus GNLP_CUDA_ERR_NO_DRIVER and
 *   GNLP_CUDA_ERR_CUDA below) and then writes a NUL-terminated message into
 *   err (err_len bytes; may be NULL).
 * - `device` is the CUDA ordinal of every pointer of the call; the calling
 *   thread's current device is set for the call and restored afterwards.
 * - `stream` is a cudaStream_t (NULL = the legacy default stream). All work
 *   is enqueued on it; nothing waits for the device except where a function
 *   says so (gnlp_cuda_read and gnlp_cuda_singular_vectors).
 * - Tensors are contiguous row-major; dtype codes are gnlp_dtype (0 float32,
 *   1 bfloat16, 2 float16) for parameters and gradients; all other float
 *   tensors are float32. Math is float32 with float64 row reductions, no
 *   contraction of a*b+c (built with --fmad=false), matching core/cpu.
 * - skip: a device int32 or NULL. When non-NULL and nonzero at the time the
 *   kernel runs, a function that changes parameters or optimizer state does
 *   nothing (how a step whose gradient was found non-finite on the device
 *   is abandoned without a host sync). Scratch outputs may still be written.
 * - Scratch is stream-ordered (cudaMallocFromPoolAsync / cudaFreeAsync) from
 *   a memory pool the library keeps per device (release threshold: never,
 *   so steady-state steps map no memory); gnlp_cuda_scratch_info reports it.
 * - cuBLAS and cuSOLVER handles are cached per (device, stream); a handle is
 *   used by one call at a time, so several host threads may call at once.
 */
#ifndef GNLP_CUDA_H
#define GNLP_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GNLP_CUDA_ABI_VERSION 2

/* Status codes beyond include/gradnormlorp.h's first 14 (same values as
 * the GNLP_ERR_NO_DRIVER and GNLP_ERR_CUDA it defines). */
#define GNLP_CUDA_ERR_NO_DRIVER 14 /* no NVIDIA driver, or no CUDA device */
#define GNLP_CUDA_ERR_CUDA 15      /* a CUDA runtime/cuBLAS/cuSOLVER call failed */

typedef struct gnlp_cuda_adam {
    float beta1, beta2, one_minus_beta1, one_minus_beta2, eps, step_size, decay; /* core.AdamParams */
} gnlp_cuda_adam;

/* Adam moments: bits 32 (m1, m2 are float*) or 8/4 (m1, m2 are uint8 codes,
 * signed code for m1, unsigned for m2; absmax1/2 one float per 256 values). */
typedef struct gnlp_cuda_moments {
    void *m1, *m2;
    float *absmax1, *absmax2;
    int32_t bits;
} gnlp_cuda_moments;

/* GNLP_CUDA_ABI_VERSION of the library. */
int32_t gnlp_cuda_abi_version(void);

/* Number of CUDA devices (GNLP_CUDA_ERR_NO_DRIVER without a driver). */
int gnlp_cuda_device_count(int32_t *count, char *err, size_t err_len);

/* Stream-ordered scratch from the library's pool. */
int gnlp_cuda_alloc(int32_t device, int64_t bytes, void *stream, void **out, char *err, size_t err_len);
int gnlp_cuda_free(int32_t device, void *ptr, void *stream, char *err, size_t err_len);
/* bytes of zeros at ptr (cudaMemsetAsync). */
int gnlp_cuda_zero(int32_t device, void *ptr, int64_t bytes, void *stream, char *err, size_t err_len);
/* Copies bytes from src to dst, both device memory (cudaMemcpyAsync). */
int gnlp_cuda_copy(int32_t device, void *dst, const void *src, int64_t bytes, void *stream, char *err, size_t err_len);
/* Copies bytes from device to host memory and WAITS for the stream. */
int gnlp_cuda_read(int32_t device, void *host, const void *src, int64_t bytes, void *stream, char *err,
                   size_t err_len);
/* The scratch pool of `device`: bytes reserved from the driver, in use, and
 * the high-water mark of in-use bytes. With release != 0, unused reserved
 * memory is first returned to the driver. */
int gnlp_cuda_scratch_info(int32_t device, int32_t release, int64_t *reserved, int64_t *used, int64_t *peak,
                           char *err, size_t err_len);

/* Sets *flag (device int32) to 1 if x (n elements of dtype) holds NaN or
 * Inf; leaves it alone otherwise. */
int gnlp_cuda_all_finite(int32_t device, const void *x, int32_t dtype, int64_t n, int32_t *flag, void *stream,
                         char *err, size_t err_len);

/* out[i] = ||w_i|| (float64 accumulation). */
int gnlp_cuda_row_norms(int32_t device, const void *w, int32_t dtype, int64_t rows, int64_t cols, float *out,
                        void *stream, char *err, size_t err_len);

/* Fused row pass: dg_i = <grad_i, w_i / g_i>, dv_i = (g_i/s_i)(grad_i - dg_i w_i/g_i);
 * zero rows (g_i == 0 or s_i == 0): dg_i = 0, dv_i = grad_i. D is never stored. */
int gnlp_cuda_weight_norm_grad(int32_t device, const void *w, const void *grad, int32_t dtype, int64_t rows,
                               int64_t cols, const float *g, const float *s, float *dg, float *dv,
                               const int32_t *skip, void *stream, char *err, size_t err_len);

/* Row-major c (cr x cc) = alpha op(a) op(b) with cuBLAS, float32 in and out,
 * float32 accumulation; tf32 != 0 lets the tensor cores round the inputs to
 * TF32 (CUBLAS_COMPUTE_32F_FAST_TF32). */
int gnlp_cuda_matmul(int32_t device, int32_t trans_a, const float *a, int64_t ar, int64_t ac, int32_t trans_b,
                     const float *b, int64_t br, int64_t bc, float alpha, float *c, int64_t cr, int64_t cc,
                     int32_t tf32, void *stream, char *err, size_t err_len);

/* Projector refresh: the leading singular vectors of a (m x n, float32),
 * kl of them into the columns of left (m x kl) and kr into the rows of
 * right (kr x n); a NULL side is skipped. Exact SVD in float32 (cuSOLVER
 * gesvdj on a copy), sign rule on the device. WAITS for the stream once, to
 * read the solver's convergence flag (and *skip): nothing is written unless
 * the factorisation converged. Scratch: a copy of a, the factors and the
 * solver workspace (queried), all stream-ordered. */
int gnlp_cuda_singular_vectors(int32_t device, const float *a, int64_t m, int64_t n, float *left, int64_t kl,
                               float *right, int64_t kr, const int32_t *skip, void *stream, char *err,
                               size_t err_len);

/* Fused Adam direction: moments updated from x, x overwritten with
 * m1 / (sqrt(m2) + eps); quantised moments are decoded, updated and
 * re-encoded block by block in one kernel. */
int gnlp_cuda_adam_direction(int32_t device, float *x, int64_t n, const gnlp_cuda_moments *mom,
                             const gnlp_cuda_adam *h, const int32_t *skip, void *stream, char *err, size_t err_len);

/* Fused weight-norm update of every row, w written back in its dtype (see
 * core.Backend.WeightNormUpdate). */
int gnlp_cuda_weight_norm_update(int32_t device, void *w, int32_t dtype, int64_t rows, int64_t cols, float *g,
                                 float *s, const float *dvlow, const float *ng, const gnlp_cuda_adam *h,
                                 const int32_t *skip, void *stream, char *err, size_t err_len);

/* Plain AdamW on n elements: w = w decay - step_size m1/(sqrt(m2)+eps). */
int gnlp_cuda_adamw(int32_t device, void *w, const void *grad, int32_t dtype, int64_t n,
                    const gnlp_cuda_moments *mom, const gnlp_cuda_adam *h, const int32_t *skip, void *stream,
                    char *err, size_t err_len);

/* Blockwise quantisation of n floats into codes (bits 8 or 4, signed or
 * unsigned table) and per-block absmax; gated by skip. */
int gnlp_cuda_encode(int32_t device, const float *src, int64_t n, uint8_t *codes, float *absmax, int32_t bits,
                     int32_t is_signed, const int32_t *skip, void *stream, char *err, size_t err_len);

/* The inverse: n floats from codes and absmax. */
int gnlp_cuda_decode(int32_t device, const uint8_t *codes, const float *absmax, int32_t bits, int32_t is_signed,
                     int64_t n, float *dst, void *stream, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* GNLP_CUDA_H */
