// gnlp_cuda.cu — libgnlp_cuda.so: the CUDA backend of gradnormlorp.
//
// Kernels take every formula from kernel_math.cuh and every cuBLAS/cuSOLVER
// layout decision from plumbing.h (both checked on the host by
// cuda/hostcheck); this file adds only launch shapes, reductions, handles,
// memory and error reporting. See gnlp_cuda.h for the interface.
//
// Build with --fmad=false (cuda/build.sh does): the kernels must round
// a*b+c twice, as Go and the host check do.
#include "gnlp_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <limits.h>
#include <stdint.h>

#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "kernel_math.cuh"
#include "plumbing.h"

using namespace gnlp;

namespace {

const int kThreads = 256; // every kernel; a multiple of 32 (reductions rely on it)
const int kMaxGrid = 1 << 16;

__constant__ QuantTables d_tables = {GNLP_QUANT_SIGNED8, GNLP_QUANT_UNSIGNED8, GNLP_QUANT_SIGNED4,
                                     GNLP_QUANT_UNSIGNED4};

// ---------------------------------------------------------------- errors

int cuda_fail(const ErrBuf &err, cudaError_t e, const char *what) {
    int code = kCUDA;
    const char *prefix = "";
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) {
        code = kNoDriver;
        prefix = "no NVIDIA driver or no CUDA device: ";
    } else if (e == cudaErrorInvalidDevice) {
        code = kDevice;
    }
    return err.fail(code, "%s%s failed: %s (%s)", prefix, what, cudaGetErrorName(e), cudaGetErrorString(e));
}

#define CUDA_TRY(call)                                                                                                \
    do {                                                                                                              \
        cudaError_t e_ = (call);                                                                                      \
        if (e_ != cudaSuccess) {                                                                                      \
            return cuda_fail(err, e_, #call);                                                                         \
        }                                                                                                             \
    } while (0)

#define LAUNCHED(name)                                                                                                \
    do {                                                                                                              \
        cudaError_t e_ = cudaGetLastError();                                                                          \
        if (e_ != cudaSuccess) {                                                                                      \
            return cuda_fail(err, e_, "launch of " name);                                                             \
        }                                                                                                             \
    } while (0)

const char *cublas_name(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    default: return "cuBLAS error";
    }
}

// ---------------------------------------------------------------- device scope

// Makes `device` current for the call and restores the caller's device.
struct DeviceScope {
    int prev = -1;
    int rc = kOK;
    DeviceScope(int32_t device, const ErrBuf &err) {
        int count = 0;
        cudaError_t e = cudaGetDeviceCount(&count);
        if (e != cudaSuccess) {
            rc = cuda_fail(err, e, "cudaGetDeviceCount");
            return;
        }
        if (device < 0 || device >= count) {
            rc = err.fail(kDevice, "CUDA device %d does not exist (this process sees %d)", (int)device, count);
            return;
        }
        int cur = 0;
        if ((e = cudaGetDevice(&cur)) != cudaSuccess) {
            rc = cuda_fail(err, e, "cudaGetDevice");
            return;
        }
        if (cur != device) {
            if ((e = cudaSetDevice(device)) != cudaSuccess) {
                rc = cuda_fail(err, e, "cudaSetDevice");
                return;
            }
            prev = cur;
        }
    }
    ~DeviceScope() {
        if (prev >= 0) {
            cudaSetDevice(prev);
        }
    }
};

#define ENTER(device)                                                                                                 \
    const ErrBuf err{err_buf, err_len};                                                                               \
    if (err_buf != nullptr && err_len > 0) {                                                                          \
        err_buf[0] = '\0';                                                                                            \
    }                                                                                                                 \
    DeviceScope scope_(device, err);                                                                                  \
    if (scope_.rc != kOK) {                                                                                           \
        return scope_.rc;                                                                                             \
    }

// ---------------------------------------------------------------- memory pool

std::mutex pool_mu;
std::map<int, cudaMemPool_t> pools;

