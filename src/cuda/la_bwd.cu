/*
 * cuda/la_bwd.cu - the linear family's chunkwise backward on NVIDIA GPUs: gradients of q, k, v,
 * g, beta and the initial state, the math of src/cpu/la_bwd.c (docs/OPS.md, "Backward") in
 * chunks of BC = 32 tokens, organised as flash-linear-attention organises its backward: only the
 * two state sweeps walk the chunks in order; everything else is parallel over all chunks.
 *
 *   la_bwd_mats_kernel   (chunk, value head), all chunks at once: the cumulative gates gamma,
 *                        M = tril(Qs K^T * Gam), GK = strict_tril(Gam * K K^T) and
 *                        Tm = (I + diag(b) GK)^{-1} (forward substitution);
 *   la_bwd_fwd_kernel    (sequence, value head, BV value columns), chunks in order: the state
 *                        entering every chunk (S0), and per token R = V - E K S0 and the corrected
 *                        values U = Tm diag(b) R (U = V without the delta rule);
 *   la_bwd_dh_kernel     (sequence, value head, BV columns), chunks last to first, carrying dS:
 *                        dS1 of every chunk, dU = M^T dO + diag(d) K dS1, dY = Tm^T dU, dv = b dY
 *                        (final), dY per token, and the parts of dbeta and dgamma that are sums
 *                        over value columns (per column block, added up by the next kernel);
 *                        dS0 = e^{gamma_C} dS1 + Qs^T E dO - K^T E dR;
 *   la_bwd_grad_kernel   (chunk, value head), all chunks at once: the products over V
 *                        (dO U^T, dY U^T, E dO S0^T, diag(d) U dS1^T, E dR S0^T), the masked
 *                        C x C terms, dbeta, dg (reverse cumulative sums), and the gradients of
 *                        the normalised, scaled q and k rows of this value head;
 *   la_bwd_qk_kernel     (token, key head): sums the value heads of a key head and takes the rows
 *                        back through the in-op L2 normalisation (in double, as on the CPU).
 * Every product runs in fp32 on the CUDA cores over fp32 copies of the inputs, whatever their
 * dtype: this first GPU backward is exact to fp32 rounding (the tests hold it to 1e-4 of the
 * double reference), and slower than a tensor-core one would be (docs/PERF.md).
 * Scratch (stream-ordered, freed at the end of the call), per (chunk, value head) unit: S0 and
 * dS1 (2 K V floats), M, GK, Tm (3 C^2 floats) and gamma; per token and value head: U, R, dY
 * (3 V floats) and the key-side gradients before the head sum (2 K floats).
 */
#include "la_common.cuh"

#include <stdlib.h>

namespace {

constexpr int BC = 32;  /* tokens a chunk */
constexpr int BT = 256; /* threads a block */

struct bwd_ws {
    float *mats;          /* [NU][3][BC][BC]: M, GK, Tm */
    double *gam;          /* [NU][BC] cumulative clamped gates */
    float *ck, *dsk;      /* [NU][K][V]: the state entering each chunk, and dS leaving it */
    float *Ub, *Rb, *dYb; /* [NTOK][HV][V] */
    float *part;          /* [nvt][NTOK][HV][2]: column-block sums for dbeta and dgamma */
    float *partL;         /* [nvt][NU]: column-block sums for the chunk's last gamma */
    float *dQs, *dKs;     /* [NTOK][HV][K]: gradients of the normalised, scaled rows */
    const int64_t *cb;    /* varlen: [NS+1] first chunk of each sequence, else NULL */
    const int *cmap;      /* varlen: [chunks] the sequence of each chunk, else NULL */
    int64_t nt;           /* chunks a sequence without cu_seqlens */
    int64_t NU, NTOK;     /* units (chunks x HV), tokens (B T) */
    int nvt, bv, bv3; /* column blocks of the sweeps (bv wide), block width of the grad kernel */
};

/* The chunk's sequence, first token and length, from its global index. */
__device__ __forceinline__ void bwd_chunk(const la_args &a, const bwd_ws &w, int64_t ci, int64_t *n,
                                          int64_t *b, int64_t *tc, int *Lc) {
    chunk_at(a, w.cb, w.cmap, w.nt, BC, ci, n, b, tc, Lc);
}

/* C (+)= A B over shared memory, fp32: C[i][j] for i < M, j < N (multiples of 4), sum over
 * l < L of A(i, l) = A[i ar + l ac] times B(l, j) = B[l br + j bc] (the strides express
 * transposes). A thread computes R rows x R columns of C: 4 x 4 (8 shared loads for 16 FMAs)
 * when there are blocks enough for every thread, else 2 x 2; its columns are N / R apart, so
 * the threads of a warp read consecutive columns of B (no bank conflicts for either layout of B,
 * the pitches being odd) and mostly one row of A (a broadcast). The same shape always maps an
 * element to the same thread: accumulating calls of one shape in a row need no barrier. */
template <int R>
__device__ __forceinline__ void gmm_tile(float *Cm, int ldc, const float *A, int ar, int ac,
                                         const float *Bm, int br, int bc, int i, int j, int cs,
                                         int L, bool acc) {
    float c[R][R] = {};
    const float *a = A + i * ar, *b = Bm + j * bc;
    for (int l = 0; l < L; l++) {
        float x[R], y[R];
#pragma unroll
        for (int r = 0; r < R; r++)
            x[r] = a[r * ar + l * ac], y[r] = b[l * br + r * cs * bc];
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int e = 0; e < R; e++)
                c[r][e] += x[r] * y[e];
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int e = 0; e < R; e++) {
            float *o = Cm + (i + r) * ldc + j + e * cs;
            *o = acc ? *o + c[r][e] : c[r][e];
        }
}
__device__ void gmm(float *Cm, int ldc, const float *A, int ar, int ac, const float *Bm, int br,
                    int bc, int M, int N, int L, bool acc) {
    if ((M / 4) * (N / 4) >= (int)blockDim.x) {
        const int nb = N / 4, blocks = (M / 4) * nb;
        for (int x = threadIdx.x; x < blocks; x += blockDim.x)
            gmm_tile<4>(Cm, ldc, A, ar, ac, Bm, br, bc, (x / nb) * 4, x % nb, nb, L, acc);
    } else {
        const int nb = N / 2, blocks = (M / 2) * nb;
        for (int x = threadIdx.x; x < blocks; x += blockDim.x)
            gmm_tile<2>(Cm, ldc, A, ar, ac, Bm, br, bc, (x / nb) * 2, x % nb, nb, L, acc);
    }
}

