/* goapi.h — the Go side's view of libgnlp_cuda.so: a table of dlsym'd
 * function pointers, the loader, and one static call wrapper per function
 * (cgo cannot call through function pointers). Included by the cgo
 * preambles of package cuda only. */
#ifndef GNLP_CUDA_GOAPI_H
#define GNLP_CUDA_GOAPI_H
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include "gnlp_cuda.h"

/* Every entry point of libgnlp_cuda.so but gnlp_cuda_abi_version, once:
 * X(name, return type, parameters, arguments). Expanded below into the
 * table's fields, the dlsym calls and the call wrappers gc_NAME (cgo cannot
 * call through function pointers). Parameters mirror gnlp_cuda.h. */
#define GNLP_CUDA_FUNCS(X)                                                                                    \
    X(device_count, int, (int32_t *n, char *e, size_t l), (n, e, l))                                          \
    X(alloc, int, (int32_t d, int64_t b, void *s, void **o, char *e, size_t l), (d, b, s, o, e, l))           \
    X(free, int, (int32_t d, void *p, void *s, char *e, size_t l), (d, p, s, e, l))                          \
    X(zero, int, (int32_t d, void *p, int64_t b, void *s, char *e, size_t l), (d, p, b, s, e, l))            \
    X(copy, int, (int32_t d, void *dst, const void *src, int64_t b, void *s, char *e, size_t l),              \
      (d, dst, src, b, s, e, l))                                                                              \
    X(read, int, (int32_t d, void *h, const void *p, int64_t b, void *s, char *e, size_t l),                  \
      (d, h, p, b, s, e, l))                                                                                  \
    X(write, int, (int32_t d, void *p, const void *h, int64_t b, void *s, char *e, size_t l),                 \
      (d, p, h, b, s, e, l))                                                                                  \
    X(scratch_info, int, (int32_t d, int32_t r, int64_t *res, int64_t *used, int64_t *peak, char *e, size_t l), \
      (d, r, res, used, peak, e, l))                                                                          \
    X(all_finite, int, (int32_t d, const void *x, int32_t dt, int64_t n, int32_t *f, void *s, char *e, size_t l), \
      (d, x, dt, n, f, s, e, l))                                                                              \
    X(sum_squares, int, (int32_t d, const float *a, const float *b, int64_t n, double *o, void *s, char *e, size_t l), \
      (d, a, b, n, o, s, e, l))                                                                               \
    X(axpby, int,                                                                                             \
      (int32_t d, float al, const float *x, float be, float *y, int64_t n, const int32_t *skip, void *s, char *e, \
       size_t l),                                                                                             \
      (d, al, x, be, y, n, skip, s, e, l))                                                                    \
    X(row_norms, int,                                                                                         \
      (int32_t d, const void *w, int32_t dt, int64_t r, int64_t c, float *o, void *s, char *e, size_t l),     \
      (d, w, dt, r, c, o, s, e, l))                                                                           \
    X(weight_norm_grad, int,                                                                                  \
      (int32_t d, const void *w, const void *g, int32_t dt, int64_t r, int64_t c, const float *mag,           \
       const float *dn, float *dg, float *dv, const int32_t *skip, void *s, char *e, size_t l),               \
      (d, w, g, dt, r, c, mag, dn, dg, dv, skip, s, e, l))                                                    \
    X(matmul, int,                                                                                            \
      (int32_t d, int32_t ta, const float *A, int64_t ar, int64_t ac, int32_t tb, const float *B, int64_t br, \
       int64_t bc, float alpha, float *C, int64_t cr, int64_t cc, int32_t tf32, void *s, char *e, size_t l),  \
      (d, ta, A, ar, ac, tb, B, br, bc, alpha, C, cr, cc, tf32, s, e, l))                                     \
    X(singular_vectors, int,                                                                                  \
      (int32_t d, const float *A, int64_t m, int64_t n, float *left, int64_t kl, float *right, int64_t kr,    \
       const int32_t *skip, void *s, char *e, size_t l),                                                      \
      (d, A, m, n, left, kl, right, kr, skip, s, e, l))                                                       \
    X(adam_direction, int,                                                                                    \
      (int32_t d, float *x, int64_t n, const gnlp_cuda_moments *m, const gnlp_cuda_adam *h,                   \
       const int32_t *skip, void *s, char *e, size_t l),                                                      \
      (d, x, n, m, h, skip, s, e, l))                                                                         \
    X(weight_norm_update, int,                                                                                \
      (int32_t d, void *w, int32_t dt, int64_t r, int64_t c, float *g, float *sn, const float *u,             \
       const float *ng, const gnlp_cuda_adam *h, const int32_t *skip, void *s, char *e, size_t l),            \
      (d, w, dt, r, c, g, sn, u, ng, h, skip, s, e, l))                                                       \
    X(adamw, int,                                                                                             \
      (int32_t d, void *w, const void *g, int32_t dt, int64_t n, const gnlp_cuda_moments *m,                  \
       const gnlp_cuda_adam *h, const int32_t *skip, void *s, char *e, size_t l),                             \
      (d, w, g, dt, n, m, h, skip, s, e, l))                                                                  \
    X(encode, int,                                                                                            \
      (int32_t d, const float *src, int64_t n, uint8_t *codes, float *absmax, int32_t bits, int32_t sg,       \
       const int32_t *skip, void *s, char *e, size_t l),                                                      \
      (d, src, n, codes, absmax, bits, sg, skip, s, e, l))                                                    \
    X(decode, int,                                                                                            \
      (int32_t d, const uint8_t *codes, const float *absmax, int32_t bits, int32_t sg, int64_t n, float *dst, \
       void *s, char *e, size_t l),                                                                           \
      (d, codes, absmax, bits, sg, n, dst, s, e, l))

