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

typedef struct gnlp_cuda_api {
    int32_t (*abi_version)(void);
    int (*device_count)(int32_t *, char *, size_t);
    int (*alloc)(int32_t, int64_t, void *, void **, char *, size_t);
    int (*free_)(int32_t, void *, void *, char *, size_t);
    int (*zero)(int32_t, void *, int64_t, void *, char *, size_t);
    int (*read)(int32_t, void *, const void *, int64_t, void *, char *, size_t);
    int (*scratch_info)(int32_t, int32_t, int64_t *, int64_t *, int64_t *, char *, size_t);
    int (*all_finite)(int32_t, const void *, int32_t, int64_t, int32_t *, void *, char *, size_t);
    int (*row_norms)(int32_t, const void *, int32_t, int64_t, int64_t, float *, void *, char *, size_t);
    int (*weight_norm_grad)(int32_t, const void *, const void *, int32_t, int64_t, int64_t, const float *,
                            const float *, float *, float *, const int32_t *, void *, char *, size_t);
    int (*matmul)(int32_t, int32_t, const float *, int64_t, int64_t, int32_t, const float *, int64_t, int64_t,
                  float, float *, int64_t, int64_t, int32_t, void *, char *, size_t);
    int (*singular_vectors)(int32_t, const float *, int64_t, int64_t, float *, int64_t, float *, int64_t,
                            const int32_t *, void *, char *, size_t);
    int (*adam_direction)(int32_t, float *, int64_t, const gnlp_cuda_moments *, const gnlp_cuda_adam *,
                          const int32_t *, void *, char *, size_t);
    int (*weight_norm_update)(int32_t, void *, int32_t, int64_t, int64_t, float *, float *, const float *,
                              const float *, const gnlp_cuda_adam *, const int32_t *, void *, char *, size_t);
    int (*adamw)(int32_t, void *, const void *, int32_t, int64_t, const gnlp_cuda_moments *,
                 const gnlp_cuda_adam *, const int32_t *, void *, char *, size_t);
    int (*encode)(int32_t, const float *, int64_t, uint8_t *, float *, int32_t, int32_t, const int32_t *, void *,
                  char *, size_t);
    int (*decode)(int32_t, const uint8_t *, const float *, int32_t, int32_t, int64_t, float *, void *, char *,
                  size_t);
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
    GNLP_SYM(device_count, "gnlp_cuda_device_count")
    GNLP_SYM(alloc, "gnlp_cuda_alloc")
    GNLP_SYM(free_, "gnlp_cuda_free")
    GNLP_SYM(zero, "gnlp_cuda_zero")
    GNLP_SYM(read, "gnlp_cuda_read")
    GNLP_SYM(scratch_info, "gnlp_cuda_scratch_info")
    GNLP_SYM(all_finite, "gnlp_cuda_all_finite")
    GNLP_SYM(row_norms, "gnlp_cuda_row_norms")
    GNLP_SYM(weight_norm_grad, "gnlp_cuda_weight_norm_grad")
    GNLP_SYM(matmul, "gnlp_cuda_matmul")
    GNLP_SYM(singular_vectors, "gnlp_cuda_singular_vectors")
    GNLP_SYM(adam_direction, "gnlp_cuda_adam_direction")
    GNLP_SYM(weight_norm_update, "gnlp_cuda_weight_norm_update")
    GNLP_SYM(adamw, "gnlp_cuda_adamw")
    GNLP_SYM(encode, "gnlp_cuda_encode")
    GNLP_SYM(decode, "gnlp_cuda_decode")
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

// Calls through the table (cgo cannot call function pointers itself).
static inline int gc_device_count(gnlp_cuda_api *a, int32_t *n, char *e, size_t l) { return a->device_count(n, e, l); }
static inline int gc_alloc(gnlp_cuda_api *a, int32_t d, int64_t b, void *s, void **o, char *e, size_t l) { return a->alloc(d, b, s, o, e, l); }
static inline int gc_free(gnlp_cuda_api *a, int32_t d, void *p, void *s, char *e, size_t l) { return a->free_(d, p, s, e, l); }
static inline int gc_zero(gnlp_cuda_api *a, int32_t d, void *p, int64_t b, void *s, char *e, size_t l) { return a->zero(d, p, b, s, e, l); }
static inline int gc_read(gnlp_cuda_api *a, int32_t d, void *h, const void *p, int64_t b, void *s, char *e, size_t l) { return a->read(d, h, p, b, s, e, l); }
static inline int gc_scratch_info(gnlp_cuda_api *a, int32_t d, int32_t r, int64_t *res, int64_t *used, int64_t *peak, char *e, size_t l) { return a->scratch_info(d, r, res, used, peak, e, l); }
static inline int gc_all_finite(gnlp_cuda_api *a, int32_t d, const void *x, int32_t dt, int64_t n, int32_t *f, void *s, char *e, size_t l) { return a->all_finite(d, x, dt, n, f, s, e, l); }
static inline int gc_row_norms(gnlp_cuda_api *a, int32_t d, const void *w, int32_t dt, int64_t r, int64_t c, float *o, void *s, char *e, size_t l) { return a->row_norms(d, w, dt, r, c, o, s, e, l); }
static inline int gc_weight_norm_grad(gnlp_cuda_api *a, int32_t d, const void *w, const void *g, int32_t dt, int64_t r, int64_t c, const float *mag, const float *dn, float *dg, float *dv, const int32_t *skip, void *s, char *e, size_t l) {
    return a->weight_norm_grad(d, w, g, dt, r, c, mag, dn, dg, dv, skip, s, e, l);
}
static inline int gc_matmul(gnlp_cuda_api *a, int32_t d, int32_t ta, const float *A, int64_t ar, int64_t ac, int32_t tb, const float *B, int64_t br, int64_t bc, float alpha, float *C, int64_t cr, int64_t cc, int32_t tf32, void *s, char *e, size_t l) {
    return a->matmul(d, ta, A, ar, ac, tb, B, br, bc, alpha, C, cr, cc, tf32, s, e, l);
}
static inline int gc_singular_vectors(gnlp_cuda_api *a, int32_t d, const float *A, int64_t m, int64_t n, float *left, int64_t kl, float *right, int64_t kr, const int32_t *skip, void *s, char *e, size_t l) {
    return a->singular_vectors(d, A, m, n, left, kl, right, kr, skip, s, e, l);
}
static inline gnlp_cuda_moments gc_moments(void *m1, void *m2, void *a1, void *a2, int32_t bits) {
    gnlp_cuda_moments m = {m1, m2, (float *)a1, (float *)a2, bits};
    return m;
}
static inline gnlp_cuda_adam gc_adam(float b1, float b2, float omb1, float omb2, float eps, float step, float decay) {
    gnlp_cuda_adam h = {b1, b2, omb1, omb2, eps, step, decay};
    return h;
}
static inline int gc_adam_direction(gnlp_cuda_api *a, int32_t d, float *x, int64_t n, gnlp_cuda_moments m, gnlp_cuda_adam h, const int32_t *skip, void *s, char *e, size_t l) {
    return a->adam_direction(d, x, n, &m, &h, skip, s, e, l);
}
static inline int gc_weight_norm_update(gnlp_cuda_api *a, int32_t d, void *w, int32_t dt, int64_t r, int64_t c, float *g, float *sn, const float *u, const float *ng, gnlp_cuda_adam h, const int32_t *skip, void *s, char *e, size_t l) {
    return a->weight_norm_update(d, w, dt, r, c, g, sn, u, ng, &h, skip, s, e, l);
}
static inline int gc_adamw(gnlp_cuda_api *a, int32_t d, void *w, const void *g, int32_t dt, int64_t n, gnlp_cuda_moments m, gnlp_cuda_adam h, const int32_t *skip, void *s, char *e, size_t l) {
    return a->adamw(d, w, g, dt, n, &m, &h, skip, s, e, l);
}
static inline int gc_encode(gnlp_cuda_api *a, int32_t d, const float *src, int64_t n, void *codes, float *absmax, int32_t bits, int32_t sg, const int32_t *skip, void *s, char *e, size_t l) {
    return a->encode(d, src, n, (uint8_t *)codes, absmax, bits, sg, skip, s, e, l);
}
static inline int gc_decode(gnlp_cuda_api *a, int32_t d, const void *codes, const float *absmax, int32_t bits, int32_t sg, int64_t n, float *dst, void *s, char *e, size_t l) {
    return a->decode(d, (const uint8_t *)codes, absmax, bits, sg, n, dst, s, e, l);
}

#endif /* GNLP_CUDA_GOAPI_H */
