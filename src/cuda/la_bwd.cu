/*
 * cuda/la_bwd.cu - the linear family's chunkwise backward on NVIDIA GPUs: gradients of q, k, v,
 * g, beta and the initial state, the math of src/cpu/la_bwd.c (docs/OPS.md, "Backward") in
 * chunks of BC = 32 tokens, organised as flash-linear-attention organises its backward: only the
 * two state sweeps walk the chunks in order; everything else is parallel over all chunks.
 *
 *   la_bwd_mats_kernel   (chunk, value head), all chunks at once: the cumulative gates gamma,
 *                        M = tril(Qs K^T * Gam), GK = strict_tril(Gam * K K^T) and
 *                        Tm = (I + diag(b) GK)^{-1} (in 16 x 16 blocks: the diagonal ones by
 *                        forward substitution, then T21 = -T22 A21 T11);
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
 *                        the normalised, scaled q and k rows of this value head (taken on to
 *                        dq, dk here when it is its key head's only one);
 *   la_bwd_qk_kernel     (token, key head), grouped value heads only: sums the value heads of a
 *                        key head and takes the rows back through the in-op L2 normalisation (in
 *                        double, as on the CPU); with one value head a key head the grad kernel
 *                        does that itself and writes dq, dk.
 * Two precisions. fp32 and fp16 inputs: every product in fp32 on the CUDA cores over fp32 copies
 * of the inputs, exact to fp32 rounding (the tests hold it to 1e-4 of the double reference).
 * bf16 inputs: the two sweeps run side by side in one grid (la_bwd_sweeps_tc_kernel: neither
 * reads the other's output, the dh sweep's sums that need U and R moving to the grad kernel),
 * hold the state (its gradient) transposed in tensor-core accumulators and take their chunk
 * operands from a bf16 pack the mats kernel writes; the grad kernel's products over V run on the
 * tensor cores too (grad_vloop_tc). Operands that are not inputs (the state, U, dU, dY, Tm) enter
 * as bf16 hi + lo pairs, so the rounding does not compound chunk by chunk: about 2.5e-3 of the
 * double reference, flash-linear-attention's level (tests/test_cuda.c). docs/PERF.md has the
 * speeds. Scratch (stream-ordered, freed at the end of the call), per (chunk, value head) unit: S0
 * and dS1 (2 K V floats, or bf16 on the tensor-core path, whose products round them to bf16
 * anyway), M, GK, Tm (3 C^2 floats), gamma and, for bf16, the pack (3 C K + 3 C^2
 * bf16); per token and value head: U, R, dY (3 V floats) and the key-side gradients before the
 * head sum (2 K floats, grouped heads only).
 */
#include "la_common.cuh"
#include "mma.cuh"

#include <stdio.h>
#include <stdlib.h>

namespace {

constexpr int BC = 32;  /* tokens a chunk */
constexpr int BT = 256; /* threads a block */

/* The tensor-core sweeps' operands of a chunk (bf16, written by the mats kernel): row-major
 * [BC][K] normalised keys Kn, Qe = diag(e^gamma) Qs and Kb = -diag(e^gamma b) Kn, then [BC][BC]
 * M, Tm and Tm's rounding error (Tm - bf16(Tm), so that Tm enters products with 16 bits of
 * mantissa). Offsets in elements for a head dim K. */
__host__ __device__ constexpr int64_t pk_qe(int64_t K) { return BC * K; }
__host__ __device__ constexpr int64_t pk_kb(int64_t K) { return 2 * BC * K; }
__host__ __device__ constexpr int64_t pk_m(int64_t K) { return 3 * BC * K; }
__host__ __device__ constexpr int64_t pk_t(int64_t K) { return 3 * BC * K + BC * BC; }
__host__ __device__ constexpr int64_t pk_tl(int64_t K) { return 3 * BC * K + 2 * BC * BC; }
__host__ __device__ constexpr int64_t pk_size(int64_t K) { return 3 * BC * K + 3 * BC * BC; }

struct bwd_ws {
    float *mats;               /* [NU][3][BC][BC]: M, GK, Tm */
    double *gam;               /* [NU][BC] cumulative clamped gates */
    float *ck, *dsk;           /* [NU][K][V]: the state entering each chunk, and dS leaving it */
    __nv_bfloat16 *ckh, *dskh; /* the same in bf16 (tensor-core path; ck, dsk unused there) */
    float *Ub, *Rb, *dYb;      /* [NTOK][HV][V] */
    float *part;               /* [nvt][NTOK][HV][2]: column-block sums for dbeta and dgamma */
    float *partL;              /* [nvt][NU]: column-block sums for the chunk's last gamma */
    float *dQs, *dKs;          /* [NTOK][HV][K]: gradients of the normalised, scaled rows */
    __nv_bfloat16
        *pack; /* tensor-core sweeps: [NU][pk_size(K)] bf16 operands of each chunk, or NULL */
    const int64_t *cb; /* varlen: [NS+1] first chunk of each sequence, else NULL */
    const int *cmap;   /* varlen: [chunks] the sequence of each chunk, else NULL */
    int64_t nt;        /* chunks a sequence without cu_seqlens */
    int64_t NU, NTOK;  /* units (chunks x HV), tokens (B T) */
    int nvt, bv, bv3;  /* column blocks of the sweeps (bv wide), block width of the grad kernel */
    int ks; /* tensor-core sweeps of 64 columns a block: 1 keys unsplit, else over 2 warps */
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
/* (Loads go out 8 at a time into registers before any store: the compiler cannot move a global
 * load past a shared store through generic pointers, so a load-store loop would pay one memory
 * latency an element.) */
template <typename T>
__device__ void load_rows(float *dst, int ld, const T *src, int64_t rs, int L, int D, int Dp) {
    const int n = BC * Dp, step = blockDim.x;
    for (int x0 = threadIdx.x; x0 < n; x0 += 8 * step) {
        float v[8];
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const int x = x0 + e * step, r = x / Dp, c = x % Dp;
            v[e] = (x < n && r < L && c < D) ? to_f(src[r * rs + c]) : 0.0f;
        }
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const int x = x0 + e * step;
            if (x < n) dst[(x / Dp) * ld + x % Dp] = v[e];
        }
    }
}
/* the same from an fp32 scratch array [rows][ld_src] */
__device__ void load_f(float *dst, int ld, const float *src, int64_t rs, int R, int D, int Dp) {
    const int n = R * Dp, step = blockDim.x;
    for (int x0 = threadIdx.x; x0 < n; x0 += 8 * step) {
        float v[8];
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const int x = x0 + e * step, r = x / Dp, c = x % Dp;
            v[e] = (x < n && c < D) ? src[r * rs + c] : 0.0f;
        }
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const int x = x0 + e * step;
            if (x < n) dst[(x / Dp) * ld + x % Dp] = v[e];
        }
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

/* An fp32 value enters a bf16 product as hi + lo (hi = bf16(x), lo = bf16(x - hi)): two
 * products, 16 bits of mantissa instead of 8. The sweeps split every operand that is not an
 * input (the state, its gradient, U, dU, dY, Tm), so their error does not grow chunk by chunk. */
__device__ __forceinline__ void split2(uint32_t &hi, uint32_t &lo, float x, float y) {
    const __nv_bfloat16 hx = __float2bfloat16_rn(x), hy = __float2bfloat16_rn(y);
    hi = (uint32_t)__bfloat16_as_ushort(hx) | ((uint32_t)__bfloat16_as_ushort(hy) << 16);
    lo = pack2<__nv_bfloat16>(x - __bfloat162float(hx), y - __bfloat162float(hy));
}
/* the A fragments (hi, lo) of k-step kk from the accumulators of 8-column tiles c0, c1 */
__device__ __forceinline__ void acc_to_a2(uint32_t *hi, uint32_t *lo, const float *c0,
                                          const float *c1) {
    split2(hi[0], lo[0], c0[0], c0[1]), split2(hi[1], lo[1], c0[2], c0[3]);
    split2(hi[2], lo[2], c1[0], c1[1]), split2(hi[3], lo[3], c1[2], c1[3]);
}

/* The A fragment (hi, lo) of the 16 x 16 block at (r0, k0) of the fp32 matrix
 * a(r, c) = X[r ri + c cj] cs[c] (cs NULL: 1), read from shared memory element by element. */
__device__ __forceinline__ void frag_f32(uint32_t *hi, uint32_t *lo, const float *X, int ri, int cj,
                                         const float *cs, int r0, int k0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    auto e = [&](int r, int c) { return X[r * ri + c * cj] * (cs ? cs[c] : 1.0f); };
    const int ra = r0 + g, rb = ra + 8, ca = k0 + 2 * t, cb = ca + 8;
    split2(hi[0], lo[0], e(ra, ca), e(ra, ca + 1));
    split2(hi[1], lo[1], e(rb, ca), e(rb, ca + 1));
    split2(hi[2], lo[2], e(ra, cb), e(ra, cb + 1));
    split2(hi[3], lo[3], e(rb, cb), e(rb, cb + 1));
}

/* The raw bf16 q and k rows of a chunk (rows past Lc zero) into shared memory [BC][ldr] by
 * 16-byte pieces (K / 8 a row: at most 4 a thread) */
__device__ void load_raw_rows(__nv_bfloat16 *Qr, __nv_bfloat16 *Kr, int ldr,
                              const __nv_bfloat16 *qg, int64_t qt, const __nv_bfloat16 *kg,
                              int64_t kt, int Lc, int K, bool vec) {
    const int tid = threadIdx.x, pr = K / 8;
    uint4 vq[4], vk[4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const int x = tid + e * BT, i = x / pr, c = (x % pr) * 8;
        const bool in = i < Lc && x < BC * pr;
        vq[e] = in ? load16(qg + i * qt + c, vec) : make_uint4(0, 0, 0, 0);
        vk[e] = in ? load16(kg + i * kt + c, vec) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const int x = tid + e * BT, i = x / pr, c = (x % pr) * 8;
        if (x < BC * pr) {
            *(uint4 *)(Qr + i * ldr + c) = vq[e];
            *(uint4 *)(Kr + i * ldr + c) = vk[e];
        }
    }
}
/* the rows' factors: rq = s / |q| (or s), rk = 1 / |k| (or 1), as norm_rows computes them */
__device__ void raw_row_factors(float *rq, float *rk, const __nv_bfloat16 *Qr,
                                const __nv_bfloat16 *Kr, int ldr, int K, float s, bool l2) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int i = warp; i < BC; i += BT / 32) {
        float sq = 0, sk = 0;
        for (int c = lane; c < K; c += 32) {
            const float xq = to_f(Qr[i * ldr + c]), xk = to_f(Kr[i * ldr + c]);
            sq += xq * xq, sk += xk * xk;
        }
        sq = warp_sum(sq), sk = warp_sum(sk);
        if (lane == 0) {
            rq[i] = l2 ? s / sqrtf(sq + 1e-6f) : s;
            rk[i] = l2 ? 1.0f / sqrtf(sk + 1e-6f) : 1.0f;
        }
    }
}

