// hostcheck.cc — the CUDA backend's math and plumbing on the host.
//
// Each hc_* function is the sequential twin of one kernel (or one library
// call sequence) of cuda/gnlp_cuda.cu: the same loops over rows and
// quantisation blocks, the same per-element functions from kernel_math.cuh,
// and for gemm and SVD the same plumbing.h templates, instantiated with a
// column-major reference gemm and a one-sided Jacobi SVD instead of cuBLAS
// and cuSOLVER.
//
// No floating-point contraction: a*b+c must round twice, as in Go and in
// the kernels (nvcc --fmad=false). cgo does not accept -ffp-contract=off,
// hence the pragmas (x86-64 without -mfma cannot contract anyway).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "hostcheck.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "../kernel_math.cuh"
#include "../plumbing.h"

using namespace gnlp;

namespace {

const QuantTables kTables = {GNLP_QUANT_SIGNED8, GNLP_QUANT_UNSIGNED8, GNLP_QUANT_SIGNED4, GNLP_QUANT_UNSIGNED4};

AdamScalars scalars(hc_adam h) {
    return AdamScalars{h.beta1, h.beta2, h.one_minus_beta1, h.one_minus_beta2, h.eps, h.step_size, h.decay};
}

// ---------------------------------------------------------------- per dtype

template <int DT> int all_finite(const void *x, int64_t n) {
    const typename Elem<DT>::T *p = static_cast<const typename Elem<DT>::T *>(x);
    for (int64_t i = 0; i < n; i++) {
        if (!Elem<DT>::finite(p, i)) {
            return 0;
        }
    }
    return 1;
}

template <int DT> void row_norms(const void *w, int64_t rows, int64_t cols, float *out) {
    const typename Elem<DT>::T *p = static_cast<const typename Elem<DT>::T *>(w);
    for (int64_t r = 0; r < rows; r++) {
        double sum = 0;
        for (int64_t j = 0; j < cols; j++) {
            sum += sq(Elem<DT>::load(p, r * cols + j));
        }
        out[r] = norm_of(sum);
    }
}

template <int DT>
void weight_norm_grad(const void *wp, const void *gp, int64_t rows, int64_t cols, const float *g, const float *s,
                      float *dg, float *dv) {
    typedef Elem<DT> E;
    const typename E::T *w = static_cast<const typename E::T *>(wp);
    const typename E::T *grad = static_cast<const typename E::T *>(gp);
    for (int64_t r = 0; r < rows; r++) {
        const int64_t base = r * cols;
        if (wn_zero_row(g[r], s[r])) {
            dg[r] = 0;
            for (int64_t j = 0; j < cols; j++) {
                dv[base + j] = E::load(grad, base + j);
            }
            continue;
        }
        const float inv = wn_inv(g[r]);
        double dot = 0;
        for (int64_t j = 0; j < cols; j++) {
            dot += wn_dot_term(E::load(grad, base + j), E::load(w, base + j), inv);
        }
        const float d = (float)dot;
        const float ratio = wn_ratio(g[r], s[r]);
        for (int64_t j = 0; j < cols; j++) {
            dv[base + j] = wn_dv(ratio, E::load(grad, base + j), d, E::load(w, base + j), inv);
        }
        dg[r] = d;
    }
}

template <int DT>
void weight_norm_update(void *wp, int64_t rows, int64_t cols, float *g, float *s, const float *u, const float *ng,
                        const AdamScalars &h) {
    typedef Elem<DT> E;
    typename E::T *w = static_cast<typename E::T *>(wp);
    for (int64_t r = 0; r < rows; r++) {
        const int64_t base = r * cols;
        if (wn_zero_row(g[r], s[r])) {
            double sum = 0;
            for (int64_t j = 0; j < cols; j++) {
                sum += sq(E::store(w, base + j, wnu_zero_row(E::load(w, base + j), u[base + j], h)));
            }
            g[r] = s[r] = norm_of(sum);
            continue;
        }
        // Two passes, as the kernel: the norm of V, then V scaled (V is
        // recomputed rather than stored).
        const float inv = wn_inv(g[r]);
        double sum = 0;
        for (int64_t j = 0; j < cols; j++) {
            sum += sq(wnu_v(s[r], E::load(w, base + j), inv, u[base + j], h));
        }
        const float new_s = norm_of(sum);
        float new_g = wnu_new_g(g[r], ng[r], h);
        const float f = wnu_factor(new_g, new_s);
        for (int64_t j = 0; j < cols; j++) {
            const float v = wnu_v(s[r], E::load(w, base + j), inv, u[base + j], h);
            E::store(w, base + j, wnu_w(v, f, new_s));
        }
        g[r] = new_g;
        s[r] = new_s;
    }
}

// ---------------------------------------------------------------- quantised blocks

// Decodes block b (elements [lo, hi)) of quantised moments, runs fn on
// each element with float32 views, and re-encodes with fresh absmax: the
// work of one thread block of the 8/4-bit Adam kernels.
template <class Fn> void for_quant_blocks(int64_t n, const hc_moments &mom, Fn fn) {
    const float *c1 = quant_table(kTables, mom.bits, true);
    const float *c2 = quant_table(kTables, mom.bits, false);
    const int len = 1 << mom.bits;
    uint8_t *q1 = static_cast<uint8_t *>(mom.m1);
    uint8_t *q2 = static_cast<uint8_t *>(mom.m2);
    float v1[kQuantBlock], v2[kQuantBlock];
    uint8_t e1[kQuantBlock], e2[kQuantBlock];
    for (int64_t b = 0; b * kQuantBlock < n; b++) {
        const int64_t lo = b * kQuantBlock;
        const int cnt = (int)std::min<int64_t>(kQuantBlock, n - lo);
        float max1 = 0, max2 = 0;
        for (int i = 0; i < cnt; i++) {
            v1[i] = quant_decode(c1, quant_code_at(q1, lo + i, mom.bits), mom.a1[b]);
            v2[i] = quant_decode(c2, quant_code_at(q2, lo + i, mom.bits), mom.a2[b]);
            fn(lo + i, v1[i], v2[i]);
            max1 = quant_max(max1, quant_abs(v1[i]));
            max2 = quant_max(max2, quant_abs(v2[i]));
        }
        const float inv1 = quant_inv(max1), inv2 = quant_inv(max2);
        for (int i = 0; i < cnt; i++) {
            e1[i] = quant_encode(c1, len, v1[i], inv1);
            e2[i] = quant_encode(c2, len, v2[i], inv2);
        }
        if (mom.bits == 8) {
            memcpy(q1 + lo, e1, cnt);
            memcpy(q2 + lo, e2, cnt);
        } else {
            for (int i = 0; i < cnt; i += 2) {
                q1[(lo + i) / 2] = quant_pack4(e1[i], i + 1 < cnt ? e1[i + 1] : 0);
                q2[(lo + i) / 2] = quant_pack4(e2[i], i + 1 < cnt ? e2[i + 1] : 0);
            }
        }
        mom.a1[b] = max1;
        mom.a2[b] = max2;
    }
}

template <int DT> void adamw(void *wp, const void *gp, int64_t n, const hc_moments &mom, const AdamScalars &h) {
    typedef Elem<DT> E;
    typename E::T *w = static_cast<typename E::T *>(wp);
    const typename E::T *grad = static_cast<const typename E::T *>(gp);
    auto elem = [&](int64_t i, float &m1, float &m2) {
        const float n_i = adam_step(E::load(grad, i), m1, m2, h);
        E::store(w, i, adamw_weight(E::load(w, i), n_i, h));
    };
    if (mom.bits == 32) {
        float *m1 = static_cast<float *>(mom.m1), *m2 = static_cast<float *>(mom.m2);
        for (int64_t i = 0; i < n; i++) {
            elem(i, m1[i], m2[i]);
        }
        return;
    }
    for_quant_blocks(n, mom, elem);
}

// ---------------------------------------------------------------- reference libraries

// Column-major C (m x n) = alpha op(A) op(B), float64 accumulation.
struct RefGemm {
    int operator()(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float *A, int64_t lda,
                   const float *B, int64_t ldb, float *C, int64_t ldc) const {
        for (int64_t j = 0; j < n; j++) {
            for (int64_t i = 0; i < m; i++) {
                double sum = 0;
                for (int64_t l = 0; l < k; l++) {
                    const double a = ta ? A[l + i * lda] : A[i + l * lda];
                    const double b = tb ? B[j + l * ldb] : B[l + j * ldb];
                    sum += a * b;
                }
                C[i + j * ldc] = (float)(alpha * sum);
            }
        }
        return kOK;
    }
};

// Host Ops for singular_vectors_rowmajor: malloc'd scratch and a one-sided
// (Hestenes) Jacobi SVD in float64.
struct RefSvdOps {
    ErrBuf err;

