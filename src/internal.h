/*
 * internal.h - declarations shared by the library's layers (not installed).
 *
 * The public entry points validate everything; the reference (src/ref) and the fast kernels
 * (src/cpu) receive params that already passed dn_la_check and may assume them valid.
 */
#ifndef DN_INTERNAL_H
#define DN_INTERNAL_H

#include "deltanet.h"
#include "half.h"

#include <stdio.h>
#include <stdlib.h>

/* Records the detailed message for dn_last_error() and returns the status. */
dn_status dn_fail(dn_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Internal invariants only (never for user input): reports file:line, then aborts. */
#define DN_ASSERT(x)                                                                               \
    do {                                                                                           \
        if (!(x)) {                                                                                \
            fprintf(stderr, "deltanet: internal error at %s:%d: %s\n", __FILE__, __LINE__, #x);    \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static inline int dn_op_is_la(dn_op op) { return (unsigned)op <= (unsigned)DN_OP_GDN; }
static inline int dn_op_has_gate(dn_op op) { return op == DN_OP_GLA || op == DN_OP_GDN; }
static inline int dn_op_has_delta(dn_op op) { return op == DN_OP_DELTANET || op == DN_OP_GDN; }

/* Number of sequences and the token range [*t0, *t1) of sequence n (batch row b = n without
 * cu_seqlens, row 0 with). */
static inline int64_t dn_la_nseq(const dn_la_params *p) { return p->cu_seqlens ? p->n_seqs : p->B; }
static inline void dn_la_seq(const dn_la_params *p, int64_t n, int64_t *b, int64_t *t0,
                             int64_t *t1) {
    if (p->cu_seqlens) {
        *b = 0;
        *t0 = p->cu_seqlens[n];
        *t1 = p->cu_seqlens[n + 1];
    } else {
        *b = n;
        *t0 = 0;
        *t1 = p->T;
    }
}

int dn_threads_for(int requested);

/* Log decays (the gates g <= 0 of GLA, Gated DeltaNet and Mamba-2), stated once. g = -inf is a
 * full reset of the state (exp(g) = 0). exp(g) is already 0 in float for g < -104 and in double
 * for g < -746, so every g below DN_LOG_DECAY_MIN is the same reset: the chunkwise kernels clamp
 * g there before they sum it, so that their gate differences gamma_i - gamma_j never meet
 * (-inf) - (-inf) and their cumulative sums (at most 128 terms, kept in double) keep the small
 * gates that follow a huge one. NaN passes through unchanged. */
#define DN_LOG_DECAY_MIN (-1024.0f)
static inline float dn_log_decay(float g) { return g < DN_LOG_DECAY_MIN ? DN_LOG_DECAY_MIN : g; }
/* Whether exp(g) is exactly 0 in float: the gate's gradient dg = exp(g) dL/d(exp g) is then 0,
 * as the reference's is (it differentiates the recurrence token by token). */
static inline int dn_decay_is_zero(float g) { return g < -104.0f; }

/* The attention mask, stated once: the key at position pos of a query (pos = TK - TQ + i) sees
 * keys j with pos - window < j <= pos (window 0: all j <= pos). Returns the visible part of the
 * key block [j0, j0 + nk) as offsets [*a, *e] into the block; *e < *a when nothing is visible. */
static inline void dn_attn_visible(int64_t pos, int64_t window, int64_t j0, int64_t nk, int64_t *a,
                                   int64_t *e) {
    /* window > pos: the window reaches past the first key, so it cuts nothing (and pos - window
     * could overflow for a window near INT64_MAX) */
    int64_t lo = window > 0 && window <= pos ? pos - window + 1 - j0 : 0, hi = pos - j0;
    *a = lo > 0 ? lo : 0;
    *e = hi < nk - 1 ? hi : nk - 1;
}

/* ---- checked size arithmetic (src/check.c): every product of dimensions and every extent of
 * a strided view is computed here, so that an overflow is a DN_ERR_SHAPE, never a wrap. ----
 * dn_prod: *out = d[0] * ... * d[n-1] for non-negative factors; 0 when any factor is negative or
 * the product passes INT64_MAX. DN_PROD(&out, a, b, c) is the same over its arguments. */
int dn_prod(int64_t *out, int n, const int64_t *d);
#define DN_PROD(out, ...)                                                                          \
    dn_prod((out), (int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)),                \
            (const int64_t[]){__VA_ARGS__})
/* Elements spanned by a view of n0 x n1 x n2 rows of D with strides s: 1 + the largest offset
 * (0 for an empty view). Returns 0 when a stride is negative or the extent overflows. */
int dn_view_extent(dn_strides s, int64_t n0, int64_t n1, int64_t n2, int64_t D, int64_t *extent);
/* Whether two float ranges [a, a + na) and [b, b + nb) share memory. */
int dn_ranges_overlap(const void *a, int64_t na, const void *b, int64_t nb);

/* Shared argument checks (src/check.c). An output view's rows (n0 x n1 x n2 rows of D elements)
 * must not share elements; views of 3-D tensors [B,T,D] pass n2 = 1. */
int dn_strides_ok(dn_strides s);
int dn_rows_disjoint(dn_strides s, int64_t n0, int64_t n1, int64_t n2, int64_t D);
dn_status dn_check_output(const char *op, const char *name, const float *ptr, dn_strides s,
                          int64_t n0, int64_t n1, int64_t n2, int64_t D);
dn_status dn_check_input(const char *op, const char *name, const float *ptr, dn_strides s);
/* ptr non-NULL, strides non-negative, the extent (in elements) computable without overflow and,
 * for an output, rows that do not share elements. */
dn_status dn_check_view(const char *op, const char *name, const void *ptr, dn_strides s, int64_t n0,
                        int64_t n1, int64_t n2, int64_t D, int output, int64_t *extent);
/* The memory of one argument, for the overlap check: n floats from p (p may be NULL: absent).
 * Outputs may not overlap anything; two buffers with the same non-zero inplace tag may be the
 * very same range (a state updated in place) but not overlap partially. */
typedef struct {
    const char *name;
    const void *p;
    int64_t n;
    int output, inplace;
} dn_buf;
dn_status dn_check_overlaps(const char *op, const dn_buf *bufs, int n);

/* One tensor argument of a call, [n0,n1,n2,D] with strides s (a 3-D tensor passes n2 = 1 or
 * D = 1 as its layout says; a contiguous one takes dn_contiguous). dn_check_args checks, for
 * every argument of an op in one table: the size product fits in 64-bit bytes; a required
 * pointer is present; the view is valid (dn_check_view); and no output overlaps another
 * argument (dn_check_overlaps). Every check function lists its op's tensors this way. */
typedef struct {
    const char *name;
    const void *p;
    dn_strides s;
    int64_t n0, n1, n2, D;
    int output, optional, inplace;
} dn_arg;
#define DN_MAX_ARGS 24
dn_status dn_check_args(const char *op, dn_arg *args, int n);
/* The same, with bit i of half set when args[i] holds 16-bit elements (dn_la_params.dtype):
 * its view spans half the bytes. */
dn_status dn_check_args_mixed(const char *op, dn_arg *args, int n, unsigned half);
/* Strides of a contiguous [*, n1, n2, D] tensor; all -1 (rejected as negative) on overflow, so
 * that the defaults of a params struct never wrap. */
dn_strides dn_contiguous(int64_t n1, int64_t n2, int64_t D);
/* A contiguous [n0,n1,n2,D] tensor (states, parameters) as an argument. */
static inline dn_arg dn_arg_flat(const char *name, const void *p, int64_t n0, int64_t n1,
                                 int64_t n2, int64_t D, int output, int optional, int inplace) {
    return (dn_arg){name, p, dn_contiguous(n1, n2, D), n0, n1, n2, D, output, optional, inplace};
}

/* A call over no tokens (T = 0) computes nothing, however large B is: every entry point returns
 * before its loops, after passing the state through: out = in, or zeros when in is NULL (the
 * empty state; out NULL: nothing to write). n floats; in place allowed. */
void dn_pass_state(float *out, const float *in, int64_t n);

/* Reference (plain C, double accumulation): src/ref/la.c */
dn_status dn_ref_la_forward(const dn_la_params *p);

/* CUDA paths (src/cuda/; stubs in src/cuda_none.c without nvcc). Params passed dn_la_check. */
dn_status dn_cuda_la_forward(const dn_la_params *p);
dn_status dn_cuda_la_backward(const dn_la_bwd_params *bp);
dn_status dn_ref_la_backward(const dn_la_bwd_params *p);

/* References (plain C, double): src/ref/ */
dn_status dn_ref_attn_forward(const dn_attn_params *p);
dn_status dn_ref_attn_backward(const dn_attn_bwd_params *p);
dn_status dn_ref_mamba_forward(const dn_mamba_params *p);
dn_status dn_ref_mamba2_forward(const dn_mamba2_params *p);
dn_status dn_ref_rwkv4_forward(const dn_rwkv4_params *p);
dn_status dn_ref_rwkv4_backward(const dn_rwkv4_bwd_params *p);
dn_status dn_ref_conv_forward(const dn_conv_params *p);
dn_status dn_ref_conv_backward(const dn_conv_bwd_params *p);
dn_status dn_ref_mamba_backward(const dn_mamba_bwd_params *p);

/* The arguments of dn_matmul once checked (src/matmul.c), as the reference and the kernels take
 * them: C [M,N] (row stride ldc) = alpha op(A) op(B) + beta C, where op(A) [M,K] is A [M,K] (row
 * stride lda) or, with ta, the transpose of A [K,M]; op(B) [K,N] likewise from B [K,N] or B [N,K].
 * beta = 0: C is not read. */
typedef struct {
    dn_trans ta, tb;
    int64_t M, N, K;
    float alpha, beta;
    const float *A, *B; /* B: when btype is DN_F32 */
    float *C;
    int64_t lda, ldb, ldc;
    dn_dtype btype; /* DN_F32, or DN_BF16 / DN_F16 with the elements at B16 */
    const uint16_t *B16;
} dn_matmul_args;

/* Element (r, c) of the stored B (row stride ldb) as fp32, whatever its type. */
static inline float dn_matmul_b(const dn_matmul_args *a, int64_t r, int64_t c) {
    const int64_t i = r * a->ldb + c;
    if (a->btype == DN_F32) return a->B[i];
    return a->btype == DN_BF16 ? dn_bf16_to_f32(a->B16[i]) : dn_f16_to_f32(a->B16[i]);
}
/* Reference (src/ref/matmul.c): each element summed in double. alpha = 0 or K = 0: A and B are
 * not read and C = beta C, as dn_matmul promises. */
void dn_ref_matmul(const dn_matmul_args *a);
/* The BLAS this library was built with ("openblas", "blis", "cblas"), NULL without one. */
const char *dn_matmul_blas_name(void);

/* A KV cache as the kernels see it: [B,HKV,cap,D] keys and values of dtype, len tokens valid. */
typedef struct {
    const void *k, *v;
    int64_t B, HKV, D, cap, len;
    dn_dtype dtype;
} dn_kv_view;

/* Fast CPU kernels, one copy per ISA (each file in src/cpu compiled with DN_ISA_SUFFIX), reached
 * through the table of the active ISA (src/cpu/dispatch.c). Params arrive checked. A kernel that
 * needs scratch has a *_workspace query (bytes, SIZE_MAX when the size overflows); the API layer
 * allocates that much, 64-byte aligned, before calling it, so kernels never allocate and cannot
 * fail. Every parallel loop goes through dn_parallel_tasks (src/cpu/parallel.c). */
typedef struct {
    size_t (*la_workspace)(const dn_la_params *p, dn_impl impl, int nthreads);
    void (*la_forward)(const dn_la_params *p, dn_impl impl, int nthreads, void *ws);
    size_t (*attn_workspace)(const dn_attn_params *p, int nthreads);
    void (*attn_forward)(const dn_attn_params *p, int nthreads, void *ws);
    size_t (*decode_workspace)(const dn_kv_view *kv, int64_t TQ, int64_t H, int64_t window,
                               int nthreads);
    void (*decode)(const dn_kv_view *kv, float *o, dn_strides o_s, float *lse, const float *q,
                   dn_strides q_s, int64_t TQ, int64_t H, float scale, int64_t window, int nthreads,
                   void *ws);
    double (*fma_peak)(long iters, double *flops);
    float (*read_sum)(const float *x, int64_t n);
    size_t (*mamba_workspace)(const dn_mamba_params *p, int nthreads);
    void (*mamba_forward)(const dn_mamba_params *p, int nthreads, void *ws);
    /* Mamba-2 around its GLA call: g = dt' A and v = dt' x (and dt' into dtp unless NULL), where
     * dt' = softplus(dt + dt_bias); then y += Dskip x */
    void (*mamba2_prepare)(const dn_mamba2_params *p, float *g, float *v, float *dtp, int nthreads);
    void (*mamba2_finish)(const dn_mamba2_params *p, int nthreads);
    size_t (*rwkv4_workspace)(const dn_rwkv4_params *p, int nthreads);
    void (*rwkv4_forward)(const dn_rwkv4_params *p, int nthreads, void *ws);
    void (*conv_forward)(const dn_conv_params *p, int nthreads);
    size_t (*la_bwd_workspace)(const dn_la_params *p, int nthreads);
    void (*la_backward)(const dn_la_bwd_params *p, int nthreads, void *ws);
    size_t (*la_saved_floats)(const dn_la_params *p);
    void (*la_forward_train)(const dn_la_params *p, int nthreads, void *ws, void *saved);
    size_t (*attn_bwd_workspace)(const dn_attn_params *p, int nthreads);
    void (*attn_backward)(const dn_attn_bwd_params *p, int nthreads, void *ws);
    size_t (*conv_bwd_workspace)(const dn_conv_params *p, int nthreads);
    void (*conv_backward)(const dn_conv_bwd_params *p, int nthreads, void *ws);
    size_t (*mamba_bwd_workspace)(const dn_mamba_params *p, int nthreads);
    void (*mamba_backward)(const dn_mamba_bwd_params *p, int nthreads, void *ws);
    size_t (*rwkv4_bwd_workspace)(const dn_rwkv4_params *p, int nthreads);
    void (*rwkv4_backward)(const dn_rwkv4_bwd_params *p, int nthreads, void *ws);
    /* dn_matmul's built-in kernel: M, N, K >= 1 and alpha != 0 (the API layer does the rest) */
    size_t (*matmul_workspace)(const dn_matmul_args *a, int nthreads);
    void (*matmul)(const dn_matmul_args *a, int nthreads, void *ws);
} dn_cpu_kernels;

const dn_cpu_kernels *dn_cpu(void);

#define DN_CPU_DECL(isa)                                                                           \
    size_t dn_cpu_la_workspace_##isa(const dn_la_params *p, dn_impl impl, int nthreads);           \
    void dn_cpu_la_forward_##isa(const dn_la_params *p, dn_impl impl, int nthreads, void *ws);     \
    size_t dn_cpu_attn_workspace_##isa(const dn_attn_params *p, int nthreads);                     \
    void dn_cpu_attn_forward_##isa(const dn_attn_params *p, int nthreads, void *ws);               \
    size_t dn_cpu_decode_workspace_##isa(const dn_kv_view *kv, int64_t TQ, int64_t H,              \
                                         int64_t window, int nthreads);                            \
    void dn_cpu_decode_##isa(const dn_kv_view *kv, float *o, dn_strides o_s, float *lse,           \
                             const float *q, dn_strides q_s, int64_t TQ, int64_t H, float scale,   \
                             int64_t window, int nthreads, void *ws);                              \
    double dn_cpu_fma_peak_##isa(long iters, double *flops);                                       \
    float dn_cpu_read_sum_##isa(const float *x, int64_t n);                                        \
    size_t dn_cpu_mamba_workspace_##isa(const dn_mamba_params *p, int nthreads);                   \
    void dn_cpu_mamba_forward_##isa(const dn_mamba_params *p, int nthreads, void *ws);             \
    void dn_cpu_mamba2_prepare_##isa(const dn_mamba2_params *p, float *g, float *v, float *dtp,    \
                                     int nthreads);                                                \
    void dn_cpu_mamba2_finish_##isa(const dn_mamba2_params *p, int nthreads);                      \
    size_t dn_cpu_rwkv4_workspace_##isa(const dn_rwkv4_params *p, int nthreads);                   \
    void dn_cpu_rwkv4_forward_##isa(const dn_rwkv4_params *p, int nthreads, void *ws);             \
    void dn_cpu_conv_forward_##isa(const dn_conv_params *p, int nthreads);                         \
    size_t dn_cpu_la_bwd_workspace_##isa(const dn_la_params *p, int nthreads);                     \
    void dn_cpu_la_backward_##isa(const dn_la_bwd_params *p, int nthreads, void *ws);              \
    size_t dn_cpu_la_saved_floats_##isa(const dn_la_params *p);                                    \
    void dn_cpu_la_forward_train_##isa(const dn_la_params *p, int nthreads, void *ws,              \
                                       void *saved);                                               \
    size_t dn_cpu_attn_bwd_workspace_##isa(const dn_attn_params *p, int nthreads);                 \
    void dn_cpu_attn_backward_##isa(const dn_attn_bwd_params *p, int nthreads, void *ws);          \
    size_t dn_cpu_conv_bwd_workspace_##isa(const dn_conv_params *p, int nthreads);                 \
    void dn_cpu_conv_backward_##isa(const dn_conv_bwd_params *p, int nthreads, void *ws);          \
    size_t dn_cpu_mamba_bwd_workspace_##isa(const dn_mamba_params *p, int nthreads);               \
    void dn_cpu_mamba_backward_##isa(const dn_mamba_bwd_params *p, int nthreads, void *ws);        \
    size_t dn_cpu_rwkv4_bwd_workspace_##isa(const dn_rwkv4_params *p, int nthreads);               \
    void dn_cpu_rwkv4_backward_##isa(const dn_rwkv4_bwd_params *p, int nthreads, void *ws);        \
    size_t dn_cpu_matmul_workspace_##isa(const dn_matmul_args *a, int nthreads);                   \
    void dn_cpu_matmul_##isa(const dn_matmul_args *a, int nthreads, void *ws);
