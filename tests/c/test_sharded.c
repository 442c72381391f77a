/*
 * test_sharded.c: gnlp_step_sharded through the C ABI, the way a caller
 * with its own transport uses it. Ranks are threads of this process; the
 * collective callback exchanges buffers through shared memory with a
 * barrier. Each run splits parameters over the ranks (torch.chunk's split,
 * uneven), steps them with gnlp_step_sharded and the whole parameters with
 * gnlp_step_batch, and compares; then one rank gets a NaN gradient and every
 * rank must refuse, changing nothing.
 *
 * Prints "N passed, M failed" and exits non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L

#include "gradnormlorp.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORLD 3
#define STEPS 5

static int n_pass, n_fail;
static pthread_mutex_t check_lock = PTHREAD_MUTEX_INITIALIZER;

#define CHECK(cond, ...)                                              \
    do {                                                              \
        pthread_mutex_lock(&check_lock);                              \
        if (cond) {                                                   \
            n_pass++;                                                 \
        } else {                                                      \
            n_fail++;                                                 \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);      \
            fprintf(stderr, __VA_ARGS__);                             \
            fputc('\n', stderr);                                      \
        }                                                             \
        pthread_mutex_unlock(&check_lock);                            \
    } while (0)

static void *xcalloc(size_t n)
{
    void *p = calloc(n ? n : 1, 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static gnlp_tensor host_tensor(void *data, int32_t dtype, int ndim, int64_t d0, int64_t d1)
{
    gnlp_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.ndim = ndim;
    t.shape[0] = d0;
    t.strides[0] = ndim == 2 ? d1 : 1;
    if (ndim == 2) {
        t.shape[1] = d1;
        t.strides[1] = 1;
    }
    return t;
}

/* ------------------------------------------------- the in-process "group" */

static pthread_barrier_t barrier;
static const gnlp_tensor *slots[WORLD];
static int calls[WORLD];

static int64_t numel(const gnlp_tensor *t)
{
    return t->ndim == 2 ? t->shape[0] * t->shape[1] : t->shape[0];
}

/* Every rank publishes its buffer; after the barrier each combines all of
 * them in rank order (so all get the same bits); a second barrier keeps the
 * buffers alive until everyone has read them. */
static int32_t collective(void *ctx, int32_t op, const gnlp_tensor *send, const gnlp_tensor *recv)
{
    int rank = *(int *)ctx;
    calls[rank]++;
    slots[rank] = op == GNLP_COLLECTIVE_GATHER_ROWS ? send : recv;
    int64_t n = numel(recv);
    float *mine = xcalloc((size_t)n * sizeof(float));
    pthread_barrier_wait(&barrier);
    if (op == GNLP_COLLECTIVE_GATHER_ROWS) {
        int64_t off = 0;
        for (int k = 0; k < WORLD; k++) {
            int64_t part = numel(slots[k]);
            if (part) {
                memcpy(mine + off, slots[k]->data, (size_t)part * sizeof(float));
            }
            off += part;
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
            float acc = ((const float *)slots[0]->data)[i];
            for (int k = 1; k < WORLD; k++) {
                float v = ((const float *)slots[k]->data)[i];
                acc = op == GNLP_COLLECTIVE_SUM ? acc + v : (v > acc ? v : acc);
            }
            mine[i] = acc;
        }
    }
    pthread_barrier_wait(&barrier);
    memcpy(recv->data, mine, (size_t)n * sizeof(float));
    free(mine);
    return 0;
}

/* ------------------------------------------------------------- parameters */

#define N_PARAMS 3
static const int64_t rows_of[N_PARAMS] = {50, 7, 40};
static const int64_t cols_of[N_PARAMS] = {12, 9, 0}; /* 0: 1-D */
static const int32_t proj_of[N_PARAMS] = {GNLP_PROJ_LEFT, GNLP_PROJ_RIGHT, GNLP_PROJ_STD};

typedef struct {
    float *w, *g;
    gnlp_tensor *state;
    int32_t n_state;
    void **bufs;
} param_t;

static gnlp_config config_of(int p)
{
    gnlp_config c = gnlp_config_default();
    c.rank = 4;
    c.update_proj_gap = 2;
    c.proj_type = proj_of[p];
    c.lr = 1e-2;
    return c;
}