int pool_for(int device, cudaMemPool_t *out, const ErrBuf &err) {
    std::lock_guard<std::mutex> lock(pool_mu);
    auto it = pools.find(device);
    if (it != pools.end()) {
        *out = it->second;
        return kOK;
    }
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    cudaMemPool_t pool;
    CUDA_TRY(cudaMemPoolCreate(&pool, &props));
    uint64_t keep = UINT64_MAX; // keep freed scratch for the next step
    CUDA_TRY(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    pools[device] = pool;
    *out = pool;
    return kOK;
}

// ---------------------------------------------------------------- handle caches

// Idle handles per (device, stream): a handle's work is always on one
// stream, so its internal workspace is reused in stream order; a handle is
// leased to one call at a time.
template <class H> struct HandleCache {
    std::mutex mu;
    std::map<std::pair<int, cudaStream_t>, std::vector<H>> idle;

    bool take(int dev, cudaStream_t s, H *h) {
        std::lock_guard<std::mutex> lock(mu);
        auto &v = idle[{dev, s}];
        if (v.empty()) {
            return false;
        }
        *h = v.back();
        v.pop_back();
        return true;
    }
    void put(int dev, cudaStream_t s, H h) {
        std::lock_guard<std::mutex> lock(mu);
        idle[{dev, s}].push_back(h);
    }
};

HandleCache<cublasHandle_t> cublas_cache;
HandleCache<cusolverDnHandle_t> cusolver_cache;

struct CublasLease {
    int dev;
    cudaStream_t stream;
    cublasHandle_t h = nullptr;
    int acquire(const ErrBuf &err) {
        if (!cublas_cache.take(dev, stream, &h)) {
            cublasStatus_t st = cublasCreate(&h);
            if (st != CUBLAS_STATUS_SUCCESS) {
                h = nullptr;
                return err.fail(kCUDA, "cublasCreate failed: %s", cublas_name(st));
            }
            cublasSetStream(h, stream);
        }
        return kOK;
    }
    ~CublasLease() {
        if (h != nullptr) {
            cublas_cache.put(dev, stream, h);
        }
    }
};

struct CusolverLease {
    int dev;
    cudaStream_t stream;
    cusolverDnHandle_t h = nullptr;
    int acquire(const ErrBuf &err) {
        if (!cusolver_cache.take(dev, stream, &h)) {
            cusolverStatus_t st = cusolverDnCreate(&h);
            if (st != CUSOLVER_STATUS_SUCCESS) {
                h = nullptr;
                return err.fail(kCUDA, "cusolverDnCreate failed: status %d", (int)st);
            }
            cusolverDnSetStream(h, stream);
        }
        return kOK;
    }
    ~CusolverLease() {
        if (h != nullptr) {
            cusolver_cache.put(dev, stream, h);
        }
    }
};

// ---------------------------------------------------------------- launch helpers

int grid_for(int64_t items) {
    int64_t blocks = (items + kThreads - 1) / kThreads;
    return (int)(blocks < 1 ? 1 : (blocks > kMaxGrid ? kMaxGrid : blocks));
}

int grid_rows(int64_t rows) { return (int)(rows > INT_MAX ? INT_MAX : (rows < 1 ? 1 : rows)); }

__device__ __forceinline__ bool skipped(const int32_t *skip) { return skip != nullptr && *skip != 0; }

// Block-wide reduction: every thread passes its value and gets the result.
// `shared` holds 32 values; blockDim.x is a multiple of 32.
template <class T, class Op> __device__ T block_reduce(T v, T identity, Op op, T *shared) {
    for (int o = 16; o > 0; o >>= 1) {
        v = op(v, __shfl_down_sync(0xffffffffu, v, o));
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        shared[warp] = v;
    }
    __syncthreads();
    const int warps = blockDim.x >> 5;
    v = (int)threadIdx.x < warps ? shared[threadIdx.x] : identity;
    if (warp == 0) {
        for (int o = 16; o > 0; o >>= 1) {
            v = op(v, __shfl_down_sync(0xffffffffu, v, o));
        }
        if (lane == 0) {
            shared[0] = v;
        }
    }
    __syncthreads();
    v = shared[0];
    __syncthreads();
    return v;
}

struct SumOp {
    __device__ double operator()(double a, double b) const { return a + b; }
};
struct MaxOp {
    __device__ float operator()(float a, float b) const { return quant_max(a, b); }
};

__device__ double block_sum(double v) {
    __shared__ double s[32];
    return block_reduce(v, 0.0, SumOp(), s);
}

__device__ float block_max(float v) {
    __shared__ float s[32];
    return block_reduce(v, 0.0f, MaxOp(), s);
}

// ---------------------------------------------------------------- kernels

template <int DT> __global__ void k_all_finite(const typename Elem<DT>::T *x, int64_t n, int32_t *flag) {
    bool bad = false;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        bad |= !Elem<DT>::finite(x, i);
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0) {
        *flag = 1;
    }
}

// Per-block sums of (a - b)^2, or of a^2 when b is null. The grid depends
// on n alone, so k_sum_partials adds the same partials in the same order on
// every call: the result is deterministic.
__global__ void k_sum_squares(const float *a, const float *b, int64_t n, double *partial) {
    double acc = 0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        acc += b != nullptr ? diff_sq(a[i], b[i]) : sq(a[i]);
    }
    const double sum = block_sum(acc);
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = sum;
    }
}

// One block adds k_sum_squares' partials into *out.
__global__ void k_sum_partials(const double *partial, int n, double *out) {
    double acc = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        acc += partial[i];
    }
    const double sum = block_sum(acc);
    if (threadIdx.x == 0) {
        *out = sum;
    }
}

__global__ void k_axpby(float alpha, const float *x, float beta, float *y, int64_t n, const int32_t *skip) {
    if (skipped(skip)) {
        return;
    }
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        y[i] = axpby(alpha, x[i], beta, y[i]);
    }
}

template <int DT>
__global__ void k_row_norms(const typename Elem<DT>::T *w, int64_t rows, int64_t cols, float *out) {
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        double acc = 0;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            acc += sq(Elem<DT>::load(w, r * cols + j));
        }
        const double sum = block_sum(acc);
        if (threadIdx.x == 0) {
            out[r] = norm_of(sum);
        }
    }
}