/* rows [0, BC) x cols [0, Dp) of a strided input (src at row 0, col 0; row stride rs) into fp32
 * shared memory (pitch ld): rows < L and cols < D read, the rest zero */
template <typename T>
__device__ void load_rows(float *dst, int ld, const T *src, int64_t rs, int L, int D, int Dp) {
    for (int x = threadIdx.x; x < BC * Dp; x += blockDim.x) {
        const int r = x / Dp, c = x % Dp;
        dst[r * ld + c] = (r < L && c < D) ? to_f(src[r * rs + c]) : 0.0f;
    }
}
/* the same from an fp32 scratch array [rows][ld_src] */
__device__ void load_f(float *dst, int ld, const float *src, int64_t rs, int R, int D, int Dp) {
    for (int x = threadIdx.x; x < R * Dp; x += blockDim.x) {
        const int r = x / Dp, c = x % Dp;
        dst[r * ld + c] = c < D ? src[r * rs + c] : 0.0f;
    }
}

/* A block's K x BV tile of a [K][V] state (columns v0 ..; nv of them real) into shared memory
 * (pitch ld; zeros past nv, or everywhere when src is NULL), and its nv columns back out. */
__device__ void tile_in(float *dst, int ld, const float *src, int64_t V, int K, int BV, int nv) {
    for (int x = threadIdx.x; x < K * BV; x += blockDim.x) {
        const int i = x / BV, j = x % BV;
        dst[i * ld + j] = (src && j < nv) ? src[(int64_t)i * V + j] : 0.0f;
    }
}
__device__ void tile_out(float *dst, int64_t V, const float *src, int ld, int K, int nv) {
    for (int x = threadIdx.x; x < K * nv; x += blockDim.x) {
        const int i = x / nv, j = x % nv;
        dst[(int64_t)i * V + j] = src[i * ld + j];
    }
}

/* rows scaled by s / sqrt(|row|^2 + 1e-6) (l2) or by s: a warp a row */
__device__ void norm_rows(float *X, int ld, int K, float s, bool l2) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int r = warp; r < BC; r += BT / 32) {
        float ss = 0;
        for (int c = lane; c < K; c += 32)
            ss += X[r * ld + c] * X[r * ld + c];
        ss = warp_sum(ss);
        const float f = l2 ? s / sqrtf(ss + 1e-6f) : s;
        for (int c = lane; c < K; c += 32)
            X[r * ld + c] *= f;
    }
}

/* Gates of a chunk from the mats kernel's gamma: e^gamma, e^{gamma_L - gamma}, beta (0 past the
 * chunk's end). */
__device__ void chunk_gates(const la_args &a, const bwd_ws &w, int64_t u, int64_t b, int64_t tc,
                            int64_t hv, int Lc, float *eg, float *dd, float *btv) {
    const int i = threadIdx.x;
    if (i >= BC) return;
    const double gi = w.gam[u * BC + i], gl = w.gam[u * BC + Lc - 1];
    eg[i] = (float)exp(gi);
    dd[i] = (float)exp(gl - gi);
    btv[i] = i < Lc ? (a.delta ? a.beta[b * a.bb + (tc + i) * a.bt + hv * a.bh] : 1.0f) : 0.0f;
}

/* Shared-memory carving: consecutive float arrays, each rounded up to 16 bytes. */
struct carve {
    float *base;
    size_t off = 0;
    __host__ __device__ explicit carve(float *b) : base(b) {}
    __host__ __device__ float *take(size_t n) {
        float *p = base ? base + off : nullptr;
        off += (n + 3) / 4 * 4;
        return p;
    }
};

/* ------------------------------------------------------------------------------------------- */