static int64_t ncols(int p) { return cols_of[p] ? cols_of[p] : 1; }

/* Allocates state for (a rank's rows of) parameter p; shard NULL: whole. */
static void param_alloc(param_t *pr, int p, const float *w0, int64_t first, int64_t rows, const gnlp_shard *shard)
{
    int ndim = cols_of[p] ? 2 : 1;
    size_t n = (size_t)(rows * ncols(p));
    pr->w = xcalloc(n * sizeof(float));
    pr->g = xcalloc(n * sizeof(float));
    memcpy(pr->w, w0 + first * ncols(p), n * sizeof(float));
    gnlp_tensor desc = host_tensor(pr->w, GNLP_FLOAT32, ndim, rows, cols_of[p]);
    gnlp_config c = config_of(p);
    gnlp_buffer_spec specs[GNLP_MAX_STATE];
    gnlp_status s = shard ? gnlp_shard_state_layout(&desc, shard, &c, specs, GNLP_MAX_STATE, &pr->n_state)
                          : gnlp_state_layout(&desc, &c, specs, GNLP_MAX_STATE, &pr->n_state);
    CHECK(s == GNLP_OK, "layout of param %d: %s", p, gnlp_last_error());
    pr->state = xcalloc(sizeof(gnlp_tensor) * (size_t)pr->n_state);
    pr->bufs = xcalloc(sizeof(void *) * (size_t)pr->n_state);
    for (int i = 0; i < pr->n_state; i++) {
        pr->bufs[i] = xcalloc((size_t)specs[i].bytes);
        pr->state[i] = host_tensor(specs[i].bytes ? pr->bufs[i] : NULL, specs[i].dtype, specs[i].ndim,
                                   specs[i].shape[0], specs[i].shape[1]);
    }
    s = shard ? gnlp_shard_state_init(&desc, shard, pr->state, pr->n_state, &c, NULL)
              : gnlp_state_init(&desc, pr->state, pr->n_state, &c, NULL);
    CHECK(s == GNLP_OK, "state init of param %d: %s", p, gnlp_last_error());
}

static gnlp_step_item item_of(const param_t *pr, int p, int64_t rows, int64_t step)
{
    gnlp_step_item it;
    memset(&it, 0, sizeof it);
    int ndim = cols_of[p] ? 2 : 1;
    it.param = host_tensor(rows ? pr->w : NULL, GNLP_FLOAT32, ndim, rows, cols_of[p]);
    it.grad = host_tensor(rows ? pr->g : NULL, GNLP_FLOAT32, ndim, rows, cols_of[p]);
    it.state = pr->state;
    it.n_state = pr->n_state;
    it.config = config_of(p);
    it.step = step;
    return it;
}

static void split(int64_t rows, int rank, int64_t *first, int64_t *count)
{
    int64_t chunk = (rows + WORLD - 1) / WORLD;
    *first = rank * chunk < rows ? rank * chunk : rows;
    *count = rows - *first < chunk ? rows - *first : chunk;
}

/* ------------------------------------------------------------------ ranks */

static param_t whole[N_PARAMS], shards_of[WORLD][N_PARAMS];
static float *grads[STEPS + 1][N_PARAMS];
static gnlp_status results[WORLD];
static int64_t current_step;

static void *rank_main(void *arg)
{
    int rank = *(int *)arg;
    gnlp_step_item items[N_PARAMS];
    gnlp_shard sh[N_PARAMS];
    for (int p = 0; p < N_PARAMS; p++) {
        int64_t first, count;
        split(rows_of[p], rank, &first, &count);
        memcpy(shards_of[rank][p].g, grads[current_step][p] + first * ncols(p), (size_t)(count * ncols(p)) * sizeof(float));
        items[p] = item_of(&shards_of[rank][p], p, count, current_step);
        sh[p] = (gnlp_shard){.global_rows = rows_of[p], .row_offset = first, .rank = rank, .world_size = WORLD};
    }
    results[rank] = gnlp_step_sharded(items, sh, N_PARAMS, collective, arg, NULL);
    if (results[rank] != GNLP_OK && results[rank] != GNLP_ERR_COLLECTIVE) {
        fprintf(stderr, "rank %d: %s\n", rank, gnlp_last_error());
    }
    return NULL;
}