template <int DT>
__global__ void k_weight_norm_grad(const typename Elem<DT>::T *w, const typename Elem<DT>::T *grad, int64_t rows,
                                   int64_t cols, const float *g, const float *s, float *dg, float *dv,
                                   const int32_t *skip) {
    typedef Elem<DT> E;
    if (skipped(skip)) {
        return;
    }
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const int64_t base = r * cols;
        const float gi = g[r], si = s[r];
        if (wn_zero_row(gi, si)) {
            for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
                dv[base + j] = E::load(grad, base + j);
            }
            if (threadIdx.x == 0) {
                dg[r] = 0.0f;
            }
            continue;
        }
        const float inv = wn_inv(gi);
        double acc = 0;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            acc += wn_dot_term(E::load(grad, base + j), E::load(w, base + j), inv);
        }
        const float d = (float)block_sum(acc);
        const float ratio = wn_ratio(gi, si);
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            dv[base + j] = wn_dv(ratio, E::load(grad, base + j), d, E::load(w, base + j), inv);
        }
        if (threadIdx.x == 0) {
            dg[r] = d;
        }
    }
}

template <int DT>
__global__ void k_weight_norm_update(typename Elem<DT>::T *w, int64_t rows, int64_t cols, float *g, float *s,
                                     const float *u, const float *ng, AdamScalars h, const int32_t *skip) {
    typedef Elem<DT> E;
    if (skipped(skip)) {
        return;
    }
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const int64_t base = r * cols;
        const float gi = g[r], si = s[r];
        if (wn_zero_row(gi, si)) {
            double acc = 0;
            for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
                acc += sq(E::store(w, base + j, wnu_zero_row(E::load(w, base + j), u[base + j], h)));
            }
            const float n = norm_of(block_sum(acc));
            if (threadIdx.x == 0) {
                g[r] = n;
                s[r] = n;
            }
            continue;
        }
        const float inv = wn_inv(gi);
        double acc = 0;
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            acc += sq(wnu_v(si, E::load(w, base + j), inv, u[base + j], h));
        }
        const float new_s = norm_of(block_sum(acc)); // every thread has read its w: safe to write
        float new_g = wnu_new_g(gi, ng[r], h);
        const float f = wnu_factor(new_g, new_s);
        for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
            const float v = wnu_v(si, E::load(w, base + j), inv, u[base + j], h);
            E::store(w, base + j, wnu_w(v, f, new_s));
        }
        if (threadIdx.x == 0) {
            g[r] = new_g;
            s[r] = new_s;
        }
    }
}

__global__ void k_adam_f32(float *x, int64_t n, float *m1, float *m2, AdamScalars h, const int32_t *skip) {
    if (skipped(skip)) {
        return;
    }
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float a = m1[i], b = m2[i];
        x[i] = adam_step(x[i], a, b, h);
        m1[i] = a;
        m2[i] = b;
    }
}

template <int DT>
__global__ void k_adamw_f32(typename Elem<DT>::T *w, const typename Elem<DT>::T *grad, int64_t n, float *m1,
                            float *m2, AdamScalars h, const int32_t *skip) {
    typedef Elem<DT> E;
    if (skipped(skip)) {
        return;
    }
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float a = m1[i], b = m2[i];
        const float d = adam_step(E::load(grad, i), a, b, h);
        E::store(w, i, adamw_weight(E::load(w, i), d, h));
        m1[i] = a;
        m2[i] = b;
    }
}

// Loads the code table of a format into shared memory (256 floats).
__device__ void load_table(float *dst, int bits, bool is_signed) {
    const float *src = quant_table(d_tables, bits, is_signed);
    const int len = 1 << bits;
    for (int i = threadIdx.x; i < len; i += blockDim.x) {
        dst[i] = src[i];
    }
    __syncthreads();
}

// Stores the code of element i of a block (all threads of a warp call
// this together): a byte for 8 bits; for 4 bits the even thread packs its
// neighbour's nibble (0 past the end of the tensor).
__device__ __forceinline__ void store_code(uint8_t *codes, int64_t i, int64_t n, uint8_t c, int bits) {
    if (bits == 8) {
        if (i < n) {
            codes[i] = c;
        }
        return;
    }
    const uint8_t partner = (uint8_t)__shfl_down_sync(0xffffffffu, (unsigned)c, 1);
    if (i < n && (i & 1) == 0) {
        codes[i >> 1] = quant_pack4(c, i + 1 < n ? partner : (uint8_t)0);
    }
}

// One thread block per quantisation block of 256 values (blockDim 256):
// decode both moments, apply `fn` (which updates them), re-encode with the
// block's new absmax. What core/cpu forMomentBlocks does per block.
template <class Fn>
__device__ void quant_moments_block(int64_t b, int64_t n, const gnlp_cuda_moments &mom, const float *c1,
                                    const float *c2, Fn fn) {
    const int64_t i = b * kQuantBlock + threadIdx.x;
    const bool valid = i < n;
    uint8_t *q1 = static_cast<uint8_t *>(mom.m1), *q2 = static_cast<uint8_t *>(mom.m2);
    float v1 = 0, v2 = 0;
    if (valid) {
        v1 = quant_decode(c1, quant_code_at(q1, i, mom.bits), mom.absmax1[b]);
        v2 = quant_decode(c2, quant_code_at(q2, i, mom.bits), mom.absmax2[b]);
        fn(i, v1, v2);
    }
    // block_max synchronises: every thread has read its codes and absmax
    const float max1 = block_max(valid ? quant_abs(v1) : 0.0f);
    const float max2 = block_max(valid ? quant_abs(v2) : 0.0f);
    const int len = 1 << mom.bits;
    store_code(q1, i, n, quant_encode(c1, len, v1, quant_inv(max1)), mom.bits);
    store_code(q2, i, n, quant_encode(c2, len, v2, quant_inv(max2)), mom.bits);
    if (threadIdx.x == 0) {
        mom.absmax1[b] = max1;
        mom.absmax2[b] = max2;
    }
    __syncthreads();
}