    int alloc(float **p, int64_t count) {
        *p = static_cast<float *>(malloc(sizeof(float) * (size_t)std::max<int64_t>(count, 1)));
        return *p != nullptr ? kOK : err.fail(kInternal, "out of host memory");
    }
    void release(float *p) { free(p); }
    int copy(float *dst, const float *src, int64_t count) {
        memcpy(dst, src, sizeof(float) * (size_t)count);
        return kOK;
    }
    int transpose(float *dst, const float *src, int64_t rows, int64_t cols) {
        for (int64_t j = 0; j < cols; j++) {
            for (int64_t i = 0; i < rows; i++) {
                dst[j + i * cols] = src[i + j * rows];
            }
        }
        return kOK;
    }
    int sign_fix(float *X, int64_t len, int64_t count) {
        for (int64_t v = 0; v < count; v++) {
            float *x = X + v * len;
            int64_t best = 0;
            for (int64_t i = 1; i < len; i++) {
                if (sign_better(fabsf(x[i]), i, fabsf(x[best]), best)) {
                    best = i;
                }
            }
            const float f = sign_factor(x[best]);
            for (int64_t i = 0; i < len; i++) {
                x[i] *= f;
            }
        }
        return kOK;
    }
    int svd(int64_t p, int64_t q, float *T, float *S, float *U, float *V) {
        std::vector<double> a(T, T + p * q), v(q * q, 0.0);
        for (int64_t i = 0; i < q; i++) {
            v[i + i * q] = 1;
        }
        bool rotated = true;
        for (int sweep = 0; sweep < 100 && rotated; sweep++) {
            rotated = false;
            for (int64_t i = 0; i < q - 1; i++) {
                for (int64_t j = i + 1; j < q; j++) {
                    double alpha = 0, beta = 0, gamma = 0;
                    for (int64_t r = 0; r < p; r++) {
                        alpha += a[r + i * p] * a[r + i * p];
                        beta += a[r + j * p] * a[r + j * p];
                        gamma += a[r + i * p] * a[r + j * p];
                    }
                    if (fabs(gamma) <= 1e-15 * sqrt(alpha * beta) || gamma == 0) {
                        continue;
                    }
                    rotated = true;
                    const double zeta = (beta - alpha) / (2 * gamma);
                    const double t = (zeta >= 0 ? 1.0 : -1.0) / (fabs(zeta) + sqrt(1 + zeta * zeta));
                    const double c = 1 / sqrt(1 + t * t), s = c * t;
                    for (int64_t r = 0; r < p; r++) {
                        const double x = a[r + i * p], y = a[r + j * p];
                        a[r + i * p] = c * x - s * y;
                        a[r + j * p] = s * x + c * y;
                    }
                    for (int64_t r = 0; r < q; r++) {
                        const double x = v[r + i * q], y = v[r + j * q];
                        v[r + i * q] = c * x - s * y;
                        v[r + j * q] = s * x + c * y;
                    }
                }
            }
            if (sweep == 99 && rotated) {
                return err.fail(kNumerical, "reference Jacobi SVD did not converge");
            }
        }
        std::vector<double> sigma(q);
        for (int64_t j = 0; j < q; j++) {
            double sum = 0;
            for (int64_t r = 0; r < p; r++) {
                sum += a[r + j * p] * a[r + j * p];
            }
            sigma[j] = sqrt(sum);
        }
        std::vector<int64_t> order(q);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return sigma[x] > sigma[y]; });
        for (int64_t c = 0; c < q; c++) {
            const int64_t j = order[c];
            S[c] = (float)sigma[j];
            for (int64_t r = 0; r < p; r++) {
                U[r + c * p] = (float)(sigma[j] > 0 ? a[r + j * p] / sigma[j] : 0);
            }
            for (int64_t r = 0; r < q; r++) {
                V[r + c * q] = (float)v[r + j * q];
            }
        }
        return kOK;
    }
};

} // namespace