static void step_ranks(int64_t step)
{
    pthread_t threads[WORLD];
    static int ranks[WORLD] = {0, 1, 2};
    current_step = step;
    for (int k = 0; k < WORLD; k++) {
        pthread_create(&threads[k], NULL, rank_main, &ranks[k]);
    }
    for (int k = 0; k < WORLD; k++) {
        pthread_join(threads[k], NULL);
    }
}

static double rel_diff(int p)
{
    double num = 0, den = 0;
    for (int k = 0; k < WORLD; k++) {
        int64_t first, count;
        split(rows_of[p], k, &first, &count);
        for (int64_t i = 0; i < count * ncols(p); i++) {
            double d = (double)shards_of[k][p].w[i] - whole[p].w[first * ncols(p) + i];
            num += d * d;
            den += (double)whole[p].w[first * ncols(p) + i] * whole[p].w[first * ncols(p) + i];
        }
    }
    return sqrt(num / den);
}

int main(void)
{
    pthread_barrier_init(&barrier, NULL, WORLD);
    srand(7);
    for (int p = 0; p < N_PARAMS; p++) {
        int64_t n = rows_of[p] * ncols(p);
        float *w0 = xcalloc((size_t)n * sizeof(float));
        for (int64_t i = 0; i < n; i++) {
            w0[i] = (float)rand() / RAND_MAX - 0.5f;
        }
        param_alloc(&whole[p], p, w0, 0, rows_of[p], NULL);
        for (int k = 0; k < WORLD; k++) {
            int64_t first, count;
            split(rows_of[p], k, &first, &count);
            gnlp_shard sh = {.global_rows = rows_of[p], .row_offset = first, .rank = k, .world_size = WORLD};
            param_alloc(&shards_of[k][p], p, w0, first, count, &sh);
        }
        for (int s = 1; s <= STEPS; s++) {
            grads[s][p] = xcalloc((size_t)n * sizeof(float));
            for (int64_t i = 0; i < n; i++) {
                grads[s][p][i] = (float)rand() / RAND_MAX - 0.5f;
            }
        }
        free(w0);
    }

    for (int64_t s = 1; s < STEPS; s++) {
        gnlp_step_item items[N_PARAMS];
        for (int p = 0; p < N_PARAMS; p++) {
            memcpy(whole[p].g, grads[s][p], (size_t)(rows_of[p] * ncols(p)) * sizeof(float));
            items[p] = item_of(&whole[p], p, rows_of[p], s);
        }
        CHECK(gnlp_step_batch(items, N_PARAMS, NULL) == GNLP_OK, "whole step %ld: %s", (long)s, gnlp_last_error());
        step_ranks(s);
        for (int k = 0; k < WORLD; k++) {
            CHECK(results[k] == GNLP_OK, "rank %d step %ld: status %d", k, (long)s, results[k]);
        }
    }
    for (int p = 0; p < N_PARAMS; p++) {
        double d = rel_diff(p);
        CHECK(d < 1e-5, "param %d: sharded weights differ from the whole step's by %.3g (relative)", p, d);
    }
    CHECK(calls[0] == calls[1] && calls[1] == calls[2], "ranks made %d, %d, %d collective calls", calls[0], calls[1], calls[2]);

    /* A NaN in rank 1's gradient: every rank refuses, nothing changes. */
    float before = shards_of[0][0].w[0];
    grads[STEPS][1][rows_of[1] * ncols(1) - 1] = NAN; /* the last row: rank 2's */
    step_ranks(STEPS);
    CHECK(results[2] == GNLP_ERR_NONFINITE, "the rank with the NaN returned %d, want GNLP_ERR_NONFINITE", results[2]);
    CHECK(results[0] == GNLP_ERR_COLLECTIVE && results[1] == GNLP_ERR_COLLECTIVE,
          "the other ranks returned %d and %d, want GNLP_ERR_COLLECTIVE", results[0], results[1]);
    CHECK(shards_of[0][0].w[0] == before, "a refused step changed rank 0's weights");

    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