struct AdamDirectionFn {
    float *x;
    AdamScalars h;
    __device__ void operator()(int64_t i, float &m1, float &m2) const { x[i] = adam_step(x[i], m1, m2, h); }
};

__global__ void k_adam_quant(float *x, int64_t n, gnlp_cuda_moments mom, AdamScalars h, const int32_t *skip) {
    __shared__ float c1[256], c2[256];
    if (skipped(skip)) {
        return;
    }
    load_table(c1, mom.bits, true);
    load_table(c2, mom.bits, false);
    const int64_t blocks = (n + kQuantBlock - 1) / kQuantBlock;
    for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
        quant_moments_block(b, n, mom, c1, c2, AdamDirectionFn{x, h});
    }
}

template <int DT> struct AdamWFn {
    typename Elem<DT>::T *w;
    const typename Elem<DT>::T *grad;
    AdamScalars h;
    __device__ void operator()(int64_t i, float &m1, float &m2) const {
        const float d = adam_step(Elem<DT>::load(grad, i), m1, m2, h);
        Elem<DT>::store(w, i, adamw_weight(Elem<DT>::load(w, i), d, h));
    }
};

template <int DT>
__global__ void k_adamw_quant(typename Elem<DT>::T *w, const typename Elem<DT>::T *grad, int64_t n,
                              gnlp_cuda_moments mom, AdamScalars h, const int32_t *skip) {
    __shared__ float c1[256], c2[256];
    if (skipped(skip)) {
        return;
    }
    load_table(c1, mom.bits, true);
    load_table(c2, mom.bits, false);
    const int64_t blocks = (n + kQuantBlock - 1) / kQuantBlock;
    for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
        quant_moments_block(b, n, mom, c1, c2, AdamWFn<DT>{w, grad, h});
    }
}

__global__ void k_encode(const float *src, int64_t n, uint8_t *codes, float *absmax, int bits, bool is_signed,
                         const int32_t *skip) {
    __shared__ float c[256];
    if (skipped(skip)) {
        return;
    }
    load_table(c, bits, is_signed);
    const int64_t blocks = (n + kQuantBlock - 1) / kQuantBlock;
    for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
        const int64_t i = b * kQuantBlock + threadIdx.x;
        const float v = i < n ? src[i] : 0.0f;
        const float mx = block_max(i < n ? quant_abs(v) : 0.0f);
        store_code(codes, i, n, quant_encode(c, 1 << bits, v, quant_inv(mx)), bits);
        if (threadIdx.x == 0) {
            absmax[b] = mx;
        }
    }
}

__global__ void k_decode(const uint8_t *codes, const float *absmax, int bits, bool is_signed, int64_t n,
                         float *dst) {
    __shared__ float c[256];
    load_table(c, bits, is_signed);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        dst[i] = quant_decode(c, quant_code_at(codes, i, bits), absmax[i / kQuantBlock]);
    }
}

// Sign rule, one block per vector: argmax of |x| (first on ties), flip.
__global__ void k_sign_fix(float *X, int64_t len, int64_t count) {
    __shared__ float best_abs[32];
    __shared__ int64_t best_idx[32];
    __shared__ float chosen;
    for (int64_t v = blockIdx.x; v < count; v += gridDim.x) {
        float *x = X + v * len;
        float ba = -1.0f;
        int64_t bi = len;
        for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
            const float a = fabsf(x[i]);
            if (sign_better(a, i, ba, bi)) {
                ba = a;
                bi = i;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float oa = __shfl_down_sync(0xffffffffu, ba, o);
            const int64_t oi = __shfl_down_sync(0xffffffffu, bi, o);
            if (sign_better(oa, oi, ba, bi)) {
                ba = oa;
                bi = oi;
            }
        }
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        if (lane == 0) {
            best_abs[warp] = ba;
            best_idx[warp] = bi;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int k = 1; k < (int)(blockDim.x >> 5); k++) {
                if (sign_better(best_abs[k], best_idx[k], ba, bi)) {
                    ba = best_abs[k];
                    bi = best_idx[k];
                }
            }
            chosen = x[bi];
        }
        __syncthreads();
        const float f = sign_factor(chosen);
        for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
            x[i] *= f;
        }
        __syncthreads();
    }
}