/* A chunk's q and k rows into Qn's and Kn's space: raw bf16 (load_raw_rows, pitch K + 8) on the
 * tensor-core path, else fp32 (pitch ldk) for norm_rows */
template <typename T>
__device__ void chunk_rows(const la_args &a, bool tcp, float *Qn, float *Kn, int ldk, const T *qg,
                           const T *kg, int Lc) {
    const int K = (int)a.K;
    if constexpr (std::is_same<T, __nv_bfloat16>::value)
        if (tcp) {
            load_raw_rows((__nv_bfloat16 *)Qn, (__nv_bfloat16 *)Kn, K + 8, qg, a.qt, kg, a.kt, Lc,
                          K, a.vec);
            return;
        }
    load_rows(Qn, ldk, qg, a.qt, Lc, K, K);
    load_rows(Kn, ldk, kg, a.kt, Lc, K, K);
}

template <typename T>
__global__ void __launch_bounds__(BT) la_bwd_mats_kernel(la_args a, bwd_ws w) {
    extern __shared__ __align__(16) float sm[];
    const int K = (int)a.K, ldk = K + 1, ldc = BC + 1, tid = threadIdx.x;
    carve cv(sm);
    double *gam = (double *)cv.take(2 * BC);
    float *Qn = cv.take(BC * ldk), *Kn = cv.take(BC * ldk), *QK = cv.take(BC * ldc),
          *A = cv.take(BC * ldc), *Tm = cv.take(BC * ldc), *gr = cv.take(BC), *btv = cv.take(BC),
          *rq = cv.take(BC), *rk = cv.take(BC);
    const int64_t ci = blockIdx.x, hv = blockIdx.y, h = hv / (a.HV / a.H), u = ci * a.HV + hv;
    int64_t n, b, tc;
    int Lc;
    bwd_chunk(a, w, ci, &n, &b, &tc, &Lc);
    const T *qg = (const T *)a.q + b * a.qb + tc * a.qt + h * a.qh,
            *kg = (const T *)a.k + b * a.kb + tc * a.kt + h * a.kh;
    /* bf16 (the pack: tensor cores): the raw rows, exact, in Qn's and Kn's space (Qr, Kr), and
     * their norm factors rq, rk; else the normalised, scaled rows in fp32 */
    const bool tcp = std::is_same<T, __nv_bfloat16>::value && w.pack;
    const int ldr = K + 8;
    __nv_bfloat16 *Qr = (__nv_bfloat16 *)Qn, *Kr = (__nv_bfloat16 *)Kn;
    chunk_rows(a, tcp, Qn, Kn, ldk, qg, kg, Lc);
    if (tid < BC) {
        const int64_t t = tc + tid;
        gr[tid] = (a.gate && tid < Lc) ? fmaxf(a.g[b * a.gb + t * a.gt + hv * a.gh], LOG_DECAY_MIN)
                                       : 0.0f;
        btv[tid] = tid < Lc ? (a.delta ? a.beta[b * a.bb + t * a.bt + hv * a.bh] : 1.0f) : 0.0f;
    }
    __syncthreads();
    if (tcp) {
        raw_row_factors(rq, rk, Qr, Kr, ldr, K, a.scale, a.l2norm);
    } else {
        norm_rows(Qn, ldk, K, a.scale, a.l2norm);
        norm_rows(Kn, ldk, K, 1.0f, a.l2norm);
    }
    if (tid == 0) {
        double run = 0;
        for (int i = 0; i < BC; i++)
            gam[i] = run += (double)gr[i];
    }
    __syncthreads();
    if (tcp) {
        /* the raw products on tensor cores (exact bf16 products, fp32 sums), then the factors:
         * warp w takes the 16 x 16 tile (w % 2, w / 2 % 2) of Q K^T (w < 4) or of K K^T */
        using bf = __nv_bfloat16;
        const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
        const int r0 = 16 * (warp & 1), n0 = 16 * ((warp >> 1) & 1);
        const bool kk = warp >= 4;
        if (!kk || a.delta) {
            float c[2][4] = {};
            const bf *X = kk ? Kr : Qr;
            for (int k0 = 0; k0 < K; k0 += 16) {
                uint32_t af[4], bk[4];
                frag_a(af, X + r0 * ldr + k0, ldr);
                frag_b_nk(bk, Kr + n0 * ldr + k0, ldr);
                mma16816<bf>(c[0], af, bk[0], bk[1]);
                mma16816<bf>(c[1], af, bk[2], bk[3]);
            }
            float *C = kk ? A : QK;
            const float *rr = kk ? rk : rq;
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const int i0 = r0 + g, i1 = i0 + 8, j = n0 + 8 * hh + 2 * t;
                C[i0 * ldc + j] = c[hh][0] * rr[i0] * rk[j];
                C[i0 * ldc + j + 1] = c[hh][1] * rr[i0] * rk[j + 1];
                C[i1 * ldc + j] = c[hh][2] * rr[i1] * rk[j];
                C[i1 * ldc + j + 1] = c[hh][3] * rr[i1] * rk[j + 1];
            }
        }
    } else {
        gmm(QK, ldc, Qn, ldk, 1, Kn, 1, ldk, BC, BC, K, false);
        if (a.delta) gmm(A, ldc, Kn, ldk, 1, Kn, 1, ldk, BC, BC, K, false);
    }
    __syncthreads();
    float *Mg = w.mats + u * 3 * BC * BC, *GKg = Mg + BC * BC, *Tg = GKg + BC * BC;
    for (int x = tid; x < BC * BC; x += BT) {
        const int i = x / BC, j = x % BC;
        const float gm = (a.gate && j <= i) ? expf((float)(gam[i] - gam[j])) : 1.0f;
        const float mv = j <= i ? QK[i * ldc + j] * gm : 0.0f;
        Mg[x] = mv;
        if (w.pack) w.pack[u * pk_size(K) + pk_m(K) + x] = __float2bfloat16_rn(mv);
        if (a.delta) {
            const float gk = j < i ? A[i * ldc + j] * gm : 0.0f;
            GKg[x] = gk;
            A[i * ldc + j] = btv[i] * gk;
        }
    }
    if (tid < BC) {
        w.gam[u * BC + tid] = gam[tid];
        gr[tid] = (float)exp(gam[tid]); /* e^gamma (gr is free) */
    }
    __syncthreads();
    /* (I + A)^{-1} in 16 x 16 blocks: each diagonal block by forward substitution, a lane a
     * column (a chain of 120 steps where the whole matrix's would be 496), while the other
     * warps write the pack's key rows; then T21 = -T22 (A21 T11) by all threads (BT = 16 x 16) */
    __nv_bfloat16 *pk = w.pack ? w.pack + u * pk_size(K) : nullptr;
    if (tid < BC) {
        if (a.delta) {
            const int j = tid, o = j & 16;
            for (int i = o; i < o + 16; i++) {
                float s = i == j ? 1.0f : 0.0f;
                for (int m = j; m < i; m++)
                    s -= A[i * ldc + m] * Tm[m * ldc + j];
                Tm[i * ldc + j] = i < j ? 0.0f : s;
            }
            if (o)
                for (int i = 0; i < 16; i++)
                    Tm[i * ldc + j] = 0.0f;
        }
    } else if (pk) {
        for (int x = tid - BC; x < BC * K; x += BT - BC) {
            const int i = x / K, c = x % K;
            const float eg = gr[i], kn = to_f(Kr[i * ldr + c]) * rk[i];
            pk[x] = __float2bfloat16_rn(kn);
            pk[pk_qe(K) + x] = __float2bfloat16_rn(eg * (to_f(Qr[i * ldr + c]) * rq[i]));
            pk[pk_kb(K) + x] = __float2bfloat16_rn(-eg * btv[i] * kn);
        }
    }
    if (a.delta) {
        __syncthreads();
        const int i = tid >> 4, j = tid & 15;
        float s = 0; /* (A21 T11)(i, j) into QK, free now */
        for (int m = j; m < 16; m++)
            s += A[(16 + i) * ldc + m] * Tm[m * ldc + j];
        QK[i * ldc + j] = s;
        __syncthreads();
        s = 0;
        for (int m = 0; m <= i; m++)
            s -= Tm[(16 + i) * ldc + 16 + m] * QK[m * ldc + j];
        Tm[(16 + i) * ldc + j] = s;
        __syncthreads();
        for (int x = tid; x < BC * BC; x += BT)
            Tg[x] = Tm[(x / BC) * ldc + x % BC];
    }
    if (!pk) return;
    for (int x = tid; x < BC * BC; x += BT) {
        const float tv = a.delta ? Tm[(x / BC) * ldc + x % BC] : 0.0f;
        const __nv_bfloat16 hi = __float2bfloat16_rn(tv);
        pk[pk_t(K) + x] = hi;
        pk[pk_tl(K) + x] = __float2bfloat16_rn(tv - __bfloat162float(hi));
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
    float *dS = cv.take(K * ldv), *Qn = cv.take(BC * ldk), *Kn = cv.take(BC * ldk),
          *Mm = cv.take(BC * ldc), *Tm = cv.take(BC * ldc), *dO = cv.take(BC * ldv),
          *Ut = cv.take(BC * ldv), *Rt = cv.take(BC * ldv), *Vr = cv.take(BC * ldv),
          *KdS = cv.take(BC * ldv), *dU = cv.take(BC * ldv), *dY = cv.take(BC * ldv),
          *eg = cv.take(BC), *dd = cv.take(BC), *btv = cv.take(BC), *red = cv.take(2 * BT / 32);
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
         * per token; the chunk's last gamma (d U . K dS1; its e^gL dS1 . S0 term is the grad
         * kernel's) */
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
        if (a.gate) { /* accL is the same in every lane (a sum of warp sums) */
            if (lane == 0) red[warp] = accL;
            __syncthreads();
            if (tid == 0) {
                float s2 = 0;
                for (int x = 0; x < BT / 32; x++)
                    s2 += red[x];
                w.partL[vt * w.NU + u] = s2;
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

/* ---- the tensor-core sweeps (bf16 inputs) ----------------------------------------------------
 * The same two sweeps with the state (or its gradient) held transposed in mma accumulators, as
 * the forward's state pass holds S^T: warp w of a block owns value columns v0 + 16 w .. + 15 as
 * the rows of S^T [V, K]; a thread holds rows g, g + 8 and, per 8-wide key tile j, keys
 * 8 j + 2 t, + 1 (g = lane / 4, t = lane % 4). Per-token products come out as [16 value rows, BC
 * tokens] accumulators in the same pattern. Operands are bf16 (the chunk's pack from the mats
 * kernel, dO, and the accumulators rounded where they enter a product), accumulation fp32; the
 * next chunk's operands are staged by cp.async while this one computes. What the parallel kernels
 * read (S0, dS1 per chunk; U, R, dY per token) stays fp32. */

/* rows [0, R) x cols [0, cols) of a row-major source (row stride rs elements) into shared memory
 * (pitch ld), rows >= L zero: 16-byte cp.async pieces when vec, else element copies */
template <typename E>
__device__ void stage_async(E *dst, int ld, const E *src, int64_t rs, int R, int L, int cols,
                            bool vec) {
    constexpr int PE = 16 / (int)sizeof(E);
    const int pr = cols / PE;
    for (int x = threadIdx.x; x < R * pr; x += blockDim.x) {
        const int r = x / pr, c = (x % pr) * PE;
        E *d = dst + r * ld + c;
        if (r >= L)
            *(uint4 *)d = make_uint4(0, 0, 0, 0);
        else if (vec)
            cp_async16(d, src + r * rs + c);
        else
#pragma unroll
            for (int e = 0; e < PE; e++)
                d[e] = src[r * rs + c + e];
    }
}

/* shared-memory layout of one stage of a tensor-core sweep (elements; 16-byte aligned pieces) */
struct tc_stage {
    int ldk, ldc, ldo;
    int Kn, Qe, Kb, Mt, Tt, Tl, dO, Vr; /* bf16 offsets */
    int eg, dd, bt;                     /* float offsets, from the float base */
    int bytes_b, bytes;                 /* bf16 part, whole stage */
    __host__ __device__ tc_stage(int K, int BV, bool dh) {
        ldk = K + 8, ldc = BC + 8, ldo = BV + 8;
        int o = 0;
        Kn = o, o += BC * ldk;
        Qe = o, o += dh ? BC * ldk : 0;
        Kb = o, o += dh ? BC * ldk : 0;
        Mt = o, o += dh ? BC * ldc : 0;
        Tt = o, o += BC * ldc;
        Tl = o, o += BC * ldc;
        dO = o, o += dh ? BC * ldo : 0;
        Vr = o, o += dh ? 0 : BC * ldo;
        bytes_b = (2 * o + 15) / 16 * 16;
        int f = 0;
        eg = f, f += BC;
        dd = f, f += BC;
        bt = f, f += BC;
        bytes = bytes_b + 4 * f;
    }
};

/* A chunk's gates for a stage, fetched into registers (threads < BC) early and put into shared
 * memory after the chunk in flight is done: e^gamma, e^{gamma_L - gamma}, beta (0 past the end). */
struct gate_pf {
    double gi = 0, gl = 0;
    float bt = 0;
};
__device__ __forceinline__ gate_pf gates_fetch(const la_args &a, const bwd_ws &w, int64_t u,
                                               int64_t b, int64_t tc, int64_t hv, int Lc) {
    gate_pf p;
    const int i = threadIdx.x;
    if (i < BC) {
        p.gi = w.gam[u * BC + i], p.gl = w.gam[u * BC + Lc - 1];
        p.bt = i < Lc ? (a.delta ? a.beta[b * a.bb + (tc + i) * a.bt + hv * a.bh] : 1.0f) : 0.0f;
    }
    return p;
}
__device__ __forceinline__ void gates_put(const gate_pf &p, float *f, const tc_stage &L) {
    const int i = threadIdx.x;
    if (i < BC) {
        f[L.eg + i] = (float)exp(p.gi);
        f[L.dd + i] = (float)exp(p.gl - p.gi);
        f[L.bt + i] = p.bt;
    }
}

template <int NKT>
__device__ __forceinline__ void state_in(float (*s)[4], const float *src, int64_t V, int64_t vr,
                                         int kt) {
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int j = 0; j < 2 * NKT; j++) {
        const int key = 8 * j + 2 * t;
        const bool in = src && j < 2 * kt;
        s[j][0] = in ? src[key * V + vr] : 0.0f;
        s[j][1] = in ? src[(key + 1) * V + vr] : 0.0f;
        s[j][2] = in ? src[key * V + vr + 8] : 0.0f;
        s[j][3] = in ? src[(key + 1) * V + vr + 8] : 0.0f;
    }
}
template <int NKT, typename D>
__device__ __forceinline__ void state_out(D *dst, const float (*s)[4], int64_t V, int64_t vr,
                                          int kt) {
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int j = 0; j < 2 * NKT; j++)
        if (j < 2 * kt) {
            const int key = 8 * j + 2 * t;
            dst[key * V + vr] = from_f<D>(s[j][0]);
            dst[(key + 1) * V + vr] = from_f<D>(s[j][1]);
            dst[key * V + vr + 8] = from_f<D>(s[j][2]);
            dst[(key + 1) * V + vr + 8] = from_f<D>(s[j][3]);
        }
}

/* X^T [16 value rows, BC] = S^T Kn^T over the keys (Kn row-major [BC][ld]), S split */
template <int NKT>
__device__ __forceinline__ void state_keys(float (*x)[4], const float (*s)[4],
                                           const __nv_bfloat16 *Kn, int ld, int kt) {
#pragma unroll
    for (int j = 0; j < BC / 8; j++)
        x[j][0] = x[j][1] = x[j][2] = x[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < NKT; kk++)
        if (kk < kt) {
            uint32_t ah[4], al[4];
            acc_to_a2(ah, al, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int jp = 0; jp < BC / 16; jp++) {
                uint32_t bf[4];
                frag_b_nk(bf, Kn + 16 * jp * ld + 16 * kk, ld);
                mma16816<__nv_bfloat16>(x[2 * jp], ah, bf[0], bf[1]);
                mma16816<__nv_bfloat16>(x[2 * jp + 1], ah, bf[2], bf[3]);
                mma16816<__nv_bfloat16>(x[2 * jp], al, bf[0], bf[1]);
                mma16816<__nv_bfloat16>(x[2 * jp + 1], al, bf[2], bf[3]);
            }
        }
}

/* S^T [16, K] += A [16, BC] B, A as fragments per token block (hi, and lo unless NULL), B
 * row-major [BC][ld] over keys */
template <int NKT>
__device__ __forceinline__ void state_add(float (*s)[4], const uint32_t (*ah)[4],
                                          const uint32_t (*al)[4], const __nv_bfloat16 *B, int ld,
                                          int kt) {
#pragma unroll
    for (int kk = 0; kk < BC / 16; kk++)
#pragma unroll
        for (int jp = 0; jp < NKT; jp++)
            if (jp < kt) {
                uint32_t bf[4];
                frag_b_kn(bf, B + 16 * kk * ld + 16 * jp, ld);
                mma16816<__nv_bfloat16>(s[2 * jp], ah[kk], bf[0], bf[1]);
                mma16816<__nv_bfloat16>(s[2 * jp + 1], ah[kk], bf[2], bf[3]);
                if (al) {
                    mma16816<__nv_bfloat16>(s[2 * jp], al[kk], bf[0], bf[1]);
                    mma16816<__nv_bfloat16>(s[2 * jp + 1], al[kk], bf[2], bf[3]);
                }
            }
}

/* Y [16, BC] = A [16, BC] (B + Bl) (B row-major [k][n], or [n][k] when trans_b; pitch ld), A as
 * hi and lo (NULL: exact) fragments; the lo x Bl term is dropped */
__device__ __forceinline__ void tok_mm(float (*y)[4], const uint32_t (*ah)[4],
                                       const uint32_t (*al)[4], const __nv_bfloat16 *B,
                                       const __nv_bfloat16 *Bl, int ld, bool trans_b) {
#pragma unroll
    for (int j = 0; j < BC / 8; j++)
        y[j][0] = y[j][1] = y[j][2] = y[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < BC / 16; kk++)
#pragma unroll
        for (int jp = 0; jp < BC / 16; jp++) {
            const int off = trans_b ? 16 * jp * ld + 16 * kk : 16 * kk * ld + 16 * jp;
            uint32_t bf[4];
            if (trans_b) /* B(k, n) = Bs[n][k] */
                frag_b_nk(bf, B + off, ld);
            else
                frag_b_kn(bf, B + off, ld);
            mma16816<__nv_bfloat16>(y[2 * jp], ah[kk], bf[0], bf[1]);
            mma16816<__nv_bfloat16>(y[2 * jp + 1], ah[kk], bf[2], bf[3]);
            if (al) {
                mma16816<__nv_bfloat16>(y[2 * jp], al[kk], bf[0], bf[1]);
                mma16816<__nv_bfloat16>(y[2 * jp + 1], al[kk], bf[2], bf[3]);
            }
            if (Bl) {
                if (trans_b)
                    frag_b_nk(bf, Bl + off, ld);
                else
                    frag_b_kn(bf, Bl + off, ld);
                mma16816<__nv_bfloat16>(y[2 * jp], ah[kk], bf[0], bf[1]);
                mma16816<__nv_bfloat16>(y[2 * jp + 1], ah[kk], bf[2], bf[3]);
            }
        }
}

/* the accumulators of [16, BC] as hi and lo A fragments over the tokens, column i scaled by
 * sc[i] (when sc) */
__device__ __forceinline__ void tok_frags(uint32_t (*ah)[4], uint32_t (*al)[4], const float (*x)[4],
                                          const float *sc) {
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int kk = 0; kk < BC / 16; kk++) {
        float c[2][4];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int i = 16 * kk + 8 * h + 2 * t;
            const float s0 = sc ? sc[i] : 1.0f, s1 = sc ? sc[i + 1] : 1.0f;
            c[h][0] = x[2 * kk + h][0] * s0, c[h][1] = x[2 * kk + h][1] * s1;
            c[h][2] = x[2 * kk + h][2] * s0, c[h][3] = x[2 * kk + h][3] * s1;
        }
        acc_to_a2(ah[kk], al[kk], c[0], c[1]);
    }
}

