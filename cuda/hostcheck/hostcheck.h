/* hostcheck.h — C entry points of the host check: the CUDA backend's
 * kernel math (cuda/kernel_math.cuh) and library plumbing (cuda/plumbing.h)
 * compiled by the host C++ compiler and run in sequential loops with the
 * structure of the kernels (row by row, block by block), on host memory.
 * Package hostcheck wraps them as a core.Backend so tests can compare every
 * primitive, and whole steps, with core/cpu. */
#ifndef GNLP_HOSTCHECK_H
#define GNLP_HOSTCHECK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hc_adam {
    float beta1, beta2, one_minus_beta1, one_minus_beta2, eps, step_size, decay;
} hc_adam;

/* Moments: float32 (bits 32: m1, m2 float*) or quantised (bits 8 or 4: m1,
 * m2 uint8 codes, a1, a2 per-block absmax). */
typedef struct hc_moments {
    void *m1, *m2;
    float *a1, *a2;
    int32_t bits;
} hc_moments;

int hc_all_finite(const void *x, int32_t dtype, int64_t n);
double hc_sum_squares(const float *a, const float *b, int64_t n);
void hc_axpby(float alpha, const float *x, float beta, float *y, int64_t n);
void hc_row_norms(const void *w, int32_t dtype, int64_t rows, int64_t cols, float *out);
void hc_weight_norm_grad(const void *w, const void *grad, int32_t dtype, int64_t rows, int64_t cols, const float *g,
                         const float *s, float *dg, float *dv);
void hc_adam_direction(float *x, int64_t n, hc_moments mom, hc_adam h);
void hc_weight_norm_update(void *w, int32_t dtype, int64_t rows, int64_t cols, float *g, float *s,
                           const float *dvlow, const float *ng, hc_adam h);
void hc_adamw(void *w, const void *grad, int32_t dtype, int64_t n, hc_moments mom, hc_adam h);
void hc_encode(const float *src, int64_t n, uint8_t *codes, float *absmax, int32_t bits, int32_t is_signed);
void hc_decode(const uint8_t *codes, const float *absmax, int32_t bits, int32_t is_signed, int64_t n, float *dst);
int hc_matmul(int32_t trans_a, const float *a, int64_t ar, int64_t ac, int32_t trans_b, const float *b, int64_t br,
              int64_t bc, float alpha, float *c, int64_t cr, int64_t cc, char *err, size_t err_len);
int hc_singular_vectors(const float *a, int64_t m, int64_t n, float *left, int64_t kl, float *right, int64_t kr,
                        char *err, size_t err_len);

/* Scalar pieces, for exhaustive comparisons. */
float hc_f16_to_f32(uint16_t h);
uint16_t hc_f32_to_f16(float v);
float hc_bf16_to_f32(uint16_t h);
uint16_t hc_f32_to_bf16(float v);
uint8_t hc_quant_nearest(int32_t bits, int32_t is_signed, float x);
float hc_quant_value(int32_t bits, int32_t is_signed, int32_t i);

#ifdef __cplusplus
}
#endif

#endif /* GNLP_HOSTCHECK_H */