// dst (column-major cols x rows, ld cols) = transpose of src (column-major
// rows x cols, ld rows), 32x32 tiles through shared memory.
__global__ void k_transpose(float *dst, const float *src, int64_t rows, int64_t cols) {
    __shared__ float tile[32][33];
    const int64_t tiles_r = (rows + 31) / 32, tiles_c = (cols + 31) / 32;
    for (int64_t t = blockIdx.x; t < tiles_r * tiles_c; t += gridDim.x) {
        const int64_t r0 = (t % tiles_r) * 32, c0 = (t / tiles_r) * 32;
        for (int k = threadIdx.y; k < 32; k += blockDim.y) {
            const int64_t r = r0 + threadIdx.x, c = c0 + k;
            if (r < rows && c < cols) {
                tile[k][threadIdx.x] = src[r + c * rows];
            }
        }
        __syncthreads();
        for (int k = threadIdx.y; k < 32; k += blockDim.y) {
            const int64_t c = c0 + threadIdx.x, r = r0 + k;
            if (r < rows && c < cols) {
                dst[c + r * cols] = tile[threadIdx.x][k];
            }
        }
        __syncthreads();
    }
}

// ---------------------------------------------------------------- library functors for plumbing.h

bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

struct CublasGemm {
    cublasHandle_t h;
    bool tf32;
    ErrBuf err;
    int operator()(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float *A, int64_t lda,
                   const float *B, int64_t ldb, float *C, int64_t ldc) const {
        if (!fits_int(m) || !fits_int(n) || !fits_int(k) || !fits_int(lda) || !fits_int(ldb) || !fits_int(ldc)) {
            return err.fail(kShape, "matmul dimensions %lldx%lldx%lld exceed cuBLAS's 32-bit sizes", (long long)m,
                            (long long)n, (long long)k);
        }
        const float beta = 0.0f;
        cublasStatus_t st = cublasGemmEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, (int)m,
                                         (int)n, (int)k, &alpha, A, CUDA_R_32F, (int)lda, B, CUDA_R_32F, (int)ldb,
                                         &beta, C, CUDA_R_32F, (int)ldc,
                                         tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS) {
            return err.fail(kCUDA, "cublasGemmEx (%lldx%lldx%lld) failed: %s", (long long)m, (long long)n,
                            (long long)k, cublas_name(st));
        }
        return kOK;
    }
};

struct DeviceSvdOps {
    cudaStream_t stream;
    cudaMemPool_t pool;
    cusolverDnHandle_t solver;
    const int32_t *skip;
    ErrBuf err;
    int64_t m, n; // of the original matrix, for messages