/* Key split: a sweep block has NW x KS warps; warp w owns value columns 16 (w % NW) .. + 15
 * and key tiles kb .. kb + NKL - 1 (kb = (w / NW) NKL, NKL = KMAX / 16 / KS) of the state, so
 * that more warps share a sequence's chain of chunks. A product over all keys (S^T Kn^T) is
 * summed over the KS warps of a column block through shared memory (red: [KS][NW][BC / 8][32]
 * float4, conflict-free); the products over tokens that follow are repeated in each of them. */
template <int KS> __host__ __device__ constexpr int red_bytes(int NW) {
    return KS > 1 ? KS * NW * (BC / 8) * 32 * 16 : 0;
}
template <int NW, int KS>
__device__ __forceinline__ void key_sum(float (*x)[4], float *red, int vw, int kw) {
    if constexpr (KS > 1) {
        const int lane = threadIdx.x & 31;
        float4 *r4 = (float4 *)red;
#pragma unroll
        for (int j = 0; j < BC / 8; j++)
            r4[((kw * NW + vw) * (BC / 8) + j) * 32 + lane] =
                make_float4(x[j][0], x[j][1], x[j][2], x[j][3]);
        __syncthreads();
#pragma unroll
        for (int j = 0; j < BC / 8; j++) {
            float4 sum = make_float4(0, 0, 0, 0);
#pragma unroll
            for (int q = 0; q < KS; q++) {
                const float4 y = r4[((q * NW + vw) * (BC / 8) + j) * 32 + lane];
                sum.x += y.x, sum.y += y.y, sum.z += y.z, sum.w += y.w;
            }
            x[j][0] = sum.x, x[j][1] = sum.y, x[j][2] = sum.z, x[j][3] = sum.w;
        }
    }
}

