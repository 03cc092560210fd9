/*
 * nn.h - the building blocks of the model layer that are not ops: linear layers over dn_matmul,
 * RMSNorm, SwiGLU, rotary embedding, the cross-entropy head, and a deterministic RNG.
 *
 * Matrices are row-major; N is the number of token rows (B*T). A linear layer's weight is
 * stored as PyTorch's nn.Linear stores it, W [out,in], so y = x W^T. Backward functions follow
 * the library's rule: parameter gradients accumulate (+=), activation gradients are written.
 */
#ifndef DN_MODEL_NN_H
#define DN_MODEL_NN_H

#include "../internal.h"

#include <math.h>

/* A parallel loop over independent iterations, threaded only when `work` (about the number of
 * floats it touches) pays for waking the threads. */
#if defined(_OPENMP)
#define DN_PRAGMA(x) _Pragma(#x)
#define DN_PARALLEL_FOR(work) DN_PRAGMA(omp parallel for schedule(static) if ((work) >= 32768))
#else
#define DN_PARALLEL_FOR(work)
#endif

/* y [N,out] = x [N,in] W^T (W [out,in]); ldx, ldy: row strides. beta 1 adds to y. */
dn_status dn_linear_fwd(float *y, int64_t ldy, const float *x, int64_t ldx, const float *W,
                        int64_t N, int64_t in, int64_t out, float beta);
/* dx [N,in] = dy W (written, or added when beta = 1); dW [out,in] += dy^T x. dx may be NULL. */
dn_status dn_linear_bwd(float *dx, int64_t lddx, float *dW, const float *dy, int64_t lddy,
                        const float *x, int64_t ldx, const float *W, int64_t N, int64_t in,
                        int64_t out, float beta);

/* RMSNorm over rows of n: y = x / rms(x) * (w + offset) (offset 1: zero-centred weight).
 * rstd [rows] saved for the backward. */
void dn_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, float offset,
                    int64_t rows, int64_t n, double eps);
/* dx written; dw [n] += the rows' contributions, summed in row order. */
dn_status dn_rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *rstd,
                         const float *w, float offset, int64_t rows, int64_t n);
/* The same with a weight per group of rows: row r uses w + (r % groups) n (Mamba-2's norm over
 * groups of channels: rows are (token, group) pairs). dw [groups, n]. */
void dn_rmsnorm_groups_fwd(float *y, float *rstd, const float *x, const float *w, float offset,
                           int64_t rows, int64_t n, int64_t groups, double eps);
dn_status dn_rmsnorm_groups_bwd(float *dx, float *dw, const float *dy, const float *x,
                                const float *rstd, const float *w, float offset, int64_t rows,
                                int64_t n, int64_t groups);

static inline float dn_sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline float dn_siluf(float x) { return x / (1.0f + expf(-x)); }
/* softplus(x) = log(1 + e^x), computed without overflow */
static inline float dn_softplusf(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* Rotary embedding on the first rd dims of each of H heads of dim D in rows x [N, ld], token
 * row r at position pos0 + r % T (each of the B sequences of T tokens starts at pos0). Pairs
 * (i, i + rd/2) rotate by pos * theta^(-2i/rd). inverse: rotate back (the backward). */
typedef struct {
    float *cos, *sin; /* [T, rd/2], row t for position pos0 + t */
    int64_t T, rd;
} dn_rope_table;
/* The backward of a depthwise convolution cp (its x, weight, bias at column 0 of the layer's
 * channels) taken in n column ranges [c0[i], c0[i] + cn[i]), range i's output gradient dy[i]
 * contiguous ([B,T,cn[i]]): dx into dx + c0[i] (cp's x strides), the weight gradient (and the
 * bias gradient when dbias is not NULL) accumulated at dweight + c0[i] W (dbias + c0[i]). */
dn_status dn_conv_bwd_ranges(const dn_conv_params *cp, int n, const int64_t *c0, const int64_t *cn,
                             const float *const *dy, float *dx, float *dweight, float *dbias);

dn_status dn_rope_table_init(dn_rope_table *t, int64_t pos0, int64_t T, int64_t rd, double theta);
void dn_rope_table_free(dn_rope_table *t);
void dn_rope_apply(float *x, int64_t ld, const dn_rope_table *t, int64_t N, int64_t H, int64_t D,
                   int inverse);

/* Deterministic RNG (splitmix64): same seed, same numbers, on every machine. */
typedef struct {
    uint64_t s;
} dn_rng;
static inline uint64_t dn_rng_next(dn_rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* uniform in [0, 1) with 53 bits */
static inline double dn_rng_uniform(dn_rng *r) { return (double)(dn_rng_next(r) >> 11) * 0x1p-53; }
double dn_rng_normal(dn_rng *r);

#endif /* DN_MODEL_NN_H */