#define DISPATCH(dtype, call)                                                                                         \
    switch (dtype) {                                                                                                  \
    case kF32: {                                                                                                      \
        const int DT = kF32;                                                                                          \
        call;                                                                                                         \
    } break;                                                                                                          \
    case kBF16: {                                                                                                     \
        const int DT = kBF16;                                                                                         \
        call;                                                                                                         \
    } break;                                                                                                          \
    default: {                                                                                                        \
        const int DT = kF16;                                                                                          \
        call;                                                                                                         \
    } break;                                                                                                          \
    }

extern "C" {

int hc_all_finite(const void *x, int32_t dtype, int64_t n) {
    DISPATCH(dtype, return all_finite<DT>(x, n));
    return 0;
}

double hc_sum_squares(const float *a, const float *b, int64_t n) {
    double acc = 0;
    for (int64_t i = 0; i < n; i++) {
        acc += b != nullptr ? diff_sq(a[i], b[i]) : sq(a[i]);
    }
    return acc;
}

void hc_axpby(float alpha, const float *x, float beta, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        y[i] = axpby(alpha, x[i], beta, y[i]);
    }
}

void hc_row_norms(const void *w, int32_t dtype, int64_t rows, int64_t cols, float *out) {
    DISPATCH(dtype, row_norms<DT>(w, rows, cols, out));
}