typedef struct gnlp_cuda_api {
    int32_t (*abi_version)(void);
#define GNLP_FIELD(name, ret, params, args) ret(*name) params;
    GNLP_CUDA_FUNCS(GNLP_FIELD)
#undef GNLP_FIELD
} gnlp_cuda_api;

// gnlp_cuda_open loads the library at path and fills api; on failure it
// writes the reason to err and returns nonzero.
static inline int gnlp_cuda_open(const char *path, gnlp_cuda_api *api, char *err, size_t err_len) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        snprintf(err, err_len, "%s", dlerror());
        return 1;
    }
#define GNLP_SYM(field, name)                                                                 \
    *(void **)(&api->field) = dlsym(h, name);                                                 \
    if (api->field == NULL) {                                                                 \
        snprintf(err, err_len, "%s has no symbol %s (a libgnlp_cuda.so from another version?)", path, name); \
        dlclose(h);                                                                           \
        return 1;                                                                             \
    }
    GNLP_SYM(abi_version, "gnlp_cuda_abi_version")
#define GNLP_LOAD(name, ret, params, args) GNLP_SYM(name, "gnlp_cuda_" #name)
    GNLP_CUDA_FUNCS(GNLP_LOAD)
#undef GNLP_LOAD
#undef GNLP_SYM
    if (api->abi_version() != GNLP_CUDA_ABI_VERSION) {
        snprintf(err, err_len, "%s has CUDA backend ABI version %d, this library wants %d: rebuild it from the same source",
                 path, (int)api->abi_version(), GNLP_CUDA_ABI_VERSION);
        dlclose(h);
        return 1;
    }
    return 0;
}

// gnlp_cuda_self_path is the file this code was linked into (the Go
// library, or a test binary), or NULL.
static inline const char *gnlp_cuda_self_path(void) {
    Dl_info info;
    if (dladdr((void *)&gnlp_cuda_self_path, &info) == 0 || info.dli_fname == NULL) {
        return NULL;
    }
    return info.dli_fname;
}

// Calls through the table: gc_NAME(api, arguments...).
#define GNLP_WITH_API(...) (gnlp_cuda_api * api, __VA_ARGS__)
#define GNLP_WRAP(name, ret, params, args) \
    static inline ret gc_##name GNLP_WITH_API params { return api->name args; }
GNLP_CUDA_FUNCS(GNLP_WRAP)
#undef GNLP_WRAP
#undef GNLP_WITH_API

static inline gnlp_cuda_moments gc_moments(void *m1, void *m2, void *a1, void *a2, int32_t bits) {
    gnlp_cuda_moments m = {m1, m2, (float *)a1, (float *)a2, bits};
    return m;
}
static inline gnlp_cuda_adam gc_adam(float b1, float b2, float omb1, float omb2, float eps, float step, float decay) {
    gnlp_cuda_adam h = {b1, b2, omb1, omb2, eps, step, decay};
    return h;
}

#endif /* GNLP_CUDA_GOAPI_H */