/* The forward sweep of sequence n, value head hv, columns v0 .. v0 + 16 NW - 1. */
template <int KMAX, int NW, int KS>
__device__ __forceinline__ void bwd_fwd_sweep_tc(const la_args &a, const bwd_ws &w, int64_t n,
                                                 int64_t hv, int64_t v0, unsigned char *smem) {
    using bf = __nv_bfloat16;
    constexpr int NKL = KMAX / 16 / KS, BV = 16 * NW;
    const int K = (int)a.K, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int vw = warp % NW, kw = warp / NW, kb = kw * NKL;
    const int kt = K / 16 - kb < 0 ? 0 : K / 16 - kb < NKL ? K / 16 - kb : NKL; /* tiles here */
    const int g = lane >> 2, t = lane & 3;
    const tc_stage L(K, BV, false);
    float *red = (float *)(smem + 2 * L.bytes);
    const int64_t V = a.V, vr = v0 + 16 * vw + g, ko = 16 * (int64_t)kb * V;
    int64_t b, t0, t1;
    seq_range(a, n, &b, &t0, &t1);
    const int64_t nch = (t1 - t0 + BC - 1) / BC, cb = w.cmap ? w.cb[n] : n * w.nt;
    float s[2 * NKL][4];
    state_in<NKL>(s, a.h0 ? a.h0 + (n * a.HV + hv) * a.K * V + ko : nullptr, V, vr, kt);

    auto stage = [&](int64_t c, int st) {
        const int64_t u = (cb + c) * a.HV + hv, tc = t0 + c * BC;
        const int Lc = (int)(t1 - tc < BC ? t1 - tc : BC);
        bf *sb = (bf *)(smem + st * L.bytes);
        const bf *pk = w.pack + u * pk_size(K);
        stage_async(sb + L.Kn, L.ldk, pk, K, BC, BC, K, true);
        if (a.delta) {
            stage_async(sb + L.Tt, L.ldc, pk + pk_t(K), BC, BC, BC, BC, true);
            stage_async(sb + L.Tl, L.ldc, pk + pk_tl(K), BC, BC, BC, BC, true);
        }
        stage_async(sb + L.Vr, L.ldo, (const bf *)a.v + b * a.vb + tc * a.vt + hv * a.vh + v0, a.vt,
                    BC, Lc, BV, a.vec);
        return gates_fetch(a, w, u, b, tc, hv, Lc);
    };
    if (nch > 0) gates_put(stage(0, 0), (float *)(smem + L.bytes_b), L);
    cp_async_commit();
    for (int64_t c = 0; c < nch; c++) {
        const int st = (int)(c & 1);
        gate_pf pf;
        if (c + 1 < nch) pf = stage(c + 1, st ^ 1);
        cp_async_commit();
        const int64_t u = (cb + c) * a.HV + hv, tc = t0 + c * BC, tok0 = b * a.T + tc;
        const int Lc = (int)(t1 - tc < BC ? t1 - tc : BC);
        state_out<NKL>(w.ckh + u * a.K * V + ko, s, V, vr, kt);
        cp_async_wait<1>();
        __syncthreads();
        const bf *sb = (const bf *)(smem + st * L.bytes);
        const float *sf = (const float *)(smem + st * L.bytes + L.bytes_b);
        const float *eg = sf + L.eg, *dd = sf + L.dd, *btv = sf + L.bt;
        const bf *Vs = sb + L.Vr;
        const int64_t trs = a.HV * V;
        float *Rg = w.Rb ? w.Rb + tok0 * trs + hv * V : nullptr;
        float *Ug = w.Ub + tok0 * trs + hv * V;
        float x[BC / 8][4];
        if (a.delta) { /* R = V - E K S0 (stored), then U^T = (b R)^T Tm^T */
            state_keys<NKL>(x, s, sb + L.Kn + 16 * kb, L.ldk, kt);
            key_sum<NW, KS>(x, red, vw, kw);
#pragma unroll
            for (int j = 0; j < BC / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int i = 8 * j + 2 * t + (e & 1), vl = 16 * vw + g + 8 * (e >> 1);
                    const float r = to_f(Vs[i * L.ldo + vl]) - eg[i] * x[j][e];
                    if (i < Lc && kw == 0) Rg[i * trs + vl + v0] = r;
                    x[j][e] = r;
                }
            uint32_t ah[BC / 16][4], al[BC / 16][4];
            tok_frags(ah, al, x, btv);
            tok_mm(x, ah, al, sb + L.Tt, sb + L.Tl, L.ldc, true);
        } else {
#pragma unroll
            for (int j = 0; j < BC / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int i = 8 * j + 2 * t + (e & 1), vl = 16 * vw + g + 8 * (e >> 1);
                    x[j][e] = to_f(Vs[i * L.ldo + vl]);
                }
        }
#pragma unroll
        for (int j = 0; j < BC / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = 8 * j + 2 * t + (e & 1), vl = 16 * vw + g + 8 * (e >> 1);
                if (i < Lc && kw == 0) Ug[i * trs + vl + v0] = x[j][e];
            }
        /* S1^T = e^gL S0^T + (U^T diag(d)) Kn */
        if (a.gate) {
            const float eL = eg[Lc - 1];
#pragma unroll
            for (int j = 0; j < 2 * NKL; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    s[j][e] *= eL;
        }
        uint32_t ah[BC / 16][4], al[BC / 16][4];
        tok_frags(ah, al, x, dd);
        state_add<NKL>(s, ah, al, sb + L.Kn + 16 * kb, L.ldk, kt);
        if (c + 1 < nch) gates_put(pf, (float *)(smem + (st ^ 1) * L.bytes + L.bytes_b), L);
        __syncthreads(); /* this stage is refilled next */
    }
    cp_async_wait<0>();
}

/* what the dh sweep writes besides its workspace, and dO */
struct dh_io {
    const __nv_bfloat16 *dout;
    int64_t dob, dot, doh;
    __nv_bfloat16 *dv;
    int64_t dvb, dvt, dvh;
    const float *dht;
    float *dh0;
    int dvec;
};

/* The backward sweep (dS, last chunk to first) of sequence n, value head hv, columns v0 .. */
template <int KMAX, int NW, int KS>
__device__ __forceinline__ void bwd_dh_sweep_tc(const la_args &a, const bwd_ws &w, const dh_io &io,
                                                int64_t n, int64_t hv, int64_t v0,
                                                unsigned char *smem) {
    using bf = __nv_bfloat16;
    constexpr int NKL = KMAX / 16 / KS, BV = 16 * NW;
    const int K = (int)a.K, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int vw = warp % NW, kw = warp / NW, kb = kw * NKL;
    const int kt = K / 16 - kb < 0 ? 0 : K / 16 - kb < NKL ? K / 16 - kb : NKL; /* tiles here */
    const int g = lane >> 2, t = lane & 3;
    const tc_stage L(K, BV, true);
    float *red = (float *)(smem + 2 * L.bytes);
    const __nv_bfloat16 *dout = io.dout;
    const int64_t dob = io.dob, dot = io.dot, doh = io.doh, dvb = io.dvb, dvt = io.dvt,
                  dvh = io.dvh;
    __nv_bfloat16 *dv = io.dv;
    const float *dht = io.dht;
    float *dh0 = io.dh0;
    const int dvec = io.dvec;
    const int64_t V = a.V, vr = v0 + 16 * vw + g, ko = 16 * (int64_t)kb * V;
    int64_t b, t0, t1;
    seq_range(a, n, &b, &t0, &t1);
    const int64_t nch = (t1 - t0 + BC - 1) / BC, cb = w.cmap ? w.cb[n] : n * w.nt;
    const int64_t soff = (n * a.HV + hv) * a.K * V + ko, trs = a.HV * V;
    float ds[2 * NKL][4];
    state_in<NKL>(ds, dht ? dht + soff : nullptr, V, vr, kt);

    auto stage = [&](int64_t c, int st) {
        const int64_t u = (cb + c) * a.HV + hv, tc = t0 + c * BC;
        const int Lc = (int)(t1 - tc < BC ? t1 - tc : BC);
        bf *sb = (bf *)(smem + st * L.bytes);
        const bf *pk = w.pack + u * pk_size(K);
        stage_async(sb + L.Kn, L.ldk, pk, K, BC, BC, K, true);
        stage_async(sb + L.Qe, L.ldk, pk + pk_qe(K), K, BC, BC, K, true);
        stage_async(sb + L.Mt, L.ldc, pk + pk_m(K), BC, BC, BC, BC, true);
        if (a.delta) {
            stage_async(sb + L.Kb, L.ldk, pk + pk_kb(K), K, BC, BC, K, true);
            stage_async(sb + L.Tt, L.ldc, pk + pk_t(K), BC, BC, BC, BC, true);
            stage_async(sb + L.Tl, L.ldc, pk + pk_tl(K), BC, BC, BC, BC, true);
        }
        stage_async(sb + L.dO, L.ldo, dout + b * dob + tc * dot + hv * doh + v0, dot, BC, Lc, BV,
                    dvec);
        return gates_fetch(a, w, u, b, tc, hv, Lc);
    };
    if (nch > 0) gates_put(stage(nch - 1, 0), (float *)(smem + L.bytes_b), L);
    cp_async_commit();
    for (int64_t it = 0; it < nch; it++) {
        const int64_t c = nch - 1 - it;
        const int st = (int)(it & 1);
        gate_pf pf;
        if (c > 0) pf = stage(c - 1, st ^ 1);
        cp_async_commit();
        const int64_t u = (cb + c) * a.HV + hv, tc = t0 + c * BC, tok0 = b * a.T + tc;
        const int Lc = (int)(t1 - tc < BC ? t1 - tc : BC);
        state_out<NKL>(w.dskh + u * a.K * V + ko, ds, V, vr, kt);
        cp_async_wait<1>();
        __syncthreads();
        const bf *sb = (const bf *)(smem + st * L.bytes);
        const float *sf = (const float *)(smem + st * L.bytes + L.bytes_b);
        const float *eg = sf + L.eg, *dd = sf + L.dd, *btv = sf + L.bt;
        /* K dS1, then dU^T = dO^T M + (K dS1)^T diag(d) */
        float kds[BC / 8][4], du[BC / 8][4];
        state_keys<NKL>(kds, ds, sb + L.Kn + 16 * kb, L.ldk, kt);
        key_sum<NW, KS>(kds, red, vw, kw);
        uint32_t ao[BC / 16][4]; /* dO^T: A fragments over the tokens */
#pragma unroll
        for (int kk = 0; kk < BC / 16; kk++)
            frag_at(ao[kk], sb + L.dO + 16 * kk * L.ldo + 16 * vw, L.ldo);
        tok_mm(du, ao, nullptr, sb + L.Mt, nullptr, L.ldc, false);
#pragma unroll
        for (int j = 0; j < BC / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                du[j][e] += dd[8 * j + 2 * t + (e & 1)] * kds[j][e];
        float dy[BC / 8][4];
        if (a.delta) { /* dY^T = dU^T Tm */
            uint32_t ah[BC / 16][4], al[BC / 16][4];
            tok_frags(ah, al, du, nullptr);
            tok_mm(dy, ah, al, sb + L.Tt, sb + L.Tl, L.ldc, false);
        } else {
#pragma unroll
            for (int j = 0; j < BC / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    dy[j][e] = du[j][e];
        }
        /* dv = b dY (dY alone without the delta rule) and dY for the grad kernel, which also
         * takes the per-token sums over V that need U and R (the forward sweep runs beside this
         * one) */
#pragma unroll
        for (int j = 0; j < BC / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = 8 * j + 2 * t + (e & 1), vl = 16 * vw + g + 8 * (e >> 1);
                const float y = dy[j][e];
                if (i < Lc && kw == 0) {
                    dv[b * dvb + (tc + i) * dvt + hv * dvh + v0 + vl] =
                        __float2bfloat16_rn(a.delta ? btv[i] * y : y);
                    if (a.delta) w.dYb[(tok0 + i) * trs + hv * V + v0 + vl] = y;
                }
            }
        /* dS0^T = e^gL dS1^T + dO^T Qe + dY^T Kb */
        if (a.gate) {
            const float eL = eg[Lc - 1];
#pragma unroll
            for (int j = 0; j < 2 * NKL; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    ds[j][e] *= eL;
        }
        state_add<NKL>(ds, ao, nullptr, sb + L.Qe + 16 * kb, L.ldk, kt);
        if (a.delta) {
            uint32_t ah[BC / 16][4], al[BC / 16][4];
            tok_frags(ah, al, dy, nullptr);
            state_add<NKL>(ds, ah, al, sb + L.Kb + 16 * kb, L.ldk, kt);
        }
        if (c > 0) gates_put(pf, (float *)(smem + (st ^ 1) * L.bytes + L.bytes_b), L);
        __syncthreads(); /* this stage is refilled next */
    }
    cp_async_wait<0>();
    if (dh0) state_out<NKL>(dh0 + soff, ds, V, vr, kt);
}

/* Both sweeps in one grid, side by side (neither reads what the other writes): blocks x < nv
 * (nv value-column blocks) run the dh sweep, the longer of the two, so that it starts first;
 * the others the forward sweep. y is the value head, z the sequence. */
template <int KMAX, int NW, int KS>
__global__ void __launch_bounds__(32 * NW * KS)
    la_bwd_sweeps_tc_kernel(la_args a, bwd_ws w, dh_io io, int nv) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int x = (int)blockIdx.x;
    if (x < nv)
        bwd_dh_sweep_tc<KMAX, NW, KS>(a, w, io, blockIdx.z, blockIdx.y, (int64_t)x * 16 * NW, smem);
    else if (w.NU > 0) /* (no chunks: nothing to sweep forward) */
        bwd_fwd_sweep_tc<KMAX, NW, KS>(a, w, blockIdx.z, blockIdx.y, (int64_t)(x - nv) * 16 * NW,
                                       smem);
}

/* The grad kernel's products over V on tensor cores (bf16 inputs): W = dO U^T, Z = dY U^T,
 * dQa = E dO S0^T and dKa = diag(d) U dS1^T - diag(e^gamma b) dY S0^T, V in steps of GV columns
 * staged as bf16 (the row scales applied while staging, dQa's after), fp32 accumulation. Warp w
 * takes rows 16 (w % 2) .. + 15; of W (w / 2 = 0, 1) or Z (2, 3) the columns 16 (w / 2 % 2) ..,
 * and the key blocks w / 2, + 4, ... of dQa and dKa. Results overwrite dQa, dKa, Wm, Zm (fp32);
 * sS gets this thread's part of dS1 . S0. */
constexpr int GV = 16, GLB = GV + 8; /* columns a step; bf16 pitch of the staged tiles */
__host__ __device__ constexpr int grad_vloop_floats(int K, int BV) {
    return (8 * BC + 2 * K) * GLB / 2 > (3 * BC + 2 * K) * (BV + 1) ? (8 * BC + 2 * K) * GLB / 2
                                                                    : (3 * BC + 2 * K) * (BV + 1);
}

__device__ void grad_vloop_tc(const la_args &a, const bwd_ws &w, const __nv_bfloat16 *dO_g,
                              int64_t dot, const __nv_bfloat16 *V_g, int64_t u, int64_t tok0,
                              int64_t hv, int Lc, const float *eg, const float *dd,
                              const float *btv, float *dQa, float *dKa, int ldk, float *Wm,
                              float *Zm, int ldc, __nv_bfloat16 *st, float &sS, float *sy) {
    using bf = __nv_bfloat16;
    const int K = (int)a.K, V = (int)a.V, nkb = K / 16, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int r0 = 16 * (warp & 1), hw = warp >> 1;
    bf *Ob = st, *Ur = Ob + BC * GLB, *Ud = Ur + BC * GLB, *Yr = Ud + BC * GLB, *Ys = Yr + BC * GLB,
       *Udl = Ys + BC * GLB, *Yrl = Udl + BC * GLB, *Ysl = Yrl + BC * GLB, *S0b = Ysl + BC * GLB,
       *dSb = S0b + K * GLB;
    /* x as bf16 hi + lo */
    auto put2 = [](bf *hi, bf *lo, float x) {
        const bf h = __float2bfloat16_rn(x);
        *hi = h, *lo = __float2bfloat16_rn(x - __bfloat162float(h));
    };
    const int64_t trs = a.HV * a.V, row0 = (tok0 * a.HV + hv) * a.V;
    const bf *S0g = w.ckh + u * a.K * a.V, *dSg = w.dskh + u * a.K * a.V;
    float q[4][2][4] = {}, kd[4][2][4] = {}, wz[2][4] = {};
    float sdb[2] = {},
          sdg[2] = {}; /* this thread's parts of dY . R and dY . (R - V), rows x / GV */
    for (int v0 = 0; v0 < V; v0 += GV) {
        __syncthreads(); /* the previous step's tiles are consumed */
        /* the states' K x GV tiles (bf16, two 16-byte pieces a row) go out first, by cp.async
         * straight into their operand tiles, and land while the per-token operands below are
         * loaded and converted */
        for (int x = tid; x < 2 * K; x += BT) {
            const int kq = x >> 1, c = 8 * (x & 1);
            cp_async16(S0b + kq * GLB + c, S0g + (int64_t)kq * V + v0 + c);
            cp_async16(dSb + kq * GLB + c, dSg + (int64_t)kq * V + v0 + c);
        }
        cp_async_commit();
        /* the per-token loads into registers before their stores (BC GV = 2 BT elements) */
        float o[2], uu[2], y[2], r[2], vv[2];
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int x = tid + e * BT, i = x / GV, c = x % GV;
            const bool in = i < Lc;
            o[e] = in ? to_f(dO_g[i * dot + v0 + c]) : 0.0f;
            uu[e] = in ? w.Ub[row0 + i * trs + v0 + c] : 0.0f;
            y[e] = in && a.delta ? w.dYb[row0 + i * trs + v0 + c] : 0.0f;
            r[e] = in && a.delta ? w.Rb[row0 + i * trs + v0 + c] : 0.0f;
            vv[e] = in && a.delta && a.gate ? to_f(V_g[i * a.vt + v0 + c]) : 0.0f;
        }
#pragma unroll
        for (int e = 0; e < 2; e++)
            sdb[e] += y[e] * r[e], sdg[e] += y[e] * (r[e] - vv[e]);
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int x = tid + e * BT, i = x / GV, c = x % GV;
            Ob[i * GLB + c] = __float2bfloat16_rn(o[e]);
            Ur[i * GLB + c] = __float2bfloat16_rn(uu[e]);
            put2(Ud + i * GLB + c, Udl + i * GLB + c, dd[i] * uu[e]);
            put2(Yr + i * GLB + c, Yrl + i * GLB + c, y[e]);
            put2(Ys + i * GLB + c, Ysl + i * GLB + c, -eg[i] * btv[i] * y[e]);
        }
        cp_async_wait<0>();
        __syncthreads();
        if (a.gate) /* dS1 . S0 over the pieces this thread brought in */
            for (int x = tid; x < 2 * K; x += BT) {
                const int kq = x >> 1, c = 8 * (x & 1);
                const bf *ps = S0b + kq * GLB + c, *pd = dSb + kq * GLB + c;
#pragma unroll
                for (int e = 0; e < 8; e++)
                    sS += __bfloat162float(ps[e]) * __bfloat162float(pd[e]);
            }
        uint32_t aO[4], aU[4], aUl[4], aY[4] = {}, aYl[4] = {}, aYr[4] = {}, aYrl[4] = {};
        frag_a(aO, Ob + r0 * GLB, GLB);
        frag_a(aU, Ud + r0 * GLB, GLB);
        frag_a(aUl, Udl + r0 * GLB, GLB);
        if (a.delta) {
            frag_a(aY, Ys + r0 * GLB, GLB);
            frag_a(aYl, Ysl + r0 * GLB, GLB);
            frag_a(aYr, Yr + r0 * GLB, GLB);
            frag_a(aYrl, Yrl + r0 * GLB, GLB);
        }
        if (hw < 2 || a.delta) { /* W (warps 0-3) or Z (4-7): B(v, j) = U[j][v] */
            uint32_t bu[4], aw[4];
#pragma unroll
            for (int e = 0; e < 4; e++) /* (elementwise: a pointer select would go to memory) */
                aw[e] = hw < 2 ? aO[e] : aYr[e];
            frag_b_nk(bu, Ur + 16 * (hw & 1) * GLB, GLB);
            mma16816<bf>(wz[0], aw, bu[0], bu[1]);
            mma16816<bf>(wz[1], aw, bu[2], bu[3]);
            if (hw >= 2) {
                mma16816<bf>(wz[0], aYrl, bu[0], bu[1]);
                mma16816<bf>(wz[1], aYrl, bu[2], bu[3]);
            }
        }
#pragma unroll
        for (int m = 0; m < 4; m++) {
            const int kb = hw + 4 * m;
            if (kb >= nkb) continue;
            uint32_t bs[4], bd[4];
            frag_b_nk(bs, S0b + 16 * kb * GLB, GLB);
            frag_b_nk(bd, dSb + 16 * kb * GLB, GLB);
            mma16816<bf>(q[m][0], aO, bs[0], bs[1]);
            mma16816<bf>(q[m][1], aO, bs[2], bs[3]);
            mma16816<bf>(kd[m][0], aU, bd[0], bd[1]);
            mma16816<bf>(kd[m][1], aU, bd[2], bd[3]);
            mma16816<bf>(kd[m][0], aUl, bd[0], bd[1]);
            mma16816<bf>(kd[m][1], aUl, bd[2], bd[3]);
            if (a.delta) {
                mma16816<bf>(kd[m][0], aY, bs[0], bs[1]);
                mma16816<bf>(kd[m][1], aY, bs[2], bs[3]);
                mma16816<bf>(kd[m][0], aYl, bs[0], bs[1]);
                mma16816<bf>(kd[m][1], aYl, bs[2], bs[3]);
            }
        }
    }
    /* the rows' sums over V: 16 threads a row (x = tid + e BT, row x / GV) */
#pragma unroll
    for (int e = 0; e < 2; e++) {
#pragma unroll
        for (int sh = 1; sh < GV; sh <<= 1) {
            sdb[e] += __shfl_xor_sync(0xffffffffu, sdb[e], sh);
            sdg[e] += __shfl_xor_sync(0xffffffffu, sdg[e], sh);
        }
        const int i = (tid + e * BT) / GV;
        if (tid % GV == 0) sy[i] = sdb[e], sy[BC + i] = btv[i] * sdg[e];
    }
    const int i0 = r0 + g, i1 = i0 + 8;
    const float e0 = eg[i0], e1 = eg[i1];
#pragma unroll
    for (int m = 0; m < 4; m++) {
        const int kb = hw + 4 * m;
        if (kb >= nkb) continue;
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const int c = 16 * kb + 8 * hh + 2 * t;
            dQa[i0 * ldk + c] = e0 * q[m][hh][0], dQa[i0 * ldk + c + 1] = e0 * q[m][hh][1];
            dQa[i1 * ldk + c] = e1 * q[m][hh][2], dQa[i1 * ldk + c + 1] = e1 * q[m][hh][3];
            dKa[i0 * ldk + c] = kd[m][hh][0], dKa[i0 * ldk + c + 1] = kd[m][hh][1];
            dKa[i1 * ldk + c] = kd[m][hh][2], dKa[i1 * ldk + c + 1] = kd[m][hh][3];
        }
    }
    if (hw < 2 || a.delta) {
        float *Mo = hw < 2 ? Wm : Zm;
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const int c = 16 * (hw & 1) + 8 * hh + 2 * t;
            Mo[i0 * ldc + c] = wz[hh][0], Mo[i0 * ldc + c + 1] = wz[hh][1];
            Mo[i1 * ldc + c] = wz[hh][2], Mo[i1 * ldc + c + 1] = wz[hh][3];
        }
    }
}