    int alloc(float **p, int64_t count) {
        CUDA_TRY(cudaMallocFromPoolAsync(reinterpret_cast<void **>(p), sizeof(float) * (size_t)(count > 0 ? count : 1),
                                         pool, stream));
        return kOK;
    }
    void release(float *p) { cudaFreeAsync(p, stream); }
    int copy(float *dst, const float *src, int64_t count) {
        CUDA_TRY(cudaMemcpyAsync(dst, src, sizeof(float) * (size_t)count, cudaMemcpyDeviceToDevice, stream));
        return kOK;
    }
    int transpose(float *dst, const float *src, int64_t rows, int64_t cols) {
        const int64_t tiles = ((rows + 31) / 32) * ((cols + 31) / 32);
        k_transpose<<<(int)(tiles < kMaxGrid ? tiles : kMaxGrid), dim3(32, 8), 0, stream>>>(dst, src, rows, cols);
        LAUNCHED("k_transpose");
        return kOK;
    }
    int sign_fix(float *X, int64_t len, int64_t count) {
        k_sign_fix<<<(int)(count < kMaxGrid ? count : kMaxGrid), kThreads, 0, stream>>>(X, len, count);
        LAUNCHED("k_sign_fix");
        return kOK;
    }
    int svd(int64_t p, int64_t q, float *T, float *S, float *U, float *V) {
        if (!fits_int(p) || !fits_int(q)) {
            return err.fail(kShape, "SVD of a %lldx%lld matrix exceeds cuSOLVER's 32-bit sizes", (long long)m,
                            (long long)n);
        }
        gesvdjInfo_t params = nullptr;
        if (cusolverDnCreateGesvdjInfo(&params) != CUSOLVER_STATUS_SUCCESS) {
            return err.fail(kCUDA, "cusolverDnCreateGesvdjInfo failed");
        }
        struct Params {
            gesvdjInfo_t p;
            ~Params() { cusolverDnDestroyGesvdjInfo(p); }
        } guard{params};
        int lwork = 0;
        cusolverStatus_t st = cusolverDnSgesvdj_bufferSize(solver, CUSOLVER_EIG_MODE_VECTOR, 1, (int)p, (int)q, T,
                                                           (int)p, S, U, (int)p, V, (int)q, &lwork, params);
        if (st != CUSOLVER_STATUS_SUCCESS) {
            return err.fail(kCUDA, "cusolverDnSgesvdj_bufferSize (%lldx%lld) failed: status %d", (long long)p,
                            (long long)q, (int)st);
        }
        Scratch<DeviceSvdOps> work(*this), info(*this);
        int rc;
        if ((rc = alloc(&work.p, lwork)) != kOK || (rc = alloc(&info.p, 1)) != kOK) {
            return rc;
        }
        int *dinfo = reinterpret_cast<int *>(info.p);
        st = cusolverDnSgesvdj(solver, CUSOLVER_EIG_MODE_VECTOR, 1, (int)p, (int)q, T, (int)p, S, U, (int)p, V,
                               (int)q, work.p, lwork, dinfo, params);
        if (st != CUSOLVER_STATUS_SUCCESS) {
            return err.fail(kCUDA, "cusolverDnSgesvdj (%lldx%lld) failed: status %d", (long long)p, (long long)q,
                            (int)st);
        }
        // The one wait of a refresh: did it converge, and is the step being
        // skipped (a non-finite gradient flagged on the device)?
        int32_t host[2] = {0, 0};
        CUDA_TRY(cudaMemcpyAsync(&host[0], dinfo, sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
        if (skip != nullptr) {
            CUDA_TRY(cudaMemcpyAsync(&host[1], skip, sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
        }
        CUDA_TRY(cudaStreamSynchronize(stream));
        if (host[1] != 0) {
            return kSkipped;
        }
        if (host[0] != 0) {
            return err.fail(kNumerical,
                            "SVD of the %lldx%lld weight-norm gradient did not converge (cuSOLVER gesvdj info %d)",
                            (long long)m, (long long)n, (int)host[0]);
        }
        return kOK;
    }
};

AdamScalars scalars(const gnlp_cuda_adam *h) {
    return AdamScalars{h->beta1, h->beta2, h->one_minus_beta1, h->one_minus_beta2, h->eps, h->step_size, h->decay};
}

int check_bits(int32_t bits, const ErrBuf &err) {
    if (bits != 8 && bits != 4) {
        return err.fail(kInvalidArgument, "quantised state of %d bits is not supported (8 or 4)", (int)bits);
    }
    return kOK;
}

} // namespace

// Dispatches a templated launch on a parameter dtype.
#define DTYPE_SWITCH(dtype, ...)                                                                                      \
    switch (dtype) {                                                                                                  \
    case kF32: {                                                                                                      \
        const int DT = kF32;                                                                                          \
        __VA_ARGS__;                                                                                                  \
    } break;                                                                                                          \
    case kBF16: {                                                                                                     \
        const int DT = kBF16;                                                                                         \
        __VA_ARGS__;                                                                                                  \
    } break;                                                                                                          \
    case kF16: {                                                                                                      \
        const int DT = kF16;                                                                                          \
        __VA_ARGS__;                                                                                                  \
    } break;                                                                                                          \
    default:                                                                                                          \
        return err.fail(kDType, "unsupported dtype %d (float32, bfloat16 or float16)", (int)(dtype));               \
    }

#define STREAM cudaStream_t st = static_cast<cudaStream_t>(stream)
#define PTR(DT, p) static_cast<typename Elem<DT>::T *>(p)
#define CPTR(DT, p) static_cast<const typename Elem<DT>::T *>(p)

extern "C" {

int32_t gnlp_cuda_abi_version(void) { return GNLP_CUDA_ABI_VERSION; }

int gnlp_cuda_device_count(int32_t *count, char *err_buf, size_t err_len) {
    const ErrBuf err{err_buf, err_len};
    int c = 0;
    CUDA_TRY(cudaGetDeviceCount(&c));
    *count = c;
    return kOK;
}

int gnlp_cuda_alloc(int32_t device, int64_t bytes, void *stream, void **out, char *err_buf, size_t err_len) {
    ENTER(device);
    STREAM;
    cudaMemPool_t pool;
    int rc = pool_for(device, &pool, err);
    if (rc != kOK) {
        return rc;
    }
    CUDA_TRY(cudaMallocFromPoolAsync(out, (size_t)(bytes > 0 ? bytes : 1), pool, st));
    return kOK;
}

int gnlp_cuda_free(int32_t device, void *ptr, void *stream, char *err_buf, size_t err_len) {
    ENTER(device);
    STREAM;
    CUDA_TRY(cudaFreeAsync(ptr, st));
    return kOK;
}

int gnlp_cuda_zero(int32_t device, void *ptr, int64_t bytes, void *stream, char *err_buf, size_t err_len) {
    ENTER(device);
    STREAM;
    if (bytes > 0) {
        CUDA_TRY(cudaMemsetAsync(ptr, 0, (size_t)bytes, st));
    }
    return kOK;
}

int gnlp_cuda_copy(int32_t device, void *dst, const void *src, int64_t bytes, void *stream, char *err_buf,
                   size_t err_len) {
    ENTER(device);
    STREAM;
    if (bytes > 0) {
        CUDA_TRY(cudaMemcpyAsync(dst, src, (size_t)bytes, cudaMemcpyDeviceToDevice, st));
    }
    return kOK;
}

int gnlp_cuda_read(int32_t device, void *host, const void *src, int64_t bytes, void *stream, char *err_buf,
                   size_t err_len) {
    ENTER(device);
    STREAM;
    CUDA_TRY(cudaMemcpyAsync(host, src, (size_t)bytes, cudaMemcpyDeviceToHost, st));
    CUDA_TRY(cudaStreamSynchronize(st));
    return kOK;
}

int gnlp_cuda_write(int32_t device, void *dst, const void *host, int64_t bytes, void *stream, char *err_buf,
                    size_t err_len) {
    ENTER(device);
    STREAM;
    CUDA_TRY(cudaMemcpyAsync(dst, host, (size_t)bytes, cudaMemcpyHostToDevice, st));
    CUDA_TRY(cudaStreamSynchronize(st));
    return kOK;
}

int gnlp_cuda_scratch_info(int32_t device, int32_t release, int64_t *reserved, int64_t *used, int64_t *peak,
                           char *err_buf, size_t err_len) {
    ENTER(device);
    cudaMemPool_t pool;
    int rc = pool_for(device, &pool, err);
    if (rc != kOK) {
        return rc;
    }
    if (release != 0) {
        CUDA_TRY(cudaMemPoolTrimTo(pool, 0));
    }
    uint64_t v = 0;
    CUDA_TRY(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &v));
    *reserved = (int64_t)v;
    CUDA_TRY(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &v));
    *used = (int64_t)v;
    CUDA_TRY(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &v));
    *peak = (int64_t)v;
    return kOK;
}

int gnlp_cuda_all_finite(int32_t device, const void *x, int32_t dtype, int64_t n, int32_t *flag, void *stream,
                         char *err_buf, size_t err_len) {
    ENTER(device);
    STREAM;
    if (n <= 0) {
        return kOK;
    }
    DTYPE_SWITCH(dtype, k_all_finite<DT><<<grid_for(n), kThreads, 0, st>>>(CPTR(DT, x), n, flag));
    LAUNCHED("k_all_finite");
    return kOK;
}

int gnlp_cuda_sum_squares(int32_t device, const float *a, const float *b, int64_t n, double *out, void *stream,
                          char *err_buf, size_t err_len) {
    ENTER(device);
    STREAM;
    *out = 0;
    if (n <= 0) {
        return kOK;
    }
    cudaMemPool_t pool;
    int rc = pool_for(device, &pool, err);
    if (rc != kOK) {
        return rc;
    }
    const int blocks = grid_for(n);
    double *partial = nullptr; // blocks partials, then the sum
    CUDA_TRY(cudaMallocFromPoolAsync((void **)&partial, sizeof(double) * (size_t)(blocks + 1), pool, st));
    k_sum_squares<<<blocks, kThreads, 0, st>>>(a, b, n, partial);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) {
        k_sum_partials<<<1, kThreads, 0, st>>>(partial, blocks, partial + blocks);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) {
        e = cudaMemcpyAsync(out, partial + blocks, sizeof(double), cudaMemcpyDeviceToHost, st);
    }
    const cudaError_t freed = cudaFreeAsync(partial, st);
    if (e == cudaSuccess) {
        e = freed;
    }
    if (e == cudaSuccess) {
        e = cudaStreamSynchronize(st);
    }
    if (e != cudaSuccess) {
        return cuda_fail(err, e, "sum of squares");
    }
    return kOK;
}