template <typename T>
__global__ void __launch_bounds__(BT) la_bwd_mats_kernel(la_args a, bwd_ws w) {
    extern __shared__ __align__(16) float sm[];
    const int K = (int)a.K, ldk = K + 1, ldc = BC + 1, tid = threadIdx.x;
    carve cv(sm);
    double *gam = (double *)cv.take(2 * BC);
    float *Qn = cv.take(BC * ldk), *Kn = cv.take(BC * ldk), *QK = cv.take(BC * ldc),
          *A = cv.take(BC * ldc), *Tm = cv.take(BC * ldc), *gr = cv.take(BC), *btv = cv.take(BC);
    const int64_t ci = blockIdx.x, hv = blockIdx.y, h = hv / (a.HV / a.H), u = ci * a.HV + hv;
    int64_t n, b, tc;
    int Lc;
    bwd_chunk(a, w, ci, &n, &b, &tc, &Lc);
    load_rows(Qn, ldk, (const T *)a.q + b * a.qb + tc * a.qt + h * a.qh, a.qt, Lc, K, K);
    load_rows(Kn, ldk, (const T *)a.k + b * a.kb + tc * a.kt + h * a.kh, a.kt, Lc, K, K);
    if (tid < BC) {
        const int64_t t = tc + tid;
        gr[tid] = (a.gate && tid < Lc) ? fmaxf(a.g[b * a.gb + t * a.gt + hv * a.gh], LOG_DECAY_MIN)
                                       : 0.0f;
        btv[tid] = tid < Lc ? (a.delta ? a.beta[b * a.bb + t * a.bt + hv * a.bh] : 1.0f) : 0.0f;
    }
    __syncthreads();
    norm_rows(Qn, ldk, K, a.scale, a.l2norm);
    norm_rows(Kn, ldk, K, 1.0f, a.l2norm);
    if (tid == 0) {
        double run = 0;
        for (int i = 0; i < BC; i++)
            gam[i] = run += (double)gr[i];
    }
    __syncthreads();
    gmm(QK, ldc, Qn, ldk, 1, Kn, 1, ldk, BC, BC, K, false);
    if (a.delta) gmm(A, ldc, Kn, ldk, 1, Kn, 1, ldk, BC, BC, K, false);
    __syncthreads();
    float *Mg = w.mats + u * 3 * BC * BC, *GKg = Mg + BC * BC, *Tg = GKg + BC * BC;
    for (int x = tid; x < BC * BC; x += BT) {
        const int i = x / BC, j = x % BC;
        const float gm = (a.gate && j <= i) ? expf((float)(gam[i] - gam[j])) : 1.0f;
        Mg[x] = j <= i ? QK[i * ldc + j] * gm : 0.0f;
        if (a.delta) {
            const float gk = j < i ? A[i * ldc + j] * gm : 0.0f;
            GKg[x] = gk;
            A[i * ldc + j] = btv[i] * gk;
        }
    }
    if (tid < BC) w.gam[u * BC + tid] = gam[tid];
    __syncthreads();
    if (a.delta && tid < BC) { /* column j of (I + A)^{-1} by forward substitution */
        const int j = tid;
        for (int i = 0; i < BC; i++) {
            float s = i == j ? 1.0f : 0.0f;
            for (int m = j; m < i; m++)
                s -= A[i * ldc + m] * Tm[m * ldc + j];
            Tm[i * ldc + j] = i < j ? 0.0f : s;
            Tg[i * BC + j] = Tm[i * ldc + j];
        }
    }
}

template <typename T> __global__ void __launch_bounds__(BT) la_bwd_fwd_kernel(la_args a, bwd_ws w) {
    extern __shared__ __align__(16) float sm[];
    const int K = (int)a.K, V = (int)a.V, BV = w.bv, ldk = K + 1, ldv = BV + 1, ldc = BC + 1;
    const int tid = threadIdx.x;
    carve cv(sm);
    float *S = cv.take(K * ldv), *Kn = cv.take(BC * ldk), *Vt = cv.take(BC * ldv),
          *X = cv.take(BC * ldv), *Ut = cv.take(BC * ldv), *Tm = cv.take(BC * ldc),
          *eg = cv.take(BC), *dd = cv.take(BC), *btv = cv.take(BC);
    const int64_t v0 = (int64_t)blockIdx.x * BV, hv = blockIdx.y, n = blockIdx.z;
    const int64_t h = hv / (a.HV / a.H);
    const int nv = (int)(V - v0 < BV ? V - v0 : BV);
    int64_t b, t0, t1;
    seq_range(a, n, &b, &t0, &t1);
    const int64_t nch = (t1 - t0 + BC - 1) / BC, cb = w.cmap ? w.cb[n] : n * w.nt;
    const int64_t soff = (n * a.HV + hv) * a.K * a.V + v0;
    tile_in(S, ldv, a.h0 ? a.h0 + soff : nullptr, V, K, BV, nv);
    for (int64_t c = 0; c < nch; c++) {
        const int64_t u = (cb + c) * a.HV + hv, tc = t0 + c * BC, tok0 = b * a.T + tc;
        const int Lc = (int)(t1 - tc < BC ? t1 - tc : BC);
        __syncthreads();
        tile_out(w.ck + u * a.K * a.V + v0, V, S, ldv, K, nv);
        load_rows(Kn, ldk, (const T *)a.k + b * a.kb + tc * a.kt + h * a.kh, a.kt, Lc, K, K);
        load_rows(Vt, ldv, (const T *)a.v + b * a.vb + tc * a.vt + hv * a.vh + v0, a.vt, Lc, nv,
                  BV);
        chunk_gates(a, w, u, b, tc, hv, Lc, eg, dd, btv);
        if (a.delta) load_f(Tm, ldc, w.mats + (u * 3 + 2) * BC * BC, BC, BC, BC, BC);
        __syncthreads();
        norm_rows(Kn, ldk, K, 1.0f, a.l2norm);
        __syncthreads();
        const float *U = Vt;
        if (a.delta) {
            gmm(X, ldv, Kn, ldk, 1, S, ldv, 1, BC, BV, K, false); /* K S0 */
            __syncthreads();
            for (int x = tid; x < BC * BV; x += BT) { /* R = V - E K S0, then b R */
                const int i = x / BV, j = x % BV;
                const float r = Vt[i * ldv + j] - eg[i] * X[i * ldv + j];
                if (i < Lc && j < nv) w.Rb[((tok0 + i) * a.HV + hv) * a.V + v0 + j] = r;
                X[i * ldv + j] = btv[i] * r;
            }
            __syncthreads();
            gmm(Ut, ldv, Tm, ldc, 1, X, ldv, 1, BC, BV, BC, false); /* U = Tm b R */
            __syncthreads();
            U = Ut;
        }
        const float eL = eg[Lc - 1];
        for (int x = tid; x < BC * BV; x += BT) {
            const int i = x / BV, j = x % BV;
            if (i < Lc && j < nv) w.Ub[((tok0 + i) * a.HV + hv) * a.V + v0 + j] = U[i * ldv + j];
            X[i * ldv + j] = dd[i] * U[i * ldv + j];
        }
        if (a.gate)
            for (int x = tid; x < K * BV; x += BT)
                S[(x / BV) * ldv + x % BV] *= eL;
        __syncthreads();
        gmm(S, ldv, Kn, 1, ldk, X, ldv, 1, K, BV, BC, true); /* S1 = e^gL S0 + K^T diag(d) U */
    }
}