/* The grad kernel's C x C-by-K products on tensor cores (bf16 inputs): dQa += W Kn, dKa += W^T Qs
 * + (Z + Z^T) Kn, with B the raw q and k rows (exact bf16, staged at Qr, Kr, pitch ldr) and their
 * row factors (rq: the scale and 1/|q|, rk: 1/|k|) folded into the fp32 A operands, which enter
 * as hi + lo. Warps as in grad_vloop_tc. */
__device__ void grad_tail_tc(bool delta, int K, const __nv_bfloat16 *Qr, const __nv_bfloat16 *Kr,
                             int ldr, const float *rq, const float *rk, const float *Wm,
                             const float *Zs, int ldc, float *dQa, float *dKa, int ldk) {
    using bf = __nv_bfloat16;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int r0 = 16 * (warp & 1), hw = warp >> 1, nkb = K / 16;
    float cq[4][2][4] = {}, ck[4][2][4] = {};
#pragma unroll
    for (int kk = 0; kk < BC / 16; kk++) {
        uint32_t h1[4], l1[4], h2[4], l2[4], h3[4], l3[4];
        frag_f32(h1, l1, Wm, ldc, 1, rk, r0, 16 * kk); /* W(i, j) rk_j */
        frag_f32(h2, l2, Wm, 1, ldc, rq, r0, 16 * kk); /* W(i, j) rq_i, rows j */
        frag_f32(h3, l3, Zs, ldc, 1, rk, r0, 16 * kk); /* (zeros without the delta rule) */
#pragma unroll
        for (int m = 0; m < 4; m++) {
            const int kb = hw + 4 * m;
            if (kb >= nkb) continue;
            uint32_t bk[4], bq[4];
            frag_b_kn(bk, Kr + 16 * kk * ldr + 16 * kb, ldr);
            frag_b_kn(bq, Qr + 16 * kk * ldr + 16 * kb, ldr);
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                mma16816<bf>(cq[m][hh], h1, bk[2 * hh], bk[2 * hh + 1]);
                mma16816<bf>(cq[m][hh], l1, bk[2 * hh], bk[2 * hh + 1]);
                mma16816<bf>(ck[m][hh], h2, bq[2 * hh], bq[2 * hh + 1]);
                mma16816<bf>(ck[m][hh], l2, bq[2 * hh], bq[2 * hh + 1]);
                if (delta) {
                    mma16816<bf>(ck[m][hh], h3, bk[2 * hh], bk[2 * hh + 1]);
                    mma16816<bf>(ck[m][hh], l3, bk[2 * hh], bk[2 * hh + 1]);
                }
            }
        }
    }
    const int i0 = r0 + g, i1 = i0 + 8;
