/*
 * gradnormlorp.h — the C ABI of the GradNormLoRP optimizer.
 *
 * This header is the contract. The library (libgradnormlorp.so, built from
 * capi/ with `go build -buildmode=c-shared`) implements it; Python, C and any
 * other language call it. Plain C99, usable from C++.
 *
 * Model of use
 * ------------
 * 1. Describe the parameter as a gnlp_tensor and the hyperparameters as a
 *    gnlp_config (start from gnlp_config_default()).
 * 2. Ask gnlp_state_layout() which state buffers the parameter needs (name,
 *    dtype, shape, bytes). Allocate them yourself, on the parameter's device,
 *    in the order given: the caller owns all state, so checkpoints, memory
 *    accounting and device moves see every byte.
 * 3. gnlp_state_init() fills the buffers from the current parameter value.
 * 4. Each optimizer step, call gnlp_step() per parameter or gnlp_step_batch()
 *    for many at once, passing the 1-based step number. Hyperparameters are
 *    read on every call, so learning-rate schedules need nothing special.
 *
 * Conventions
 * -----------
 * - Every function returning gnlp_status returns GNLP_OK on success. On
 *   failure gnlp_last_error() gives a human-readable message for the calling
 *   thread, and parameters and state are left untouched: a step or batch
 *   that fails, for any reason found while validating or computing it (a
 *   NaN/Inf gradient, a NaN/Inf weight of a projected parameter, a step
 *   that would overflow float32, an SVD
 *   that does not converge), changes nothing.
 * - Tensors must be contiguous (row-major). Strides are checked; a
 *   non-contiguous tensor is rejected with GNLP_ERR_NOT_CONTIGUOUS.
 * - Matrix parameters are m x n with rows as output units (PyTorch
 *   Linear.weight). Weight normalisation is per row.
 * - The library keeps no state between calls besides per-thread error text
 *   and the worker-pool size (gnlp_set_num_threads). Calls from several
 *   threads on different parameters may run at once.
 *
 * ABI versioning: GNLP_ABI_VERSION changes whenever a struct layout, enum
 * value or function signature in this file changes incompatibly. Callers
 * compare gnlp_abi_version() with the macro they were compiled against.
 * GNLP_ABI_MINOR counts compatible additions (new functions, marked "ABI
 * minor N" below) within one GNLP_ABI_VERSION; it restarts at 0 when the
 * version changes. A caller that uses an addition checks gnlp_abi_minor().
 * ABI 2 added gnlp_config.compensation (a struct layout change); everything
 * else of ABI 1 minor 2 is in it unchanged.
 *
 * This header is also the source of the ABI's constants for every other
 * language: `make abi-check` (internal/abigen) keeps the mirrors in Go,
 * CUDA, Python and the C test equal to the enums and defines here.
 */
#ifndef GRADNORMLORP_H
#define GRADNORMLORP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GNLP_ABI_VERSION 2
#define GNLP_ABI_MINOR 0

/* Longest state-buffer name, including the terminating NUL. */
#define GNLP_NAME_MAX 32
/* Most state buffers one parameter can need. */
#define GNLP_MAX_STATE 16