void hc_weight_norm_grad(const void *w, const void *grad, int32_t dtype, int64_t rows, int64_t cols, const float *g,
                         const float *s, float *dg, float *dv) {
    DISPATCH(dtype, weight_norm_grad<DT>(w, grad, rows, cols, g, s, dg, dv));
}

void hc_adam_direction(float *x, int64_t n, hc_moments mom, hc_adam h) {
    const AdamScalars hs = scalars(h);
    if (mom.bits == 32) {
        float *m1 = static_cast<float *>(mom.m1), *m2 = static_cast<float *>(mom.m2);
        for (int64_t i = 0; i < n; i++) {
            x[i] = adam_step(x[i], m1[i], m2[i], hs);
        }
        return;
    }
    for_quant_blocks(n, mom, [&](int64_t i, float &m1, float &m2) { x[i] = adam_step(x[i], m1, m2, hs); });
}

void hc_weight_norm_update(void *w, int32_t dtype, int64_t rows, int64_t cols, float *g, float *s,
                           const float *dvlow, const float *ng, hc_adam h) {
    const AdamScalars hs = scalars(h);
    DISPATCH(dtype, weight_norm_update<DT>(w, rows, cols, g, s, dvlow, ng, hs));
}

void hc_adamw(void *w, const void *grad, int32_t dtype, int64_t n, hc_moments mom, hc_adam h) {
    const AdamScalars hs = scalars(h);
    DISPATCH(dtype, adamw<DT>(w, grad, n, mom, hs));
}

void hc_encode(const float *src, int64_t n, uint8_t *codes, float *absmax, int32_t bits, int32_t is_signed) {
    const float *code = quant_table(kTables, bits, is_signed != 0);
    const int len = 1 << bits;
    uint8_t e[kQuantBlock];
    for (int64_t b = 0; b * kQuantBlock < n; b++) {
        const int64_t lo = b * kQuantBlock;
        const int cnt = (int)std::min<int64_t>(kQuantBlock, n - lo);
        float mx = 0;
        for (int i = 0; i < cnt; i++) {
            mx = quant_max(mx, quant_abs(src[lo + i]));
        }
        const float inv = quant_inv(mx);
        for (int i = 0; i < cnt; i++) {
            e[i] = quant_encode(code, len, src[lo + i], inv);
        }
        if (bits == 8) {
            memcpy(codes + lo, e, cnt);
        } else {
            for (int i = 0; i < cnt; i += 2) {
                codes[(lo + i) / 2] = quant_pack4(e[i], i + 1 < cnt ? e[i + 1] : 0);
            }
        }
        absmax[b] = mx;
    }
}

void hc_decode(const uint8_t *codes, const float *absmax, int32_t bits, int32_t is_signed, int64_t n, float *dst) {
    const float *code = quant_table(kTables, bits, is_signed != 0);
    for (int64_t i = 0; i < n; i++) {
        dst[i] = quant_decode(code, quant_code_at(codes, i, bits), absmax[i / kQuantBlock]);
    }
}

int hc_matmul(int32_t trans_a, const float *a, int64_t ar, int64_t ac, int32_t trans_b, const float *b, int64_t br,
              int64_t bc, float alpha, float *c, int64_t cr, int64_t cc, char *err, size_t err_len) {
    return matmul_rowmajor(RefGemm{}, trans_a != 0, a, ar, ac, trans_b != 0, b, br, bc, alpha, c, cr, cc,
                           ErrBuf{err, err_len});
}

int hc_singular_vectors(const float *a, int64_t m, int64_t n, float *left, int64_t kl, float *right, int64_t kr,
                        char *err, size_t err_len) {
    RefSvdOps ops{ErrBuf{err, err_len}};
    return singular_vectors_rowmajor(ops, a, m, n, left, kl, right, kr, ops.err);
}

float hc_f16_to_f32(uint16_t h) { return f16_to_f32(h); }
uint16_t hc_f32_to_f16(float v) { return f32_to_f16(v); }
float hc_bf16_to_f32(uint16_t h) { return bf16_to_f32(h); }
uint16_t hc_f32_to_bf16(float v) { return f32_to_bf16(v); }

uint8_t hc_quant_nearest(int32_t bits, int32_t is_signed, float x) {
    return quant_nearest(quant_table(kTables, bits, is_signed != 0), 1 << bits, x);
}

float hc_quant_value(int32_t bits, int32_t is_signed, int32_t i) { return quant_table(kTables, bits, is_signed != 0)[i]; }

} // extern "C"