#pragma unroll
    for (int m = 0; m < 4; m++) {
        const int kb = hw + 4 * m;
        if (kb >= nkb) continue;
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const int c = 16 * kb + 8 * hh + 2 * t;
            dQa[i0 * ldk + c] += cq[m][hh][0], dQa[i0 * ldk + c + 1] += cq[m][hh][1];
            dQa[i1 * ldk + c] += cq[m][hh][2], dQa[i1 * ldk + c + 1] += cq[m][hh][3];
            dKa[i0 * ldk + c] += ck[m][hh][0], dKa[i0 * ldk + c + 1] += ck[m][hh][1];
            dKa[i1 * ldk + c] += ck[m][hh][2], dKa[i1 * ldk + c + 1] += ck[m][hh][3];
        }
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
__global__ void __launch_bounds__(BT, 2) /* two blocks an SM: at most 128 registers */
    la_bwd_grad_kernel(la_args a, bwd_ws w, const T *dout, int64_t dob, int64_t dot, int64_t doh,
                       float *dg, int64_t dgb, int64_t dgt, int64_t dgh, float *dbeta, int64_t dbb,
                       int64_t dbt, int64_t dbh, T *dq, dn_strides qs, T *dk, dn_strides ks) {
    extern __shared__ __align__(16) float sm[];
    const int K = (int)a.K, V = (int)a.V, BV = w.bv3, ldk = K + 1, ldv = BV + 1, ldc = BC + 1;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    carve cv(sm);
    double *gam = (double *)cv.take(2 * BC);
    float *Qn = cv.take(BC * ldk), *Kn = cv.take(BC * ldk), *dQa = cv.take(BC * ldk),
          *dKa = cv.take(BC * ldk), *Wm = cv.take(BC * ldc), *Zm = cv.take(BC * ldc),
          *Mm = cv.take(BC * ldc), *GKm = cv.take(BC * ldc),
          *vreg = cv.take(grad_vloop_floats(K, BV)), *eg = cv.take(BC), *dd = cv.take(BC),
          *btv = cv.take(BC), *dgam = cv.take(BC + BT / 32), *dbv = cv.take(3 * BC),
          *rst = cv.take(BC), *sy = cv.take(2 * BC);
    /* the V loop's tiles: fp32 (CUDA-core products) or bf16 (tensor cores) */
    float *dO = vreg, *Ut = dO + BC * ldv, *dY = Ut + BC * ldv, *S0t = dY + BC * ldv,
          *dS1t = S0t + K * ldv;
    const int64_t ci = blockIdx.x, hv = blockIdx.y, h = hv / (a.HV / a.H), u = ci * a.HV + hv;
    int64_t n, b, tc;
    int Lc;
    bwd_chunk(a, w, ci, &n, &b, &tc, &Lc);
    const int64_t tok0 = b * a.T + tc, trs = a.HV * a.V;
    const T *qg = (const T *)a.q + b * a.qb + tc * a.qt + h * a.qh,
            *kg = (const T *)a.k + b * a.kb + tc * a.kt + h * a.kh;
    /* bf16 (tensor cores): the raw q and k rows, exact, stay bf16 in Qn's and Kn's space (Qr,
     * Kr, pitch ldr) with their factors rq (the scale and 1 / |q|) and rk (1 / |k|) beside;
     * else Qn, Kn hold the normalised, scaled rows in fp32 */
    const bool tcp = std::is_same<T, __nv_bfloat16>::value && w.pack;
    const int ldr = K + 8;
    __nv_bfloat16 *Qr = (__nv_bfloat16 *)Qn, *Kr = (__nv_bfloat16 *)Kn;
    float *rq = dbv + BC, *rk = rq + BC;
    chunk_rows(a, tcp, Qn, Kn, ldk, qg, kg, Lc);
    load_f(Mm, ldc, w.mats + u * 3 * BC * BC, BC, BC, BC, BC);
    if (a.delta) load_f(GKm, ldc, w.mats + (u * 3 + 1) * BC * BC, BC, BC, BC, BC);
    chunk_gates(a, w, u, b, tc, hv, Lc, eg, dd, btv);
    if (tid < BC) gam[tid] = w.gam[u * BC + tid];
    /* whether exp(g) is 0 in float at each token (a reset of dg's running sum below) */
    if (tid < BC)
        rst[tid] = a.gate && tid < Lc && a.g[b * a.gb + (tc + tid) * a.gt + hv * a.gh] < -104.0f;
    for (int x = tid; x < BC * ldk; x += BT)
        dQa[x] = dKa[x] = 0.0f;
    for (int x = tid; x < BC * ldc; x += BT)
        Wm[x] = Zm[x] = 0.0f;
    __syncthreads();
    if (tcp)
        raw_row_factors(rq, rk, Qr, Kr, ldr, K, a.scale, a.l2norm);
    else {
        norm_rows(Qn, ldk, K, a.scale, a.l2norm);
        norm_rows(Kn, ldk, K, 1.0f, a.l2norm);
    }
    float sS = 0; /* this thread's part of dS1 . S0 (the chunk's last gamma) */
    if constexpr (std::is_same<T, __nv_bfloat16>::value)
        if (tcp)
            grad_vloop_tc(a, w, dout + b * dob + tc * dot + hv * doh, dot,
                          (const __nv_bfloat16 *)a.v + b * a.vb + tc * a.vt + hv * a.vh, u, tok0,
                          hv, Lc, eg, dd, btv, dQa, dKa, ldk, Wm, Zm, ldc, (__nv_bfloat16 *)vreg,
                          sS, sy);
    for (int v0 = 0; v0 < V && !tcp; v0 += BV) {
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
        if (a.gate)
            for (int x = tid; x < K * nv; x += BT)
                sS += S0t[(x / nv) * ldv + x % nv] * dS1t[(x / nv) * ldv + x % nv];
        gmm(dQa, ldk, dO, ldv, 1, S0t, 1, ldv, BC, K, BV, true);              /* E dO S0^T */
        gmm(dKa, ldk, Ut, ldv, 1, dS1t, 1, ldv, BC, K, BV, true);             /* diag(d) U dS1^T */
        if (a.delta) gmm(dKa, ldk, dY, ldv, 1, S0t, 1, ldv, BC, K, BV, true); /* - E dR S0^T */
    }
    __syncthreads();
    /* per token: the sums over V (of the dh sweep's column blocks, or of the V loop here: see
     * below), and (gate) qs_i . (E dO S0^T)_i */
    sS = warp_sum(sS);
    if (lane == 0) dgam[BC + warp] = sS;
    if (tid < BC && !tcp) {
        float pb = 0, pd = 0;
        for (int v = 0; tid < Lc && v < w.nvt; v++) {
            const float *pt = w.part + ((v * w.NTOK + tok0 + tid) * a.HV + hv) * 2;
            pb += pt[0], pd += pt[1];
        }
        dbv[tid] = pb, dgam[tid] = pd;
    }
    /* The tensor-core sweeps run side by side, so the dh sweep cannot see U and R; its sums
     * that need them come from here. With T_i = Kn_i . dKa_i over the keys (dKa = diag(d) U
     * dS1^T - diag(e^gamma b) dY S0^T so far) and K S0 = E^-1 (V - R): T_i = sl_i + sdg_i, where
     * sl_i = d_i U_i . (K dS1)_i and sdg_i = b_i dY_i . (R_i - V_i). dbeta gets dY . R, dgamma_i
     * sdg_i - sl_i, the chunk's last gamma the sum of sl_i. */
    if (tcp) {
        __syncthreads();
        for (int i = warp; i < BC; i += BT / 32) {
            float s = 0;
            for (int c = lane; c < K; c += 32)
                s += to_f(Kr[i * ldr + c]) * dKa[i * ldk + c];
            s = rk[i] * warp_sum(s);
            if (lane == 0) {
                const float sl = i < Lc && a.gate ? s - sy[BC + i] : 0.0f;
                dbv[i] = i < Lc && a.delta ? sy[i] : 0.0f;
                dgam[i] = a.gate && i < Lc ? sy[BC + i] - sl : 0.0f;
                sy[i] = sl; /* (read below by thread 0) */
            }
        }
    }
    __syncthreads();
    if (a.gate)
        for (int i = warp; i < Lc; i += BT / 32) {
            float s = 0;
            if (tcp)
                for (int c = lane; c < K; c += 32)
                    s += rq[i] * to_f(Qr[i * ldr + c]) * dQa[i * ldk + c];
            else
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
    if (tcp) {
        grad_tail_tc(a.delta, K, Qr, Kr, ldr, rq, rk, Wm, GKm, ldc, dQa, dKa, ldk);
    } else {
        gmm(dQa, ldk, Wm, ldc, 1, Kn, ldk, 1, BC, K, BC, true);               /* + W K */
        gmm(dKa, ldk, Wm, 1, ldc, Qn, ldk, 1, BC, K, BC, true);               /* + W^T Qs */
        if (a.delta) gmm(dKa, ldk, GKm, ldc, 1, Kn, ldk, 1, BC, K, BC, true); /* + (Z + Z^T) K */
    }
    if (tid == 0 && a.gate) {
        /* dg_l = sum of dgamma from l to the chunk's end, restarted where exp(g_l) is 0 in
         * float (a reset: the gate's gradient is exactly 0 there, as on the CPU) */
        float dgl = 0, ss = 0;
        if (tcp)
            for (int i = 0; i < Lc; i++)
                dgl += sy[i];
        else
            for (int v = 0; v < w.nvt; v++)
                dgl += w.partL[v * w.NU + u];
        for (int x = 0; x < BT / 32; x++)
            ss += dgam[BC + x];
        dgl += eg[Lc - 1] * ss;
        dgam[Lc - 1] += dgl;
        float acc = 0;
        for (int l = Lc - 1; l >= 0; l--) {
            acc += dgam[l];
            if (rst[l] != 0.0f) acc = 0;
            dg[b * dgb + (tc + l) * dgt + hv * dgh] = acc;
        }
    }
    if (a.delta && tid < Lc) dbeta[b * dbb + (tc + tid) * dbt + hv * dbh] = dbv[tid];
    __syncthreads();
    if (!w.dQs) { /* one value head a key head: the rows go back through the norm here */
        for (int i = warp; i < Lc; i += BT / 32) {
            const int64_t t = tc + i;
            const T *xq = qg + i * a.qt, *xk = kg + i * a.kt;
            if constexpr (std::is_same<T, __nv_bfloat16>::value)
                if (tcp) xq = Qr + i * ldr, xk = Kr + i * ldr;
            row_back(dq + b * qs.b + t * qs.t + h * qs.h, xq, dQa + i * ldk, K, a.scale, a.l2norm);
            row_back(dk + b * ks.b + t * ks.t + h * ks.h, xk, dKa + i * ldk, K, 1.0f, a.l2norm);
        }
        return;
    }
    for (int x = tid; x < Lc * K; x += BT) {
        const int i = x / K, c = x % K;
        const int64_t at = ((tok0 + i) * a.HV + hv) * a.K + c;
        w.dQs[at] = dQa[i * ldk + c];
        w.dKs[at] = dKa[i * ldk + c];
    }
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
    c.take(2 * BC), c.take(2 * BC * (K + 1)), c.take(3 * BC * (BC + 1)), c.take(4 * BC);
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
    c.take(K * (BV + 1)), c.take(2 * BC * (K + 1)), c.take(2 * BC * (BC + 1));
    c.take(7 * BC * (BV + 1)), c.take(3 * BC), c.take(2 * BT / 32);
    return sizeof(float) * c.off;
}
size_t grad_smem(int K, int BV) {
    carve c(nullptr);
    c.take(2 * BC), c.take(4 * BC * (K + 1)), c.take(4 * BC * (BC + 1));
    c.take(grad_vloop_floats(K, BV)), c.take(3 * BC), c.take(BC + BT / 32), c.take(4 * BC);
    c.take(2 * BC);
    return sizeof(float) * c.off;
}

/* the tensor-core sweeps for a head dim up to KMAX, NW warps (16 value columns each) a block */
template <int KMAX, int NW, int KS>
cudaError_t launch_tc_sweeps(const la_args &a, const dn_la_bwd_params *bp, int64_t NS,
                             const bwd_ws &w, int dvec, cudaStream_t s) {
    const int K = (int)a.K, nv = (int)(a.V / (16 * NW));
    const size_t smf = 2 * (size_t)tc_stage(K, 16 * NW, false).bytes,
                 smd = 2 * (size_t)tc_stage(K, 16 * NW, true).bytes,
                 sm = (smf > smd ? smf : smd) + red_bytes<KS>(NW);
    cudaError_t e = cudaFuncSetAttribute(la_bwd_sweeps_tc_kernel<KMAX, NW, KS>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm);
    if (e != cudaSuccess) return e;
    const dn_strides os = bp->dout_s, vs = bp->dv_s;
    const dh_io io = {(const __nv_bfloat16 *)bp->dout,
                      os.b,
                      os.t,
                      os.h,
                      (__nv_bfloat16 *)bp->dv,
                      vs.b,
                      vs.t,
                      vs.h,
                      bp->dfinal_state,
                      bp->dinitial_state,
                      dvec};
    const dim3 grid((unsigned)(2 * nv), (unsigned)a.HV, (unsigned)NS);
    la_bwd_sweeps_tc_kernel<KMAX, NW, KS><<<grid, 32 * NW * KS, sm, s>>>(a, w, io, nv);
    return cudaGetLastError();
}
template <int KMAX>
cudaError_t tc_sweeps(const la_args &a, const dn_la_bwd_params *bp, int64_t NS, const bwd_ws &w,
                      int dvec, cudaStream_t s) {
    const int nw = w.bv / 16;
    return nw == 4 && w.ks == 1 ? launch_tc_sweeps<KMAX, 4, 1>(a, bp, NS, w, dvec, s)
           : nw == 4            ? launch_tc_sweeps<KMAX, 4, 2>(a, bp, NS, w, dvec, s)
           : nw == 2            ? launch_tc_sweeps<KMAX, 2, 4>(a, bp, NS, w, dvec, s)
                                : launch_tc_sweeps<KMAX, 1, 4>(a, bp, NS, w, dvec, s);
}
cudaError_t run_tc_sweeps(const la_args &a, const dn_la_bwd_params *bp, int64_t NS, const bwd_ws &w,
                          int dvec, cudaStream_t s) {
    return a.K <= 64    ? tc_sweeps<64>(a, bp, NS, w, dvec, s)
           : a.K <= 128 ? tc_sweeps<128>(a, bp, NS, w, dvec, s)
                        : tc_sweeps<256>(a, bp, NS, w, dvec, s);
}

template <typename T>
cudaError_t run_bwd(const la_args &a, const dn_la_bwd_params *bp, int64_t NS, bwd_ws w, int64_t nch,
                    int dvec, cudaStream_t s) {
    const int K = (int)a.K;
    const bool tc = w.pack != nullptr;
    const size_t sm0 = mats_smem(K), sm1 = fwd_smem(K, w.bv), sm2 = dh_smem(K, w.bv),
                 sm3 = grad_smem(K, w.bv3);
    cudaError_t e = cudaSuccess;
#define DN_SMEM(kern, bytes)                                                                       \
    if (e == cudaSuccess)                                                                          \
    e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(bytes))
    DN_SMEM(la_bwd_mats_kernel<T>, sm0);
    if (!tc) DN_SMEM(la_bwd_fwd_kernel<T>, sm1);
    if (!tc) DN_SMEM(la_bwd_dh_kernel<T>, sm2);
    DN_SMEM(la_bwd_grad_kernel<T>, sm3);
#undef DN_SMEM
    if (e != cudaSuccess) return e;
    const dn_strides os = bp->dout_s, vs = bp->dv_s, gs = bp->dg_s, bs = bp->dbeta_s;
    const dn_strides qs = bp->dq_s, ks = bp->dk_s;
    const dim3 units((unsigned)nch, (unsigned)a.HV),
        seqs((unsigned)w.nvt, (unsigned)a.HV, (unsigned)NS);
    if (nch > 0) la_bwd_mats_kernel<T><<<units, BT, sm0, s>>>(a, w);
    if (tc) {
        if ((e = run_tc_sweeps(a, bp, NS, w, dvec, s)) != cudaSuccess) return e;
    } else {
        if (nch > 0) la_bwd_fwd_kernel<T><<<seqs, BT, sm1, s>>>(a, w);
        la_bwd_dh_kernel<T><<<seqs, BT, sm2, s>>>(a, w, (const T *)bp->dout, os.b, os.t, os.h,
                                                  (T *)bp->dv, vs.b, vs.t, vs.h, bp->dfinal_state,
                                                  bp->dinitial_state);
    }
    if (nch > 0)
        la_bwd_grad_kernel<T><<<units, BT, sm3, s>>>(a, w, (const T *)bp->dout, os.b, os.t, os.h,
                                                     bp->dg, gs.b, gs.t, gs.h, bp->dbeta, bs.b,
                                                     bs.t, bs.h, (T *)bp->dq, qs, (T *)bp->dk, ks);
    const int64_t warps = w.dQs ? w.NTOK * a.H : 0; /* (else done by the grad kernel) */
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
    /* bf16: the tensor-core sweeps, both in one grid, a block over 64, 32 or 16 value columns,
     * the widest that still gives every SM a block, its keys split over 2, 4 or 4 warps to
     * shorten each warp's chain of chunks (8 warps of one key tile each measured slower at
     * 1 x 32768: 8.96 ms against 5.49 for the sweeps); not split where the blocks make four
     * waves or more (16 x 1024 tokens: splitting only repeats the per-token products there) */
    const bool tc = p->dtype == DN_BF16;
    if (tc) {
        int nw = 4;
        while (nw > 1 && (p->V % (16 * nw) || 2 * heads * (p->V / (16 * nw)) < sms))
            nw /= 2;
        w.ks = nw == 4 && 2 * heads * (p->V / 64) >= 4 * sms ? 1 : 2;
        /* DN_CUDA_BWD_SWEEP=64x1, 64x2, 32 or 16 picks one (the tests run each) */
        const char *env = getenv("DN_CUDA_BWD_SWEEP");
        int cols = 0, split = 2;
        if (env && sscanf(env, "%dx%d", &cols, &split) >= 1 &&
            (cols == 16 || cols == 32 || cols == 64) && p->V % cols == 0)
            nw = cols / 16, w.ks = cols == 64 && split == 1 ? 1 : 2;
        w.bv = 16 * nw;
    } else {
        w.bv = heads * ((p->V + 31) / 32) >= sms ? 32 : heads * ((p->V + 15) / 16) >= sms ? 16 : 8;
    }
    w.bv3 = 16;
    w.nvt = (int)((p->V + w.bv - 1) / w.bv);
    w.NU = nch * p->HV;
    w.NTOK = p->B * p->T;
    const int64_t K = p->K, V = p->V, HV = p->HV, NU = w.NU, NTOK = w.NTOK;
    const int delta = p->op == DN_OP_DELTANET || p->op == DN_OP_GDN;
    const size_t sizes[] = {
        align256(4 * (size_t)(NU * 3 * BC * BC)),               /* mats */
        align256(8 * (size_t)(NU * BC)),                        /* gam */
        tc ? 0 : align256(4 * (size_t)(NU * K * V)),            /* ck */
        tc ? 0 : align256(4 * (size_t)(NU * K * V)),            /* dsk */
        tc ? align256(2 * (size_t)(NU * K * V)) : 0,            /* ckh */
        tc ? align256(2 * (size_t)(NU * K * V)) : 0,            /* dskh */
        align256(4 * (size_t)(NTOK * HV * V)),                  /* Ub */
        delta ? align256(4 * (size_t)(NTOK * HV * V)) : 0,      /* Rb */
        delta ? align256(4 * (size_t)(NTOK * HV * V)) : 0,      /* dYb */
        tc ? 0 : align256(4 * (size_t)(w.nvt * NTOK * HV * 2)), /* part */
        tc ? 0 : align256(4 * (size_t)(w.nvt * NU)),            /* partL */
        HV > p->H ? align256(4 * (size_t)(NTOK * HV * K)) : 0,  /* dQs */
        HV > p->H ? align256(4 * (size_t)(NTOK * HV * K)) : 0,  /* dKs */
        tc ? align256(2 * (size_t)(NU * pk_size(K))) : 0,       /* pack */
        p->cu_seqlens ? align256(8 * (size_t)(NS + 1)) : 0,     /* cb */
        p->cu_seqlens ? align256(4 * (size_t)nch) : 0,          /* cmap */
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        total += sizes[i];
    char *ws = NULL;
    cudaError_t e = dn_cuda_scratch((void **)&ws, total, s);
    if (e == cudaSuccess) {
        char *at = ws;
        void **slots[] = {(void **)&w.mats, (void **)&w.gam,  (void **)&w.ck,    (void **)&w.dsk,
                          (void **)&w.ckh,  (void **)&w.dskh, (void **)&w.Ub,    (void **)&w.Rb,
                          (void **)&w.dYb,  (void **)&w.part, (void **)&w.partL, (void **)&w.dQs,
                          (void **)&w.dKs,  (void **)&w.pack};
        const size_t ns = sizeof slots / sizeof slots[0]; /* then cb, cmap */
        for (size_t i = 0; i < ns; i++) {
            *slots[i] = sizes[i] ? at : NULL;
            at += sizes[i];
        }
        if (p->cu_seqlens) {
            char *hb = (char *)malloc(sizes[ns] + sizes[ns + 1]);
            if (!hb) e = cudaErrorMemoryAllocation;
            if (hb) {
                fill_chunk_map(p, NS, BC, (int64_t *)hb, (int *)(hb + sizes[ns]));
                /* pageable source: the call returns once it is staged, so hb may go */
                e = cudaMemcpyAsync(at, hb, sizes[ns] + sizes[ns + 1], cudaMemcpyHostToDevice, s);
                free(hb);
                w.cb = (const int64_t *)at, w.cmap = (const int *)(at + sizes[ns]);
            }
        }
    }
    if (e == cudaSuccess) {
        const la_args a = make_args(p, cu);
        /* dout in whole 16-byte pieces: the tensor-core sweep stages it by cp.async */
        const dn_strides os = bp->dout_s;
        const int dvec =
            (uintptr_t)bp->dout % 16 == 0 && os.b % 8 == 0 && os.t % 8 == 0 && os.h % 8 == 0;
        e = p->dtype == DN_BF16  ? run_bwd<__nv_bfloat16>(a, bp, NS, w, nch, dvec, s)
            : p->dtype == DN_F16 ? run_bwd<__half>(a, bp, NS, w, nch, dvec, s)
                                 : run_bwd<float>(a, bp, NS, w, nch, dvec, s);
    }
    if (ws) (void)cudaFreeAsync(ws, s);
    st = dn_cuda_error(e, name);
    if (cu) (void)cudaFreeAsync(cu, s);
    return st;
}