template <typename T>
__global__ void __launch_bounds__(BT)
    la_bwd_dh_kernel(la_args a, bwd_ws w, const T *dout, int64_t dob, int64_t dot, int64_t doh,
                     T *dv, int64_t dvb, int64_t dvt, int64_t dvh, const float *dht, float *dh0) {
    extern __shared__ __align__(16) float sm[];
    const int K = (int)a.K, V = (int)a.V, BV = w.bv, ldk = K + 1, ldv = BV + 1, ldc = BC + 1;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    carve cv(sm);
    float *dS = cv.take(K * ldv), *S0 = cv.take(K * ldv), *Qn = cv.take(BC * ldk),
          *Kn = cv.take(BC * ldk), *Mm = cv.take(BC * ldc), *Tm = cv.take(BC * ldc),
          *dO = cv.take(BC * ldv), *Ut = cv.take(BC * ldv), *Rt = cv.take(BC * ldv),
          *Vr = cv.take(BC * ldv), *KdS = cv.take(BC * ldv), *dU = cv.take(BC * ldv),
          *dY = cv.take(BC * ldv), *eg = cv.take(BC), *dd = cv.take(BC), *btv = cv.take(BC),
          *red = cv.take(2 * BT / 32);
    const int64_t vt = blockIdx.x, v0 = vt * BV, hv = blockIdx.y, n = blockIdx.z;
    const int64_t h = hv / (a.HV / a.H);
    const int nv = (int)(V - v0 < BV ? V - v0 : BV);
    int64_t b, t0, t1;
    seq_range(a, n, &b, &t0, &t1);
    const int64_t nch = (t1 - t0 + BC - 1) / BC, cb = w.cmap ? w.cb[n] : n * w.nt;
    const int64_t soff = (n * a.HV + hv) * a.K * a.V + v0;
    tile_in(dS, ldv, dht ? dht + soff : nullptr, V, K, BV, nv);
    for (int64_t c = nch - 1; c >= 0; c--) {
        const int64_t u = (cb + c) * a.HV + hv, tc = t0 + c * BC, tok0 = b * a.T + tc;
        const int Lc = (int)(t1 - tc < BC ? t1 - tc : BC);
        __syncthreads();
        tile_out(w.dsk + u * a.K * a.V + v0, V, dS, ldv, K, nv);
        load_rows(Qn, ldk, (const T *)a.q + b * a.qb + tc * a.qt + h * a.qh, a.qt, Lc, K, K);
        load_rows(Kn, ldk, (const T *)a.k + b * a.kb + tc * a.kt + h * a.kh, a.kt, Lc, K, K);
        load_rows(dO, ldv, dout + b * dob + tc * dot + hv * doh + v0, dot, Lc, nv, BV);
        const int64_t trow = (tok0 * a.HV + hv) * a.V + v0, trs = a.HV * a.V;
        load_f(Ut, ldv, w.Ub + trow, trs, Lc, nv, BV);
        for (int x = Lc * BV + tid; x < BC * BV; x += BT) /* rows past the chunk's end */
            Ut[(x / BV) * ldv + x % BV] = 0.0f;
        if (a.delta) {
            load_f(Rt, ldv, w.Rb + trow, trs, Lc, nv, BV);
            load_rows(Vr, ldv, (const T *)a.v + b * a.vb + tc * a.vt + hv * a.vh + v0, a.vt, Lc, nv,
                      BV);
            load_f(Tm, ldc, w.mats + (u * 3 + 2) * BC * BC, BC, BC, BC, BC);
        }
        load_f(Mm, ldc, w.mats + u * 3 * BC * BC, BC, BC, BC, BC);
        if (a.gate) load_f(S0, ldv, w.ck + u * a.K * a.V + v0, a.V, K, nv, BV);
        chunk_gates(a, w, u, b, tc, hv, Lc, eg, dd, btv);
        __syncthreads();
        norm_rows(Qn, ldk, K, a.scale, a.l2norm);
        norm_rows(Kn, ldk, K, 1.0f, a.l2norm);
        __syncthreads();
        gmm(KdS, ldv, Kn, ldk, 1, dS, ldv, 1, BC, BV, K, false); /* K dS1 */
        gmm(dU, ldv, Mm, 1, ldc, dO, ldv, 1, BC, BV, BC, false); /* M^T dO */
        __syncthreads();
        for (int x = tid; x < BC * BV; x += BT) {
            const int i = x / BV, j = x % BV;
            dU[i * ldv + j] += dd[i] * KdS[i * ldv + j];
        }
        __syncthreads();
        const float *dYp = dU;
        if (a.delta) {
            gmm(dY, ldv, Tm, 1, ldc, dU, ldv, 1, BC, BV, BC, false); /* Tm^T dU */
            __syncthreads();
            dYp = dY;
        }
        /* sums over this block's columns: dbeta (dY . R), dgamma (dR . (R - V) - d U . K dS1)
         * per token; the chunk's last gamma (d U . K dS1, and e^gL dS1 . S0) */
        float accL = 0;
        for (int i = warp; i < Lc; i += BT / 32) {
            float sdb = 0, sdg = 0, sl = 0;
            for (int j = lane; j < nv; j += 32) {
                const float dy = dYp[i * ldv + j];
                if (a.delta) {
                    sdb += dy * Rt[i * ldv + j];
                    sdg += btv[i] * dy * (Rt[i * ldv + j] - Vr[i * ldv + j]);
                }
                sl += Ut[i * ldv + j] * KdS[i * ldv + j];
            }
            sdb = warp_sum(sdb), sdg = warp_sum(sdg), sl = warp_sum(sl);
            if (lane == 0) {
                float *pt = w.part + ((vt * w.NTOK + tok0 + i) * a.HV + hv) * 2;
                pt[0] = sdb;
                pt[1] = a.gate ? sdg - dd[i] * sl : 0.0f;
            }
            accL += dd[i] * sl;
        }
        if (a.gate) {
            float ss = 0;
            for (int x = tid; x < K * nv; x += BT) {
                const int i = x / nv, j = x % nv;
                ss += dS[i * ldv + j] * S0[i * ldv + j];
            }
            ss = warp_sum(ss);
            if (lane == 0) red[warp] = ss, red[BT / 32 + warp] = accL;
            __syncthreads();
            if (tid == 0) {
                float s1 = 0, s2 = 0;
                for (int x = 0; x < BT / 32; x++)
                    s1 += red[x], s2 += red[BT / 32 + x];
                w.partL[vt * w.NU + u] = s2 + eg[Lc - 1] * s1;
            }
        }
        for (int x = tid; x < Lc * nv; x += BT) {
            const int i = x / nv, j = x % nv;
            const float dy = dYp[i * ldv + j];
            dv[b * dvb + (tc + i) * dvt + hv * dvh + v0 + j] =
                from_f<T>(a.delta ? btv[i] * dy : dy);
            if (a.delta) w.dYb[trow + i * trs + j] = dy;
        }
        __syncthreads();
        /* dS0 = e^gL dS1 + Qs^T E dO - K^T E dR */
        const float eL = eg[Lc - 1];
        if (a.gate)
            for (int x = tid; x < K * BV; x += BT)
                dS[(x / BV) * ldv + x % BV] *= eL;
        for (int x = tid; x < BC * BV; x += BT) {
            const int i = x / BV, j = x % BV;
            dO[i * ldv + j] *= eg[i];
            if (a.delta) dU[i * ldv + j] = -eg[i] * btv[i] * dY[i * ldv + j];
        }
        __syncthreads();
        gmm(dS, ldv, Qn, 1, ldk, dO, ldv, 1, K, BV, BC, true);
        if (a.delta) gmm(dS, ldv, Kn, 1, ldk, dU, ldv, 1, K, BV, BC, true);
    }
    __syncthreads();
    if (dh0) tile_out(dh0 + soff, V, dS, ldv, K, nv);
}

