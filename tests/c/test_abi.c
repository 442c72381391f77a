/*
 * test_abi.c: tests libgradnormlorp through its C ABI (include/gradnormlorp.h)
 * the way a C caller uses it: query the state layout, malloc the buffers,
 * gnlp_state_init, then gnlp_step / gnlp_step_batch.
 *
 * Results are checked against a reference written here in double precision
 * (SPEC section 1 and the primitives documented in core/backend.go). The
 * reference needs singular vectors; to keep it free of an SVD library every
 * projected test matrix has one side of size 1 or 2, so the Gram matrix of
 * that side is 1x1 or 2x2 and has closed-form eigenvectors. (A side of size 1
 * alone is not enough: for an m x 1 matrix every row is a scalar, its
 * direction cannot change, and the weight-norm direction gradient dV is 0.)
 *
 * Prints "N passed, M failed" and exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L

#include "gradnormlorp.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------ checks */

static int n_pass, n_fail;

static void check(int ok, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    if (ok) {
        n_pass++;
        return;
    }
    n_fail++;
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}
#define CHECK(cond, ...) check(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

static const char *status_name(int s)
{
    static const char *names[] = {
        "GNLP_OK", "GNLP_ERR_INVALID_ARGUMENT", "GNLP_ERR_NULL_POINTER", "GNLP_ERR_MISALIGNED",
        "GNLP_ERR_SHAPE", "GNLP_ERR_DTYPE", "GNLP_ERR_NOT_CONTIGUOUS", "GNLP_ERR_NONFINITE",
        "GNLP_ERR_UNKNOWN_OPTION", "GNLP_ERR_DEVICE", "GNLP_ERR_BACKEND_UNAVAILABLE",
        "GNLP_ERR_BUFFER_TOO_SMALL", "GNLP_ERR_NUMERICAL", "GNLP_ERR_INTERNAL"};
    if (s >= 0 && s < (int)(sizeof names / sizeof names[0]))
        return names[s];
    return "(unknown status)";
}

/* Checks a status and, for errors, that gnlp_last_error() explains it. */
#define CHECK_STATUS(expr, want)                                                          \
    do {                                                                                  \
        int got_ = (int)(expr);                                                           \
        const char *msg_ = gnlp_last_error();                                             \
        CHECK(got_ == (int)(want), "%s returned %s, want %s (last error: \"%s\")", #expr, \
              status_name(got_), status_name((int)(want)), msg_ ? msg_ : "(null)");       \
        if ((int)(want) != GNLP_OK && got_ == (int)(want))                                \
            CHECK(msg_ != NULL && msg_[0] != '\0',                                        \
                  "%s failed with %s but gnlp_last_error() is empty", #expr,              \
                  status_name(got_));                                                     \
    } while (0)

static void fatal(const char *what)
{
    fprintf(stderr, "fatal: %s (last error: \"%s\")\n", what, gnlp_last_error());
    fprintf(stderr, "%d passed, %d failed\n", n_pass, n_fail + 1);
    exit(1);
}

/* ---------------------------------------------------------------- helpers */