int gnlp_cuda_axpby(int32_t device, float alpha, const float *x, float beta, float *y, int64_t n,
                    const int32_t *skip, void *stream, char *err_buf, size_t err_len) {
    ENTER(device);
    STREAM;
    if (n <= 0) {
        return kOK;
    }
    k_axpby<<<grid_for(n), kThreads, 0, st>>>(alpha, x, beta, y, n, skip);
    LAUNCHED("k_axpby");
    return kOK;
}

int gnlp_cuda_row_norms(int32_t device, const void *w, int32_t dtype, int64_t rows, int64_t cols, float *out,
                        void *stream, char *err_buf, size_t err_len) {
    ENTER(device);
    STREAM;
    if (rows <= 0) {
        return kOK;
    }
    DTYPE_SWITCH(dtype, k_row_norms<DT><<<grid_rows(rows), kThreads, 0, st>>>(CPTR(DT, w), rows, cols, out));
    LAUNCHED("k_row_norms");
    return kOK;
}

int gnlp_cuda_weight_norm_grad(int32_t device, const void *w, const void *grad, int32_t dtype, int64_t rows,
                               int64_t cols, const float *g, const float *s, float *dg, float *dv,
                               const int32_t *skip, void *stream, char *err_buf, size_t err_len) {
    ENTER(device);
    STREAM;
    if (rows <= 0) {
        return kOK;
    }
    DTYPE_SWITCH(dtype, k_weight_norm_grad<DT><<<grid_rows(rows), kThreads, 0, st>>>(
                            CPTR(DT, w), CPTR(DT, grad), rows, cols, g, s, dg, dv, skip));
    LAUNCHED("k_weight_norm_grad");
    return kOK;
}

int gnlp_cuda_matmul(int32_t device, int32_t trans_a, const float *a, int64_t ar, int64_t ac, int32_t trans_b,
                     const float *b, int64_t br, int64_t bc, float alpha, float *c, int64_t cr, int64_t cc,
                     int32_t tf32, void *stream, char *err_buf, size_t err_len) {
    ENTER(device);
    STREAM;
    CublasLease lease{device, st};
    int rc = lease.acquire(err);
    if (rc != kOK) {
        return rc;
    }
    return matmul_rowmajor(CublasGemm{lease.h, tf32 != 0, err}, trans_a != 0, a, ar, ac, trans_b != 0, b, br, bc,
                           alpha, c, cr, cc, err);
}