typedef enum gnlp_status {
    GNLP_OK = 0,
    GNLP_ERR_INVALID_ARGUMENT = 1, /* a value is out of range (lr < 0, rank < 0, ...) */
    GNLP_ERR_NULL_POINTER = 2,     /* a required pointer is NULL */
    GNLP_ERR_MISALIGNED = 3,       /* a data pointer is not aligned to its dtype */
    GNLP_ERR_SHAPE = 4,            /* shapes disagree with each other or with the layout */
    GNLP_ERR_DTYPE = 5,            /* unsupported dtype, or dtype disagrees with the layout */
    GNLP_ERR_NOT_CONTIGUOUS = 6,   /* strides are not row-major contiguous */
    GNLP_ERR_NONFINITE = 7,        /* NaN or Inf in a gradient or in a projected parameter's
                                    * weights, or a step that overflows float32; nothing
                                    * was changed */
    GNLP_ERR_UNKNOWN_OPTION = 8,   /* unknown proj_type, optim_bits, ... */
    GNLP_ERR_DEVICE = 9,           /* device type/index unsupported or mixed in one call */
    GNLP_ERR_BACKEND_UNAVAILABLE = 10, /* e.g. CUDA tensor but the CUDA backend is not built */
    GNLP_ERR_BUFFER_TOO_SMALL = 11,    /* a caller-provided array is too short */
    GNLP_ERR_NUMERICAL = 12,       /* a factorisation failed to converge */
    GNLP_ERR_INTERNAL = 13,        /* a bug: please report it with the message */
    GNLP_ERR_NO_DRIVER = 14,       /* no NVIDIA driver (libnvidia-ml / libcuda) or no CUDA device */
    GNLP_ERR_CUDA = 15,            /* a CUDA runtime, cuBLAS or cuSOLVER call failed (out of memory, ...) */
    GNLP_ERR_COLLECTIVE = 16       /* a collective callback failed, or another rank
                                    * refused the sharded step; nothing was changed */
} gnlp_status;

typedef enum gnlp_dtype {
    GNLP_FLOAT32 = 0,
    GNLP_BFLOAT16 = 1,
    GNLP_FLOAT16 = 2,
    GNLP_UINT8 = 3 /* quantised state only, never a parameter */
} gnlp_dtype;

typedef enum gnlp_device_type {
    GNLP_DEVICE_CPU = 0, /* host memory */
    GNLP_DEVICE_CUDA = 1 /* device memory of device_index */
} gnlp_device_type;

typedef enum gnlp_proj_type {
    GNLP_PROJ_STD = 0,         /* project the smaller side: right if m >= n, else left */
    GNLP_PROJ_REVERSE_STD = 1, /* the larger side: left if m >= n, else right */
    GNLP_PROJ_RIGHT = 2,       /* R = dV Q^T, Q is r x n */
    GNLP_PROJ_LEFT = 3,        /* R = P^T dV, P is m x r */
    GNLP_PROJ_FULL = 4         /* R = P^T dV Q^T, core r x r */
} gnlp_proj_type;

/* gnlp_config.refresh. */
typedef enum gnlp_refresh {
    GNLP_REFRESH_SVD = 0,     /* exact SVD */
    GNLP_REFRESH_SUBSPACE = 1 /* subspace iteration, warm-started */
} gnlp_refresh;

/* gnlp_config.compensation (ABI 2): what happens to the part of the
 * direction gradient outside the projector's subspace. */
typedef enum gnlp_compensation {
    GNLP_COMPENSATION_NONE = 0,    /* dropped (SPEC section 1, GaLore) */
    GNLP_COMPENSATION_RESIDUAL = 1 /* added back, norm-scaled and growth-limited (Fira-style) */
} gnlp_compensation;

/* Most a compensated residual's norm may grow from one step to the next
 * (Fira's norm-growth limiter). */
#define GNLP_COMPENSATION_GROWTH 1.01

/* A dense tensor of rank 1 or 2. Strides are in elements, row-major
 * contiguous means strides = {shape[1], 1} (rank 2) or {1} (rank 1). */
typedef struct gnlp_tensor {
    void *data;
    int32_t dtype;        /* gnlp_dtype */
    int32_t ndim;         /* 1 or 2 */
    int64_t shape[2];     /* shape[1] ignored when ndim == 1 */
    int64_t strides[2];   /* strides[1] ignored when ndim == 1 */
    int32_t device_type;  /* gnlp_device_type */
    int32_t device_index; /* CUDA ordinal; must be 0 for CPU */
} gnlp_tensor;