/* per thread: the thread test runs two instances at once */
static __thread uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static double urand(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

static gnlp_tensor host_tensor(void *data, int32_t dtype, int ndim, int64_t d0, int64_t d1)
{
    gnlp_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.ndim = ndim;
    t.shape[0] = d0;
    if (ndim == 2) {
        t.shape[1] = d1;
        t.strides[0] = d1;
        t.strides[1] = 1;
    } else {
        t.strides[0] = 1;
    }
    t.device_type = GNLP_DEVICE_CPU;
    t.device_index = 0;
    return t;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        fatal("out of memory");
    return p;
}

/* -------------------------------------------------- reference in double */

enum { SIDE_LEFT = 1, SIDE_RIGHT = 2 };

typedef struct {
    int m, n;      /* n == 0: a vector of m elements */
    int projected; /* else plain AdamW */
    int k, sides;
    int rr, rc;    /* shape of R (projected) */
    double *W;     /* m x max(n,1) */
    double *M1, *M2;
    double *P, *Q; /* m x k, k x n */
    double *g, *s, *a1, *a2;
} ref_t;

static int cols_of(int n) { return n ? n : 1; }

static void ref_alloc(ref_t *r, int m, int n, const gnlp_config *c)
{
    memset(r, 0, sizeof *r);
    r->m = m;
    r->n = n;
    r->projected = c->rank > 0 && n > 0;
    if (r->projected) {
        int k = c->rank;
        if (k > m)
            k = m;
        if (k > n)
            k = n;
        r->k = k;
        switch (c->proj_type) {
        case GNLP_PROJ_STD: r->sides = m >= n ? SIDE_RIGHT : SIDE_LEFT; break;
        case GNLP_PROJ_REVERSE_STD: r->sides = m >= n ? SIDE_LEFT : SIDE_RIGHT; break;
        case GNLP_PROJ_LEFT: r->sides = SIDE_LEFT; break;
        case GNLP_PROJ_RIGHT: r->sides = SIDE_RIGHT; break;
        default: r->sides = SIDE_LEFT | SIDE_RIGHT; break;
        }
        r->rr = (r->sides & SIDE_LEFT) ? k : m;
        r->rc = (r->sides & SIDE_RIGHT) ? k : n;
        r->M1 = calloc((size_t)r->rr * r->rc, sizeof(double));
        r->M2 = calloc((size_t)r->rr * r->rc, sizeof(double));
        r->P = calloc((size_t)m * k, sizeof(double));
        r->Q = calloc((size_t)k * n, sizeof(double));
        r->g = calloc((size_t)m, sizeof(double));
        r->s = calloc((size_t)m, sizeof(double));
        r->a1 = calloc((size_t)m, sizeof(double));
        r->a2 = calloc((size_t)m, sizeof(double));
    } else {
        r->M1 = calloc((size_t)m * cols_of(n), sizeof(double));
        r->M2 = calloc((size_t)m * cols_of(n), sizeof(double));
    }
    r->W = calloc((size_t)m * cols_of(n), sizeof(double));
}

static void ref_free(ref_t *r)
{
    free(r->W); free(r->M1); free(r->M2); free(r->P); free(r->Q);
    free(r->g); free(r->s); free(r->a1); free(r->a2);
}

static double row_norm(const double *x, int n)
{
    double acc = 0;
    for (int j = 0; j < n; j++)
        acc += x[j] * x[j];
    return sqrt(acc);
}

static void ref_init(ref_t *r, const float *w)
{
    int cols = cols_of(r->n);
    for (int i = 0; i < r->m * cols; i++)
        r->W[i] = w[i];
    if (r->projected)
        for (int i = 0; i < r->m; i++)
            r->g[i] = r->s[i] = row_norm(r->W + (size_t)i * r->n, r->n);
}

/* Flips x so that its entry of largest magnitude (the first on ties) is positive. */
static void sign_rule(double *x, int len, int stride)
{
    int best = 0;
    for (int i = 1; i < len; i++)
        if (fabs(x[i * stride]) > fabs(x[best * stride]))
            best = i;
    if (x[best * stride] < 0)
        for (int i = 0; i < len; i++)
            x[i * stride] = -x[i * stride];
}

/* Eigenvectors of the symmetric matrix [[a, b], [b, c]], largest eigenvalue first. */
static void eig2(double a, double b, double c, double v1[2], double v2[2])
{
    double half = 0.5 * (a - c), d = sqrt(half * half + b * b), l1 = 0.5 * (a + c) + d;
    double x1 = b, y1 = l1 - a, x2 = l1 - c, y2 = b;
    double n1 = hypot(x1, y1), n2 = hypot(x2, y2);
    if (n1 >= n2 && n1 > 0) {
        v1[0] = x1 / n1; v1[1] = y1 / n1;
    } else if (n2 > 0) {
        v1[0] = x2 / n2; v1[1] = y2 / n2;
    } else { /* a multiple of the identity: any basis */
        v1[0] = 1; v1[1] = 0;
    }
    v2[0] = -v1[1];
    v2[1] = v1[0];
}

/* Leading k singular vectors of A (m x n, min(m, n) <= 2) into P's columns
 * (m x k) and Q's rows (k x n), each made sign-canonical. */
static void small_svd(const double *A, int m, int n, int k, double *P, double *Q)
{
    double basis[2][2]; /* eigenvectors of the small Gram matrix */
    int small = m < n ? m : n;
    if (small > 2) {
        fprintf(stderr, "small_svd: min(m, n) = %d > 2\n", small);
        exit(2);
    }
    if (m >= n) { /* Gram = A^T A, n x n: right vectors first */
        if (n == 1) {
            basis[0][0] = 1;
        } else {
            double a = 0, b = 0, c = 0;
            for (int i = 0; i < m; i++) {
                a += A[i * n] * A[i * n];
                b += A[i * n] * A[i * n + 1];
                c += A[i * n + 1] * A[i * n + 1];
            }
            eig2(a, b, c, basis[0], basis[1]);
        }
        for (int j = 0; j < k; j++) {
            double *u = P + j; /* column j, stride k */
            double nrm = 0;
            for (int i = 0; i < m; i++) {
                double acc = 0;
                for (int c2 = 0; c2 < n; c2++)
                    acc += A[i * n + c2] * basis[j][c2];
                u[i * k] = acc;
                nrm += acc * acc;
            }
            nrm = sqrt(nrm);
            for (int i = 0; i < m; i++)
                u[i * k] /= nrm;
            for (int c2 = 0; c2 < n; c2++)
                Q[j * n + c2] = basis[j][c2];
        }
    } else { /* Gram = A A^T, m x m: left vectors first */
        if (m == 1) {
            basis[0][0] = 1;
        } else {
            double a = row_norm(A, n), c = row_norm(A + n, n), b = 0;
            for (int c2 = 0; c2 < n; c2++)
                b += A[c2] * A[n + c2];
            eig2(a * a, b, c * c, basis[0], basis[1]);
        }
        for (int j = 0; j < k; j++) {
            double nrm = 0;
            for (int c2 = 0; c2 < n; c2++) {
                double acc = 0;
                for (int i = 0; i < m; i++)
                    acc += A[i * n + c2] * basis[j][i];
                Q[j * n + c2] = acc;
                nrm += acc * acc;
            }
            nrm = sqrt(nrm);
            for (int c2 = 0; c2 < n; c2++)
                Q[j * n + c2] /= nrm;
            for (int i = 0; i < m; i++)
                P[i * k + j] = basis[j][i];
        }
    }
    for (int j = 0; j < k; j++) {
        sign_rule(P + j, m, k);
        sign_rule(Q + (size_t)j * n, n, 1);
    }
}

/* C (r x c) = op(A) * op(B) with op(A) r x inner. */
static void matmul(int ta, const double *A, int tb, const double *B, double *C, int r, int c, int inner)
{
    for (int i = 0; i < r; i++)
        for (int j = 0; j < c; j++) {
            double acc = 0;
            for (int l = 0; l < inner; l++) {
                double x = ta ? A[l * r + i] : A[i * inner + l];
                double y = tb ? B[j * inner + l] : B[l * c + j];
                acc += x * y;
            }
            C[i * c + j] = acc;
        }
}

typedef struct {
    double b1, b2, eps, step_size, decay;
} adam_t;

static adam_t adam_params(const gnlp_config *c, long t)
{
    adam_t h;
    h.b1 = c->beta1;
    h.b2 = c->beta2;
    h.eps = c->eps;
    h.step_size = c->lr;
    if (c->correct_bias)
        h.step_size = c->lr * sqrt(1 - pow(c->beta2, (double)t)) / (1 - pow(c->beta1, (double)t));
    h.decay = 1 - c->lr * c->weight_decay;
    return h;
}

/* Updates the moments from x and overwrites x with m1 / (sqrt(m2) + eps). */
static void adam_direction(double *x, double *m1, double *m2, int len, adam_t h)
{
    for (int i = 0; i < len; i++) {
        m1[i] = h.b1 * m1[i] + (1 - h.b1) * x[i];
        m2[i] = h.b2 * m2[i] + (1 - h.b2) * x[i] * x[i];
        x[i] = m1[i] / (sqrt(m2[i]) + h.eps);
    }
}

static void ref_step(ref_t *r, const gnlp_config *c, const double *G, long t)
{
    adam_t h = adam_params(c, t);
    int m = r->m, n = r->n, k = r->k, cols = cols_of(n);
    if (!r->projected) { /* plain AdamW */
        double *x = xmalloc(sizeof(double) * m * cols);
        memcpy(x, G, sizeof(double) * m * cols);
        adam_direction(x, r->M1, r->M2, m * cols, h);
        for (int i = 0; i < m * cols; i++)
            r->W[i] = r->W[i] * h.decay - h.step_size * x[i];
        free(x);
        return;
    }
    double *dg = xmalloc(sizeof(double) * m), *dv = xmalloc(sizeof(double) * m * n);
    double *R = xmalloc(sizeof(double) * r->rr * r->rc), *tmp = xmalloc(sizeof(double) * k * n);
    double *low = xmalloc(sizeof(double) * m * n);
    /* 1-2: exact weight-norm gradients; zero rows are not normalised */
    for (int i = 0; i < m; i++) {
        const double *w = r->W + (size_t)i * n, *gr = G + (size_t)i * n;
        double *d = dv + (size_t)i * n;
        if (r->g[i] == 0) {
            dg[i] = 0;
            memcpy(d, gr, sizeof(double) * n);
            continue;
        }
        double acc = 0;
        for (int j = 0; j < n; j++)
            acc += gr[j] * w[j] / r->g[i];
        dg[i] = acc;
        for (int j = 0; j < n; j++)
            d[j] = (r->g[i] / r->s[i]) * (gr[j] - acc * w[j] / r->g[i]);
    }
    /* 3: projector refresh */
    if ((t - 1) % c->update_proj_gap == 0) {
        double *P = xmalloc(sizeof(double) * m * k), *Q = xmalloc(sizeof(double) * k * n);
        small_svd(dv, m, n, k, P, Q);
        if (r->sides & SIDE_LEFT)
            memcpy(r->P, P, sizeof(double) * m * k);
        if (r->sides & SIDE_RIGHT)
            memcpy(r->Q, Q, sizeof(double) * k * n);
        free(P);
        free(Q);
    }
    /* 4: project */
    switch (r->sides) {
    case SIDE_LEFT: matmul(1, r->P, 0, dv, R, k, n, m); break;
    case SIDE_RIGHT: matmul(0, dv, 1, r->Q, R, m, k, n); break;
    default:
        matmul(1, r->P, 0, dv, tmp, k, n, m);
        matmul(0, tmp, 1, r->Q, R, k, k, n);
    }
    /* 5: Adam in the low-rank space */
    adam_direction(R, r->M1, r->M2, r->rr * r->rc, h);
    /* 6: project back and scale */
    switch (r->sides) {
    case SIDE_LEFT: matmul(0, r->P, 0, R, low, m, n, k); break;
    case SIDE_RIGHT: matmul(0, R, 0, r->Q, low, m, n, k); break;
    default:
        matmul(0, R, 0, r->Q, tmp, k, n, k);
        matmul(0, r->P, 0, tmp, low, m, n, k);
    }
    for (int i = 0; i < m * n; i++)
        low[i] *= c->scale;
    /* 7: Adam on the magnitude gradient */
    adam_direction(dg, r->a1, r->a2, m, h);
    /* 8-9: update direction and magnitude, renormalise, write W */
    for (int i = 0; i < m; i++) {
        double *w = r->W + (size_t)i * n, *lo = low + (size_t)i * n;
        if (r->g[i] == 0) {
            for (int j = 0; j < n; j++)
                w[j] = w[j] * h.decay - h.step_size * lo[j];
            r->g[i] = r->s[i] = row_norm(w, n);
            continue;
        }
        double *v = tmp; /* n >= k, so tmp has room for one row */
        for (int j = 0; j < n; j++)
            v[j] = r->s[i] * w[j] / r->g[i] - h.step_size * lo[j];
        r->g[i] = (r->g[i] - h.step_size * dg[i]) * h.decay;
        r->s[i] = row_norm(v, n);
        for (int j = 0; j < n; j++)
            w[j] = r->g[i] * v[j] / r->s[i];
    }
    free(dg); free(dv); free(R); free(tmp); free(low);
}

/* ------------------------------------------------ one parameter in the ABI */

typedef struct {
    const char *name;
    int m, n;
    gnlp_config cfg;
    int zero_row; /* -1: none */
    float *w, *grad;
    gnlp_tensor param, gradt;
    int32_t n_state;
    gnlp_buffer_spec specs[GNLP_MAX_STATE];
    float *buf[GNLP_MAX_STATE];
    gnlp_tensor state[GNLP_MAX_STATE];
    ref_t ref;
    long step;
    int diverged; /* stop reporting after the first mismatch */
} inst_t;

static gnlp_config base_config(void)
{
    gnlp_config c = gnlp_config_default();
    c.lr = 1e-2;
    c.beta1 = 0.9;
    c.beta2 = 0.999;
    c.eps = 1e-8;
    c.weight_decay = 0.1;
    c.scale = 0.25;
    c.correct_bias = 1;
    c.optim_bits = 32;
    c.refresh = 0;
    return c;
}

static gnlp_config proj_config(int rank, int proj_type, int gap)
{
    gnlp_config c = base_config();
    c.rank = rank;
    c.proj_type = proj_type;
    c.update_proj_gap = gap;
    return c;
}

/* Expected state layout names for a parameter (see core/layout.go). */
static int expected_layout(const inst_t *in, const char **names, int64_t shapes[][2], int *ndims)
{
    int cnt = 0;
    const ref_t *r = &in->ref;
    int m = in->m, cols = cols_of(in->n);
    names[cnt] = "exp_avg";
    ndims[cnt] = in->n ? 2 : 1;
    shapes[cnt][0] = r->projected ? r->rr : m;
    shapes[cnt][1] = r->projected ? r->rc : cols;
    cnt++;
    names[cnt] = "exp_avg_sq";
    ndims[cnt] = ndims[0];
    shapes[cnt][0] = shapes[0][0];
    shapes[cnt][1] = shapes[0][1];
    cnt++;
    if (!r->projected)
        return cnt;
    if (r->sides & SIDE_LEFT) {
        names[cnt] = "proj_left"; ndims[cnt] = 2; shapes[cnt][0] = m; shapes[cnt][1] = r->k; cnt++;
    }
    if (r->sides & SIDE_RIGHT) {
        names[cnt] = "proj_right"; ndims[cnt] = 2; shapes[cnt][0] = r->k; shapes[cnt][1] = in->n; cnt++;
    }
    static const char *rows[] = {"magnitude", "direction_norm", "magnitude_exp_avg", "magnitude_exp_avg_sq"};
    for (int i = 0; i < 4; i++) {
        names[cnt] = rows[i]; ndims[cnt] = 1; shapes[cnt][0] = m; shapes[cnt][1] = 0; cnt++;
    }
    return cnt;
}

static void inst_create(inst_t *in, const char *name, int m, int n, gnlp_config cfg, int zero_row, uint64_t seed)
{
    memset(in, 0, sizeof *in);
    in->name = name;
    in->m = m;
    in->n = n;
    in->cfg = cfg;
    in->zero_row = zero_row;
    int cols = cols_of(n);
    size_t numel = (size_t)m * cols;
    in->w = xmalloc(sizeof(float) * numel);
    in->grad = xmalloc(sizeof(float) * numel);
    rng_state = seed;
    for (size_t i = 0; i < numel; i++)
        in->w[i] = (float)(0.5 * urand());
    if (zero_row >= 0)
        for (int j = 0; j < cols; j++)
            in->w[(size_t)zero_row * cols + j] = 0;
    in->param = host_tensor(in->w, GNLP_FLOAT32, n ? 2 : 1, m, n);
    in->gradt = host_tensor(in->grad, GNLP_FLOAT32, n ? 2 : 1, m, n);
    ref_alloc(&in->ref, m, n, &cfg);
    ref_init(&in->ref, in->w);

    /* layout: size query, too-small buffer, then the real call */
    int32_t count = -1;
    /* sizing call: capacity 0 < count, so BUFFER_TOO_SMALL with *count set */
    CHECK_STATUS(gnlp_state_layout(&in->param, &in->cfg, NULL, 0, &count), GNLP_ERR_BUFFER_TOO_SMALL);
    const char *names[GNLP_MAX_STATE];
    int64_t shapes[GNLP_MAX_STATE][2];
    int ndims[GNLP_MAX_STATE];
    int want = expected_layout(in, names, shapes, ndims);
    CHECK(count == want, "%s: layout count %d, want %d", name, count, want);
    CHECK_STATUS(gnlp_state_layout(&in->param, &in->cfg, in->specs, GNLP_MAX_STATE, &in->n_state), GNLP_OK);
    if (in->n_state != want)
        fatal("unexpected state layout");
    for (int i = 0; i < in->n_state; i++) {
        gnlp_buffer_spec *sp = &in->specs[i];
        int64_t numel_i = sp->shape[0] * (sp->ndim == 2 ? sp->shape[1] : 1);
        int ok = strcmp(sp->name, names[i]) == 0 && sp->dtype == GNLP_FLOAT32 && sp->ndim == ndims[i] &&
                 sp->shape[0] == shapes[i][0] && (sp->ndim == 1 || sp->shape[1] == shapes[i][1]) &&
                 sp->bytes == 4 * numel_i;
        CHECK(ok, "%s: buffer %d is %s dtype %d ndim %d shape (%lld, %lld) bytes %lld; want %s float32 (%lld, %lld)",
              name, i, sp->name, sp->dtype, sp->ndim, (long long)sp->shape[0], (long long)sp->shape[1],
              (long long)sp->bytes, names[i], (long long)shapes[i][0], (long long)shapes[i][1]);
        in->buf[i] = xmalloc((size_t)sp->bytes);
        memset(in->buf[i], 0xFF, (size_t)sp->bytes); /* NaN garbage: init must overwrite it */
        in->state[i] = host_tensor(in->buf[i], sp->dtype, sp->ndim, sp->shape[0], sp->shape[1]);
    }
    CHECK_STATUS(gnlp_state_init(&in->param, in->state, in->n_state, &in->cfg, NULL), GNLP_OK);
}

static void inst_free(inst_t *in)
{
    free(in->w);
    free(in->grad);
    for (int i = 0; i < in->n_state; i++)
        free(in->buf[i]);
    ref_free(&in->ref);
}

/* Fills the gradient of step t (deterministic per instance seed and step). */
static void inst_fill_grad(inst_t *in, uint64_t seed, long t, double *G)
{
    size_t numel = (size_t)in->m * cols_of(in->n);
    rng_state = seed * 1000003ull + (uint64_t)t * 7919ull;
    for (size_t i = 0; i < numel; i++) {
        G[i] = urand();
        in->grad[i] = (float)G[i];
        G[i] = in->grad[i]; /* the reference sees exactly the float the library sees */
    }
}

/* max |lib - ref| / max(max |ref|, floor) over a buffer */
static double rel_err(const float *lib, const double *ref, size_t len, double floor_)
{
    double scale = floor_, worst = 0;
    for (size_t i = 0; i < len; i++)
        if (fabs(ref[i]) > scale)
            scale = fabs(ref[i]);
    for (size_t i = 0; i < len; i++) {
        double e = fabs((double)lib[i] - ref[i]);
        if (!(e <= worst)) /* also catches NaN */
            worst = e;
    }
    return worst / scale;
}

/* Compares the library's param and every state buffer with the reference. */
static int inst_compare(inst_t *in, const char *when, double tol)
{
    const ref_t *r = &in->ref;
    struct {
        const char *name;
        const float *lib;
        const double *ref;
        size_t len;
    } items[GNLP_MAX_STATE + 1];
    int cnt = 0;
    items[cnt].name = "param";
    items[cnt].lib = in->w;
    items[cnt].ref = r->W;
    items[cnt].len = (size_t)in->m * cols_of(in->n);
    cnt++;
    for (int i = 0; i < in->n_state; i++) {
        const char *nm = in->specs[i].name;
        const double *ref = NULL;
        size_t len = (size_t)(in->specs[i].bytes / 4);
        if (!strcmp(nm, "exp_avg")) ref = r->M1;
        else if (!strcmp(nm, "exp_avg_sq")) ref = r->M2;
        else if (!strcmp(nm, "proj_left")) ref = r->P;
        else if (!strcmp(nm, "proj_right")) ref = r->Q;
        else if (!strcmp(nm, "magnitude")) ref = r->g;
        else if (!strcmp(nm, "direction_norm")) ref = r->s;
        else if (!strcmp(nm, "magnitude_exp_avg")) ref = r->a1;
        else if (!strcmp(nm, "magnitude_exp_avg_sq")) ref = r->a2;
        if (!ref)
            continue;
        items[cnt].name = nm;
        items[cnt].lib = in->buf[i];
        items[cnt].ref = ref;
        items[cnt].len = len;
        cnt++;
    }
    int ok = 1;
    for (int i = 0; i < cnt; i++) {
        double e = rel_err(items[i].lib, items[i].ref, items[i].len, 1e-30);
        if (!(e <= tol)) {
            ok = 0;
            if (!in->diverged) {
                fprintf(stderr, "  %s %s: %s differs from the reference by %.3g (relative to its max), tolerance %.3g\n",
                        in->name, when, items[i].name, e, tol);
                for (size_t j = 0; j < items[i].len && j < 12; j++)
                    fprintf(stderr, "    [%zu] lib % .9g  ref % .9g\n", j, items[i].lib[j], items[i].ref[j]);
            }
        }
    }
    if (!ok)
        in->diverged = 1;
    return ok;
}

/* ----------------------------------------------------------- the cases */

#define N_STEPS 10
#define TOL 2e-4

typedef struct {
    const char *name;
    int m, n;
    gnlp_config cfg;
    int zero_row;
} case_t;

static int make_cases(case_t *cs)
{
    int n = 0;
    cs[n++] = (case_t){"std->right 6x2 rank1 T3", 6, 2, proj_config(1, GNLP_PROJ_STD, 3), 0};
    cs[n++] = (case_t){"right 5x2 rank2 T4", 5, 2, proj_config(2, GNLP_PROJ_RIGHT, 4), 3};
    cs[n++] = (case_t){"left 5x2 rank2 T4", 5, 2, proj_config(2, GNLP_PROJ_LEFT, 4), 2};
    cs[n++] = (case_t){"std->left 2x6 rank1 T3", 2, 6, proj_config(1, GNLP_PROJ_STD, 3), 1};
    cs[n++] = (case_t){"reverse_std->left 5x2 rank1 T2", 5, 2, proj_config(1, GNLP_PROJ_REVERSE_STD, 2), -1};
    cs[n++] = (case_t){"right 1x5 rank4 T3", 1, 5, proj_config(4, GNLP_PROJ_RIGHT, 3), -1};
    cs[n++] = (case_t){"full 4x2 rank1 T5", 4, 2, proj_config(1, GNLP_PROJ_FULL, 5), 1};
    /* With "full" and k >= 2 the core P^T dV Q^T is diagonal at a refresh
     * (P, Q are dV's singular vectors): its off-diagonal entries are rounding
     * noise, which Adam turns into O(1) values unless eps dominates the noise.
     * A large eps keeps this case comparable with a double reference. */
    cs[n] = (case_t){"full 2x5 rank2 T100 eps1e-3", 2, 5, proj_config(2, GNLP_PROJ_FULL, 100), -1};
    cs[n].cfg.eps = 1e-3;
    n++;
    cs[n++] = (case_t){"adamw vector 7", 7, 0, proj_config(8, GNLP_PROJ_STD, 3), -1};
    cs[n++] = (case_t){"adamw matrix 3x4 rank0", 3, 4, proj_config(0, GNLP_PROJ_STD, 3), -1};
    /* no bias correction, no weight decay, scale 1 */
    cs[n] = (case_t){"std->right 4x2 rank1 nobc", 4, 2, proj_config(1, GNLP_PROJ_STD, 2), 1};
    cs[n].cfg.correct_bias = 0;
    cs[n].cfg.weight_decay = 0;
    cs[n].cfg.scale = 1;
    n++;
    return n;
}

#define MAX_CASES 16

static void test_steps(void)
{
    case_t cs[MAX_CASES];
    int nc = make_cases(cs);
    inst_t single[MAX_CASES], batch[MAX_CASES];
    for (int i = 0; i < nc; i++) {
        inst_create(&single[i], cs[i].name, cs[i].m, cs[i].n, cs[i].cfg, cs[i].zero_row, 1000 + i);
        inst_create(&batch[i], cs[i].name, cs[i].m, cs[i].n, cs[i].cfg, cs[i].zero_row, 1000 + i);
        CHECK(inst_compare(&single[i], "after gnlp_state_init", 1e-6), "%s: state after init", cs[i].name);
        CHECK(inst_compare(&batch[i], "after gnlp_state_init", 1e-6), "%s: state after init (batch copy)", cs[i].name);
    }
    gnlp_step_item items[MAX_CASES];
    for (long t = 1; t <= N_STEPS; t++) {
        for (int i = 0; i < nc; i++) {
            size_t numel = (size_t)cs[i].m * cols_of(cs[i].n);
            double *G = xmalloc(sizeof(double) * numel);
            /* gnlp_step */
            inst_fill_grad(&single[i], 1000 + i, t, G);
            CHECK_STATUS(gnlp_step(&single[i].param, &single[i].gradt, single[i].state, single[i].n_state,
                                   &single[i].cfg, t, NULL), GNLP_OK);
            ref_step(&single[i].ref, &cs[i].cfg, G, t);
            /* the same gradient for the batched copy */
            inst_fill_grad(&batch[i], 1000 + i, t, G);
            ref_step(&batch[i].ref, &cs[i].cfg, G, t);
            free(G);
            memset(&items[i], 0, sizeof items[i]);
            items[i].param = batch[i].param;
            items[i].grad = batch[i].gradt;
            items[i].state = batch[i].state;
            items[i].n_state = batch[i].n_state;
            items[i].config = batch[i].cfg;
            items[i].step = t;
        }
        CHECK_STATUS(gnlp_step_batch(items, nc, NULL), GNLP_OK);
        for (int i = 0; i < nc; i++) {
            char when[64];
            snprintf(when, sizeof when, "gnlp_step, step %ld", t);
            CHECK(inst_compare(&single[i], when, TOL), "%s: %s matches the reference", cs[i].name, when);
            snprintf(when, sizeof when, "gnlp_step_batch, step %ld", t);
            CHECK(inst_compare(&batch[i], when, TOL), "%s: %s matches the reference", cs[i].name, when);
        }
    }
    /* The zero row has left zero and joined weight normalisation. */
    for (int i = 0; i < nc; i++) {
        if (cs[i].zero_row < 0 || !single[i].ref.projected)
            continue;
        int n = cs[i].n, row = cs[i].zero_row;
        double nrm = 0;
        for (int j = 0; j < n; j++)
            nrm += (double)single[i].w[row * n + j] * single[i].w[row * n + j];
        CHECK(sqrt(nrm) > 0, "%s: the zero row %d is still zero after %d steps", cs[i].name, row, N_STEPS);
    }
    for (int i = 0; i < nc; i++) {
        inst_free(&single[i]);
        inst_free(&batch[i]);
    }
}

/* bfloat16 parameters: the library computes in fp32 and rounds the result.
 * Checked against the fp32 reference with a bf16-sized tolerance. */
static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFF + ((u >> 16) & 1); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static float from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_bf16(void)
{
    const int m = 6, n = 2;
    gnlp_config cfg = proj_config(1, GNLP_PROJ_STD, 3);
    uint16_t w[12], gr[12];
    double W0[12];
    rng_state = 77;
    for (int i = 0; i < m * n; i++) {
        w[i] = to_bf16((float)(0.5 * urand()));
        W0[i] = from_bf16(w[i]);
    }
    gnlp_tensor p = host_tensor(w, GNLP_BFLOAT16, 2, m, n), g = host_tensor(gr, GNLP_BFLOAT16, 2, m, n);
    gnlp_buffer_spec specs[GNLP_MAX_STATE];
    gnlp_tensor st[GNLP_MAX_STATE];
    float *bufs[GNLP_MAX_STATE];
    int32_t cnt = 0;
    CHECK_STATUS(gnlp_state_layout(&p, &cfg, specs, GNLP_MAX_STATE, &cnt), GNLP_OK);
    for (int i = 0; i < cnt; i++) {
        CHECK(specs[i].dtype == GNLP_FLOAT32, "bf16 param: state %s is dtype %d, want float32", specs[i].name, specs[i].dtype);
        bufs[i] = xmalloc((size_t)specs[i].bytes);
        st[i] = host_tensor(bufs[i], specs[i].dtype, specs[i].ndim, specs[i].shape[0], specs[i].shape[1]);
    }
    CHECK_STATUS(gnlp_state_init(&p, st, cnt, &cfg, NULL), GNLP_OK);
    ref_t r;
    ref_alloc(&r, m, n, &cfg);
    for (int i = 0; i < m * n; i++)
        r.W[i] = W0[i];
    for (int i = 0; i < m; i++)
        r.g[i] = r.s[i] = row_norm(r.W + i * n, n);
    double G[12];
    for (long t = 1; t <= 5; t++) {
        rng_state = 4242 + (uint64_t)t;
        for (int i = 0; i < m * n; i++) {
            gr[i] = to_bf16((float)urand());
            G[i] = from_bf16(gr[i]);
        }
        CHECK_STATUS(gnlp_step(&p, &g, st, cnt, &cfg, t, NULL), GNLP_OK);
        ref_step(&r, &cfg, G, t);
    }
    double worst = 0;
    for (int i = 0; i < m * n; i++) {
        double e = fabs(from_bf16(w[i]) - r.W[i]);
        if (!(e <= worst))
            worst = e;
    }
    /* bf16 has 8 significant bits: ~4e-3 relative per rounding, 5 roundings */
    CHECK(worst < 3e-2, "bf16 param after 5 steps differs from the fp32 reference by %g", worst);
    ref_free(&r);
    for (int i = 0; i < cnt; i++)
        free(bufs[i]);
}

/* ------------------------------------------------------ error handling */

typedef struct {
    unsigned char *bytes;
    size_t len;
} snap_t;

/* Snapshot of param and all state bytes of an instance. */
static snap_t snapshot(const inst_t *in)
{
    size_t len = sizeof(float) * (size_t)in->m * cols_of(in->n);
    for (int i = 0; i < in->n_state; i++)
        len += (size_t)in->specs[i].bytes;
    snap_t s = {xmalloc(len), len};
    size_t off = sizeof(float) * (size_t)in->m * cols_of(in->n);
    memcpy(s.bytes, in->w, off);
    for (int i = 0; i < in->n_state; i++) {
        memcpy(s.bytes + off, in->buf[i], (size_t)in->specs[i].bytes);
        off += (size_t)in->specs[i].bytes;
    }
    return s;
}

static int unchanged(const inst_t *in, snap_t s)
{
    snap_t now = snapshot(in);
    int same = now.len == s.len && memcmp(now.bytes, s.bytes, s.len) == 0;
    free(now.bytes);
    free(s.bytes);
    return same;
}

/* Runs a failing gnlp_step with mutated arguments and checks status, message
 * and that nothing changed. */
#define EXPECT_STEP_FAILS(in, param_, grad_, state_, nstate_, cfg_, step_, want)                    \
    do {                                                                                            \
        snap_t s_ = snapshot(in);                                                                   \
        CHECK_STATUS(gnlp_step(param_, grad_, state_, nstate_, cfg_, step_, NULL), want);           \
        CHECK(unchanged(in, s_), "%s:%d: a failed gnlp_step changed param or state", __FILE__, __LINE__); \
    } while (0)

static void test_errors(void)
{
    inst_t a, v;
    inst_create(&a, "errors 6x2", 6, 2, proj_config(1, GNLP_PROJ_STD, 3), -1, 31);
    inst_create(&v, "errors vector", 5, 0, base_config(), -1, 32);
    double G[12];
    /* a few good steps so the state is non-trivial */
    for (long t = 1; t <= 3; t++) {
        inst_fill_grad(&a, 31, t, G);
        CHECK_STATUS(gnlp_step(&a.param, &a.gradt, a.state, a.n_state, &a.cfg, t, NULL), GNLP_OK);
    }
    inst_fill_grad(&a, 31, 4, G);
    gnlp_tensor p, g, st[GNLP_MAX_STATE];
    gnlp_config c;

    /* NULL pointers */
    EXPECT_STEP_FAILS(&a, NULL, &a.gradt, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_NULL_POINTER);
    EXPECT_STEP_FAILS(&a, &a.param, NULL, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_NULL_POINTER);
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, NULL, a.n_state, &a.cfg, 4, GNLP_ERR_NULL_POINTER);
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state, NULL, 4, GNLP_ERR_NULL_POINTER);
    p = a.param;
    p.data = NULL;
    EXPECT_STEP_FAILS(&a, &p, &a.gradt, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_NULL_POINTER);
    g = a.gradt;
    g.data = NULL;
    EXPECT_STEP_FAILS(&a, &a.param, &g, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_NULL_POINTER);
    memcpy(st, a.state, sizeof(gnlp_tensor) * a.n_state);
    st[a.n_state - 1].data = NULL;
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, st, a.n_state, &a.cfg, 4, GNLP_ERR_NULL_POINTER);
    {
        int32_t count;
        CHECK_STATUS(gnlp_state_layout(NULL, &a.cfg, NULL, 0, &count), GNLP_ERR_NULL_POINTER);
        CHECK_STATUS(gnlp_state_layout(&a.param, &a.cfg, NULL, 0, NULL), GNLP_ERR_NULL_POINTER);
        CHECK_STATUS(gnlp_state_layout(&a.param, NULL, NULL, 0, &count), GNLP_ERR_NULL_POINTER);
        CHECK_STATUS(gnlp_state_init(NULL, a.state, a.n_state, &a.cfg, NULL), GNLP_ERR_NULL_POINTER);
        CHECK_STATUS(gnlp_step_batch(NULL, 1, NULL), GNLP_ERR_NULL_POINTER);
    }

    /* dtypes */
    p = a.param;
    p.dtype = 42;
    EXPECT_STEP_FAILS(&a, &p, &a.gradt, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_DTYPE);
    p.dtype = GNLP_UINT8;
    EXPECT_STEP_FAILS(&a, &p, &a.gradt, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_DTYPE);
    g = a.gradt;
    g.dtype = GNLP_BFLOAT16;
    EXPECT_STEP_FAILS(&a, &a.param, &g, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_DTYPE);
    memcpy(st, a.state, sizeof(gnlp_tensor) * a.n_state);
    st[0].dtype = GNLP_FLOAT16;
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, st, a.n_state, &a.cfg, 4, GNLP_ERR_DTYPE);
    {
        int32_t count;
        p = a.param;
        p.dtype = GNLP_UINT8;
        CHECK_STATUS(gnlp_state_layout(&p, &a.cfg, NULL, 0, &count), GNLP_ERR_DTYPE);
    }

    /* state count and shapes */
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state - 1, &a.cfg, 4, GNLP_ERR_SHAPE);
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, 0, &a.cfg, 4, GNLP_ERR_SHAPE);
    memcpy(st, a.state, sizeof(gnlp_tensor) * a.n_state);
    st[a.n_state - 1].shape[0] = a.m - 1;
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, st, a.n_state, &a.cfg, 4, GNLP_ERR_SHAPE);
    g = a.gradt;
    g.shape[0] = a.m - 1;
    EXPECT_STEP_FAILS(&a, &a.param, &g, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_SHAPE);
    p = a.param;
    p.ndim = 3;
    EXPECT_STEP_FAILS(&a, &p, &a.gradt, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_SHAPE);
    /* state laid out for another rank */
    c = a.cfg;
    c.rank = 2;
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state, &c, 4, GNLP_ERR_SHAPE);

    /* strides */
    p = a.param;
    p.strides[0] = 1;
    p.strides[1] = a.m; /* column-major (a transposed view) */
    EXPECT_STEP_FAILS(&a, &p, &a.gradt, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_NOT_CONTIGUOUS);
    g = a.gradt;
    g.strides[0] = 4; /* padded rows */
    EXPECT_STEP_FAILS(&a, &a.param, &g, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_NOT_CONTIGUOUS);
    memcpy(st, a.state, sizeof(gnlp_tensor) * a.n_state);
    st[a.n_state - 1].strides[0] = 2; /* every other element of a vector */
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, st, a.n_state, &a.cfg, 4, GNLP_ERR_NOT_CONTIGUOUS);

    /* alignment */
    {
        float *raw = xmalloc(sizeof(float) * 13);
        memcpy((char *)raw + 2, a.grad, sizeof(float) * 12);
        g = a.gradt;
        g.data = (char *)raw + 2;
        EXPECT_STEP_FAILS(&a, &a.param, &g, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_MISALIGNED);
        free(raw);
    }

    /* devices */
    p = a.param;
    p.device_type = 7;
    EXPECT_STEP_FAILS(&a, &p, &a.gradt, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_DEVICE);
    {
        snap_t s = snapshot(&a);
        p = a.param;
        g = a.gradt;
        p.device_type = g.device_type = GNLP_DEVICE_CUDA;
        int got = gnlp_step(&p, &g, a.state, a.n_state, &a.cfg, 4, NULL);
        /* with a CUDA backend a host pointer is still wrong; without, it is unavailable */
        CHECK(got == GNLP_ERR_BACKEND_UNAVAILABLE || got == GNLP_ERR_DEVICE,
              "CUDA param with host state: got %s, want GNLP_ERR_BACKEND_UNAVAILABLE or GNLP_ERR_DEVICE", status_name(got));
        CHECK(gnlp_last_error()[0] != '\0', "device error without a message");
        CHECK(unchanged(&a, s), "a failed CUDA step changed the host data");
    }

    /* hyperparameters */
    c = a.cfg;
    c.proj_type = 9;
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state, &c, 4, GNLP_ERR_UNKNOWN_OPTION);
    {
        int32_t count;
        CHECK_STATUS(gnlp_state_layout(&a.param, &c, NULL, 0, &count), GNLP_ERR_UNKNOWN_OPTION);
        CHECK(strstr(gnlp_last_error(), "proj_type") != NULL, "unknown proj_type: message \"%s\" does not name proj_type",
              gnlp_last_error());
    }
    c = a.cfg;
    c.proj_type = -1;
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state, &c, 4, GNLP_ERR_UNKNOWN_OPTION);
    c = a.cfg;
    c.optim_bits = 16;
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state, &c, 4, GNLP_ERR_UNKNOWN_OPTION);
    c = a.cfg;
    c.lr = -1e-3;
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state, &c, 4, GNLP_ERR_INVALID_ARGUMENT);
    CHECK(strstr(gnlp_last_error(), "lr") != NULL, "negative lr: message \"%s\" does not name lr", gnlp_last_error());
    c = a.cfg;
    c.beta2 = 1.0;
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state, &c, 4, GNLP_ERR_INVALID_ARGUMENT);
    c = a.cfg;
    c.eps = NAN;
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state, &c, 4, GNLP_ERR_INVALID_ARGUMENT);
    c = a.cfg;
    c.update_proj_gap = 0;
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state, &c, 4, GNLP_ERR_INVALID_ARGUMENT);
    c = a.cfg;
    c.rank = -1;
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state, &c, 4, GNLP_ERR_INVALID_ARGUMENT);
    c = a.cfg;
    c.refresh = 2; /* 0 exact SVD, 1 subspace iteration */
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state, &c, 4, GNLP_ERR_UNKNOWN_OPTION);
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state, &a.cfg, 0, GNLP_ERR_INVALID_ARGUMENT);

    /* non-finite gradients: refused, nothing changed */
    a.grad[3] = NAN;
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_NONFINITE);
    a.grad[3] = (float)INFINITY;
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_NONFINITE);
    a.grad[3] = -(float)INFINITY;
    EXPECT_STEP_FAILS(&a, &a.param, &a.gradt, a.state, a.n_state, &a.cfg, 4, GNLP_ERR_NONFINITE);
    /* a batch with one bad item changes no item */
    {
        double Gv[5];
        inst_fill_grad(&v, 32, 1, Gv);
        gnlp_step_item items[2];
        memset(items, 0, sizeof items);
        items[0].param = v.param;
        items[0].grad = v.gradt;
        items[0].state = v.state;
        items[0].n_state = v.n_state;
        items[0].config = v.cfg;
        items[0].step = 1;
        items[1].param = a.param;
        items[1].grad = a.gradt; /* still holds -Inf */
        items[1].state = a.state;
        items[1].n_state = a.n_state;
        items[1].config = a.cfg;
        items[1].step = 4;
        snap_t sa = snapshot(&a), sv = snapshot(&v);
        CHECK_STATUS(gnlp_step_batch(items, 2, NULL), GNLP_ERR_NONFINITE);
        CHECK(unchanged(&a, sa), "batch with a non-finite gradient changed the bad item");
        CHECK(unchanged(&v, sv), "batch with a non-finite gradient changed a good item");
        /* a bad item's config is also caught before anything changes */
        inst_fill_grad(&a, 31, 4, G);
        items[1].config.proj_type = 11;
        sa = snapshot(&a);
        sv = snapshot(&v);
        CHECK_STATUS(gnlp_step_batch(items, 2, NULL), GNLP_ERR_UNKNOWN_OPTION);
        CHECK(unchanged(&a, sa), "batch with a bad config changed the bad item");
        CHECK(unchanged(&v, sv), "batch with a bad config changed a good item");
        items[1].config = a.cfg;
        items[1].reserved = 1;
        sv = snapshot(&v);
        CHECK_STATUS(gnlp_step_batch(items, 2, NULL), GNLP_ERR_INVALID_ARGUMENT);
        CHECK(unchanged(&v, sv), "batch with a bad reserved field changed an item");
        items[1].reserved = 0;
        CHECK_STATUS(gnlp_step_batch(items, -1, NULL), GNLP_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(gnlp_step_batch(items, 0, NULL), GNLP_OK);
        /* and after all that the good step still works */
        CHECK_STATUS(gnlp_step_batch(items, 2, NULL), GNLP_OK);
    }
    /* state_init checks its arguments too */
    CHECK_STATUS(gnlp_state_init(&a.param, a.state, a.n_state - 1, &a.cfg, NULL), GNLP_ERR_SHAPE);
    CHECK_STATUS(gnlp_state_layout(&a.param, &a.cfg, a.specs, 1, &a.n_state), GNLP_ERR_BUFFER_TOO_SMALL);
    inst_free(&a);
    inst_free(&v);
}