template <typename T>
__global__ void __launch_bounds__(BT)
    la_bwd_grad_kernel(la_args a, bwd_ws w, const T *dout, int64_t dob, int64_t dot, int64_t doh,
                       float *dg, int64_t dgb, int64_t dgt, int64_t dgh, float *dbeta, int64_t dbb,
                       int64_t dbt, int64_t dbh) {
    extern __shared__ __align__(16) float sm[];
    const int K = (int)a.K, V = (int)a.V, BV = w.bv3, ldk = K + 1, ldv = BV + 1, ldc = BC + 1;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    carve cv(sm);
    double *gam = (double *)cv.take(2 * BC);
    float *Qn = cv.take(BC * ldk), *Kn = cv.take(BC * ldk), *dQa = cv.take(BC * ldk),
          *dKa = cv.take(BC * ldk), *Wm = cv.take(BC * ldc), *Zm = cv.take(BC * ldc),
          *Mm = cv.take(BC * ldc), *GKm = cv.take(BC * ldc), *dO = cv.take(BC * ldv),
          *Ut = cv.take(BC * ldv), *dY = cv.take(BC * ldv), *S0t = cv.take(K * ldv),
          *dS1t = cv.take(K * ldv), *eg = cv.take(BC), *dd = cv.take(BC), *btv = cv.take(BC),
          *dgam = cv.take(BC), *dbv = cv.take(BC);
    const int64_t ci = blockIdx.x, hv = blockIdx.y, h = hv / (a.HV / a.H), u = ci * a.HV + hv;
    int64_t n, b, tc;
    int Lc;
    bwd_chunk(a, w, ci, &n, &b, &tc, &Lc);
    const int64_t tok0 = b * a.T + tc, trs = a.HV * a.V;
    load_rows(Qn, ldk, (const T *)a.q + b * a.qb + tc * a.qt + h * a.qh, a.qt, Lc, K, K);
    load_rows(Kn, ldk, (const T *)a.k + b * a.kb + tc * a.kt + h * a.kh, a.kt, Lc, K, K);
    load_f(Mm, ldc, w.mats + u * 3 * BC * BC, BC, BC, BC, BC);
    if (a.delta) load_f(GKm, ldc, w.mats + (u * 3 + 1) * BC * BC, BC, BC, BC, BC);
    chunk_gates(a, w, u, b, tc, hv, Lc, eg, dd, btv);
    if (tid < BC) gam[tid] = w.gam[u * BC + tid];
    for (int x = tid; x < BC * ldk; x += BT)
        dQa[x] = dKa[x] = 0.0f;
    for (int x = tid; x < BC * ldc; x += BT)
        Wm[x] = Zm[x] = 0.0f;
    __syncthreads();
    norm_rows(Qn, ldk, K, a.scale, a.l2norm);
    norm_rows(Kn, ldk, K, 1.0f, a.l2norm);
    for (int v0 = 0; v0 < V; v0 += BV) {
        const int nv = V - v0 < BV ? V - v0 : BV;
        __syncthreads();
        load_rows(dO, ldv, dout + b * dob + tc * dot + hv * doh + v0, dot, Lc, nv, BV);
        load_f(Ut, ldv, w.Ub + (tok0 * a.HV + hv) * a.V + v0, trs, Lc, nv, BV);
        if (a.delta) load_f(dY, ldv, w.dYb + (tok0 * a.HV + hv) * a.V + v0, trs, Lc, nv, BV);
        for (int x = Lc * BV + tid; x < BC * BV; x += BT) {
            Ut[(x / BV) * ldv + x % BV] = 0.0f;
            dY[(x / BV) * ldv + x % BV] = 0.0f;
        }
        load_f(S0t, ldv, w.ck + u * a.K * a.V + v0, a.V, K, nv, BV);
        load_f(dS1t, ldv, w.dsk + u * a.K * a.V + v0, a.V, K, nv, BV);
        __syncthreads();
        gmm(Wm, ldc, dO, ldv, 1, Ut, 1, ldv, BC, BC, BV, true);              /* dO U^T */
        if (a.delta) gmm(Zm, ldc, dY, ldv, 1, Ut, 1, ldv, BC, BC, BV, true); /* dY U^T */
        __syncthreads();
        for (int x = tid; x < BC * BV; x += BT) {
            const int i = x / BV, j = x % BV;
            dO[i * ldv + j] *= eg[i];
            Ut[i * ldv + j] *= dd[i];
            dY[i * ldv + j] *= -eg[i] * btv[i];
        }
        __syncthreads();
        gmm(dQa, ldk, dO, ldv, 1, S0t, 1, ldv, BC, K, BV, true);              /* E dO S0^T */
        gmm(dKa, ldk, Ut, ldv, 1, dS1t, 1, ldv, BC, K, BV, true);             /* diag(d) U dS1^T */
        if (a.delta) gmm(dKa, ldk, dY, ldv, 1, S0t, 1, ldv, BC, K, BV, true); /* - E dR S0^T */
    }
    __syncthreads();
    /* per token: the column-block sums of the sweep, and (gate) qs_i . (E dO S0^T)_i */
    if (tid < BC) {
        float pb = 0, pd = 0;
        for (int v = 0; tid < Lc && v < w.nvt; v++) {
            const float *pt = w.part + ((v * w.NTOK + tok0 + tid) * a.HV + hv) * 2;
            pb += pt[0], pd += pt[1];
        }
        dbv[tid] = pb, dgam[tid] = pd;
    }
    __syncthreads();
    if (a.gate)
        for (int i = warp; i < Lc; i += BT / 32) {
            float s = 0;
            for (int c = lane; c < K; c += 32)
                s += Qn[i * ldk + c] * dQa[i * ldk + c];
            s = warp_sum(s);
            if (lane == 0) dgam[i] += s;
        }
    /* the masked C x C terms: W = dM * Gam (dM = lower(dO U^T)), Z = dA b Gam (dA = -dY U^T,
     * strictly lower); into Mm the gamma terms dM * M + dA * A, into GKm dbeta's dA * GK */
    for (int x = tid; x < BC * BC; x += BT) {
        const int i = x / BC, j = x % BC, e = i * ldc + j;
        const float gm = (a.gate && j <= i) ? expf((float)(gam[i] - gam[j])) : 1.0f;
        const float dm = j <= i ? Wm[e] : 0.0f;
        float t = dm * Mm[e], z = 0.0f, dbx = 0.0f;
        if (a.delta && j < i) {
            const float da = -Zm[e];
            z = da * btv[i] * gm;
            t += da * btv[i] * GKm[e];
            dbx = da * GKm[e];
        }
        Wm[e] = dm * gm;
        Zm[e] = z;
        Mm[e] = t;
        GKm[e] = dbx;
    }
    __syncthreads();
    if (tid < BC) { /* gamma_i gets row i of the terms, gamma_j loses column j */
        double rs = 0, dbx = 0;
        for (int j = 0; j < BC; j++)
            rs += (double)Mm[tid * ldc + j] - Mm[j * ldc + tid], dbx += GKm[tid * ldc + j];
        if (a.gate) dgam[tid] += (float)rs;
        dbv[tid] += (float)dbx;
    }
    __syncthreads();
    if (a.delta)
        for (int x = tid; x < BC * BC; x += BT) {
            const int i = x / BC, j = x % BC;
            GKm[i * ldc + j] = Zm[i * ldc + j] + Zm[j * ldc + i];
        }
    __syncthreads();
    gmm(dQa, ldk, Wm, ldc, 1, Kn, ldk, 1, BC, K, BC, true);               /* + W K */
    gmm(dKa, ldk, Wm, 1, ldc, Qn, ldk, 1, BC, K, BC, true);               /* + W^T Qs */
    if (a.delta) gmm(dKa, ldk, GKm, ldc, 1, Kn, ldk, 1, BC, K, BC, true); /* + (Z + Z^T) K */
    if (tid == 0 && a.gate) {
        /* dg_l = sum of dgamma from l to the chunk's end, restarted where exp(g_l) is 0 in
         * float (a reset: the gate's gradient is exactly 0 there, as on the CPU) */
        float dgl = 0;
        for (int v = 0; v < w.nvt; v++)
            dgl += w.partL[v * w.NU + u];
        dgam[Lc - 1] += dgl;
        float acc = 0;
        for (int l = Lc - 1; l >= 0; l--) {
            acc += dgam[l];
            if (a.g[b * a.gb + (tc + l) * a.gt + hv * a.gh] < -104.0f) acc = 0;
            dg[b * dgb + (tc + l) * dgt + hv * dgh] = acc;
        }
    }
    if (a.delta && tid < Lc) dbeta[b * dbb + (tc + tid) * dbt + hv * dbh] = dbv[tid];
    __syncthreads();
    for (int x = tid; x < Lc * K; x += BT) {
        const int i = x / K, c = x % K;
        const int64_t at = ((tok0 + i) * a.HV + hv) * a.K + c;
        w.dQs[at] = dQa[i * ldk + c];
        w.dKs[at] = dKa[i * ldk + c];
    }
}

