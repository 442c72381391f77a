// kernel_math.cuh — the per-element, per-row and per-block arithmetic of the
// CUDA backend, written once for both sides:
//
//   * nvcc compiles it into the kernels of gnlp_cuda.cu (GNLP_HD is
//     __host__ __device__ __forceinline__ there);
//   * g++ compiles it as plain C++17 for the host check (cuda/hostcheck),
//     which runs the same functions in sequential loops and compares the
//     results with the Go CPU backend (core/cpu) bit for bit where the
//     summation order allows, within float rounding elsewhere.
//
// Every formula here mirrors core/cpu expression by expression, in float32
// with float64 accumulation of dot products and norms, and must be compiled
// without floating-point contraction (nvcc --fmad=false, g++
// -ffp-contract=off) so that a*b+c rounds twice exactly as Go does.
//
// Nothing in this file launches anything or touches CUDA APIs.
#ifndef GNLP_KERNEL_MATH_CUH
#define GNLP_KERNEL_MATH_CUH

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "quant_codes.h"

#if defined(__CUDACC__)
#define GNLP_HD __host__ __device__ __forceinline__
#else
#define GNLP_HD inline
#endif

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace gnlp {

// dtype codes: the values of gnlp_dtype (include/gradnormlorp.h).
enum DType : int32_t { kF32 = 0, kBF16 = 1, kF16 = 2, kU8 = 3 };

// ---------------------------------------------------------------- bits

GNLP_HD uint32_t f32_bits(float v) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(v);
#else
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    return b;
#endif
}

GNLP_HD float bits_f32(uint32_t b) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(b);
#else
    float v;
    memcpy(&v, &b, sizeof v);
    return v;
#endif
}

// ---------------------------------------------------------------- bfloat16

GNLP_HD float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

// Round to nearest even; a NaN stays a quiet NaN (as core/cpu f32ToBF16).
GNLP_HD uint16_t f32_to_bf16(float v) {
    uint32_t b = f32_bits(v);
    if (v != v) {
        return (uint16_t)((b >> 16) | 0x40u);
    }
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

// ---------------------------------------------------------------- float16
//
// IEEE binary16 with round to nearest even, subnormals kept, overflow to
// infinity. On the device the hardware conversions (cvt.rn) compute exactly
// this for every non-NaN value; the host uses the bit-level version below,
// which the host check compares with github.com/x448/float16 (what core/cpu
// uses) on all 65536 halves and on float32 values around every rounding
// boundary.

GNLP_HD float f16_to_f32_soft(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (uint32_t)(h & 0x7c00u) >> 10;
    uint32_t coef = (uint32_t)(h & 0x03ffu) << 13;
    if (exp == 0x1f) {
        return bits_f32(coef == 0 ? (sign | 0x7f800000u) : (sign | 0x7fc00000u | coef));
    }
    if (exp == 0) {
        if (coef == 0) {
            return bits_f32(sign);
        }
        exp++;
        while ((coef & 0x7f800000u) == 0) {
            coef <<= 1;
            exp--;
        }
        coef &= 0x007fffffu;
    }
    return bits_f32(sign | ((exp + (0x7f - 0xf)) << 23) | coef);
}

GNLP_HD uint16_t f32_to_f16_soft(float v) {
    uint32_t u = f32_bits(v);
    uint32_t sign = u & 0x80000000u;
    uint32_t exp = u & 0x7f800000u;
    uint32_t coef = u & 0x007fffffu;
    uint32_t hsign = sign >> 16;
    if (exp == 0x7f800000u) { // Inf or NaN (NaN keeps a quiet bit)
        uint32_t nan = coef != 0 ? 0x0200u : 0;
        return (uint16_t)(hsign | 0x7c00u | nan | (coef >> 13));
    }
    int32_t hexp = (int32_t)(exp >> 23) - 127 + 15;
    if (hexp >= 0x1f) {
        return (uint16_t)(hsign | 0x7c00u);
    }
    if (hexp <= 0) { // subnormal half (or zero)
        if (14 - hexp > 24) {
            return (uint16_t)hsign;
        }
        uint32_t full = coef | 0x00800000u;
        uint32_t hcoef = full >> (uint32_t)(14 - hexp);
        uint32_t round = 1u << (uint32_t)(13 - hexp);
        // round up when above half, or exactly half and the result is odd
        if ((full & round) != 0 && (full & (3 * round - 1)) != 0) {
            hcoef++;
        }
        return (uint16_t)(hsign | hcoef);
    }
    uint32_t out = hsign | ((uint32_t)hexp << 10) | (coef >> 13);
    const uint32_t round = 0x1000u;
    if ((coef & round) != 0 && (coef & (3 * round - 1)) != 0) {
        out++; // may carry into the exponent: correct, up to infinity
    }
    return (uint16_t)out;
}

GNLP_HD float f16_to_f32(uint16_t h) {
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(h));
#else
    return f16_to_f32_soft(h);
#endif
}