int gnlp_cuda_singular_vectors(int32_t device, const float *a, int64_t m, int64_t n, float *left, int64_t kl,
                               float *right, int64_t kr, const int32_t *skip, void *stream, char *err_buf,
                               size_t err_len) {
    ENTER(device);
    STREAM;
    cudaMemPool_t pool;
    int rc = pool_for(device, &pool, err);
    if (rc != kOK) {
        return rc;
    }
    CusolverLease lease{device, st};
    if ((rc = lease.acquire(err)) != kOK) {
        return rc;
    }
    DeviceSvdOps ops{st, pool, lease.h, skip, err, m, n};
    return singular_vectors_rowmajor(ops, a, m, n, left, kl, right, kr, err);
}

int gnlp_cuda_adam_direction(int32_t device, float *x, int64_t n, const gnlp_cuda_moments *mom,
                             const gnlp_cuda_adam *h, const int32_t *skip, void *stream, char *err_buf,
                             size_t err_len) {
    ENTER(device);
    STREAM;
    if (n <= 0) {
        return kOK;
    }
    if (mom->bits == 32) {
        k_adam_f32<<<grid_for(n), kThreads, 0, st>>>(x, n, static_cast<float *>(mom->m1),
                                                      static_cast<float *>(mom->m2), scalars(h), skip);
        LAUNCHED("k_adam_f32");
        return kOK;
    }
    int rc = check_bits(mom->bits, err);
    if (rc != kOK) {
        return rc;
    }
    const int64_t blocks = (n + kQuantBlock - 1) / kQuantBlock;
    k_adam_quant<<<(int)(blocks < kMaxGrid ? blocks : kMaxGrid), kQuantBlock, 0, st>>>(x, n, *mom, scalars(h), skip);
    LAUNCHED("k_adam_quant");
    return kOK;
}

int gnlp_cuda_weight_norm_update(int32_t device, void *w, int32_t dtype, int64_t rows, int64_t cols, float *g,
                                 float *s, const float *dvlow, const float *ng, const gnlp_cuda_adam *h,
                                 const int32_t *skip, void *stream, char *err_buf, size_t err_len) {
    ENTER(device);
    STREAM;
    if (rows <= 0) {
        return kOK;
    }
    DTYPE_SWITCH(dtype, k_weight_norm_update<DT><<<grid_rows(rows), kThreads, 0, st>>>(
                            PTR(DT, w), rows, cols, g, s, dvlow, ng, scalars(h), skip));
    LAUNCHED("k_weight_norm_update");
    return kOK;
}

int gnlp_cuda_adamw(int32_t device, void *w, const void *grad, int32_t dtype, int64_t n,
                    const gnlp_cuda_moments *mom, const gnlp_cuda_adam *h, const int32_t *skip, void *stream,
                    char *err_buf, size_t err_len) {
    ENTER(device);
    STREAM;
    if (n <= 0) {
        return kOK;
    }
    if (mom->bits == 32) {
        DTYPE_SWITCH(dtype, k_adamw_f32<DT><<<grid_for(n), kThreads, 0, st>>>(
                                PTR(DT, w), CPTR(DT, grad), n, static_cast<float *>(mom->m1),
                                static_cast<float *>(mom->m2), scalars(h), skip));
        LAUNCHED("k_adamw_f32");
        return kOK;
    }
    int rc = check_bits(mom->bits, err);
    if (rc != kOK) {
        return rc;
    }
    const int64_t blocks = (n + kQuantBlock - 1) / kQuantBlock;
    const int grid = (int)(blocks < kMaxGrid ? blocks : kMaxGrid);
    DTYPE_SWITCH(dtype, k_adamw_quant<DT><<<grid, kQuantBlock, 0, st>>>(PTR(DT, w), CPTR(DT, grad), n, *mom,
                                                                       scalars(h), skip));
    LAUNCHED("k_adamw_quant");
    return kOK;
}

int gnlp_cuda_encode(int32_t device, const float *src, int64_t n, uint8_t *codes, float *absmax, int32_t bits,
                     int32_t is_signed, const int32_t *skip, void *stream, char *err_buf, size_t err_len) {
    ENTER(device);
    STREAM;
    int rc = check_bits(bits, err);
    if (rc != kOK || n <= 0) {
        return rc;
    }
    const int64_t blocks = (n + kQuantBlock - 1) / kQuantBlock;
    k_encode<<<(int)(blocks < kMaxGrid ? blocks : kMaxGrid), kQuantBlock, 0, st>>>(src, n, codes, absmax, bits,
                                                                                   is_signed != 0, skip);
    LAUNCHED("k_encode");
    return kOK;
}

int gnlp_cuda_decode(int32_t device, const uint8_t *codes, const float *absmax, int32_t bits, int32_t is_signed,
                     int64_t n, float *dst, void *stream, char *err_buf, size_t err_len) {
    ENTER(device);
    STREAM;
    int rc = check_bits(bits, err);
    if (rc != kOK || n <= 0) {
        return rc;
    }
    k_decode<<<grid_for(n), kThreads, 0, st>>>(codes, absmax, bits, is_signed != 0, n, dst);
    LAUNCHED("k_decode");
    return kOK;
}

} // extern "C"