/* dx = s (r dy - r^3 (x . dy) x), r = 1 / sqrt(|x|^2 + 1e-6) (l2), or s dy: one row by a warp,
 * the sums in double as on the CPU (where dy is nearly parallel to x the terms cancel) */
template <typename T>
__device__ void row_back(T *dx, const T *x, const float *dy, int K, float s, bool l2) {
    const int lane = threadIdx.x & 31;
    double ss = 0, xd = 0;
    if (l2)
        for (int c = lane; c < K; c += 32) {
            const double xv = to_f(x[c]);
            ss += xv * xv, xd += xv * dy[c];
        }
    for (int o = 16; o > 0; o >>= 1) {
        ss += __shfl_xor_sync(0xffffffffu, ss, o);
        xd += __shfl_xor_sync(0xffffffffu, xd, o);
    }
    const double r = 1.0 / sqrt(ss + 1e-6), cc = r * r * r * xd;
    for (int c = lane; c < K; c += 32)
        dx[c] = from_f<T>(l2 ? (float)(s * (r * dy[c] - cc * to_f(x[c]))) : s * dy[c]);
}

template <typename T>
__global__ void __launch_bounds__(BT)
    la_bwd_qk_kernel(la_args a, bwd_ws w, T *dq, int64_t dqb, int64_t dqt, int64_t dqh, T *dk,
                     int64_t dkb, int64_t dkt, int64_t dkh) {
    __shared__ float rows[BT / 32][2][256];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, K = (int)a.K;
    const int64_t gw = (int64_t)blockIdx.x * (BT / 32) + warp;
    if (gw >= w.NTOK * a.H) return;
    const int64_t tok = gw / a.H, h = gw % a.H, b = tok / a.T, t = tok % a.T, G = a.HV / a.H;
    float *rq = rows[warp][0], *rk = rows[warp][1];
    for (int c = lane; c < K; c += 32) {
        float sq = 0, sk = 0;
        for (int64_t j = 0; j < G; j++) {
            const int64_t at = (tok * a.HV + h * G + j) * a.K + c;
            sq += w.dQs[at], sk += w.dKs[at];
        }
        rq[c] = sq, rk[c] = sk;
    }
    __syncwarp();
    row_back(dq + b * dqb + t * dqt + h * dqh, (const T *)a.q + b * a.qb + t * a.qt + h * a.qh, rq,
             K, a.scale, a.l2norm);
    row_back(dk + b * dkb + t * dkt + h * dkh, (const T *)a.k + b * a.kb + t * a.kt + h * a.kh, rk,
             K, 1.0f, a.l2norm);
}