/* ---------------------------------------------------------- threads */

typedef struct {
    int id;
    pthread_barrier_t *barrier;
    int steps_ok;
    int msg_ok;
    char msg[256];
} thread_arg_t;

static void *thread_main(void *p)
{
    thread_arg_t *ta = p;
    inst_t in;
    double G[64];
    ta->steps_ok = 1;
    inst_create(&in, ta->id == 0 ? "thread 0" : "thread 1", 8, 2, proj_config(2, GNLP_PROJ_LEFT, 3), 1, 500);
    for (long t = 1; t <= 20; t++) {
        inst_fill_grad(&in, 500, t, G);
        if (gnlp_step(&in.param, &in.gradt, in.state, in.n_state, &in.cfg, t, NULL) != GNLP_OK)
            ta->steps_ok = 0;
        ref_step(&in.ref, &in.cfg, G, t);
    }
    if (!inst_compare(&in, "after 20 steps in a thread", TOL))
        ta->steps_ok = 0;
    /* a different error on each thread; each must see its own message */
    gnlp_config c = in.cfg;
    if (ta->id == 0)
        c.proj_type = 9;
    else
        c.lr = -1;
    gnlp_step(&in.param, &in.gradt, in.state, in.n_state, &c, 21, NULL);
    pthread_barrier_wait(ta->barrier);
    snprintf(ta->msg, sizeof ta->msg, "%s", gnlp_last_error());
    ta->msg_ok = strstr(ta->msg, ta->id == 0 ? "proj_type" : "lr") != NULL &&
                 strstr(ta->msg, ta->id == 0 ? "lr:" : "proj_type") == NULL;
    pthread_barrier_wait(ta->barrier);
    inst_free(&in);
    return NULL;
}

