// plumbing.h — the one place where row-major tensors meet column-major
// libraries (cuBLAS, cuSOLVER). Host C++17 only: templates parameterised on
// the library calls, so that gnlp_cuda.cu instantiates them with cuBLAS and
// cuSOLVER, and the host check (cuda/hostcheck) runs the very same call
// sequence through a tiny CPU column-major gemm and a Jacobi SVD and
// compares the results with core/cpu.
//
// Layout facts used below: a row-major r x c matrix X (leading dimension c)
// is, read column-major with leading dimension c, the c x r matrix X^T.
#ifndef GNLP_PLUMBING_H
#define GNLP_PLUMBING_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

namespace gnlp {

// Status codes: the values of gnlp_status (include/gradnormlorp.h), plus
// two added for the CUDA backend (see cuda/gnlp_cuda.h).
enum Status : int {
    kOK = 0,
    kInvalidArgument = 1,
    kShape = 4,
    kDType = 5,
    kDevice = 9,
    kNumerical = 12,
    kInternal = 13,
    kNoDriver = 14,
    kCuda = 15,
};

// Where a failing call writes its message.
struct ErrBuf {
    char *buf;
    size_t len;

    int fail(int code, const char *fmt, ...) const
#if defined(__GNUC__)
        __attribute__((format(printf, 3, 4)))
#endif
    {
        if (buf != nullptr && len > 0) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(buf, len, fmt, ap);
            va_end(ap);
        }
        return code;
    }
};

// ---------------------------------------------------------------- gemm

// Row-major c (cr x cc) = alpha * op(a) * op(b), where a is ar x ac and b is
// br x bc as stored. `gemm` is a column-major gemm with beta = 0:
//
//   int gemm(bool transA, bool transB, int64_t m, int64_t n, int64_t k,
//            float alpha, const float *A, int64_t lda,
//            const float *B, int64_t ldb, float *C, int64_t ldc);
//
// computing C (m x n) = alpha op(A) op(B). The row-major product is the
// column-major C^T = op(b)^T op(a)^T: the column-major views of the stored
// b and a are b^T and a^T, so op(b)^T is the view itself when b is not
// transposed and its transpose when it is.
template <class Gemm>
int matmul_rowmajor(Gemm &&gemm, bool transA, const float *a, int64_t ar, int64_t ac, bool transB, const float *b,
                    int64_t br, int64_t bc, float alpha, float *c, int64_t cr, int64_t cc, const ErrBuf &err) {
    const int64_t m = transA ? ac : ar; // rows of op(a)
    const int64_t k = transA ? ar : ac;
    const int64_t kb = transB ? bc : br;
    const int64_t n = transB ? br : bc; // cols of op(b)
    if (k != kb || cr != m || cc != n) {
        return err.fail(kInternal, "matmul shapes disagree: op(a) %lldx%lld, op(b) %lldx%lld, c %lldx%lld",
                        (long long)m, (long long)k, (long long)kb, (long long)n, (long long)cr, (long long)cc);
    }
    return gemm(transB, transA, n, m, k, alpha, b, bc, a, ac, c, cc);
}

// ---------------------------------------------------------------- SVD

// Returned by Ops::svd when the step is being skipped on the device (a
// non-finite gradient was flagged): nothing may be written, and that is not
// an error.
const int kSkipped = -1;

// Frees an Ops allocation on every path.
template <class Ops> struct Scratch {
    Ops &ops;
    float *p = nullptr;
    explicit Scratch(Ops &o) : ops(o) {}
    ~Scratch() {
        if (p != nullptr) {
            ops.release(p);
        }
    }
    Scratch(const Scratch &) = delete;
    Scratch &operator=(const Scratch &) = delete;
};

// The leading singular vectors of the row-major a (m x n): the first kl
// left vectors into the columns of the row-major left (m x kl) and the
// first kr right vectors into the rows of the row-major right (kr x n); a
// NULL side is not computed. Each vector is sign-fixed (kernel_math.cuh).
// Nothing is written unless the factorisation succeeds. `ops` provides:
//
//   int alloc(float **p, int64_t count)    // scratch of count floats
//   void release(float *p)
//   int copy(float *dst, const float *src, int64_t count)
//   int transpose(float *dst, const float *src, int64_t rows, int64_t cols)
//       // src column-major rows x cols (ld rows) -> dst column-major
//       // cols x rows (ld cols)
//   int svd(int64_t p, int64_t q, float *T, float *S, float *U, float *V)
//       // T column-major p x q with p >= q (destroyed): T = U diag(S) V^T,
//       // U p x q (ld p), V q x q (ld q), S descending; 0, kSkipped or an
//       // error status (the message already written)
//   int sign_fix(float *X, int64_t len, int64_t count)
//       // count contiguous vectors of len floats
//
// The SVD always runs on a tall matrix: T = a^T (n x m, a plain copy of a)
// when n >= m, else T = a (m x n, a transposed copy). Then
//   n >= m: a = V S U^T, so a's left vectors are V's columns and its right
//           vectors U's columns;
//   n <  m: a = U S V^T, the other way round.
// A right vector is a contiguous run of n floats in either case, and k of
// them in a row are exactly the row-major k x n `right`. The left vectors
// are k contiguous runs of m floats, a column-major m x k matrix, which one
// transpose turns into the row-major m x k `left`.
template <class Ops>
int singular_vectors_rowmajor(Ops &ops, const float *a, int64_t m, int64_t n, float *left, int64_t kl, float *right,
                              int64_t kr, const ErrBuf &err) {
    const int64_t p = n >= m ? n : m;
    const int64_t q = n >= m ? m : n;
    if ((left != nullptr && (kl < 1 || kl > q)) || (right != nullptr && (kr < 1 || kr > q))) {
        return err.fail(kInternal, "singular vectors: rank %lld/%lld outside [1, %lld] for a %lldx%lld matrix",
                        (long long)kl, (long long)kr, (long long)q, (long long)m, (long long)n);
    }
    if (left == nullptr && right == nullptr) {
        return kOK;
    }
    Scratch<Ops> T(ops), S(ops), U(ops), V(ops);
    int rc;
    if ((rc = ops.alloc(&T.p, p * q)) != kOK || (rc = ops.alloc(&S.p, q)) != kOK ||
        (rc = ops.alloc(&U.p, p * q)) != kOK || (rc = ops.alloc(&V.p, q * q)) != kOK) {
        return rc;
    }
    if (n >= m) {
        rc = ops.copy(T.p, a, m * n); // column-major n x m: a^T
    } else {
        rc = ops.transpose(T.p, a, n, m); // a^T (n x m) -> a (m x n)
    }
    if (rc != kOK) {
        return rc;
    }
    rc = ops.svd(p, q, T.p, S.p, U.p, V.p);
    if (rc == kSkipped) {
        return kOK;
    }
    if (rc != kOK) {
        return rc;
    }
    float *rightVecs = n >= m ? U.p : V.p; // runs of n floats
    float *leftVecs = n >= m ? V.p : U.p;  // runs of m floats
    if (right != nullptr) {
        if ((rc = ops.sign_fix(rightVecs, n, kr)) != kOK || (rc = ops.copy(right, rightVecs, kr * n)) != kOK) {
            return rc;
        }
    }
    if (left != nullptr) {
        if ((rc = ops.sign_fix(leftVecs, m, kl)) != kOK || (rc = ops.transpose(left, leftVecs, m, kl)) != kOK) {
            return rc;
        }
    }
    return kOK;
}

} // namespace gnlp

#endif // GNLP_PLUMBING_H