/* ------------------------------------------------------------------------------------------- */

size_t mats_smem(int K) {
    carve c(nullptr);
    c.take(2 * BC), c.take(2 * BC * (K + 1)), c.take(3 * BC * (BC + 1)), c.take(2 * BC);
    return sizeof(float) * c.off;
}
size_t fwd_smem(int K, int BV) {
    carve c(nullptr);
    c.take(K * (BV + 1)), c.take(BC * (K + 1)), c.take(3 * BC * (BV + 1)), c.take(BC * (BC + 1));
    c.take(3 * BC);
    return sizeof(float) * c.off;
}
size_t dh_smem(int K, int BV) {
    carve c(nullptr);
    c.take(2 * K * (BV + 1)), c.take(2 * BC * (K + 1)), c.take(2 * BC * (BC + 1));
    c.take(7 * BC * (BV + 1)), c.take(3 * BC), c.take(2 * BT / 32);
    return sizeof(float) * c.off;
}
size_t grad_smem(int K, int BV) {
    carve c(nullptr);
    c.take(2 * BC), c.take(4 * BC * (K + 1)), c.take(4 * BC * (BC + 1)), c.take(3 * BC * (BV + 1));
    c.take(2 * K * (BV + 1)), c.take(5 * BC);
    return sizeof(float) * c.off;
}

template <typename T>
cudaError_t run_bwd(const la_args &a, const dn_la_bwd_params *bp, int64_t NS, bwd_ws w, int64_t nch,
                    cudaStream_t s) {
    const int K = (int)a.K;
    const size_t sm0 = mats_smem(K), sm1 = fwd_smem(K, w.bv), sm2 = dh_smem(K, w.bv),
                 sm3 = grad_smem(K, w.bv3);
    cudaError_t e = cudaSuccess;
#define DN_SMEM(kern, bytes)                                                                       \
    if (e == cudaSuccess)                                                                          \
    e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(bytes))
    DN_SMEM(la_bwd_mats_kernel<T>, sm0);
    DN_SMEM(la_bwd_fwd_kernel<T>, sm1);
    DN_SMEM(la_bwd_dh_kernel<T>, sm2);
    DN_SMEM(la_bwd_grad_kernel<T>, sm3);
#undef DN_SMEM
    if (e != cudaSuccess) return e;
    const dn_strides os = bp->dout_s, vs = bp->dv_s, gs = bp->dg_s, bs = bp->dbeta_s;
    const dn_strides qs = bp->dq_s, ks = bp->dk_s;
    const dim3 units((unsigned)nch, (unsigned)a.HV),
        seqs((unsigned)w.nvt, (unsigned)a.HV, (unsigned)NS);
    if (nch > 0) la_bwd_mats_kernel<T><<<units, BT, sm0, s>>>(a, w);
    if (nch > 0) la_bwd_fwd_kernel<T><<<seqs, BT, sm1, s>>>(a, w);
    la_bwd_dh_kernel<T><<<seqs, BT, sm2, s>>>(a, w, (const T *)bp->dout, os.b, os.t, os.h,
                                              (T *)bp->dv, vs.b, vs.t, vs.h, bp->dfinal_state,
                                              bp->dinitial_state);
    if (nch > 0)
        la_bwd_grad_kernel<T><<<units, BT, sm3, s>>>(a, w, (const T *)bp->dout, os.b, os.t, os.h,
                                                     bp->dg, gs.b, gs.t, gs.h, bp->dbeta, bs.b,
                                                     bs.t, bs.h);
    const int64_t warps = w.NTOK * a.H;
    if (warps > 0)
        la_bwd_qk_kernel<T><<<(unsigned)((warps + BT / 32 - 1) / (BT / 32)), BT, 0, s>>>(
            a, w, (T *)bp->dq, qs.b, qs.t, qs.h, (T *)bp->dk, ks.b, ks.t, ks.h);
    return cudaGetLastError();
}

} // namespace