static void test_threads(void)
{
    pthread_t th[2];
    pthread_barrier_t barrier;
    thread_arg_t args[2];
    pthread_barrier_init(&barrier, NULL, 2);
    for (int i = 0; i < 2; i++) {
        memset(&args[i], 0, sizeof args[i]);
        args[i].id = i;
        args[i].barrier = &barrier;
        if (pthread_create(&th[i], NULL, thread_main, &args[i]) != 0)
            fatal("pthread_create");
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&barrier);
    for (int i = 0; i < 2; i++) {
        CHECK(args[i].steps_ok, "thread %d: concurrent steps differ from the reference", i);
        CHECK(args[i].msg_ok, "thread %d: gnlp_last_error() is \"%s\", not its own thread's error", i, args[i].msg);
    }
}

/* ------------------------------------------------------ hardening (issue 13) */

/* A parameter without the reference model: random weights, its state from
 * the library's layout, initialised. */
typedef struct {
    int m, n;
    gnlp_config cfg;
    float *w, *grad;
    gnlp_tensor param, gradt;
    int32_t n_state;
    int64_t bytes[GNLP_MAX_STATE];
    void *buf[GNLP_MAX_STATE];
    gnlp_tensor state[GNLP_MAX_STATE];
} plain_t;

static void plain_create(plain_t *p, int m, int n, gnlp_config cfg, uint64_t seed)
{
    memset(p, 0, sizeof *p);
    p->m = m, p->n = n, p->cfg = cfg;
    p->w = xmalloc(sizeof(float) * (size_t)m * n);
    p->grad = xmalloc(sizeof(float) * (size_t)m * n);
    rng_state = seed;
    for (size_t i = 0; i < (size_t)m * n; i++)
        p->w[i] = (float)(0.5 * urand());
    p->param = host_tensor(p->w, GNLP_FLOAT32, 2, m, n);
    p->gradt = host_tensor(p->grad, GNLP_FLOAT32, 2, m, n);
    gnlp_buffer_spec specs[GNLP_MAX_STATE];
    if (gnlp_state_layout(&p->param, &cfg, specs, GNLP_MAX_STATE, &p->n_state) != GNLP_OK)
        fatal("plain_create: gnlp_state_layout");
    for (int i = 0; i < p->n_state; i++) {
        p->bytes[i] = specs[i].bytes;
        p->buf[i] = xmalloc((size_t)specs[i].bytes);
        p->state[i] = host_tensor(p->buf[i], specs[i].dtype, specs[i].ndim, specs[i].shape[0], specs[i].shape[1]);
    }
    if (gnlp_state_init(&p->param, p->state, p->n_state, &cfg, NULL) != GNLP_OK)
        fatal("plain_create: gnlp_state_init");
}