DN_CPU_DECL(generic)
DN_CPU_DECL(avx2)
DN_CPU_DECL(avx512)

/* ---- memory (src/mem.c): the library's one allocation point ----
 * 64-byte aligned; NULL on failure (or when the fault-injection hook says so). */
void *dn_alloc(size_t bytes);
void *dn_calloc(size_t bytes);
void dn_free(void *p);
/* 64-byte aligned scratch: the caller's if big enough and aligned, else allocated into *owned
 * (NULL on failure). need = 0 gives a valid pointer without allocating. */
void *dn_scratch(void *given, size_t given_bytes, size_t need, void **owned);
/* Test hooks: the n-th allocation from now (0: the next) fails, once; n < 0 turns it off.
 * dn_fault_alloc_count counts every allocation attempt since the start of the process. */
void dn_fault_fail_alloc_after(long n);
long dn_fault_alloc_count(void);

/* ---- the parallel loop of the CPU kernels (src/cpu/parallel.c) ----
 * fn(ctx, task, thread, scratch) for every task in [0, ntasks), scratch being this thread's
 * 64-byte aligned slice of per_thread_bytes inside ws (which holds
 * dn_parallel_ws_bytes(nthreads, per_thread_bytes) bytes, or is NULL when no scratch is needed).
 * Static: a task runs on the same thread every call at a given thread count. */
typedef enum { DN_SCHED_STATIC = 0, DN_SCHED_DYNAMIC } dn_schedule;
typedef void (*dn_task_fn)(void *ctx, int64_t task, int thread, void *scratch);
size_t dn_parallel_ws_bytes(int nthreads, size_t per_thread_bytes);
int dn_parallel_threads(int nthreads, int64_t ntasks); /* threads the loop will use */
void dn_parallel_tasks(int nthreads, int64_t ntasks, dn_schedule sched, dn_task_fn fn, void *ctx,
                       void *ws, size_t per_thread_bytes);

#endif