/* Hyperparameters. Names and meanings follow torch.optim.AdamW and
 * galore_torch.GaLoreAdamW. rank == 0 selects plain AdamW; rank > 0 projects
 * matrices (1-D parameters are never projected).
 *
 * refresh chooses how a projector refresh finds the top-r singular subspace
 * of the weight-norm gradient: 0 (the default) is the exact SVD; 1 is
 * subspace iteration warm-started from the previous projector (one round
 * of orthogonal iteration, thin QRs, Rayleigh-Ritz on an r x r matrix,
 * then the same sign rule), which is much faster and agrees with the exact
 * subspace to the tolerance bench/step.py reports (captured energy
 * >= 0.999 of the exact top-r subspace on real gradients 50 to 200 steps
 * after the previous refresh). A parameter's first refresh (step 1) is
 * always exact, and a backend without the needed primitives refreshes
 * exactly. With refresh 1 the workspace (gnlp_workspace_size) includes
 * (m + n + 3r) r floats of refresh scratch. Other values are rejected
 * (GNLP_ERR_UNKNOWN_OPTION).
 *
 * compensation 1 (GNLP_COMPENSATION_RESIDUAL) adds to the projected-back
 * update the rest of the direction gradient, S = dV - back(R) (back is the
 * projection back: P R, R Q or P R Q), scaled as Fira does: the update
 * becomes scale * (back(N) + c S) with c = ||N|| / ||R|| (N the low-rank
 * Adam direction, Frobenius norms of the whole matrix), except that c ||S||
 * may not exceed GNLP_COMPENSATION_GROWTH times its value of the previous
 * step (kept in the state buffer "compensation_norm", one float per matrix;
 * 0, as initialised, sets no limit). It costs a pass over the parameter
 * and gradient more per step, and m n + max(m, size of R) floats more of
 * transient workspace (shared with the refresh's). On a CUDA device it
 * waits for the stream per matrix and step, to read its norms and the
 * stored compensation_norm. */
typedef struct gnlp_config {
    double lr;
    double beta1;
    double beta2;
    double eps;
    double weight_decay; /* decoupled: scales by (1 - lr * weight_decay) */
    double scale;        /* alpha: scale of the projected-back update */
    int32_t rank;            /* 0 = AdamW; otherwise min(rank, m, n) is used */
    int32_t update_proj_gap; /* T: refresh the projector when (step-1) % T == 0 */
    int32_t proj_type;       /* gnlp_proj_type */
    int32_t correct_bias;    /* nonzero: Adam bias correction in the step size */
    int32_t optim_bits;      /* 32, 8 or 4: width of the stored Adam moments and
                              * projector (8/4: blockwise dynamic codes with
                              * an fp32 absmax per 256 values, for buffers of
                              * >= 4096 elements; see gnlp_state_layout) */
    int32_t refresh;         /* gnlp_refresh: 0 exact SVD, 1 subspace iteration */
    int32_t compensation;    /* gnlp_compensation: 0 none, 1 residual (ABI 2) */
} gnlp_config;

/* Defaults, one per gnlp_config field (gnlp_config_default() returns
 * them): torch.optim.AdamW's Adam hyperparameters, galore_torch's
 * projection ones. Every language's binding takes its defaults from here. */
#define GNLP_DEFAULT_LR 1e-3
#define GNLP_DEFAULT_BETA1 0.9
#define GNLP_DEFAULT_BETA2 0.999
#define GNLP_DEFAULT_EPS 1e-8
#define GNLP_DEFAULT_WEIGHT_DECAY 1e-2
#define GNLP_DEFAULT_SCALE 1.0
#define GNLP_DEFAULT_RANK 0
#define GNLP_DEFAULT_UPDATE_PROJ_GAP 200
#define GNLP_DEFAULT_PROJ_TYPE GNLP_PROJ_STD
#define GNLP_DEFAULT_CORRECT_BIAS 1
#define GNLP_DEFAULT_OPTIM_BITS 32
#define GNLP_DEFAULT_REFRESH GNLP_REFRESH_SVD
#define GNLP_DEFAULT_COMPENSATION GNLP_COMPENSATION_NONE