static void plain_fill_grad(plain_t *p, double scale)
{
    for (size_t i = 0; i < (size_t)p->m * p->n; i++)
        p->grad[i] = (float)(scale * urand());
}

static void plain_free(plain_t *p)
{
    free(p->w);
    free(p->grad);
    for (int i = 0; i < p->n_state; i++)
        free(p->buf[i]);
}

/* Param and state bytes of several parameters. */
static snap_t plain_snapshot(plain_t *ps, int n)
{
    size_t len = 0;
    for (int k = 0; k < n; k++) {
        len += sizeof(float) * (size_t)ps[k].m * ps[k].n;
        for (int i = 0; i < ps[k].n_state; i++)
            len += (size_t)ps[k].bytes[i];
    }
    snap_t s = {xmalloc(len), len};
    size_t off = 0;
    for (int k = 0; k < n; k++) {
        size_t wb = sizeof(float) * (size_t)ps[k].m * ps[k].n;
        memcpy(s.bytes + off, ps[k].w, wb);
        off += wb;
        for (int i = 0; i < ps[k].n_state; i++) {
            memcpy(s.bytes + off, ps[k].buf[i], (size_t)ps[k].bytes[i]);
            off += (size_t)ps[k].bytes[i];
        }
    }
    return s;
}

static int plain_unchanged(plain_t *ps, int n, snap_t before)
{
    snap_t now = plain_snapshot(ps, n);
    int same = now.len == before.len && memcmp(now.bytes, before.bytes, now.len) == 0;
    free(now.bytes);
    free(before.bytes);
    return same;
}