GNLP_HD uint16_t f32_to_f16(float v) {
#if defined(__CUDA_ARCH__)
    return __half_as_ushort(__float2half_rn(v));
#else
    return f32_to_f16_soft(v);
#endif
}

// ---------------------------------------------------------------- elements
//
// Elem<DT> loads a parameter-dtype element as float32 and stores a float32
// rounded to the dtype, returning the value as stored.

template <int DT> struct Elem;

template <> struct Elem<kF32> {
    typedef float T;
    static GNLP_HD float load(const T *p, int64_t i) { return p[i]; }
    static GNLP_HD float store(T *p, int64_t i, float v) {
        p[i] = v;
        return v;
    }
    static GNLP_HD bool finite(const T *p, int64_t i) {
        return (f32_bits(p[i]) & 0x7f800000u) != 0x7f800000u;
    }
};

template <> struct Elem<kBF16> {
    typedef uint16_t T;
    static GNLP_HD float load(const T *p, int64_t i) { return bf16_to_f32(p[i]); }
    static GNLP_HD float store(T *p, int64_t i, float v) {
        T h = f32_to_bf16(v);
        p[i] = h;
        return bf16_to_f32(h);
    }
    static GNLP_HD bool finite(const T *p, int64_t i) { return (p[i] & 0x7f80u) != 0x7f80u; }
};

template <> struct Elem<kF16> {
    typedef uint16_t T;
    static GNLP_HD float load(const T *p, int64_t i) { return f16_to_f32(p[i]); }
    static GNLP_HD float store(T *p, int64_t i, float v) {
        T h = f32_to_f16(v);
        p[i] = h;
        return f16_to_f32(h);
    }
    static GNLP_HD bool finite(const T *p, int64_t i) { return (p[i] & 0x7c00u) != 0x7c00u; }
};

// ---------------------------------------------------------------- norms

// One term of a float64 sum of squares.
GNLP_HD double sq(float v) { return (double)v * (double)v; }

// The float32 norm of a float64 sum of squares.
GNLP_HD float norm_of(double sumsq) { return (float)sqrt(sumsq); }

// One term of SumSquares with a second operand: the difference rounded to
// float32, squared in float64.
GNLP_HD double diff_sq(float a, float b) { return sq(a - b); }

// One element of Axpby: y = alpha x + beta y.
GNLP_HD float axpby(float alpha, float x, float beta, float y) { return alpha * x + beta * y; }

// ---------------------------------------------------------------- Adam

// The per-step scalars of core.AdamParams.
struct AdamScalars {
    float beta1, beta2, one_minus_beta1, one_minus_beta2, eps, step_size, decay;
};

// Advances one pair of moments by x and returns m1 / (sqrt(m2) + eps)
// (core/cpu adam). sqrtf is correctly rounded on both sides, as Go's
// float32(math.Sqrt(float64(m2))).
GNLP_HD float adam_step(float x, float &m1, float &m2, const AdamScalars &h) {
    m1 = h.beta1 * m1 + h.one_minus_beta1 * x;
    m2 = h.beta2 * m2 + h.one_minus_beta2 * x * x;
    return m1 / (sqrtf(m2) + h.eps);
}

// Plain AdamW's new weight from the Adam direction n.
GNLP_HD float adamw_weight(float w, float n, const AdamScalars &h) {
    return w * h.decay - h.step_size * n;
}

// ---------------------------------------------------------------- weight-norm gradient
//
// Row i with magnitude g, direction norm s: D = w / g, dg = <grad, D>,
// dv = (g / s) (grad - dg D). A zero row (g == 0 or s == 0) has dg = 0 and
// dv = grad.

GNLP_HD bool wn_zero_row(float g, float s) { return g == 0.0f || s == 0.0f; }

// 1 / g, the factor that turns w into D without storing D.
GNLP_HD float wn_inv(float g) { return 1.0f / g; }

// One float64 term of dg = <grad, D>.
GNLP_HD double wn_dot_term(float grad, float w, float inv) { return (double)grad * (double)(w * inv); }

// g / s.
GNLP_HD float wn_ratio(float g, float s) { return g / s; }

// One element of dv, given d = (float)dg.
GNLP_HD float wn_dv(float ratio, float grad, float d, float w, float inv) {
    return ratio * (grad - d * (w * inv));
}

// ---------------------------------------------------------------- weight-norm update
//
// Non-zero row: V = s w / g - step dvlow, g' = (g - step ng) decay,
// s' = ||V||, w = g' V / s' (all zero when s' == 0, with g' = 0).
// Zero row: w = w decay - step dvlow, g' = s' = ||w as stored||.

GNLP_HD float wnu_v(float s, float w, float inv, float u, const AdamScalars &h) {
    return s * (w * inv) - h.step_size * u;
}