/* One state buffer as the library wants it allocated. */
typedef struct gnlp_buffer_spec {
    char name[GNLP_NAME_MAX];
    int32_t dtype;    /* gnlp_dtype */
    int32_t ndim;     /* 1 or 2 */
    int64_t shape[2];
    int64_t bytes;    /* exact size in bytes */
} gnlp_buffer_spec;

/* One parameter's share of a batched step. */
typedef struct gnlp_step_item {
    gnlp_tensor param;        /* updated in place */
    gnlp_tensor grad;         /* read only; same shape as param */
    const gnlp_tensor *state; /* n_state buffers, in layout order */
    int32_t n_state;
    int32_t reserved;         /* must be 0 */
    gnlp_config config;
    int64_t step;             /* 1-based: 1 on the first step of this parameter */
} gnlp_step_item;

/* Row sharding, as FSDP2 (torch.distributed.fsdp.fully_shard)
 * stores a parameter: a DTensor with placement Shard(0) on a 1-D mesh.
 * Rank k of world_size holds rows [k c, min((k+1) c, global_rows)) of the
 * whole parameter, c = ceil(global_rows / world_size) (torch.chunk's split:
 * the last ranks may hold fewer rows or none). The item's param and grad are
 * that block of rows (shape[0] == its row count, possibly 0); the library
 * checks row_offset and the row count against the split. A 1-D parameter is
 * split the same way along its only dimension. */
typedef struct gnlp_shard {
    int64_t global_rows; /* rows of the whole parameter (its length if 1-D) */
    int64_t row_offset;  /* first global row held by this rank */
    int32_t rank;        /* 0 <= rank < world_size */
    int32_t world_size;  /* ranks the rows are split across, >= 1 */
} gnlp_shard;

/* What a collective callback is asked to do. Tensors are
 * float32 and contiguous, on the items' device (host or CUDA, on the step's
 * stream); every rank makes the same calls in the same order. */
typedef enum gnlp_collective_op {
    GNLP_COLLECTIVE_SUM = 0,        /* recv <- sum over ranks of recv, in place; send is NULL */
    GNLP_COLLECTIVE_MAX = 1,        /* recv <- elementwise max over ranks of recv, in place; send is NULL */
    GNLP_COLLECTIVE_GATHER_ROWS = 2 /* send: this rank's rows (rows_k x cols, rows_k may be 0);
                                     * recv: global_rows x cols, every rank's rows at its
                                     * offset of the gnlp_shard split (uneven splits allowed) */
} gnlp_collective_op;

/* A collective over the ranks of the shard's process group,
 * implemented by the caller (the Python package runs torch.distributed on
 * the DTensor's mesh). Returns 0 on success; anything else makes the step
 * fail with GNLP_ERR_COLLECTIVE. Called only from the thread that called
 * gnlp_step_sharded, before it returns. */
typedef int32_t (*gnlp_collective_fn)(void *ctx, int32_t op, const gnlp_tensor *send,
                                      const gnlp_tensor *recv);

/* What the NVIDIA driver (NVML) says about one GPU, filled by
 * gnlp_device_info(). Strings are NUL-terminated. (Named gnlp_gpu_info: C
 * does not allow a type and a function both called gnlp_device_info.) */
typedef struct gnlp_gpu_info {
    char name[96];               /* e.g. "NVIDIA H100 80GB HBM3" */
    char uuid[96];               /* "GPU-..." */
    char driver_version[32];     /* e.g. "580.65.06" */
    int32_t cuda_driver_version; /* CUDA version the driver supports, 1000*major + 10*minor (13020 = 13.2) */
    int32_t device_count;        /* GPUs NVML sees */
    int32_t compute_major;       /* compute capability, e.g. 9 and 0 */
    int32_t compute_minor;
    int64_t memory_total;        /* bytes */
    int64_t memory_used;
    int64_t memory_free;
} gnlp_gpu_info;