static gnlp_status plain_batch(plain_t *ps, int n, long step)
{
    gnlp_step_item items[4];
    memset(items, 0, sizeof items);
    for (int k = 0; k < n; k++) {
        items[k].param = ps[k].param;
        items[k].grad = ps[k].gradt;
        items[k].state = ps[k].state;
        items[k].n_state = ps[k].n_state;
        items[k].config = ps[k].cfg;
        items[k].step = step;
    }
    return gnlp_step_batch(items, n, NULL);
}

/* The repro of issue 13: 64x48, rank 8, update_proj_gap 10, ten normal
 * steps, then one weight set to +Inf (or a gradient of 1e38) entering the
 * refresh step 11. Once a hang in the SVD (Inf) and NaN weights (1e38);
 * now refused with nothing changed. Run as a batch with two healthy
 * parameters, which must stay untouched too (once a partial update). */
static void test_refresh_of_bad_values(void)
{
    for (int spoil = 0; spoil < 2; spoil++) {
        gnlp_config cfg = proj_config(8, GNLP_PROJ_STD, 10);
        plain_t ps[3];
        plain_create(&ps[0], 40, 32, cfg, 5);
        plain_create(&ps[1], 64, 48, cfg, 6);
        plain_create(&ps[2], 24, 30, cfg, 7);
        for (long t = 1; t <= 10; t++) {
            for (int k = 0; k < 3; k++)
                plain_fill_grad(&ps[k], 1);
            CHECK_STATUS(plain_batch(ps, 3, t), GNLP_OK);
        }
        for (int k = 0; k < 3; k++)
            plain_fill_grad(&ps[k], 1);
        if (spoil == 0)
            ps[1].w[5] = INFINITY;
        else
            for (int i = 0; i < 64 * 48; i++)
                ps[1].grad[i] = 1e38f;
        snap_t before = plain_snapshot(ps, 3);
        CHECK_STATUS(plain_batch(ps, 3, 11), GNLP_ERR_NONFINITE);
        CHECK(strstr(gnlp_last_error(), "items[1]") != NULL, "the error names the parameter: \"%s\"", gnlp_last_error());
        CHECK(plain_unchanged(ps, 3, before), "%s at a refresh: a failed batch changed parameters or state",
              spoil == 0 ? "an Inf weight" : "a 1e38 gradient");
        /* alone, through gnlp_step */
        before = plain_snapshot(&ps[1], 1);
        CHECK_STATUS(gnlp_step(&ps[1].param, &ps[1].gradt, ps[1].state, ps[1].n_state, &cfg, 11, NULL),
                     GNLP_ERR_NONFINITE);
        CHECK(plain_unchanged(&ps[1], 1, before), "a failed gnlp_step changed parameters or state");
        for (int k = 0; k < 3; k++)
            plain_free(&ps[k]);
    }
}