dn_status dn_cuda_la_backward(const dn_la_bwd_params *bp) {
    const dn_la_params *p = &bp->fwd;
    const char *name = dn_op_name(p->op);
    device_guard guard;
    dn_status st = enter_device(p->device, name, guard);
    if (st != DN_OK) return st;
    if (p->K > 256 || p->K % 16 || p->V % 16)
        return dn_fail(DN_ERR_UNSUPPORTED,
                       "%s backward: the CUDA backward takes K and V multiples of 16, K up to 256 "
                       "(got K=%lld V=%lld)",
                       name, (long long)p->K, (long long)p->V);
    cudaStream_t s = (cudaStream_t)p->stream;
    const int64_t NS = p->cu_seqlens ? p->n_seqs : p->B;
    if (p->T == 0) { /* no tokens: the initial state's gradient is the final state's */
        if (!bp->dinitial_state) return DN_OK;
        const size_t bytes = sizeof(float) * (size_t)(NS * p->HV * p->K * p->V);
        return dn_cuda_error(
            bp->dfinal_state
                ? cudaMemcpyAsync(bp->dinitial_state, bp->dfinal_state, bytes, cudaMemcpyDefault, s)
                : cudaMemsetAsync(bp->dinitial_state, 0, bytes, s),
            name);
    }
    if (NS > 65535 || p->HV > 65535)
        return dn_fail(DN_ERR_UNSUPPORTED,
                       "%s backward: the CUDA grid takes at most 65535 sequences and heads", name);
    int64_t *cu = NULL;
    if ((st = upload_cu(p, s, &cu, name)) != DN_OK) return st;

    bwd_ws w = {};
    int64_t nch = 0;
    if (p->cu_seqlens)
        for (int64_t n = 0; n < NS; n++)
            nch += (p->cu_seqlens[n + 1] - p->cu_seqlens[n] + BC - 1) / BC;
    else
        w.nt = (p->T + BC - 1) / BC, nch = p->B * w.nt;
    int sms = 132, dev = 0;
    (void)cudaGetDevice(&dev);
    (void)cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    /* 32 columns a sweep block, or 16 or 8 while fewer would leave SMs idle (the sweeps are
     * latency-bound: more blocks, more warps to hide it); the grad kernel walks V in blocks of
     * 16 columns (two blocks an SM fit in shared memory at K = 128) */
    const int64_t heads = NS * p->HV;
    w.bv = heads * ((p->V + 31) / 32) >= sms ? 32 : heads * ((p->V + 15) / 16) >= sms ? 16 : 8;
    w.bv3 = 16;
    w.nvt = (int)((p->V + w.bv - 1) / w.bv);
    w.NU = nch * p->HV;
    w.NTOK = p->B * p->T;
    const int64_t K = p->K, V = p->V, HV = p->HV, NU = w.NU, NTOK = w.NTOK;
    const int delta = p->op == DN_OP_DELTANET || p->op == DN_OP_GDN;
    const size_t sizes[] = {
        align256(4 * (size_t)(NU * 3 * BC * BC)),           /* mats */
        align256(8 * (size_t)(NU * BC)),                    /* gam */
        align256(4 * (size_t)(NU * K * V)),                 /* ck */
        align256(4 * (size_t)(NU * K * V)),                 /* dsk */
        align256(4 * (size_t)(NTOK * HV * V)),              /* Ub */
        delta ? align256(4 * (size_t)(NTOK * HV * V)) : 0,  /* Rb */
        delta ? align256(4 * (size_t)(NTOK * HV * V)) : 0,  /* dYb */
        align256(4 * (size_t)(w.nvt * NTOK * HV * 2)),      /* part */
        align256(4 * (size_t)(w.nvt * NU)),                 /* partL */
        align256(4 * (size_t)(NTOK * HV * K)),              /* dQs */
        align256(4 * (size_t)(NTOK * HV * K)),              /* dKs */
        p->cu_seqlens ? align256(8 * (size_t)(NS + 1)) : 0, /* cb */
        p->cu_seqlens ? align256(4 * (size_t)nch) : 0,      /* cmap */
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        total += sizes[i];
    char *ws = NULL;
    cudaError_t e = cudaMallocAsync((void **)&ws, total, s);
    if (e == cudaSuccess) {
        char *at = ws;
        void **slots[] = {(void **)&w.mats,  (void **)&w.gam, (void **)&w.ck,  (void **)&w.dsk,
                          (void **)&w.Ub,    (void **)&w.Rb,  (void **)&w.dYb, (void **)&w.part,
                          (void **)&w.partL, (void **)&w.dQs, (void **)&w.dKs};
        for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++) {
            *slots[i] = sizes[i] ? at : NULL;
            at += sizes[i];
        }
        if (p->cu_seqlens) {
            char *hb = (char *)malloc(sizes[11] + sizes[12]);
            if (!hb) e = cudaErrorMemoryAllocation;
            if (hb) {
                fill_chunk_map(p, NS, BC, (int64_t *)hb, (int *)(hb + sizes[11]));
                /* pageable source: the call returns once it is staged, so hb may go */
                e = cudaMemcpyAsync(at, hb, sizes[11] + sizes[12], cudaMemcpyHostToDevice, s);
                free(hb);
                w.cb = (const int64_t *)at, w.cmap = (const int *)(at + sizes[11]);
            }
        }
    }
    if (e == cudaSuccess) {
        const la_args a = make_args(p, cu);
        e = p->dtype == DN_BF16  ? run_bwd<__nv_bfloat16>(a, bp, NS, w, nch, s)
            : p->dtype == DN_F16 ? run_bwd<__half>(a, bp, NS, w, nch, s)
                                 : run_bwd<float>(a, bp, NS, w, nch, s);
    }
    if (ws) (void)cudaFreeAsync(ws, s);
    st = dn_cuda_error(e, name);
    if (cu) (void)cudaFreeAsync(cu, s);
    return st;
}