/* The library's own cgo build defines GNLP_TYPES_ONLY to take the types
 * without these prototypes (cgo emits its own, without const). */
#ifndef GNLP_TYPES_ONLY

/* Library version string, e.g. "0.1.0". Static storage. */
const char *gnlp_version(void);

/* The GNLP_ABI_VERSION the library was built with. */
int32_t gnlp_abi_version(void);

/* Message of the last failed call on this thread ("" if none). Valid until
 * the next call from this thread. */
const char *gnlp_last_error(void);

/* The defaults: GNLP_DEFAULT_* above. */
gnlp_config gnlp_config_default(void);

/* Reports the state buffers `param` needs under `config`. Writes up to
 * `capacity` specs to `specs` and the total count to `*count` (so a call with
 * capacity 0 and specs NULL sizes the array). GNLP_ERR_BUFFER_TOO_SMALL if
 * capacity < count. Buffer order is the order every other call expects.
 * Only param's dtype, ndim and shape are read (data may be NULL).
 *
 * Buffers (a subset, by case): exp_avg, exp_avg_sq (Adam moments, in the
 * low-rank shape for projected matrices); proj_left (m x k), proj_right
 * (k x n); magnitude and direction_norm (per row, fp32) with
 * magnitude_exp_avg, magnitude_exp_avg_sq. Under optim_bits 8 or 4 the
 * moments and projectors of >= 4096 elements are GNLP_UINT8 codes (4-bit
 * codes packed two per byte, flat) each followed by a float32
 * NAME_absmax buffer with one value per block of 256. */
gnlp_status gnlp_state_layout(const gnlp_tensor *param, const gnlp_config *config,
                              gnlp_buffer_spec *specs, int32_t capacity, int32_t *count);

/* Initialises the caller-allocated state from the current parameter:
 * magnitudes g = s = per-row norms, moments and projectors zero. */
gnlp_status gnlp_state_init(const gnlp_tensor *param, const gnlp_tensor *state,
                            int32_t n_state, const gnlp_config *config, void *stream);

/* One optimizer step of one parameter. `stream` is a cudaStream_t for CUDA
 * tensors (NULL = default stream) and ignored on the CPU. */
gnlp_status gnlp_step(const gnlp_tensor *param, const gnlp_tensor *grad,
                      const gnlp_tensor *state, int32_t n_state,
                      const gnlp_config *config, int64_t step, void *stream);

/* Steps many parameters in one call, all or none: every item is validated
 * (gradients finite, no tensor of the batch sharing memory
 * with another's parameter or state: GNLP_ERR_INVALID_ARGUMENT for the same
 * parameter twice), then the part of every item's step that can fail is
 * computed (weight-norm gradients, projector refresh, low-rank Adam; every
 * intermediate checked for NaN/Inf, which NaN/Inf weights reach; state
 * snapshotted in scratch), and only
 * then are the parameters written. On error nothing is changed. On the CPU
 * the items are processed in parallel across cores. All items must be on
 * one device (GNLP_ERR_DEVICE otherwise).
 *
 * CUDA: everything is enqueued on `stream`; each finiteness check waits for
 * the device to read its verdict (one per parameter to validate, two more
 * per projected parameter and one more at its refresh), and a refresh
 * step waits once more per
 * refreshed parameter, for the SVD's convergence flag. gnlp_step (one
 * item) behaves the same. Use gnlp_step_batch_async for a step without
 * these waits. */
gnlp_status gnlp_step_batch(const gnlp_step_item *items, int32_t n_items, void *stream);