/* The same parameter twice in one batch (or state shared between two) is
 * refused: its result would depend on thread timing. */
static void test_batch_aliasing(void)
{
    gnlp_config cfg = proj_config(4, GNLP_PROJ_STD, 3);
    plain_t ps[3];
    plain_create(&ps[0], 32, 20, cfg, 8);
    plain_create(&ps[1], 20, 20, cfg, 9);
    plain_fill_grad(&ps[0], 1);
    plain_fill_grad(&ps[1], 1);
    ps[2] = ps[0];
    snap_t before = plain_snapshot(ps, 2);
    CHECK_STATUS(plain_batch(ps, 3, 1), GNLP_ERR_INVALID_ARGUMENT);
    CHECK(strstr(gnlp_last_error(), "overlap") != NULL, "aliasing message: \"%s\"", gnlp_last_error());
    CHECK(plain_unchanged(ps, 2, before), "a refused batch changed parameters or state");
    /* a gradient shared by two parameters is only read: fine */
    ps[1].gradt.data = ps[0].grad;
    ps[1].gradt.shape[0] = 20;
    CHECK_STATUS(plain_batch(ps, 2, 1), GNLP_OK);
    plain_free(&ps[0]);
    plain_free(&ps[1]);
}

/* gnlp_state_layout on huge shapes: an overflow error, never 0 or
 * negative byte counts; the largest accepted shapes give positive sizes. */