GNLP_HD float wnu_new_g(float g, float ng, const AdamScalars &h) { return (g - h.step_size * ng) * h.decay; }

// The factor g' / s' applied to V; 0 (and g' becomes 0) when V vanished.
GNLP_HD float wnu_factor(float &new_g, float new_s) {
    if (new_s == 0.0f) {
        new_g = 0.0f;
        return 0.0f;
    }
    return new_g / new_s;
}

// The new value of an element of V (w = V * factor); a vanished V writes 0.
GNLP_HD float wnu_w(float v, float factor, float new_s) { return new_s == 0.0f ? 0.0f : v * factor; }

GNLP_HD float wnu_zero_row(float w, float u, const AdamScalars &h) { return w * h.decay - h.step_size * u; }

// ---------------------------------------------------------------- quantised state
//
// Blockwise quantisation with the dynamic codes of core/quant: a block of
// kQuantBlock values is one code per value (8 bits: a byte; 4 bits: a
// nibble, two to a byte, low nibble first), an index into a sorted table of
// 2^bits floats (quant_codes.h, generated from core/quant), times the
// block's absmax. Used for the moments (signed code for M1, unsigned for
// M2) and for packed projectors (signed).

const int kQuantBlock = 256;
const int64_t kMinQuantizedElems = 4096;

// Index of the code value nearest to x in a table of `len` values, ties to
// the lower index (core/quant Code.Nearest: sort.Search for the first value
// >= x, then compare the two neighbours in float32).
GNLP_HD uint8_t quant_nearest(const float *code, int len, float x) {
    int lo = 0, hi = len;
    while (lo < hi) {
        int mid = (int)((unsigned)(lo + hi) >> 1);
        if (!(code[mid] >= x)) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo == 0) {
        return 0;
    }
    // A positive x never takes a zero first entry (Code.Nearest's rule).
    if (lo == 1 && code[0] == 0.0f && x > 0.0f) {
        return 1;
    }
    if (lo == len) {
        return (uint8_t)(len - 1);
    }
    if (x - code[lo - 1] <= code[lo] - x) {
        return (uint8_t)(lo - 1);
    }
    return (uint8_t)lo;
}

// |v| for the absmax reduction.
GNLP_HD float quant_abs(float v) { return fabsf(v); }

// max for the absmax reduction (Go's max on non-NaN float32).
GNLP_HD float quant_max(float a, float b) { return b > a ? b : a; }

// 1 / absmax, or 0 for an all-zero block (whose values all encode as the
// code nearest 0).
GNLP_HD float quant_inv(float absmax) { return absmax > 0.0f ? 1.0f / absmax : 0.0f; }

// The code of v in a block with inverse absmax inv.
GNLP_HD uint8_t quant_encode(const float *code, int len, float v, float inv) {
    return quant_nearest(code, len, v * inv);
}

GNLP_HD float quant_decode(const float *code, uint8_t q, float absmax) { return code[q] * absmax; }

// Bytes of n codes of `bits` bits (core/quant Format.Bytes).
GNLP_HD int64_t quant_bytes(int64_t n, int bits) { return (n * bits + 7) / 8; }

// The code of element i (counted over the whole tensor) of packed storage.
GNLP_HD uint8_t quant_code_at(const uint8_t *codes, int64_t i, int bits) {
    if (bits == 8) {
        return codes[i];
    }
    return (uint8_t)((codes[i >> 1] >> (4 * (i & 1))) & 0xf);
}

// The byte holding elements 2j (low nibble) and 2j+1 (high nibble) of 4-bit
// storage; a missing partner at the end of a tensor stores 0.
GNLP_HD uint8_t quant_pack4(uint8_t lo, uint8_t hi) { return (uint8_t)(lo | (hi << 4)); }

// The tables by format.
struct QuantTables {
    float signed8[256], unsigned8[256], signed4[16], unsigned4[16];
};

GNLP_HD const float *quant_table(const QuantTables &t, int bits, bool is_signed) {
    if (bits == 8) {
        return is_signed ? t.signed8 : t.unsigned8;
    }
    return is_signed ? t.signed4 : t.unsigned4;
}

// ---------------------------------------------------------------- sign rule
//
// A singular vector is flipped so that its entry of largest magnitude is
// positive, the first such entry on ties. `better` orders candidates for a
// parallel argmax: (a, ia) beats (b, ib) when |a| > |b|, or |a| == |b| and
// ia < ib (sequentially: the first strict maximum wins, as core/cpu signFix).

GNLP_HD bool sign_better(float abs_a, int64_t ia, float abs_b, int64_t ib) {
    return abs_a > abs_b || (abs_a == abs_b && ia < ib);
}

// The factor (+1 or -1) that applies the rule, given the entry chosen.
GNLP_HD float sign_factor(float chosen) { return chosen < 0.0f ? -1.0f : 1.0f; }

} // namespace gnlp

#endif // GNLP_KERNEL_MATH_CUH