/* gnlp_step_batch without the host waits for finiteness verdicts, for
 * CUDA tensors: the finiteness checks run on the device and set
 * `*nonfinite` (a device int32 on the items' device; NULL to use a private
 * flag) to 1 if any gradient holds NaN or Inf, and every update
 * kernel of the batch then does nothing, so all parameters and state stay
 * untouched, as with a refused gnlp_step_batch. (A step found to overflow
 * float32 while it is computed sets the flag too; the items computed
 * before it in the batch may then have their Adam state advanced.) The flag is never cleared: zero it
 * before the call, read it whenever convenient (like torch's found_inf).
 * A non-refresh step does not wait for the device at all; a refresh step
 * waits once per refreshed parameter (SVD convergence), and then also
 * returns early without changes if the flag is already set. On the CPU this
 * is gnlp_step_batch (nonfinite is ignored). */
gnlp_status gnlp_step_batch_async(const gnlp_step_item *items, int32_t n_items, void *stream,
                                  int32_t *nonfinite);

/* Bytes of scratch memory one step of `param` uses besides its state
 * (weight-norm gradients, the projected gradient, the update projected
 * back). On the CPU the library allocates it from a reusable pool, one
 * workspace per parameter stepped concurrently; the projector refresh also
 * takes a transient float64 copy of the matrix for the SVD.
 * On CUDA the library takes the same scratch on the device, stream-ordered
 * (cudaMallocFromPoolAsync on `stream`, freed the same way at the end of
 * the parameter's step) from a memory pool of its own per device that keeps
 * freed memory for the next step; parameters of a batch are stepped one
 * after another, so the pool holds about the largest parameter's
 * workspace. A refresh step also takes a float32 copy of dV, its SVD
 * factors and cuSOLVER's workspace (queried). gnlp_cuda_scratch reports
 * the pool. */
gnlp_status gnlp_workspace_size(const gnlp_tensor *param, const gnlp_config *config,
                                int64_t *bytes);

/* GNLP_ABI_MINOR of the library. */
int32_t gnlp_abi_minor(void);

/* Validates a config alone (GNLP_ERR_INVALID_ARGUMENT or
 * GNLP_ERR_UNKNOWN_OPTION with a message naming the field and its value),
 * as every other call taking a config does first. */
gnlp_status gnlp_config_validate(const gnlp_config *config);

/* The CPU worker pool. Every parallel loop of a CPU step uses
 * at most n threads, the caller's included; n == 0 (the default) means one
 * per core the Go runtime sees (GOMAXPROCS). The environment variable
 * GNLP_NUM_THREADS sets it when the library loads. Takes effect from the
 * next step; negative n: GNLP_ERR_INVALID_ARGUMENT. */
gnlp_status gnlp_set_num_threads(int32_t n);

/* The number of threads a CPU loop may use now (n, or the
 * number of cores when n is 0; never more than GOMAXPROCS). */
int32_t gnlp_num_threads(void);

/* ------------------------------------------------------------------ sharded */

/* The state buffers of one rank's share of a row-sharded parameter: the
 * buffers gnlp_state_layout gives the whole parameter (same names, order,
 * dtypes; the projection plan, rank and sides follow the whole shape), with
 *   - row-sharded: per-row buffers (magnitude, direction_norm and their
 *     moments), the moments of a right projection (rows_k x k), and the
 *     moments of a plain AdamW parameter: this rank's rows only;
 *   - replicated (identical on every rank): projectors proj_left (m x k) and
 *     proj_right (k x n), the moments of a left or full projection.
 * Quantised (8/4-bit) buffers keep the blocks of the whole tensor: block j
 * covers elements [256 j, 256 j + 256) of the whole row-major tensor, so a
 * row-sharded rank stores the codes of its own elements and the absmax of
 * every block they touch (a block split between ranks is stored, with the
 * same value, by each of them; its absmax is agreed with one
 * GNLP_COLLECTIVE_MAX per step). Concatenating the ranks' codes, and their
 * absmax with the shared blocks once, gives exactly the unsharded state. */
gnlp_status gnlp_shard_state_layout(const gnlp_tensor *param, const gnlp_shard *shard,
                                    const gnlp_config *config, gnlp_buffer_spec *specs,
                                    int32_t capacity, int32_t *count);