static void test_layout_overflow(void)
{
    gnlp_config cfg = proj_config(8, GNLP_PROJ_STD, 10);
    int64_t huge[][2] = {{(int64_t)1 << 40, (int64_t)1 << 40}, {INT64_MAX, 2}, {(int64_t)1 << 53, 1}};
    for (int i = 0; i < 3; i++) {
        for (int bits = 32; bits >= 4; bits /= 2) {
            if (bits == 16)
                continue;
            cfg.optim_bits = bits;
            gnlp_tensor t = host_tensor(NULL, GNLP_FLOAT32, 2, huge[i][0], huge[i][1]);
            gnlp_buffer_spec specs[GNLP_MAX_STATE];
            int32_t count = 0;
            CHECK_STATUS(gnlp_state_layout(&t, &cfg, specs, GNLP_MAX_STATE, &count), GNLP_ERR_SHAPE);
            int64_t ws = 0;
            t.data = &ws; /* gnlp_workspace_size wants a real tensor */
            CHECK_STATUS(gnlp_workspace_size(&t, &cfg, &ws), GNLP_ERR_SHAPE);
        }
    }
    gnlp_tensor t = host_tensor(NULL, GNLP_BFLOAT16, 2, (int64_t)1 << 26, (int64_t)1 << 26);
    for (int bits = 32; bits >= 4; bits /= 2) {
        if (bits == 16)
            continue;
        cfg.optim_bits = bits;
        gnlp_buffer_spec specs[GNLP_MAX_STATE];
        int32_t count = 0;
        CHECK_STATUS(gnlp_state_layout(&t, &cfg, specs, GNLP_MAX_STATE, &count), GNLP_OK);
        for (int i = 0; i < count; i++)
            CHECK(specs[i].bytes > 0, "2^26 x 2^26, %d bits: %s has %lld bytes", bits, specs[i].name,
                  (long long)specs[i].bytes);
    }
}

/* A CPU tensor's device_index must be 0. */
static void test_cpu_device_index(void)
{
    gnlp_config cfg = proj_config(2, GNLP_PROJ_STD, 3);
    plain_t p;
    plain_create(&p, 8, 6, cfg, 10);
    plain_fill_grad(&p, 1);
    int32_t bad[] = {-1, 1, INT32_MIN};
    for (int i = 0; i < 3; i++) {
        snap_t before = plain_snapshot(&p, 1);
        gnlp_tensor param = p.param, grad = p.gradt, st[GNLP_MAX_STATE];
        param.device_index = bad[i];
        CHECK_STATUS(gnlp_step(&param, &p.gradt, p.state, p.n_state, &cfg, 1, NULL), GNLP_ERR_DEVICE);
        grad.device_index = bad[i];
        CHECK_STATUS(gnlp_step(&p.param, &grad, p.state, p.n_state, &cfg, 1, NULL), GNLP_ERR_DEVICE);
        memcpy(st, p.state, sizeof st);
        st[p.n_state - 1].device_index = bad[i];
        CHECK_STATUS(gnlp_step(&p.param, &p.gradt, st, p.n_state, &cfg, 1, NULL), GNLP_ERR_DEVICE);
        CHECK(plain_unchanged(&p, 1, before), "a refused step changed parameters or state");
    }
    plain_free(&p);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "FAIL: test_abi did not finish in 300 s (a library call hangs)\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
        /* nothing left to do */
    }
    _exit(2);
}

/* ------------------------------------------------------------ basics */

static void test_basics(void)
{
    const char *ver = gnlp_version();
    CHECK(ver != NULL && ver[0] != '\0', "gnlp_version() is empty");
    printf("library version %s, ABI %d (header ABI %d)\n", ver ? ver : "(null)", gnlp_abi_version(), GNLP_ABI_VERSION);
    CHECK(gnlp_abi_version() == GNLP_ABI_VERSION, "gnlp_abi_version() = %d, header has %d", gnlp_abi_version(),
          GNLP_ABI_VERSION);
    CHECK(gnlp_last_error() != NULL, "gnlp_last_error() returned NULL");
    gnlp_config c = gnlp_config_default();
    /* the defaults documented in the header */
    CHECK(c.lr == 1e-3 && c.beta1 == 0.9 && c.beta2 == 0.999 && c.eps == 1e-8 && c.scale == 1.0 && c.rank == 0 &&
              c.update_proj_gap == 200 && c.proj_type == GNLP_PROJ_STD && c.correct_bias == 1 && c.optim_bits == 32 &&
              c.refresh == 0,
          "gnlp_config_default() = {lr %g, betas (%g, %g), eps %g, scale %g, rank %d, gap %d, proj %d, bias %d, bits %d, refresh %d}",
          c.lr, c.beta1, c.beta2, c.eps, c.scale, c.rank, c.update_proj_gap, c.proj_type, c.correct_bias, c.optim_bits,
          c.refresh);
    CHECK(c.weight_decay == 1e-2, "gnlp_config_default().weight_decay = %g, the header documents 1e-2", c.weight_decay);
    CHECK(sizeof(gnlp_tensor) == 56 && sizeof(gnlp_config) == 72 && sizeof(gnlp_buffer_spec) == 64,
          "struct sizes changed: tensor %zu, config %zu, buffer_spec %zu (bump GNLP_ABI_VERSION?)", sizeof(gnlp_tensor),
          sizeof(gnlp_config), sizeof(gnlp_buffer_spec));
}

int main(void)
{
    signal(SIGALRM, on_alarm); /* a hang fails instead of blocking */
    alarm(300);
    test_basics();
    test_steps();
    test_bf16();
    test_errors();
    test_threads();
    test_refresh_of_bad_values();
    test_batch_aliasing();
    test_layout_overflow();
    test_cpu_device_index();
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