/* gnlp_state_init for one rank's share (row norms of its own rows). */
gnlp_status gnlp_shard_state_init(const gnlp_tensor *param, const gnlp_shard *shard,
                                  const gnlp_tensor *state, int32_t n_state,
                                  const gnlp_config *config, void *stream);

/* One optimizer step of row-sharded parameters (shards[i] describes
 * items[i]; state in gnlp_shard_state_layout order), equal to
 * gnlp_step_batch on the whole parameters (SPEC section 1 on every whole
 * matrix), all or none on every rank. Every rank calls it with the same
 * items in the same order (same whole shapes, configs and steps; the local
 * rows differ), and it makes the same sequence of `collective` calls on
 * every rank, even on a rank that finds an error: ranks first agree on
 * validation (one GNLP_COLLECTIVE_MAX of 3 floats: a failure flag and a
 * 24-bit fingerprint of the items' whole shapes, configs and steps, and its
 * negation, so ranks stepping different parameters are refused rather than
 * left waiting) and, before any parameter is written, on the computed step
 * (one more), so either every rank steps or every rank returns an error and
 * changes nothing (the rank that found the problem names it; the others
 * return GNLP_ERR_COLLECTIVE "refused on another rank"; mismatched items:
 * GNLP_ERR_INVALID_ARGUMENT on every rank). A callback that fails ends the
 * step on that rank with GNLP_ERR_COLLECTIVE, state rolled back; the
 * caller's transport must then fail the other ranks' pending calls too (as
 * torch.distributed does when a peer drops out). Items' local parts and
 * row-sharded state buffers may have 0 rows (data may then be NULL).
 *
 * Communication, per projected parameter: right projection (dV Q^T) none
 * per step; left (P^T dV) one GNLP_COLLECTIVE_SUM of k x n; full one of
 * k x k; at a refresh one GNLP_COLLECTIVE_GATHER_ROWS of dV (m x n float32,
 * so every rank runs the same SVD or subspace iteration on the whole dV and
 * gets the same projectors bit for bit); 8/4-bit row-sharded buffers one
 * GNLP_COLLECTIVE_MAX of 2 x world_size floats (the absmax of the blocks
 * split between ranks). Plain AdamW parameters are elementwise: nothing
 * beyond that MAX. A 4-bit row-sharded buffer whose ranks' blocks of rows
 * hold an odd number of values (two ranks would share a byte) is refused
 * with GNLP_ERR_SHAPE. */
gnlp_status gnlp_step_sharded(const gnlp_step_item *items, const gnlp_shard *shards,
                              int32_t n_items, gnlp_collective_fn collective, void *ctx,
                              void *stream);

/* ------------------------------------------------------------------ devices */


/* Fills *out for GPU `device_index` (NVML's numbering, which follows PCI
 * order and may differ from CUDA_VISIBLE_DEVICES). Loads libnvidia-ml.so.1
 * on first use: GNLP_ERR_NO_DRIVER ("no NVIDIA driver ...") where it is
 * missing, GNLP_ERR_DEVICE for an index out of range. Does not touch CUDA
 * and works without libgnlp_cuda.so. */
gnlp_status gnlp_device_info(int32_t device_index, gnlp_gpu_info *out);

/* The CUDA backend's scratch pool on CUDA device `device_index`: bytes
 * reserved from the driver, bytes in use by steps still in flight, and the
 * high-water mark of in-use bytes. With release != 0, reserved memory not
 * in use is first returned to the driver. GNLP_ERR_BACKEND_UNAVAILABLE if
 * libgnlp_cuda.so is not built. */
gnlp_status gnlp_cuda_scratch(int32_t device_index, int32_t release, int64_t *reserved, int64_t *in_use,
                              int64_t *peak);

#endif /* GNLP_TYPES_ONLY */

#ifdef __cplusplus
}
#endif

#endif /* GRADNORMLORP_H */
