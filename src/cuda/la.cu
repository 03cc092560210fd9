/*
 * cuda/la.cu - the linear-attention family (linear attention, GLA, DeltaNet, Gated DeltaNet) on
 * NVIDIA GPUs: the fused recurrence (decode, and DN_IMPL_RECURRENT) and the chunkwise forward
 * (prefill) on tensor cores. The math is docs/OPS.md's; the argument checks are src/la.c's, shared
 * with the CPU, which hands valid params to dn_cuda_la_forward.
 *
 * The recurrence and the single chunk kernel (fp32 inputs) give one thread block a (sequence,
 * value head, block of value columns): column j of the state only ever meets v_j, u_j and o_j, so
 * column blocks are independent, and the block walks its sequence's tokens (or chunks) in order
 * with its slice of the state on chip (registers for the recurrence, shared memory for the
 * chunks). 16-bit inputs take one of two chunkwise forwards on the tensor cores: where the
 * sequences' heads fill the SMs, the fused one (below, "Fused chunkwise forward": a block walks a
 * sequence's chunks doing every product itself, no workspace); otherwise the split one ("Split
 * chunkwise forward": the chunks' key-side work and outputs in parallel over all chunks, only the
 * state pass in order). States are fp32, accumulation is fp32; q, k, v are read in their dtype
 * and o is written in it.
 */
#include "la_common.cuh"
#include "mma.cuh"

#include <atomic>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <type_traits>

/* The split chunkwise forward for 16-bit inputs (DN_CUDA_SPLIT=0 at build time: the single
 * chunk kernel for every dtype, as before it). */
#ifndef DN_CUDA_SPLIT
#define DN_CUDA_SPLIT 1
#endif

namespace {

/* The raw gates of token t of value head hv, the formulas stated once: g = -exp(A_log)
 * softplus(a + dt_bias), beta = sigmoid(b) (accurate expf and log1pf, as on the CPU). */
__device__ __forceinline__ float raw_g(const la_args &a, int64_t b, int64_t t, int64_t hv) {
    const float x = a.ga[b * a.gab + t * a.gat + hv * a.gah] + a.dt_bias[hv];
    return -expf(a.A_log[hv]) * (x > 20.0f ? x : log1pf(expf(x)));
}
__device__ __forceinline__ float raw_beta(const la_args &a, int64_t b, int64_t t, int64_t hv) {
    return 1.0f / (1.0f + expf(-a.gbr[b * a.gbb + t * a.gbt + hv * a.gbh]));
}

/* The decay factor e = exp(g) and beta of token t of value head hv: from g and beta, or from
 * the raw gates (two values a token). */
__device__ __forceinline__ void token_gates(const la_args &a, int64_t b, int64_t t, int64_t hv,
                                            float *e, float *beta) {
    float g = 0.0f;
    if (a.gate && a.ga) {
        g = raw_g(a, b, t, hv);
    } else if (a.gate) {
        g = a.g[b * a.gb + t * a.gt + hv * a.gh];
    }
    *e = a.gate ? __expf(fmaxf(g, LOG_DECAY_MIN)) : 1.0f;
    if (!a.delta)
        *beta = 1.0f;
    else if (a.gbr)
        *beta = raw_beta(a, b, t, hv);
    else
        *beta = a.beta[b * a.bb + t * a.bt + hv * a.bh];
}

/* ---------------------------------------------------------------------------------------------
 * Fused recurrence. Block: 32 state columns x all K rows, REC_WARPS warps; warp w holds rows
 * w, w + REC_WARPS, ... of its 32 columns in registers (RPT of them). Per token: q and k (and
 * their norms) in shared memory, the partial sums S^T k and S^T q reduced across warps through
 * shared memory, then o = e S^T q + (k.q) u and S = e S + k u^T, as src/cpu/la.c.
 * ------------------------------------------------------------------------------------------- */
constexpr int REC_WARPS = 8;

template <typename T, typename SE, int RPT>
__global__ void __launch_bounds__(32 * REC_WARPS) la_recurrent_kernel(la_args a) {
    __shared__ float qs[256], ks[256], part_k[REC_WARPS][32], part_q[REC_WARPS][32], sc[3];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int64_t hv = blockIdx.y, n = blockIdx.z, h = hv / (a.HV / a.H);
    const int64_t j = (int64_t)blockIdx.x * 32 + lane;
    const bool col = j < a.V;
    const int K = (int)a.K;
    int64_t b, t0, t1;
    seq_range(a, n, &b, &t0, &t1);
    const int64_t soff = (n * a.HV + hv) * a.K * a.V;

    float S[RPT];
#pragma unroll
    for (int r = 0; r < RPT; r++) {
        const int i = w + r * REC_WARPS;
        S[r] =
            (a.h0 && col && i < K) ? to_f(((const SE *)a.h0)[soff + (int64_t)i * a.V + j]) : 0.0f;
    }
    const T *q = (const T *)a.q, *k = (const T *)a.k, *v = (const T *)a.v;
    T *o = (T *)a.o;
    for (int64_t t = t0; t < t1; t++) {
        const T *qr = q + b * a.qb + t * a.qt + h * a.qh, *kr = k + b * a.kb + t * a.kt + h * a.kh;
        for (int i = threadIdx.x; i < K; i += blockDim.x) {
            qs[i] = to_f(qr[i]);
            ks[i] = to_f(kr[i]);
        }
        /* values every warp needs, loaded before the barrier so their latency overlaps it */
        const float vj = col ? to_f(v[b * a.vb + t * a.vt + hv * a.vh + j]) : 0.0f;
        float e, beta;
        token_gates(a, b, t, hv, &e, &beta);
        __syncthreads();
        if (w == 0) {
            float sq = 0, sk = 0, kq = 0;
            for (int i = lane; i < K; i += 32) {
                sq += qs[i] * qs[i];
                sk += ks[i] * ks[i];
                kq += qs[i] * ks[i];
            }
            sq = warp_sum(sq), sk = warp_sum(sk), kq = warp_sum(kq);
            if (lane == 0) {
                const float rq = a.l2norm ? a.scale * rsqrtf(sq + 1e-6f) : a.scale;
                const float rk = a.l2norm ? rsqrtf(sk + 1e-6f) : 1.0f;
                sc[0] = rq, sc[1] = rk, sc[2] = kq * rq * rk;
            }
        }
        float ak = 0, aq = 0;
#pragma unroll
        for (int r = 0; r < RPT; r++) {
            const int i = w + r * REC_WARPS;
            if (i < K) {
                ak += S[r] * ks[i];
                aq += S[r] * qs[i];
            }
        }
        part_k[w][lane] = ak;
        part_q[w][lane] = aq;
        __syncthreads();
        ak = aq = 0;
#pragma unroll
        for (int x = 0; x < REC_WARPS; x++) {
            ak += part_k[x][lane];
            aq += part_q[x][lane];
        }
        const float rq = sc[0], rk = sc[1], kq = sc[2];
        ak *= rk, aq *= rq;
        const float u = a.delta ? beta * (vj - e * ak) : vj;
        if (w == 0 && col) o[b * a.ob + t * a.ot + hv * a.oh + j] = from_f<T>(e * aq + kq * u);
        const float ur = u * rk;
#pragma unroll
        for (int r = 0; r < RPT; r++) {
            const int i = w + r * REC_WARPS;
            if (i < K) S[r] = e * S[r] + ks[i] * ur;
        }
        __syncthreads(); /* qs, ks, part_* are rewritten by the next token */
    }
    if (a.ht && col) {
#pragma unroll
        for (int r = 0; r < RPT; r++) {
            const int i = w + r * REC_WARPS;
            if (i < K) ((SE *)a.ht)[soff + (int64_t)i * a.V + j] = from_f<SE>(S[r]);
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Decode recurrence (the batched decode step, and short sequences): the fused recurrence laid
 * out for the state's bytes. A decode step does 8 K V FLOPs on K V state elements read and
 * written once, so it runs at the memory system's speed or not at all; what that takes is wide,
 * contiguous accesses and many of them in flight. Each thread holds 16 bytes of a state row (CPT
 * columns: 4 in fp32, 8 in bf16) in RPT rows, read with one 16-byte load per row, all issued
 * before the first token is touched. A block of 256 threads is NCG column groups x NRG = 256 /
 * NCG row groups: BVC = NCG CPT columns of all K rows; where BVC covers V, consecutive lanes
 * read a whole row (512 bytes of an fp32 row of 128) and the block a head's state in one piece.
 * Per token: q and k into shared memory (double-buffered by the token's parity, as is every
 * shared array, so three barriers a token suffice), the norms and k.q reduced by every warp for
 * itself, the partial sums S^T k and S^T q reduced over a warp's row groups by shuffles and over
 * the warps through shared memory (one sum a thread), then o = e S^T q + (k.q) u and
 * S = e S + k u^T as in la_recurrent_kernel. Needs V % CPT == 0 and 16-byte aligned states (the
 * launcher checks).
 * ------------------------------------------------------------------------------------------- */
/* 256 threads: measured on an H200 (K = V = 128, B = 64 and 128), blocks of 128 threads were
 * 4-7% slower in fp32 and the same in bf16, blocks of 64 threads 15% slower */
constexpr int DEC_THREADS = 256, DEC_WARPS = DEC_THREADS / 32;
template <typename SE> __host__ __device__ constexpr int dec_cpt() { return 16 / (int)sizeof(SE); }

/* 16 bytes of state (CPT elements) at p, widened; and back, rounded */
__device__ __forceinline__ void st_load(const float *p, float *x) {
    const float4 v = *(const float4 *)p;
    x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
}
__device__ __forceinline__ void st_load(const __nv_bfloat16 *p, float *x) {
    const uint4 v = *(const uint4 *)p;
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        x[2 * i] = __uint_as_float(w[i] << 16);
        x[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}
__device__ __forceinline__ void st_store(float *p, const float *x) {
    *(float4 *)p = make_float4(x[0], x[1], x[2], x[3]);
}
__device__ __forceinline__ void st_store(__nv_bfloat16 *p, const float *x) {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const __nv_bfloat162 h = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
        w[i] = *(const uint32_t *)&h;
    }
    *(uint4 *)p = make_uint4(w[0], w[1], w[2], w[3]);
}

template <typename T, typename SE, int NCG, int RPT>
__global__ void __launch_bounds__(DEC_THREADS, 512 / DEC_THREADS) la_decode_kernel(la_args a) {
    constexpr int CPT = dec_cpt<SE>(), BVC = NCG * CPT, NRG = DEC_THREADS / NCG;
    __shared__ float qs[2][256], ks[2][256], part[2][DEC_WARPS][2][BVC];
    __shared__ __align__(16) float red[2][2][BVC];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int cg = threadIdx.x % NCG, rg = threadIdx.x / NCG; /* column group, row group */
    const int64_t hv = blockIdx.y, n = blockIdx.z, h = hv / (a.HV / a.H);
    const int64_t j0 = (int64_t)blockIdx.x * BVC + cg * CPT;
    const bool col = j0 < a.V; /* V % CPT == 0: a group is all in or all out */
    const int K = (int)a.K;
    int64_t b, t0, t1;
    seq_range(a, n, &b, &t0, &t1);
    const int64_t soff = (n * a.HV + hv) * a.K * a.V + j0;

    float S[RPT][CPT];
#pragma unroll
    for (int r = 0; r < RPT; r++) {
        const int i = rg + r * NRG;
        if (a.h0 && col && i < K)
            st_load((const SE *)a.h0 + soff + (int64_t)i * a.V, S[r]);
        else
#pragma unroll
            for (int c = 0; c < CPT; c++)
                S[r][c] = 0.0f;
    }
    const T *q = (const T *)a.q, *k = (const T *)a.k, *v = (const T *)a.v;
    T *o = (T *)a.o;
    for (int64_t t = t0; t < t1; t++) {
        const int par = (int)((t - t0) & 1);
        const T *qr = q + b * a.qb + t * a.qt + h * a.qh, *kr = k + b * a.kb + t * a.kt + h * a.kh;
        for (int i = threadIdx.x; i < K; i += DEC_THREADS) {
            qs[par][i] = to_f(qr[i]);
            ks[par][i] = to_f(kr[i]);
        }
        float vj[CPT];
        const T *vr = v + b * a.vb + t * a.vt + hv * a.vh + j0;
#pragma unroll
        for (int c = 0; c < CPT; c++)
            vj[c] = col ? to_f(vr[c]) : 0.0f;
        float e, beta;
        token_gates(a, b, t, hv, &e, &beta);
        __syncthreads();
        /* norms and k.q: every warp its own copy (K / 32 products a lane, no barrier) */
        float sq = 0, sk = 0, kq = 0;
        for (int i = lane; i < K; i += 32) {
            const float x = qs[par][i], y = ks[par][i];
            sq += x * x, sk += y * y, kq += x * y;
        }
        sq = warp_sum(sq), sk = warp_sum(sk), kq = warp_sum(kq);
        const float rq = a.l2norm ? a.scale * rsqrtf(sq + 1e-6f) : a.scale;
        const float rk = a.l2norm ? rsqrtf(sk + 1e-6f) : 1.0f;
        kq *= rq * rk;
        float ak[CPT], aq[CPT];
#pragma unroll
        for (int c = 0; c < CPT; c++)
            ak[c] = aq[c] = 0.0f;
#pragma unroll
        for (int r = 0; r < RPT; r++) {
            const int i = rg + r * NRG;
            const float kk = i < K ? ks[par][i] : 0.0f, qq = i < K ? qs[par][i] : 0.0f;
#pragma unroll
            for (int c = 0; c < CPT; c++) {
                ak[c] += S[r][c] * kk;
                aq[c] += S[r][c] * qq;
            }
        }
        /* a warp's lanes of one column group differ by multiples of NCG */
#pragma unroll
        for (int off = NCG; off < 32; off <<= 1)
#pragma unroll
            for (int c = 0; c < CPT; c++) {
                ak[c] += __shfl_xor_sync(0xffffffffu, ak[c], off);
                aq[c] += __shfl_xor_sync(0xffffffffu, aq[c], off);
            }
        if (lane < NCG)
#pragma unroll
            for (int c = 0; c < CPT; c++) {
                part[par][w][0][cg * CPT + c] = ak[c];
                part[par][w][1][cg * CPT + c] = aq[c];
            }
        __syncthreads();
        /* the 2 BVC sums over the warps, one a thread, then each thread reads its columns' */
        for (int x = threadIdx.x; x < 2 * BVC; x += DEC_THREADS) {
            float acc = 0;
#pragma unroll
            for (int y = 0; y < DEC_WARPS; y++)
                acc += part[par][y][x / BVC][x % BVC];
            red[par][x / BVC][x % BVC] = acc;
        }
        __syncthreads();
        float u[CPT];
#pragma unroll
        for (int c4 = 0; c4 < CPT; c4 += 4) {
            const float4 k4 = *(const float4 *)&red[par][0][cg * CPT + c4],
                         q4 = *(const float4 *)&red[par][1][cg * CPT + c4];
            const float sk4[4] = {k4.x, k4.y, k4.z, k4.w}, sq4[4] = {q4.x, q4.y, q4.z, q4.w};
#pragma unroll
            for (int c = c4; c < c4 + 4; c++) {
                u[c] = a.delta ? beta * (vj[c] - e * sk4[c - c4] * rk) : vj[c];
                aq[c] = e * sq4[c - c4] * rq + kq * u[c]; /* the output */
            }
        }
        if (rg == 0 && col) {
            T *orow = o + b * a.ob + t * a.ot + hv * a.oh + j0;
#pragma unroll
            for (int c = 0; c < CPT; c++)
                orow[c] = from_f<T>(aq[c]);
        }
#pragma unroll
        for (int r = 0; r < RPT; r++) {
            const int i = rg + r * NRG;
            const float kr_ = i < K ? ks[par][i] * rk : 0.0f;
#pragma unroll
            for (int c = 0; c < CPT; c++)
                S[r][c] = e * S[r][c] + kr_ * u[c];
        }
    }
    if (a.ht && col) {
#pragma unroll
        for (int r = 0; r < RPT; r++) {
            const int i = rg + r * NRG;
            if (i < K) st_store((SE *)a.ht + soff + (int64_t)i * a.V, S[r]);
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Bulk decode (sm_90+, a batch of at least one (sequence, value head) an SM): the decode step with
 * the head's state in shared memory, brought in by the bulk copy engine (cp.async.bulk: one
 * instruction for the whole contiguous K x V tile, completion counted in bytes on an mbarrier).
 * The register form above holds 64 KB of fp32 state a block in registers, two blocks an SM, and
 * its threads issue every load; here three 64 KB tiles (six of 32 KB in bf16) fit an SM, their
 * loads need no threads, and a block's q, k, v and gates are read while its tile is in flight.
 * Block: NW warps, warp w owning columns [w WC, (w + 1) WC), WC = 8 CPT, over all K rows: its
 * lanes are 8 column groups x 4 row groups, a lane taking rows rg, rg + 4, ... of its CPT
 * columns. S^T k and S^T q reduce inside a warp (shuffles); a token needs one barrier (q and k
 * into shared memory, double-buffered by parity). A lane reads its elements twice, for the
 * products and for the update, and only ever its own, so tokens need no barrier for the state;
 * the last token's update goes from registers to the final state in global memory.
 * Measured on an H200 (K = V = 128, H = 16, B = 64 and 128; bench/cuda_la.cu decode): 5-9%
 * faster than the register form in fp32, 24-37% in bf16. Persistent variants (one block an SM
 * walking many heads through a 3-6 stage ring of tiles, loads and stores by a producer warp,
 * the next head's inputs prefetched) were 35-40% slower: four to eight warps an SM left the
 * per-head arithmetic on the critical path. So were tiles of half a head (row-piece copies).
 * ------------------------------------------------------------------------------------------- */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
#endif
__device__ __forceinline__ void bulk_load(void *dst, const void *src, uint32_t bytes,
                                          uint64_t *bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, "
        "[%3];\n" ::"r"(smem_addr(dst)),
        "l"(src), "r"(bytes), "r"(smem_addr(bar))
        : "memory");
#endif
}
__device__ __forceinline__ void mbar_init(uint64_t *bar, int count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count)
                 : "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); /* seen by the copy engine */
#endif
}
__device__ __forceinline__ void mbar_expect(uint64_t *bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(uint64_t *bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(smem_addr(bar)), "r"(parity)
                     : "memory");
#endif
}

template <typename T, typename SE, int NW>
__global__ void __launch_bounds__(32 * NW) la_decode_bulk_kernel(la_args a) {
    constexpr int NCG = 8, CPT = dec_cpt<SE>(), WC = NCG * CPT, RGW = 32 / NCG, NT = 32 * NW;
    extern __shared__ __align__(128) unsigned char dec_smem[];
    SE *St = (SE *)dec_smem; /* [K][V] */
    __shared__ float qs[2][256], ks[2][256];
    __shared__ __align__(8) uint64_t bar;
    const int K = (int)a.K, V = (int)a.V, lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int cg = lane % NCG, rg = lane / NCG;
    const int jl = w * WC + cg * CPT; /* the lane's first column */
    const bool col = jl < V;          /* V % CPT == 0: a group is all in or all out */
    const int64_t hv = blockIdx.y, n = blockIdx.z, h = hv / (a.HV / a.H);
    const int64_t soff = (n * a.HV + hv) * a.K * a.V;
    int64_t b, t0, t1;
    seq_range(a, n, &b, &t0, &t1);
    if (a.h0) {
        if (threadIdx.x == 0) {
            const uint32_t bytes = (uint32_t)(a.K * a.V * (int64_t)sizeof(SE));
            mbar_init(&bar, 1);
            mbar_expect(&bar, bytes);
            bulk_load(St, (const SE *)a.h0 + soff, bytes, &bar);
        }
    } else if (col) {
        const float z[CPT] = {};
        for (int i = rg; i < K; i += RGW)
            st_store(St + i * V + jl, z);
    }
    bool waited = !a.h0;
    const T *q = (const T *)a.q, *k = (const T *)a.k, *v = (const T *)a.v;
    T *o = (T *)a.o;
    SE *ht = a.ht ? (SE *)a.ht + soff : nullptr;
    for (int64_t t = t0; t < t1; t++) {
        const int par = (int)((t - t0) & 1);
        const T *qr = q + b * a.qb + t * a.qt + h * a.qh, *kr = k + b * a.kb + t * a.kt + h * a.kh;
        for (int i = threadIdx.x; i < K; i += NT) {
            qs[par][i] = to_f(qr[i]);
            ks[par][i] = to_f(kr[i]);
        }
        float vj[CPT];
        const T *vr = v + b * a.vb + t * a.vt + hv * a.vh + jl;
#pragma unroll
        for (int c = 0; c < CPT; c++)
            vj[c] = col ? to_f(vr[c]) : 0.0f;
        float e, beta;
        token_gates(a, b, t, hv, &e, &beta);
        __syncthreads(); /* also: the barrier's initialisation seen by every thread */
        if (!waited) mbar_wait(&bar, 0), waited = true;
        /* norms and k.q: every warp its own copy */
        float sq = 0, sk = 0, kq = 0;
        for (int i = lane; i < K; i += 32) {
            const float x = qs[par][i], y = ks[par][i];
            sq += x * x, sk += y * y, kq += x * y;
        }
        sq = warp_sum(sq), sk = warp_sum(sk), kq = warp_sum(kq);
        const float rq = a.l2norm ? a.scale * rsqrtf(sq + 1e-6f) : a.scale;
        const float rk = a.l2norm ? rsqrtf(sk + 1e-6f) : 1.0f;
        kq *= rq * rk;
        float ak[CPT], aq[CPT];
#pragma unroll
        for (int c = 0; c < CPT; c++)
            ak[c] = aq[c] = 0.0f;
        if (col) {
#pragma unroll 4
            for (int i = rg; i < K; i += RGW) {
                float x[CPT];
                st_load(St + i * V + jl, x);
                const float kk = ks[par][i], qq = qs[par][i];
#pragma unroll
                for (int c = 0; c < CPT; c++) {
                    ak[c] += x[c] * kk;
                    aq[c] += x[c] * qq;
                }
            }
        }
        /* over the warp's row groups: lanes of one column group differ by multiples of NCG */
#pragma unroll
        for (int off = NCG; off < 32; off <<= 1)
#pragma unroll
            for (int c = 0; c < CPT; c++) {
                ak[c] += __shfl_xor_sync(0xffffffffu, ak[c], off);
                aq[c] += __shfl_xor_sync(0xffffffffu, aq[c], off);
            }
        float u[CPT];
#pragma unroll
        for (int c = 0; c < CPT; c++) {
            u[c] = a.delta ? beta * (vj[c] - e * ak[c] * rk) : vj[c];
            aq[c] = e * aq[c] * rq + kq * u[c]; /* the output */
        }
        if (rg == 0 && col) {
            T *orow = o + b * a.ob + t * a.ot + hv * a.oh + jl;
#pragma unroll
            for (int c = 0; c < CPT; c++)
                orow[c] = from_f<T>(aq[c]);
        }
        if (col) {
            SE *dst = t == t1 - 1 && ht ? ht : St; /* the last token: straight out */
#pragma unroll 4
            for (int i = rg; i < K; i += RGW) {
                float x[CPT];
                st_load(St + i * V + jl, x);
                const float kr_ = ks[par][i] * rk;
#pragma unroll
                for (int c = 0; c < CPT; c++)
                    x[c] = e * x[c] + kr_ * u[c];
                st_store(dst + i * V + jl, x);
            }
        }
    }
    if (t0 == t1) { /* an empty sequence: the initial state is the final one */
        __syncthreads();
        if (!waited) mbar_wait(&bar, 0);
        if (ht && col)
            for (int i = rg; i < K; i += RGW) {
                float x[CPT];
                st_load(St + i * V + jl, x);
                st_store(ht + i * V + jl, x);
            }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Chunkwise forward. One block of CH_THREADS threads per (sequence, value head, BV columns),
 * walking its chunks of C tokens in order (docs/OPS.md's chunk equations):
 *   QK = Q K^T, KK = K K^T, X = K S0, Y = Q S0                   (products of the chunk's inputs)
 *   P  = tril(QK * Gam), A = strict_tril(diag(b) Gam * KK), O = E Y, R = diag(b) (V - E X)
 *   Tm = (I + A)^{-1}   (16 x 16 diagonal blocks by substitution, then doubling: the inverse of
 *                        [[L1, 0], [M, L2]] has lower-left block -L2^{-1} M L1^{-1})
 *   U  = Tm R (delta ops; U = V otherwise),  O += P U,  S1 = e^{gamma_C} S0 + K^T diag(d) U
 * with d_i = exp(gamma_C - gamma_i). Gate differences are taken from double cumulative sums of
 * clamped gates, so g = -inf gives exact zeros, never -inf - -inf.
 * The products run on tensor cores (wmma, bf16/fp16 operands, fp32 accumulation) for 16-bit
 * inputs; for fp32 inputs they run in fp32 on the CUDA cores (a tensor-core product would round
 * the operands to bf16 or tf32 and lose the fp32 accuracy the caller asked for). Operand tiles are
 * padded by 16 bytes a row against shared-memory bank conflicts.
 * ------------------------------------------------------------------------------------------- */
constexpr int CH_THREADS = 256, CH_WARPS = CH_THREADS / 32;

template <typename T> struct ch_layout {
    int C, K, BV;
    int ldk, ldc, ldcb, ldv, ldvb; /* row pitches in elements */
    size_t S32, Sb, Qs, Ks, QK, KK, Tb, Pb, X, Ob, Rb, Ub, Udb, gam, e, bt, d, total;
    __host__ __device__ ch_layout(int C_, int K_, int BV_) : C(C_), K(K_), BV(BV_) {
        const int pt = 16 / (int)sizeof(T);
        ldk = K + pt;
        ldc = C + 4;
        ldcb = C + pt;
        ldv = BV + 4;
        ldvb = BV + pt;
        const bool f32 = sizeof(T) == 4;
        size_t off = 0;
        auto take = [&](size_t bytes) {
            size_t at = off;
            off += (bytes + 127) / 128 * 128;
            return at;
        };
        S32 = take(sizeof(float) * K * ldv);
        Sb = f32 ? S32 : take(sizeof(T) * K * ldvb);
        Qs = take(sizeof(T) * C * ldk);
        Ks = take(sizeof(T) * C * ldk);
        QK = take(sizeof(float) * C * ldc);
        KK = take(sizeof(float) * C * ldc);
        Tb = f32 ? QK : take(sizeof(T) * C * ldcb);
        Pb = take(sizeof(T) * C * ldcb);
        X = take(sizeof(float) * C * ldv);
        Ob = take(sizeof(float) * C * ldv);
        Rb = take(sizeof(T) * C * ldvb);
        Ub = take(sizeof(T) * C * ldvb);
        Udb = take(sizeof(T) * C * ldvb);
        gam = take(sizeof(double) * C);
        e = take(sizeof(float) * C);
        bt = take(sizeof(float) * C);
        d = take(sizeof(float) * C);
        total = off;
    }
};

/* C[M][N] (+)= op(A)[M][Kd] op(B)[Kd][N] over shared memory, output tiles spread over the warps.
 * A is row-major [M][Kd] (TA: stored as [Kd][M]); B is row-major [Kd][N] (TB: stored [N][Kd]).
 * M, N, Kd are multiples of 16. */
template <typename T, bool TA, bool TB>
__device__ void mm(float *Cm, int ldc, const T *A, int lda, const T *Bm, int ldb, int M, int N,
                   int Kd, bool acc) {
    using namespace nvcuda;
    const int warp = threadIdx.x >> 5, tn_count = N / 16, tiles = (M / 16) * tn_count;
    using la = typename std::conditional<TA, wmma::col_major, wmma::row_major>::type;
    using lb = typename std::conditional<TB, wmma::col_major, wmma::row_major>::type;
    for (int tile = warp; tile < tiles; tile += CH_WARPS) {
        const int tm = tile / tn_count, tn = tile % tn_count;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
        float *cp = Cm + tm * 16 * ldc + tn * 16;
        if (acc)
            wmma::load_matrix_sync(c, cp, ldc, wmma::mem_row_major);
        else
            wmma::fill_fragment(c, 0.0f);
        for (int kk = 0; kk < Kd; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, la> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, lb> fb;
            wmma::load_matrix_sync(fa, TA ? A + kk * lda + tm * 16 : A + tm * 16 * lda + kk, lda);
            wmma::load_matrix_sync(fb, TB ? Bm + tn * 16 * ldb + kk : Bm + kk * ldb + tn * 16, ldb);
            wmma::mma_sync(c, fa, fb, c);
        }
        wmma::store_matrix_sync(cp, c, ldc, wmma::mem_row_major);
    }
}

/* The fp32 version on the CUDA cores: each thread a 2 x 2 block of outputs (M, N even). */
template <bool TA, bool TB>
__device__ void mm_f32(float *Cm, int ldc, const float *A, int lda, const float *Bm, int ldb, int M,
                       int N, int Kd, bool acc) {
    const int nb = N / 2, blocks = (M / 2) * nb;
    for (int x = threadIdx.x; x < blocks; x += blockDim.x) {
        const int i = (x / nb) * 2, j = (x % nb) * 2;
        float c00 = 0, c01 = 0, c10 = 0, c11 = 0;
        for (int l = 0; l < Kd; l++) {
            const float a0 = TA ? A[l * lda + i] : A[i * lda + l];
            const float a1 = TA ? A[l * lda + i + 1] : A[(i + 1) * lda + l];
            const float b0 = TB ? Bm[j * ldb + l] : Bm[l * ldb + j];
            const float b1 = TB ? Bm[(j + 1) * ldb + l] : Bm[l * ldb + j + 1];
            c00 += a0 * b0, c01 += a0 * b1, c10 += a1 * b0, c11 += a1 * b1;
        }
        float *c0 = Cm + i * ldc + j, *c1 = c0 + ldc;
        if (acc) c00 += c0[0], c01 += c0[1], c10 += c1[0], c11 += c1[1];
        c0[0] = c00, c0[1] = c01, c1[0] = c10, c1[1] = c11;
    }
}

template <typename T, bool TA, bool TB>
__device__ __forceinline__ void prod(float *Cm, int ldc, const T *A, int lda, const T *Bm, int ldb,
                                     int M, int N, int Kd, bool acc) {
    if constexpr (sizeof(T) == 4)
        mm_f32<TA, TB>(Cm, ldc, A, lda, Bm, ldb, M, N, Kd, acc);
    else
        mm<T, TA, TB>(Cm, ldc, A, lda, Bm, ldb, M, N, Kd, acc);
}

/* One doubling step of unit_lower_inverse for blocks of S rows: pairs of S-row blocks become
 * 2S-row blocks, lower-left = -L2^{-1} (M L1^{-1}); the zero upper triangles let every sum run
 * over all S terms, unrolled. */
template <int S>
__device__ __forceinline__ void inverse_doubling(float *Tm, float *A, int ld, int C) {
    const int pairs = C / (2 * S);
    for (int x = threadIdx.x; x < pairs * S * S; x += blockDim.x) {
        const int p = x / (S * S), i = (x / S) % S, j = x % S, o = p * 2 * S;
        const float *ar = A + (o + S + i) * ld + o, *tc = Tm + o * ld + o + j;
        float acc0 = 0, acc1 = 0;
#pragma unroll
        for (int m = 0; m < S; m += 2) {
            acc0 += ar[m] * tc[m * ld];
            acc1 += ar[m + 1] * tc[(m + 1) * ld];
        }
        A[(o + i) * ld + o + S + j] = acc0 + acc1; /* scratch: the pair's upper-right block */
    }
    __syncthreads();
    for (int x = threadIdx.x; x < pairs * S * S; x += blockDim.x) {
        const int p = x / (S * S), i = (x / S) % S, j = x % S, o = p * 2 * S;
        const float *tr = Tm + (o + S + i) * ld + o + S, *mc = A + o * ld + o + S + j;
        float acc0 = 0, acc1 = 0;
#pragma unroll
        for (int m = 0; m < S; m += 2) {
            acc0 += tr[m] * mc[m * ld];
            acc1 += tr[m + 1] * mc[(m + 1) * ld];
        }
        Tm[(o + S + i) * ld + o + j] = -(acc0 + acc1);
    }
    __syncthreads();
}

/* m16n8k8 tf32 product (fp32 operands rounded to tf32 in registers), d (+)= a b */
__device__ __forceinline__ uint32_t to_tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ void mma1688_tf32(float *d, const uint32_t *a, uint32_t b0,
                                             uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
/* One 16 x 8 tile of C = P Q over S terms (row-major fp32, pitches ld), C scaled by sgn. */
template <int S>
__device__ __forceinline__ void tile_tf32(float *Cm, const float *P, const float *Q, int ld,
                                          float sgn) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    float c[4] = {0, 0, 0, 0};
#pragma unroll
    for (int k0 = 0; k0 < S; k0 += 8) {
        const uint32_t af[4] = {to_tf32(P[g * ld + k0 + t]), to_tf32(P[(g + 8) * ld + k0 + t]),
                                to_tf32(P[g * ld + k0 + t + 4]),
                                to_tf32(P[(g + 8) * ld + k0 + t + 4])};
        mma1688_tf32(c, af, to_tf32(Q[(k0 + t) * ld + g]), to_tf32(Q[(k0 + t + 4) * ld + g]));
    }
    Cm[g * ld + 2 * t] = sgn * c[0], Cm[g * ld + 2 * t + 1] = sgn * c[1];
    Cm[(g + 8) * ld + 2 * t] = sgn * c[2], Cm[(g + 8) * ld + 2 * t + 1] = sgn * c[3];
}
/* inverse_doubling on the tensor cores (tf32 operands, fp32 sums): a 16 x 8 output tile a warp */
template <int S> __device__ void inverse_doubling_tc(float *Tm, float *A, int ld, int C) {
    const int warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    constexpr int TPP = (S / 16) * (S / 8); /* tiles a pair */
    const int tiles = C / (2 * S) * TPP;
    for (int x = warp; x < tiles; x += nwarps) { /* X = M L1^{-1} into A's upper-right block */
        const int o = x / TPP * 2 * S, ti = x % TPP / (S / 8), tj = x % (S / 8);
        tile_tf32<S>(A + (o + 16 * ti) * ld + o + S + 8 * tj, A + (o + S + 16 * ti) * ld + o,
                     Tm + o * ld + o + 8 * tj, ld, 1.0f);
    }
    __syncthreads();
    for (int x = warp; x < tiles; x += nwarps) { /* lower-left = -L2^{-1} X */
        const int o = x / TPP * 2 * S, ti = x % TPP / (S / 8), tj = x % (S / 8);
        tile_tf32<S>(Tm + (o + S + 16 * ti) * ld + o + 8 * tj, Tm + (o + S + 16 * ti) * ld + o + S,
                     A + o * ld + o + S + 8 * tj, ld, -1.0f);
    }
    __syncthreads();
}

/* Tm = (I + A)^{-1} for A strictly lower [C][C] (pitch ld, C = 32 or 64), fp32, into Tm (pitch
 * ld). Uses the upper-right blocks of A (zero, never read as part of A) as scratch. The 16 x 16
 * diagonal blocks
 * first, a half-warp each, a lane holding one column of the block's inverse in registers (forward
 * substitution, the row of A read by broadcast); then doubling. */
template <bool TC = false> __device__ void unit_lower_inverse(float *Tm, float *A, int ld, int C) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int x = threadIdx.x; x < C * C; x += blockDim.x) {
        const int i = x / C, j = x % C;
        if (j > i && (i >> 4) != (j >> 4)) Tm[i * ld + j] = 0.0f;
    }
    const int blk = warp * 2 + (lane >> 4), j = lane & 15;
    if (blk < C / 16) {
        const int o = blk * 16;
        float t[16];
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float s = (i == j) ? 1.0f : 0.0f;
#pragma unroll
            for (int m = 0; m < i; m++)
                s -= A[(o + i) * ld + o + m] * t[m];
            t[i] = s; /* zero above the diagonal: t[m] = 0 for m < j */
        }
#pragma unroll
        for (int i = 0; i < 16; i++)
            Tm[(o + i) * ld + o + j] = t[i];
    }
    __syncthreads();
    if constexpr (TC) {
        inverse_doubling_tc<16>(Tm, A, ld, C);
        if (C > 32) inverse_doubling_tc<32>(Tm, A, ld, C);
    } else {
        inverse_doubling<16>(Tm, A, ld, C);
        if (C > 32) inverse_doubling<32>(Tm, A, ld, C);
    }
}

/* Lab instrument (built with -DDN_CUDA_PROF): per-phase clock cycles of block 0's thread 0. */
#ifdef DN_CUDA_PROF
__device__ unsigned long long prof_cycles[16];
#define PROF(i)                                                                                    \
    do {                                                                                           \
        if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) {           \
            const long long now_ = clock64();                                                      \
            prof_cycles[i] += now_ - prof_last;                                                    \
            prof_last = now_;                                                                      \
        }                                                                                          \
    } while (0)
#else
#define PROF(i) (void)0
#endif

template <typename T, int C, int BV>
__global__ void __launch_bounds__(CH_THREADS) la_chunk_kernel(la_args a) {
#ifdef DN_CUDA_PROF
    long long prof_last = clock64();
#endif
    extern __shared__ __align__(128) unsigned char smem[];
    const int K = (int)a.K;
    const ch_layout<T> L(C, K, BV);
    float *S32 = (float *)(smem + L.S32), *QK = (float *)(smem + L.QK),
          *KK = (float *)(smem + L.KK), *X = (float *)(smem + L.X), *Ob = (float *)(smem + L.Ob);
    T *Sb = (T *)(smem + L.Sb), *Qs = (T *)(smem + L.Qs), *Ks = (T *)(smem + L.Ks),
      *Tb = (T *)(smem + L.Tb), *Pb = (T *)(smem + L.Pb), *Rb = (T *)(smem + L.Rb),
      *Ub = (T *)(smem + L.Ub), *Udb = (T *)(smem + L.Udb);
    double *gam = (double *)(smem + L.gam);
    float *eg = (float *)(smem + L.e), *btv = (float *)(smem + L.bt), *dv = (float *)(smem + L.d);
    const int ldk = L.ldk, ldc = L.ldc, ldcb = L.ldcb, ldv = L.ldv, ldvb = L.ldvb;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    const int64_t v0 = (int64_t)blockIdx.x * BV, hv = blockIdx.y, n = blockIdx.z;
    const int64_t h = hv / (a.HV / a.H);
    int64_t b, t0, t1;
    seq_range(a, n, &b, &t0, &t1);
    const int64_t soff = (n * a.HV + hv) * a.K * a.V + v0;
    const T *q = (const T *)a.q, *k = (const T *)a.k, *v = (const T *)a.v;
    T *o = (T *)a.o;

    for (int x = tid; x < K * BV; x += CH_THREADS) {
        const int i = x / BV, j = x % BV;
        const float s = a.h0 ? a.h0[soff + (int64_t)i * a.V + j] : 0.0f;
        S32[i * ldv + j] = s;
        if constexpr (sizeof(T) != 4) Sb[i * ldvb + j] = from_f<T>(s);
    }

    /* The inputs of a chunk arrive in registers one chunk ahead (16-byte loads, all in flight at
     * once, or element loads packed alike for unaligned views), so their latency hides behind the
     * previous chunk's work. Padding rows past the sequence's end are zeros. */
    constexpr int EPV = 16 / (int)sizeof(T);
    constexpr int QK_MAX = C * 256 / EPV / CH_THREADS, V_MAX = (C * 64 / EPV) / CH_THREADS;
    const int kvec = K / EPV, bvec = BV / EPV, nqv = C * kvec, nvv = C * bvec;
    uint4 pq[QK_MAX], pk[QK_MAX], pv[V_MAX];
    float pg = 0.0f, pb = 0.0f;
    auto fetch = [&](int64_t tn) {
        const int Ln = (int)(t1 - tn < C ? t1 - tn : C);
#pragma unroll
        for (int r = 0; r < QK_MAX; r++) {
            const int x = tid + r * CH_THREADS, row = x / kvec, c = (x % kvec) * EPV;
            pq[r] = pk[r] = make_uint4(0, 0, 0, 0);
            if (x < nqv && row < Ln) {
                pq[r] = load16(q + b * a.qb + (tn + row) * a.qt + h * a.qh + c, a.vec);
                pk[r] = load16(k + b * a.kb + (tn + row) * a.kt + h * a.kh + c, a.vec);
            }
        }
#pragma unroll
        for (int r = 0; r < V_MAX; r++) {
            const int x = tid + r * CH_THREADS, row = x / bvec, c = (x % bvec) * EPV;
            pv[r] = make_uint4(0, 0, 0, 0);
            if (x < nvv && row < Ln)
                pv[r] = load16(v + b * a.vb + (tn + row) * a.vt + hv * a.vh + v0 + c, a.vec);
        }
        if (tid < C) {
            const int64_t t = tn + tid;
            pg = (a.gate && tid < Ln) ? a.g[b * a.gb + t * a.gt + hv * a.gh] : 0.0f;
            pb = tid < Ln ? (a.delta ? a.beta[b * a.bb + t * a.bt + hv * a.bh] : 1.0f) : 0.0f;
        }
    };
    if (t0 < t1) fetch(t0);

    for (int64_t tc = t0; tc < t1; tc += C) {
        const int Lc = (int)(t1 - tc < C ? t1 - tc : C);
        /* stage the prefetched chunk (raw v into Ub, raw g into dv), then ask for the next */
#pragma unroll
        for (int r = 0; r < QK_MAX; r++) {
            const int x = tid + r * CH_THREADS, row = x / kvec, c = (x % kvec) * EPV;
            if (x < nqv) {
                *(uint4 *)(Qs + row * ldk + c) = pq[r];
                *(uint4 *)(Ks + row * ldk + c) = pk[r];
            }
        }
#pragma unroll
        for (int r = 0; r < V_MAX; r++) {
            const int x = tid + r * CH_THREADS, row = x / bvec, c = (x % bvec) * EPV;
            if (x < nvv) *(uint4 *)(Ub + row * ldvb + c) = pv[r];
        }
        if (tid < C) {
            dv[tid] = fmaxf(pg, LOG_DECAY_MIN);
            btv[tid] = pb;
        }
        if (tc + C < t1) fetch(tc + C);
        __syncthreads();
        PROF(0);
        /* q scaled (and normalised), k normalised, in place: P threads a row, 16-byte pieces */
        {
            constexpr int P = CH_THREADS / C;
            const int r = tid / P, part = tid % P;
            float sq = 0, sk = 0;
            for (int c = part; c < kvec; c += P) {
                union {
                    uint4 u;
                    T e[EPV];
                } xq, xk;
                xq.u = *(const uint4 *)(Qs + r * ldk + c * EPV);
                xk.u = *(const uint4 *)(Ks + r * ldk + c * EPV);
#pragma unroll
                for (int e = 0; e < EPV; e++) {
                    const float x = to_f(xq.e[e]), y = to_f(xk.e[e]);
                    sq += x * x;
                    sk += y * y;
                }
            }
            float rq = a.scale, rk = 1.0f;
            if (a.l2norm) {
#pragma unroll
                for (int off = 1; off < P; off <<= 1) {
                    sq += __shfl_xor_sync(0xffffffffu, sq, off);
                    sk += __shfl_xor_sync(0xffffffffu, sk, off);
                }
                rq *= rsqrtf(sq + 1e-6f);
                rk = rsqrtf(sk + 1e-6f);
            }
            for (int c = part; c < kvec; c += P) {
                union {
                    uint4 u;
                    T e[EPV];
                } xq, xk;
                xq.u = *(const uint4 *)(Qs + r * ldk + c * EPV);
                xk.u = *(const uint4 *)(Ks + r * ldk + c * EPV);
#pragma unroll
                for (int e = 0; e < EPV; e++) {
                    xq.e[e] = from_f<T>(to_f(xq.e[e]) * rq);
                    xk.e[e] = from_f<T>(to_f(xk.e[e]) * rk);
                }
                *(uint4 *)(Qs + r * ldk + c * EPV) = xq.u;
                if (a.l2norm) *(uint4 *)(Ks + r * ldk + c * EPV) = xk.u;
            }
        }
        /* cumulative log decay in double (warp 0); padding rows have g = 0 */
        if (warp == 0) {
            constexpr int E = C / 32;
            double loc[E], run = 0;
#pragma unroll
            for (int x = 0; x < E; x++) {
                run += (double)dv[lane * E + x];
                loc[x] = run;
            }
            double incl = run; /* inclusive scan of the lanes' sums */
            for (int off = 1; off < 32; off <<= 1) {
                const double y = __shfl_up_sync(0xffffffffu, incl, off);
                if (lane >= off) incl += y;
            }
            const double excl = incl - run;
#pragma unroll
            for (int x = 0; x < E; x++)
                gam[lane * E + x] = excl + loc[x];
        }
        __syncthreads();
        PROF(1);
        if (tid < C) {
            const double gl = gam[Lc - 1];
            eg[tid] = (float)exp(gam[tid]);
            dv[tid] = (float)exp(gl - gam[tid]);
        }
        /* QK = Q K^T, Y = Q S0; delta: KK = K K^T, X = K S0 */
        prod<T, false, true>(QK, ldc, Qs, ldk, Ks, ldk, C, C, K, false);
        prod<T, false, false>(Ob, ldv, Qs, ldk, Sb, ldvb, C, BV, K, false);
        if (a.delta) {
            prod<T, false, true>(KK, ldc, Ks, ldk, Ks, ldk, C, C, K, false);
            prod<T, false, false>(X, ldv, Ks, ldk, Sb, ldvb, C, BV, K, false);
        }
        __syncthreads();
        PROF(2);
        /* masks and gates */
#pragma unroll 4
        for (int x = tid; x < C * C; x += CH_THREADS) {
            const int i = x / C, j = x % C;
            const float gm = (a.gate && j <= i) ? expf((float)(gam[i] - gam[j])) : 1.0f;
            Pb[i * ldcb + j] = from_f<T>(j <= i ? QK[i * ldc + j] * gm : 0.0f);
            if (a.delta) KK[i * ldc + j] = j < i ? btv[i] * gm * KK[i * ldc + j] : 0.0f;
        }
#pragma unroll 4
        for (int x = tid; x < C * BV; x += CH_THREADS) {
            const int i = x / BV, j = x % BV;
            const float vv = to_f(Ub[i * ldvb + j]); /* raw v, staged */
            Ob[i * ldv + j] *= eg[i];
            if (a.delta)
                Rb[i * ldvb + j] = from_f<T>(btv[i] * (vv - eg[i] * X[i * ldv + j]));
            else
                Udb[i * ldvb + j] = from_f<T>(vv * dv[i]);
        }
        __syncthreads();
        PROF(3);
        if (a.delta) {
            /* Tm into the QK buffer (free now), then U = Tm R */
            unit_lower_inverse(QK, KK, ldc, C);
            if constexpr (sizeof(T) != 4) {
                for (int x = tid; x < C * C; x += CH_THREADS) {
                    const int i = x / C, j = x % C;
                    Tb[i * ldcb + j] = from_f<T>(QK[i * ldc + j]);
                }
                __syncthreads();
                PROF(4);
            }
            prod<T, false, false>(X, ldv, Tb, ldcb, Rb, ldvb, C, BV, C, false);
            __syncthreads();
            PROF(5);
            for (int x = tid; x < C * BV; x += CH_THREADS) {
                const int i = x / BV, j = x % BV;
                Ub[i * ldvb + j] = from_f<T>(X[i * ldv + j]);
                Udb[i * ldvb + j] = from_f<T>(X[i * ldv + j] * dv[i]);
            }
        }
        /* S0 scaled by e^{gamma_C} before the update accumulates onto it */
        if (a.gate) {
            const float eL = eg[Lc - 1];
            for (int x = tid; x < K * BV; x += CH_THREADS) {
                const int i = x / BV, j = x % BV;
                S32[i * ldv + j] *= eL;
            }
        }
        __syncthreads();
        PROF(6);
        /* O += P U;  S += K^T diag(d) U */
        prod<T, false, false>(Ob, ldv, Pb, ldcb, Ub, ldvb, C, BV, C, true);
        prod<T, true, false>(S32, ldv, Ks, ldk, Udb, ldvb, K, BV, C, true);
        __syncthreads();
        PROF(7);
        for (int x = tid; x < Lc * BV; x += CH_THREADS) {
            const int i = x / BV, j = x % BV;
            o[b * a.ob + (tc + i) * a.ot + hv * a.oh + v0 + j] = from_f<T>(Ob[i * ldv + j]);
        }
        if constexpr (sizeof(T) != 4)
            for (int x = tid; x < K * BV; x += CH_THREADS) {
                const int i = x / BV, j = x % BV;
                Sb[i * ldvb + j] = from_f<T>(S32[i * ldv + j]);
            }
        __syncthreads();
        PROF(8);
    }
    if (a.ht)
        for (int x = tid; x < K * BV; x += CH_THREADS) {
            const int i = x / BV, j = x % BV;
            a.ht[soff + (int64_t)i * a.V + j] = S32[i * ldv + j];
        }
}

/* ---------------------------------------------------------------------------------------------
 * Split chunkwise forward (16-bit inputs), the organisation of flash-linear-attention and
 * FlashInfer: only the state recurrence is serial, and it does two products a chunk. Chunks of
 * C = 64 tokens; every product on the tensor cores by mma.sync (m16n8k16, fp32 accumulators).
 *   la_split_prep_kernel   one block per (chunk, value head), all chunks at once: the chunk's
 *                          cumulative gates, A, Tm = (I + A)^{-1} (16 x 16 diagonal blocks by
 *                          substitution, doubling steps in tf32), and into the workspace
 *                          W = Tm diag(b e^gamma) K [C,K], U^T = (Tm diag(b) V)^T [V,C],
 *                          Kd^T = (diag(e^{gamma_C - gamma}) K)^T [K,C], dec = e^{gamma_C};
 *   la_split_state_kernel  one warp per (sequence, value head, 16 state columns), NW warps a
 *                          block sharing the chunk's staged W and Kd: walks the chunks with the
 *                          state transposed (S^T, [16, K] a warp) in mma accumulators and writes
 *                          the state entering each chunk (hs, S^T [V,K] in the dtype) and the
 *                          corrected values v_new^T = U^T - S^T W^T in place of U^T;
 *                          S^T = dec S^T + v_new^T Kd. The accumulators of one product are the
 *                          A operand of the next (the m16n8k16 accumulator and A layouts agree),
 *                          so a chunk's step never leaves registers but for W, Kd and U^T,
 *                          which arrive by cp.async one chunk ahead;
 *   la_split_out_kernel    one block per (chunk, value head, 128 columns), all chunks at once:
 *                          O = diag(e^gamma) Qs S + tril(Qs K^T * Gam) v_new.
 * Non-delta ops take the same path with W = 0 and U = V. The workspace (split_ws, allocated by
 * the call on its stream and freed after the three kernels) holds W, Kd^T, U^T/v_new^T and hs in
 * the dtype, in the fragment-native layout below, per (chunk, value head) unit:
 * (2 C K + C V + K V) elements, 80 KB at K = V = 128 in bf16 (670 MB for 32768 tokens of 16
 * heads).
 * ------------------------------------------------------------------------------------------- */
constexpr int SC = 64;   /* tokens a chunk */
constexpr int SBO = 128; /* value columns an output block */

struct split_ws {
    void *W, *Kd, *UT, *hs; /* per unit u = chunk * HV + hv: [C,K], [C,K], [V,C], [V,K] */
    float *dec;             /* [units] e^{gamma_C} */
    const int64_t *cb;      /* varlen: [NS+1] first chunk of each sequence, else NULL */
    const int *cmap;        /* varlen: [chunks] the sequence of each chunk, else NULL */
    int64_t nt;             /* chunks a sequence without cu_seqlens */
};

/* The chunk's sequence, first token and length, from its global index. */
__device__ __forceinline__ void split_chunk(const la_args &a, const split_ws &w, int64_t ci,
                                            int64_t *n, int64_t *b, int64_t *tc, int *Lc) {
    chunk_at(a, w.cb, w.cmap, w.nt, SC, ci, n, b, tc, Lc);
}

/* rows [0, C) x cols [0, cols) of a [.., cols] token-major input into shared memory (pitch ld),
 * rows past L zero: 16-byte cp.async pieces, all in flight at once (the caller commits and waits),
 * or element loads for unaligned views. The thread's (row, piece) advances by the block size
 * without a division a piece. */
template <typename T>
__device__ void stage_rows(T *dst, int ld, const T *src, int64_t rs, int L, int cols, bool vec) {
    static_assert(sizeof(T) == 2, "16-bit inputs");
    const int pv = cols / 8, rstep = blockDim.x / pv, cstep = blockDim.x % pv;
    int r = threadIdx.x / pv, c = threadIdx.x % pv;
    while (r < SC) {
        T *d = dst + r * ld + c * 8;
        if (r >= L)
            *(uint4 *)d = make_uint4(0, 0, 0, 0);
        else if (vec)
            cp_async16(d, src + r * rs + c * 8);
        else
            *(uint4 *)d = load16(src + r * rs + c * 8, false);
        r += rstep, c += cstep;
        if (c >= pv) c -= pv, r++;
    }
}

/* gam = cumulative sum of the chunk's gates in double, each clamped at LOG_DECAY_MIN (warp 0; gr
 * padded with 0). */
__device__ __forceinline__ void chunk_cumsum(double *gam, const float *gr) {
    const int lane = threadIdx.x & 31;
    if (threadIdx.x >= 32) return;
    constexpr int E = SC / 32;
    double loc[E], run = 0;
#pragma unroll
    for (int x = 0; x < E; x++) {
        run += (double)fmaxf(gr[lane * E + x], LOG_DECAY_MIN);
        loc[x] = run;
    }
    double incl = run;
    for (int off = 1; off < 32; off <<= 1) {
        const double y = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += y;
    }
    const double excl = incl - run;
#pragma unroll
    for (int x = 0; x < E; x++)
        gam[lane * E + x] = excl + loc[x];
}

/* FN of X^T [cols, C] from X [C tokens, cols] in shared memory (pitch ld), row i scaled by rs[i]
 * (when rs): tile (column block cb, token block i) at (cb C/16 + i) 256. */
template <typename T>
__device__ void fn_transposed(T *dst, const T *X, int ld, int cols, const float *rs) {
    const int items = cols / 16 * (SC / 16) * 32;
    for (int x = threadIdx.x; x < items; x += blockDim.x) {
        const int tile = x >> 5, l = x & 31, cb = tile / (SC / 16), i = tile % (SC / 16);
        const int c = 16 * cb + (l >> 2), r = 16 * i + 2 * (l & 3);
        float y[8];
        const int rr[8] = {r, r + 1, r, r + 1, r + 8, r + 9, r + 8, r + 9};
        const int cc[8] = {c, c, c + 8, c + 8, c, c, c + 8, c + 8};
#pragma unroll
        for (int e = 0; e < 8; e++)
            y[e] = to_f(X[rr[e] * ld + cc[e]]) * (rs ? rs[rr[e]] : 1.0f);
        uint4 o;
        o.x = pack2<T>(y[0], y[1]), o.y = pack2<T>(y[2], y[3]);
        o.z = pack2<T>(y[4], y[5]), o.w = pack2<T>(y[6], y[7]);
        *(uint4 *)(dst + tile * 256 + l * 8) = o;
    }
}
/* n contiguous elements (a multiple of 8) by cp.async */
template <typename T> __device__ __forceinline__ void copy_flat_async(T *dst, const T *src, int n) {
    for (int p = threadIdx.x; p < n / 8; p += blockDim.x)
        cp_async16(dst + p * 8, src + p * 8);
}

/* sum of squares of row r of X (pitch ld, K columns), by one thread */
template <typename T> __device__ float row_ss(const T *X, int ld, int K, int r) {
    union {
        uint4 u;
        T e[8];
    } x;
    float ss = 0;
    for (int c = 0; c < K; c += 8) {
        x.u = *(const uint4 *)(X + r * ld + c);
#pragma unroll
        for (int e = 0; e < 8; e++)
            ss += to_f(x.e[e]) * to_f(x.e[e]);
    }
    return ss;
}

/* warps of the prep and output kernels: warp w takes the chunk's rows 16 (w % 4) .. + 15 and
 * half (w / 4) of the columns of the products it shares with warp w ^ 4 */
constexpr int SW = 8;

template <typename T> struct prep_layout {
    int ldk, ldv, ldc, ldcb;
    size_t Ks, Vs, A, Tm, Tw, Tu, gam, eg, dv, bt, gr, rk, total;
    __host__ __device__ prep_layout(int K, int V) {
        ldk = K + 8, ldv = V + 8, ldc = SC + 4, ldcb = SC + 8;
        size_t off = 0;
        auto take = [&](size_t bytes) {
            size_t at = off;
            off += (bytes + 127) / 128 * 128;
            return at;
        };
        Ks = take(sizeof(T) * SC * ldk);
        Vs = take(sizeof(T) * SC * ldv);
        A = take(sizeof(float) * SC * ldc);
        Tm = take(sizeof(float) * SC * ldc);
        Tw = take(sizeof(T) * SC * ldcb);
        Tu = take(sizeof(T) * SC * ldcb);
        gam = take(sizeof(double) * SC);
        eg = take(sizeof(float) * SC);
        dv = take(sizeof(float) * SC);
        bt = take(sizeof(float) * SC);
        gr = take(sizeof(float) * SC);
        rk = take(sizeof(float) * SC);
        total = off;
    }
};

/* Keys stay raw in shared memory: their norms (rk) scale the products instead, in fp32. Warp w
 * owns rows 16 w .. 16 w + 15 of each [C, .] product, and of U^T's value rows w, w + 4, ... */
template <typename T>
__global__ void __launch_bounds__(32 * SW) la_split_prep_kernel(la_args a, split_ws w) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int K = (int)a.K, V = (int)a.V, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const prep_layout<T> L(K, V);
    T *Ks = (T *)(smem + L.Ks), *Vs = (T *)(smem + L.Vs), *Tw = (T *)(smem + L.Tw),
      *Tu = (T *)(smem + L.Tu);
    float *Am = (float *)(smem + L.A), *Tm = (float *)(smem + L.Tm);
    double *gam = (double *)(smem + L.gam);
    float *eg = (float *)(smem + L.eg), *dv = (float *)(smem + L.dv), *btv = (float *)(smem + L.bt),
          *gr = (float *)(smem + L.gr), *rk = (float *)(smem + L.rk);
    const int ldk = L.ldk, ldv = L.ldv, ldc = L.ldc, ldcb = L.ldcb;

    const int64_t ci = blockIdx.x, hv = blockIdx.y, h = hv / (a.HV / a.H);
    const int64_t u = ci * a.HV + hv;
    int64_t n, b, tc;
    int Lc;
    split_chunk(a, w, ci, &n, &b, &tc, &Lc);
    const T *k = (const T *)a.k, *v = (const T *)a.v;
    stage_rows(Ks, ldk, k + b * a.kb + tc * a.kt + h * a.kh, a.kt, Lc, K, a.vec);
    stage_rows(Vs, ldv, v + b * a.vb + tc * a.vt + hv * a.vh, a.vt, Lc, V, a.vec);
    cp_async_commit();
    if (tid < SC) {
        const int64_t tt = tc + tid;
        const bool in = tid < Lc;
        gr[tid] =
            (a.gate && in) ? fmaxf(a.g[b * a.gb + tt * a.gt + hv * a.gh], LOG_DECAY_MIN) : 0.0f;
        btv[tid] = in ? (a.delta ? a.beta[b * a.bb + tt * a.bt + hv * a.bh] : 1.0f) : 0.0f;
    }
    cp_async_wait<0>();
    __syncthreads();
    if (tid >= 64 && tid < 128)
        rk[tid - 64] = a.l2norm ? rsqrtf(row_ss(Ks, ldk, K, tid - 64) + 1e-6f) : 1.0f;
    chunk_cumsum(gam, gr);
    __syncthreads();
    if (tid < SC) {
        const double gl = gam[Lc - 1];
        eg[tid] = (float)exp(gam[tid]);
        dv[tid] = (float)exp(gl - gam[tid]) * rk[tid];
        if (tid == 0) w.dec[u] = (float)exp(gl);
    }
    const int rw = warp & 3, hw = warp >> 2, r0 = rw * 16, i0 = r0 + g, i1 = i0 + 8;
    if (a.delta) { /* A = strict_tril(diag(b) Gam * K K^T), the keys normalised */
        float c[SC / 8][4] = {};
        for (int kk = 0; kk < K / 16; kk++) {
            uint32_t af[4];
            frag_a(af, Ks + r0 * ldk + 16 * kk, ldk);
#pragma unroll
            for (int jp = 0; jp < SC / 16; jp++)
                if (jp <= rw && (jp >> 1) == hw) {
                    uint32_t bf[4];
                    frag_b_nk(bf, Ks + 16 * jp * ldk + 16 * kk, ldk);
                    mma16816<T>(c[2 * jp], af, bf[0], bf[1]);
                    mma16816<T>(c[2 * jp + 1], af, bf[2], bf[3]);
                }
        }
        const float s0 = btv[i0] * rk[i0], s1 = btv[i1] * rk[i1];
#pragma unroll
        for (int jt = 0; jt < SC / 8; jt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                if ((jt >> 2) != hw) continue;
                const int j = 8 * jt + 2 * t + e;
                const float gm0 = a.gate && j < i0 ? expf((float)(gam[i0] - gam[j])) : 1.0f;
                const float gm1 = a.gate && j < i1 ? expf((float)(gam[i1] - gam[j])) : 1.0f;
                Am[i0 * ldc + j] = j < i0 ? s0 * rk[j] * gm0 * c[jt][e] : 0.0f;
                Am[i1 * ldc + j] = j < i1 ? s1 * rk[j] * gm1 * c[jt][2 + e] : 0.0f;
            }
    }
    __syncthreads();
    /* Kd^T (the state update's keys, FN): rows e^{gamma_C - gamma_i} k_i / |k_i| */
    fn_transposed((T *)w.Kd + u * SC * K, Ks, ldk, K, dv);
    T *UT = (T *)w.UT + u * V * SC;
    if (!a.delta) { /* U = V */
        fn_transposed(UT, Vs, ldv, V, (const float *)nullptr);
        return;
    }
    unit_lower_inverse<true>(Tm, Am, ldc, SC); /* tf32 doubling: Tu, Tw are rounded to 16 bits */
    for (int x = tid; x < SC * SC; x += blockDim.x) {
        const int i = x / SC, j = x % SC;
        const float tb = Tm[i * ldc + j] * btv[j];
        Tu[i * ldcb + j] = from_f<T>(tb);
        Tw[i * ldcb + j] = from_f<T>(tb * eg[j] * rk[j]);
    }
    __syncthreads();
    /* W = Tw K (Tw lower triangular: token blocks past the warp's are zero) */
    T *Wg = (T *)w.W + u * SC * K;
    for (int kb = hw * 64; kb < K; kb += 128) {
        float c[8][4] = {};
#pragma unroll
        for (int kk = 0; kk < SC / 16; kk++)
            if (kk <= rw) {
                uint32_t af[4];
                frag_a(af, Tw + r0 * ldcb + 16 * kk, ldcb);
#pragma unroll
                for (int jp = 0; jp < 4; jp++)
                    if (kb + 16 * jp < K) {
                        uint32_t bf[4];
                        frag_b_kn(bf, Ks + 16 * kk * ldk + kb + 16 * jp, ldk);
                        mma16816<T>(c[2 * jp], af, bf[0], bf[1]);
                        mma16816<T>(c[2 * jp + 1], af, bf[2], bf[3]);
                    }
            }
#pragma unroll
        for (int jp = 0; jp < 4; jp++) /* tile (token block warp, key block) */
            if (kb + 16 * jp < K)
                st_frag(Wg + ((kb / 16 + jp) * (SC / 16) + rw) * 256, c[2 * jp], c[2 * jp + 1]);
    }
    /* U^T = V^T Tu^T, 16 value rows at a time (Tu^T upper triangular) */
    for (int mt = warp; mt < V / 16; mt += SW) {
        float c[SC / 8][4] = {};
#pragma unroll
        for (int kk = 0; kk < SC / 16; kk++) {
            uint32_t af[4];
            frag_at(af, Vs + 16 * kk * ldv + 16 * mt, ldv);
#pragma unroll
            for (int jp = 0; jp < SC / 16; jp++)
                if (jp >= kk) {
                    uint32_t bf[4];
                    frag_b_nk(bf, Tu + 16 * jp * ldcb + 16 * kk, ldcb);
                    mma16816<T>(c[2 * jp], af, bf[0], bf[1]);
                    mma16816<T>(c[2 * jp + 1], af, bf[2], bf[3]);
                }
        }
#pragma unroll
        for (int kk = 0; kk < SC / 16; kk++) /* tile (value block mt, token block kk) */
            st_frag(UT + (mt * (SC / 16) + kk) * 256, c[2 * kk], c[2 * kk + 1]);
    }
}

template <typename T> size_t state_smem(int K, int NW) {
    return 2 * sizeof(T) * ((size_t)2 * SC * K + (size_t)16 * NW * SC);
}

/* Thread (lane) of a warp holds accumulator rows g = lane / 4 and g + 8 (state columns) and,
 * per 8-wide tile j, columns 8 j + 2 t, + 1 (t = lane % 4): keys in s, tokens in vt. W, Kd^T,
 * U^T and hs are FN in the workspace and in shared memory, so every fragment is one 16-byte
 * access at a fixed offset. */
template <typename T, int KMAX, int NW>
__global__ void __launch_bounds__(32 * NW) la_split_state_kernel(la_args a, split_ws w) {
    extern __shared__ __align__(128) unsigned char smem[];
    constexpr int NKT = KMAX / 16, BV = 16 * NW, CT = SC / 16;
    const int K = (int)a.K, V = (int)a.V, kt = K / 16;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int64_t v0 = (int64_t)blockIdx.x * BV, hv = blockIdx.y, n = blockIdx.z;
    int64_t b, t0, t1;
    seq_range(a, n, &b, &t0, &t1);
    const int64_t nch = (t1 - t0 + SC - 1) / SC, cb = w.cmap ? w.cb[n] : n * w.nt;
    const int64_t vr = v0 + warp * 16 + g; /* this thread's state columns vr, vr + 8 */
    const int64_t vb = v0 / 16 + warp;     /* and the warp's block of 16 */
    const size_t stage = (size_t)2 * SC * K + (size_t)BV * SC;
    T *sm = (T *)smem;

    float s[2 * NKT][4];
    const int64_t soff = (n * a.HV + hv) * a.K * a.V;
#pragma unroll
    for (int j = 0; j < 2 * NKT; j++) {
        const int key = 8 * j + 2 * t;
        const bool in = a.h0 && j < 2 * kt;
        const float *h0 = a.h0 + soff;
        s[j][0] = in ? h0[(int64_t)key * V + vr] : 0.0f;
        s[j][1] = in ? h0[(int64_t)(key + 1) * V + vr] : 0.0f;
        s[j][2] = in ? h0[(int64_t)key * V + vr + 8] : 0.0f;
        s[j][3] = in ? h0[(int64_t)(key + 1) * V + vr + 8] : 0.0f;
    }

    auto issue = [&](int64_t c) {
        const int64_t u = (cb + c) * a.HV + hv;
        T *Ws = sm + (c & 1) * stage, *Kds = Ws + SC * K, *Us = Kds + SC * K;
        if (a.delta) copy_flat_async(Ws, (const T *)w.W + u * SC * K, SC * K);
        copy_flat_async(Kds, (const T *)w.Kd + u * SC * K, SC * K);
        copy_flat_async(Us, (const T *)w.UT + u * a.V * SC + v0 * SC, BV * SC);
    };
    if (nch > 0) issue(0);
    cp_async_commit();
    for (int64_t c = 0; c < nch; c++) {
        if (c + 1 < nch) issue(c + 1);
        cp_async_commit();
        const int64_t u = (cb + c) * a.HV + hv;
        const float dec = w.dec[u];
        /* the state entering the chunk, for the output kernel: hs[u] is S^T [V,K], FN */
        T *hs = (T *)w.hs + u * a.V * a.K + vb * K * 16;
#pragma unroll
        for (int kb = 0; kb < NKT; kb++)
            if (kb < kt) st_frag(hs + kb * 256, s[2 * kb], s[2 * kb + 1]);
        cp_async_wait<1>();
        __syncthreads();
        const T *Ws = sm + (c & 1) * stage, *Kds = Ws + SC * K, *Us = Kds + SC * K + warp * 16 * SC;
        /* v_new^T = U^T - S^T W^T */
        float vt[2 * CT][4];
#pragma unroll
        for (int kk = 0; kk < CT; kk++) {
            uint32_t r[4];
            ld_frag(r, Us + kk * 256);
            const float2 x0 = unpack2<T>(r[0]), x1 = unpack2<T>(r[1]), x2 = unpack2<T>(r[2]),
                         x3 = unpack2<T>(r[3]);
            vt[2 * kk][0] = x0.x, vt[2 * kk][1] = x0.y, vt[2 * kk][2] = x1.x, vt[2 * kk][3] = x1.y;
            vt[2 * kk + 1][0] = x2.x, vt[2 * kk + 1][1] = x2.y;
            vt[2 * kk + 1][2] = x3.x, vt[2 * kk + 1][3] = x3.y;
        }
        if (a.delta) {
#pragma unroll
            for (int kk = 0; kk < NKT; kk++) /* key blocks */
                if (kk < kt) {
                    uint32_t af[4] = {pack2<T>(-s[2 * kk][0], -s[2 * kk][1]),
                                      pack2<T>(-s[2 * kk][2], -s[2 * kk][3]),
                                      pack2<T>(-s[2 * kk + 1][0], -s[2 * kk + 1][1]),
                                      pack2<T>(-s[2 * kk + 1][2], -s[2 * kk + 1][3])};
#pragma unroll
                    for (int jp = 0; jp < CT; jp++) { /* token blocks: W tile (jp, kk) */
                        uint32_t bf[4];
                        ld_frag(bf, Ws + (kk * CT + jp) * 256);
                        mma16816<T>(vt[2 * jp], af, bf[0], bf[2]);
                        mma16816<T>(vt[2 * jp + 1], af, bf[1], bf[3]);
                    }
                }
            T *ug = (T *)w.UT + u * a.V * SC + vb * 16 * SC;
#pragma unroll
            for (int kk = 0; kk < CT; kk++)
                st_frag(ug + kk * 256, vt[2 * kk], vt[2 * kk + 1]);
        }
        /* S^T = dec S^T + v_new^T Kd */
#pragma unroll
        for (int j = 0; j < 2 * NKT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                s[j][e] *= dec;
#pragma unroll
        for (int kk = 0; kk < CT; kk++) { /* token blocks */
            uint32_t af[4];
            acc_to_a<T>(af, vt[2 * kk], vt[2 * kk + 1]);
#pragma unroll
            for (int jp = 0; jp < NKT; jp++) /* key blocks: Kd^T tile (jp, kk) */
                if (jp < kt) {
                    uint32_t bf[4];
                    ld_frag(bf, Kds + (jp * CT + kk) * 256);
                    mma16816<T>(s[2 * jp], af, bf[0], bf[2]);
                    mma16816<T>(s[2 * jp + 1], af, bf[1], bf[3]);
                }
        }
        __syncthreads(); /* this stage is refilled by the next chunk's issue */
    }
    cp_async_wait<0>();
    if (a.ht) {
        float *ht = a.ht + soff;
#pragma unroll
        for (int j = 0; j < 2 * NKT; j++)
            if (j < 2 * kt) {
                const int key = 8 * j + 2 * t;
                ht[(int64_t)key * V + vr] = s[j][0];
                ht[(int64_t)(key + 1) * V + vr] = s[j][1];
                ht[(int64_t)key * V + vr + 8] = s[j][2];
                ht[(int64_t)(key + 1) * V + vr + 8] = s[j][3];
            }
    }
}

template <typename T> struct out_layout {
    int ldq, ldk;
    size_t Qs, Ks, St, Vn, gam, rq, rk, gr, total;
    __host__ __device__ out_layout(int K) {
        /* Qs rows are reused by their warp to stage its output rows: pitch for either */
        ldq = (K > SBO ? K : SBO) + 8, ldk = K + 8;
        size_t off = 0;
        auto take = [&](size_t bytes) {
            size_t at = off;
            off += (bytes + 127) / 128 * 128;
            return at;
        };
        Qs = take(sizeof(T) * SC * ldq);
        Ks = take(sizeof(T) * SC * ldk);
        St = take(sizeof(T) * SBO * K);
        Vn = take(sizeof(T) * SBO * SC);
        gam = take(sizeof(double) * SC);
        rq = take(sizeof(float) * SC);
        rk = take(sizeof(float) * SC);
        gr = take(sizeof(float) * SC);
        total = off;
    }
};

/* Warp w computes output rows 16 w .. 16 w + 15 of the block's columns: Q S and Q K^T share the
 * A fragments of Q; the masked, gated scores go from accumulators to A fragments for P v_new.
 * q and k stay raw: 1/|k_j| scales score columns, scale/|q_i| the output rows, in fp32. */
template <typename T>
__global__ void __launch_bounds__(32 * SW) la_split_out_kernel(la_args a, split_ws w) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int K = (int)a.K, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const out_layout<T> L(K);
    T *Qs = (T *)(smem + L.Qs), *Ks = (T *)(smem + L.Ks), *St = (T *)(smem + L.St),
      *Vn = (T *)(smem + L.Vn);
    double *gam = (double *)(smem + L.gam);
    float *rq = (float *)(smem + L.rq), *rk = (float *)(smem + L.rk), *gr = (float *)(smem + L.gr);
    const int ldq = L.ldq, ldk = L.ldk, kt = K / 16;

    const int64_t ci = blockIdx.x, hv = blockIdx.y, h = hv / (a.HV / a.H);
    const int64_t u = ci * a.HV + hv, v0 = (int64_t)blockIdx.z * SBO;
    const int nv = (int)(a.V - v0 < SBO ? a.V - v0 : SBO);
    int64_t n, b, tc;
    int Lc;
    split_chunk(a, w, ci, &n, &b, &tc, &Lc);
    const T *q = (const T *)a.q, *k = (const T *)a.k;
    stage_rows(Qs, ldq, q + b * a.qb + tc * a.qt + h * a.qh, a.qt, Lc, K, a.vec);
    stage_rows(Ks, ldk, k + b * a.kb + tc * a.kt + h * a.kh, a.kt, Lc, K, a.vec);
    copy_flat_async(St, (const T *)w.hs + u * a.V * a.K + v0 * K, nv * K);
    copy_flat_async(Vn, (const T *)w.UT + u * a.V * SC + v0 * SC, nv * SC);
    cp_async_commit();
    if (tid < SC)
        gr[tid] = (a.gate && tid < Lc)
                      ? fmaxf(a.g[b * a.gb + (tc + tid) * a.gt + hv * a.gh], LOG_DECAY_MIN)
                      : 0.0f;
    cp_async_wait<0>();
    __syncthreads();
    if (tid < SC)
        rq[tid] = a.l2norm ? a.scale * rsqrtf(row_ss(Qs, ldq, K, tid) + 1e-6f) : a.scale;
    else if (tid < 2 * SC)
        rk[tid - SC] = a.l2norm ? rsqrtf(row_ss(Ks, ldk, K, tid - SC) + 1e-6f) : 1.0f;
    chunk_cumsum(gam, gr);
    __syncthreads();

    const int rw = warp & 3, hw = warp >> 2, r0 = rw * 16, i0 = r0 + g, i1 = i0 + 8;
    constexpr int HB = SBO / 32; /* value blocks of 16 a warp */
    const int vb0 = hw * HB;     /* its first */
    float c[SC / 8][4] = {}, o[2 * HB][4] = {};
    for (int kk = 0; kk < kt; kk++) {
        uint32_t af[4];
        frag_a(af, Qs + r0 * ldq + 16 * kk, ldq);
#pragma unroll
        for (int jp = 0; jp < SC / 16; jp++)
            if (jp <= rw) {
                uint32_t bf[4];
                frag_b_nk(bf, Ks + 16 * jp * ldk + 16 * kk, ldk);
                mma16816<T>(c[2 * jp], af, bf[0], bf[1]);
                mma16816<T>(c[2 * jp + 1], af, bf[2], bf[3]);
            }
#pragma unroll
        for (int jl = 0; jl < HB; jl++) /* value blocks: hs tile (vb0 + jl, kk) */
            if (16 * (vb0 + jl) < nv) {
                uint32_t bf[4];
                ld_frag(bf, St + ((vb0 + jl) * kt + kk) * 256);
                mma16816<T>(o[2 * jl], af, bf[0], bf[2]);
                mma16816<T>(o[2 * jl + 1], af, bf[1], bf[3]);
            }
    }
    const double g0 = gam[i0], g1 = gam[i1];
    const float e0 = (float)exp(g0), e1 = (float)exp(g1);
#pragma unroll
    for (int j = 0; j < 2 * HB; j++)
        o[j][0] *= e0, o[j][1] *= e0, o[j][2] *= e1, o[j][3] *= e1;
#pragma unroll
    for (int jt = 0; jt < SC / 8; jt++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int j = 8 * jt + 2 * t + e;
            const float gm0 = a.gate && j <= i0 ? expf((float)(g0 - gam[j])) : 1.0f;
            const float gm1 = a.gate && j <= i1 ? expf((float)(g1 - gam[j])) : 1.0f;
            c[jt][e] = j <= i0 ? c[jt][e] * rk[j] * gm0 : 0.0f;
            c[jt][2 + e] = j <= i1 ? c[jt][2 + e] * rk[j] * gm1 : 0.0f;
        }
#pragma unroll
    for (int kk = 0; kk < SC / 16; kk++)
        if (kk <= rw) {
            uint32_t af[4];
            acc_to_a<T>(af, c[2 * kk], c[2 * kk + 1]);
#pragma unroll
            for (int jl = 0; jl < HB; jl++) /* value blocks: v_new^T tile (vb0 + jl, kk) */
                if (16 * (vb0 + jl) < nv) {
                    uint32_t bf[4];
                    ld_frag(bf, Vn + ((vb0 + jl) * (SC / 16) + kk) * 256);
                    mma16816<T>(o[2 * jl], af, bf[0], bf[2]);
                    mma16816<T>(o[2 * jl + 1], af, bf[1], bf[3]);
                }
        }
    /* the rows through Qs (free once every warp is past its products), then 16-byte stores
     * along the rows */
    const float q0 = rq[i0], q1 = rq[i1];
    __syncthreads();
#pragma unroll
    for (int j = 0; j < 2 * HB; j++) {
        const int col = 8 * (2 * vb0 + j) + 2 * t;
        if (col < nv) {
            *(uint32_t *)(Qs + i0 * ldq + col) = pack2<T>(o[j][0] * q0, o[j][1] * q0);
            *(uint32_t *)(Qs + i1 * ldq + col) = pack2<T>(o[j][2] * q1, o[j][3] * q1);
        }
    }
    __syncthreads();
    T *ob = (T *)a.o + b * a.ob + tc * a.ot + hv * a.oh + v0;
    const int pv = nv / 8;
    for (int x = tid; x < Lc * pv; x += blockDim.x) {
        const int r = x / pv, cc = (x % pv) * 8;
        if (a.ovec)
            *(uint4 *)(ob + r * a.ot + cc) = *(const uint4 *)(Qs + r * ldq + cc);
        else
            for (int e = 0; e < 8; e++)
                ob[r * a.ot + cc + e] = Qs[r * ldq + cc + e];
    }
}

/* ---------------------------------------------------------------------------------------------
 * Fused chunkwise forward (16-bit inputs, K <= 128): one block per (sequence, value head, BV
 * value columns) walks its sequence's chunks of SC = 64 tokens in order with its slice of the
 * state transposed (S^T, [BV, K]) in mma.sync accumulators, as the split state pass holds it,
 * and does every product of a chunk itself, so nothing goes through a workspace (FlashInfer's
 * Hopper organisation, on mma.sync). Per chunk, with raw rows q_i, k_j, their norms rq_i (times
 * the scale) and rk_j, the cumulative gates gamma and Gam_ij = e^{gamma_i - gamma_j}:
 *   all warps   P = tril(diag(rq) Q K^T diag(rk) * Gam) and, for the delta rule,
 *               A = strict_tril(diag(b rk) K K^T diag(rk) * Gam), Tb = (I + A)^{-1} diag(b);
 *   state warps (16 value columns each, all keys, S^T the A operand of three products)
 *               O^T  = S^T Q^T diag(e^gamma rq)          (the old state's part)
 *               U^T  = V^T - S^T K^T diag(e^gamma rk)    (what the state predicts, removed)
 *               N^T  = U^T Tb^T                           (corrected values; V^T without delta)
 *               O^T += N^T P^T
 *               S^T  = e^{gamma_C} S^T + N^T diag(e^{gamma_C - gamma} rk) K
 * The chunk's q, k and v slice arrive by cp.async one chunk ahead (two stages); O^T goes through
 * shared memory to 16-byte row stores. FW = 8 warps a block for the chunk-side products; the
 * first NW of them hold the state (BV = 16 NW columns, NW = 1, 2, 4 or 8).
 * ------------------------------------------------------------------------------------------- */
constexpr int FW = 8;

template <typename T> struct fused_layout {
    int ldk, ldv, ldc, ldcb;
    size_t stage, Qs, Ks, Vs, gr, bt, A, Tm, Tb, P, gam, rq, rk, fo, fk, fs, total;
    __host__ __device__ fused_layout(int K, int BV) {
        ldk = K + 8, ldv = BV + 8, ldc = SC + 4, ldcb = SC + 8;
        size_t off = 0;
        auto take = [&](size_t bytes) {
            size_t at = off;
            off += (bytes + 127) / 128 * 128;
            return at;
        };
        Qs = take(sizeof(T) * SC * ldk); /* stage 0; stage 1 at + stage */
        Ks = take(sizeof(T) * SC * ldk);
        Vs = take(sizeof(T) * SC * ldv);
        gr = take(sizeof(float) * SC);
        bt = take(sizeof(float) * SC);
        stage = off;
        off += stage;
        A = take(sizeof(float) * SC * ldc); /* also O's staging: [SC][BV + 8] of T */
        Tm = take(sizeof(float) * SC * ldc);
        Tb = take(sizeof(T) * SC * ldcb);
        P = take(sizeof(T) * SC * ldcb);
        gam = take(sizeof(double) * SC);
        rq = take(sizeof(float) * SC);
        rk = take(sizeof(float) * SC);
        fo = take(sizeof(float) * SC);
        fk = take(sizeof(float) * SC);
        fs = take(sizeof(float) * SC);
        total = off;
    }
};

/* d += X L^T: X [16, SC] in a warp's accumulators (x), L [SC][SC] lower triangular in shared
 * memory (pitch ld); the fused kernel's products with (I + A)^{-1} diag(b) and with P */
template <typename T>
__device__ __forceinline__ void acc_times_lower_t(float (*d)[4], float (*x)[4], const T *Lm,
                                                  int ld) {
#pragma unroll
    for (int kk = 0; kk < SC / 16; kk++) {
        uint32_t af[4];
        acc_to_a<T>(af, x[2 * kk], x[2 * kk + 1]);
#pragma unroll
        for (int jp = kk; jp < SC / 16; jp++) {
            uint32_t bf[4];
            frag_b_nk(bf, Lm + 16 * jp * ld + 16 * kk, ld);
            mma16816<T>(d[2 * jp], af, bf[0], bf[1]);
            mma16816<T>(d[2 * jp + 1], af, bf[2], bf[3]);
        }
    }
}

template <typename T, int KMAX>
__global__ void __launch_bounds__(32 * FW, 1) la_fused_kernel(la_args a, int NW) {
    extern __shared__ __align__(128) unsigned char smem[];
#ifdef DN_CUDA_PROF
    long long prof_last = clock64();
#endif
    constexpr int NKT = KMAX / 16, CT = SC / 16;
    const int BV = 16 * NW;
    const int K = (int)a.K, V = (int)a.V, kt = K / 16, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const fused_layout<T> L(K, BV);
    const int ldk = L.ldk, ldv = L.ldv, ldc = L.ldc, ldcb = L.ldcb;
    float *Am = (float *)(smem + L.A), *Tm = (float *)(smem + L.Tm);
    T *Tb = (T *)(smem + L.Tb), *Pm = (T *)(smem + L.P), *Os = (T *)(smem + L.A);
    double *gam = (double *)(smem + L.gam);
    float *rq = (float *)(smem + L.rq), *rk = (float *)(smem + L.rk);
    float *fo = (float *)(smem + L.fo), *fk = (float *)(smem + L.fk), *fs = (float *)(smem + L.fs);

    const int64_t v0 = (int64_t)blockIdx.x * BV, hv = blockIdx.y, n = blockIdx.z;
    const int64_t h = hv / (a.HV / a.H);
    int64_t b, t0, t1;
    seq_range(a, n, &b, &t0, &t1);
    const int64_t nch = (t1 - t0 + SC - 1) / SC;
    const bool owner = warp < NW;                        /* holds 16 columns of the state */
    const int64_t vr = v0 + (owner ? warp : 0) * 16 + g; /* this thread's columns vr, vr + 8 */
    const T *q = (const T *)a.q, *k = (const T *)a.k, *v = (const T *)a.v;

    float s[2 * NKT][4];
    const int64_t soff = (n * a.HV + hv) * a.K * a.V;
#pragma unroll
    for (int j = 0; j < 2 * NKT; j++) {
        const int key = 8 * j + 2 * t;
        const bool in = owner && a.h0 && j < 2 * kt;
        const float *h0 = a.h0 + soff;
        s[j][0] = in ? h0[(int64_t)key * V + vr] : 0.0f;
        s[j][1] = in ? h0[(int64_t)(key + 1) * V + vr] : 0.0f;
        s[j][2] = in ? h0[(int64_t)key * V + vr + 8] : 0.0f;
        s[j][3] = in ? h0[(int64_t)(key + 1) * V + vr + 8] : 0.0f;
    }
    bool zero_state = !a.h0; /* the products with S^T skip until it holds something */

    auto issue = [&](int64_t c) {
        unsigned char *st = smem + (c & 1) * L.stage;
        const int64_t tc = t0 + c * SC;
        const int Lc = (int)(t1 - tc < SC ? t1 - tc : SC);
        stage_rows((T *)(st + L.Qs), ldk, q + b * a.qb + tc * a.qt + h * a.qh, a.qt, Lc, K, a.vec);
        stage_rows((T *)(st + L.Ks), ldk, k + b * a.kb + tc * a.kt + h * a.kh, a.kt, Lc, K, a.vec);
        stage_rows((T *)(st + L.Vs), ldv, v + b * a.vb + tc * a.vt + hv * a.vh + v0, a.vt, Lc, BV,
                   a.vec);
        if (tid < SC) { /* gates by cp.async too (chunk_cumsum clamps them) */
            const bool in = tid < Lc;
            const int64_t tt = tc + tid;
            float *grs = (float *)(st + L.gr) + tid, *bts = (float *)(st + L.bt) + tid;
            if (a.gate && in)
                cp_async4(grs, a.g + b * a.gb + tt * a.gt + hv * a.gh);
            else
                *grs = 0.0f;
            if (a.delta && in)
                cp_async4(bts, a.beta + b * a.bb + tt * a.bt + hv * a.bh);
            else
                *bts = in ? 1.0f : 0.0f;
        }
    };
    if (nch > 0) issue(0);
    cp_async_commit();
    for (int64_t c = 0; c < nch; c++) {
        if (c + 1 < nch) issue(c + 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        PROF(0);
        const unsigned char *st = smem + (c & 1) * L.stage;
        const T *Qs = (const T *)(st + L.Qs), *Ks = (const T *)(st + L.Ks),
                *Vs = (const T *)(st + L.Vs);
        const float *gr = (const float *)(st + L.gr), *btv = (const float *)(st + L.bt);
        const int64_t tc = t0 + c * SC;
        const int Lc = (int)(t1 - tc < SC ? t1 - tc : SC);

        if (a.l2norm) { /* the rows' norms: two threads a row of q (rows 0..63) or k */
            const int r = tid >> 1, hf = tid & 1;
            const T *X = r < SC ? Qs + r * ldk : Ks + (r - SC) * ldk;
            union {
                uint4 u;
                T e[8];
            } x;
            float ss = 0;
            for (int c8 = hf * 8; c8 < K; c8 += 16) {
                x.u = *(const uint4 *)(X + c8);
#pragma unroll
                for (int e = 0; e < 8; e++)
                    ss += to_f(x.e[e]) * to_f(x.e[e]);
            }
            ss += __shfl_xor_sync(0xffffffffu, ss, 1);
            if (!hf) {
                if (r < SC)
                    rq[r] = a.scale * rsqrtf(ss + 1e-6f);
                else
                    rk[r - SC] = rsqrtf(ss + 1e-6f);
            }
        } else if (tid < SC) {
            rq[tid] = a.scale, rk[tid] = 1.0f;
        }
        chunk_cumsum(gam, gr);
        __syncthreads();
        PROF(1);
        if (tid < SC) {                    /* the tokens' factors of the state products */
            const double gl = gam[SC - 1]; /* padded gates are 0: gamma_{Lc - 1} */
            const float e = (float)exp(gam[tid]);
            fo[tid] = e * rq[tid], fk[tid] = e * rk[tid];
            fs[tid] = (float)exp(gl - gam[tid]) * rk[tid];
        }

        /* P and A: warp w rows 16 (w % 4) .., columns 32 (w / 4) .. + 31 */
        {
            const int rw = warp & 3, hw = warp >> 2, r0 = rw * 16, i0 = r0 + g, i1 = i0 + 8;
            float cq[4][4] = {}, ck[4][4] = {};
#pragma unroll
            for (int kk = 0; kk < NKT; kk++) {
                if (kk >= kt) break;
                uint32_t aq[4], ak[4];
                frag_a(aq, Qs + r0 * ldk + 16 * kk, ldk);
                if (a.delta) frag_a(ak, Ks + r0 * ldk + 16 * kk, ldk);
#pragma unroll
                for (int jl = 0; jl < 2; jl++) {
                    const int jp = 2 * hw + jl;
                    if (jp > rw) continue;
                    uint32_t bf[4];
                    frag_b_nk(bf, Ks + 16 * jp * ldk + 16 * kk, ldk);
                    mma16816<T>(cq[2 * jl], aq, bf[0], bf[1]);
                    mma16816<T>(cq[2 * jl + 1], aq, bf[2], bf[3]);
                    if (a.delta) {
                        mma16816<T>(ck[2 * jl], ak, bf[0], bf[1]);
                        mma16816<T>(ck[2 * jl + 1], ak, bf[2], bf[3]);
                    }
                }
            }
            const double g0 = gam[i0], g1 = gam[i1];
            const float q0 = rq[i0], q1 = rq[i1], s0 = btv[i0] * rk[i0], s1 = btv[i1] * rk[i1];
#pragma unroll
            for (int jt = 0; jt < 4; jt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int j = 32 * hw + 8 * jt + 2 * t + e;
                    /* e^{gamma_i - gamma_j} <= 1 for j <= i: the fast exponential's few ulps */
                    const float gm0 = a.gate && j <= i0 ? __expf((float)(g0 - gam[j])) : 1.0f;
                    const float gm1 = a.gate && j <= i1 ? __expf((float)(g1 - gam[j])) : 1.0f;
                    const float kj = rk[j];
                    Pm[i0 * ldcb + j] = from_f<T>(j <= i0 ? cq[jt][e] * q0 * kj * gm0 : 0.0f);
                    Pm[i1 * ldcb + j] = from_f<T>(j <= i1 ? cq[jt][2 + e] * q1 * kj * gm1 : 0.0f);
                    if (a.delta) {
                        Am[i0 * ldc + j] = j < i0 ? s0 * kj * gm0 * ck[jt][e] : 0.0f;
                        Am[i1 * ldc + j] = j < i1 ? s1 * kj * gm1 * ck[jt][2 + e] : 0.0f;
                    }
                }
        }
        __syncthreads();
        PROF(2);
        if (a.delta) { /* Tb = (I + A)^{-1} diag(b) */
            unit_lower_inverse<true>(Tm, Am, ldc, SC);
            for (int x = tid; x < SC * SC; x += blockDim.x) {
                const int i = x / SC, j = x % SC;
                Tb[i * ldcb + j] = from_f<T>(j <= i ? Tm[i * ldc + j] * btv[j] : 0.0f);
            }
            __syncthreads();
        }
        PROF(3);

        if (owner) {
            const int vl = warp * 16 + g; /* local value columns vl, vl + 8 */
            float o[2 * CT][4] = {}, u[2 * CT][4] = {};
            if (!zero_state) {
#pragma unroll
                for (int kk = 0; kk < NKT; kk++) /* key blocks */
                    if (kk < kt) {
                        uint32_t af[4];
                        acc_to_a<T>(af, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
                        for (int jp = 0; jp < CT; jp++) { /* token blocks */
                            uint32_t bf[4];
                            frag_b_nk(bf, Qs + 16 * jp * ldk + 16 * kk, ldk);
                            mma16816<T>(o[2 * jp], af, bf[0], bf[1]);
                            mma16816<T>(o[2 * jp + 1], af, bf[2], bf[3]);
                            if (a.delta) {
                                frag_b_nk(bf, Ks + 16 * jp * ldk + 16 * kk, ldk);
                                mma16816<T>(u[2 * jp], af, bf[0], bf[1]);
                                mma16816<T>(u[2 * jp + 1], af, bf[2], bf[3]);
                            }
                        }
                    }
            }
            /* O^T columns (tokens) scaled by e^gamma rq; U^T = V^T - SK^T diag(e^gamma rk), V^T
             * by ldmatrix.trans (the A fragment of a 16 x 16 tile of V^T is the accumulator
             * layout of its two 8-column halves) */
#pragma unroll
            for (int kk = 0; kk < CT; kk++) {
                uint32_t vf[4];
                frag_at(vf, Vs + 16 * kk * ldv + 16 * warp, ldv);
                const float2 x0 = unpack2<T>(vf[0]), x1 = unpack2<T>(vf[1]), x2 = unpack2<T>(vf[2]),
                             x3 = unpack2<T>(vf[3]);
                const float vx[2][4] = {{x0.x, x0.y, x1.x, x1.y}, {x2.x, x2.y, x3.x, x3.y}};
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int jt = 2 * kk + hh, j = 8 * jt + 2 * t;
                    const float o0 = fo[j], o1 = fo[j + 1], k0 = fk[j], k1 = fk[j + 1];
                    o[jt][0] *= o0, o[jt][1] *= o1, o[jt][2] *= o0, o[jt][3] *= o1;
                    u[jt][0] = vx[hh][0] - k0 * u[jt][0], u[jt][1] = vx[hh][1] - k1 * u[jt][1];
                    u[jt][2] = vx[hh][2] - k0 * u[jt][2], u[jt][3] = vx[hh][3] - k1 * u[jt][3];
                }
            }
            float nv[2 * CT][4];
            if (a.delta) { /* N^T = U^T Tb^T (Tb lower triangular) */
#pragma unroll
                for (int j = 0; j < 2 * CT; j++)
                    nv[j][0] = nv[j][1] = nv[j][2] = nv[j][3] = 0.0f;
                acc_times_lower_t<T>(nv, u, Tb, ldcb);
            } else {
#pragma unroll
                for (int j = 0; j < 2 * CT; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        nv[j][e] = u[j][e];
            }
            /* O^T += N^T P^T (P lower triangular) */
            acc_times_lower_t<T>(o, nv, Pm, ldcb);
            /* S^T = e^{gamma_C} S^T + N^T diag(e^{gamma_C - gamma} rk) K */
            const float dec = (float)exp(gam[SC - 1]); /* padded gates are 0: gamma_{Lc-1} */
#pragma unroll
            for (int j = 0; j < 2 * NKT; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    s[j][e] *= dec;
#pragma unroll
            for (int jt = 0; jt < 2 * CT; jt++) {
                const int j = 8 * jt + 2 * t;
                const float f0 = fs[j], f1 = fs[j + 1];
                nv[jt][0] *= f0, nv[jt][1] *= f1, nv[jt][2] *= f0, nv[jt][3] *= f1;
            }
#pragma unroll
            for (int kk = 0; kk < CT; kk++) { /* token blocks */
                uint32_t af[4];
                acc_to_a<T>(af, nv[2 * kk], nv[2 * kk + 1]);
#pragma unroll
                for (int jp = 0; jp < NKT; jp++) /* key blocks */
                    if (jp < kt) {
                        uint32_t bf[4];
                        frag_b_kn(bf, Ks + 16 * kk * ldk + 16 * jp, ldk);
                        mma16816<T>(s[2 * jp], af, bf[0], bf[1]);
                        mma16816<T>(s[2 * jp + 1], af, bf[2], bf[3]);
                    }
            }
            /* O^T to the staging rows (A is free: the inverse is done) */
            const int ldo = BV + 8;
#pragma unroll
            for (int jt = 0; jt < 2 * CT; jt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int j = 8 * jt + 2 * t + e;
                    Os[j * ldo + vl] = from_f<T>(o[jt][e]);
                    Os[j * ldo + vl + 8] = from_f<T>(o[jt][2 + e]);
                }
        }
        PROF(4);
        zero_state = false;
        __syncthreads();
        PROF(5);
        {
            const int ldo = BV + 8, pv = BV / 8;
            T *ob = (T *)a.o + b * a.ob + tc * a.ot + hv * a.oh + v0;
            for (int x = tid; x < Lc * pv; x += blockDim.x) {
                const int r = x / pv, cc = (x % pv) * 8;
                if (a.ovec)
                    *(uint4 *)(ob + r * a.ot + cc) = *(const uint4 *)(Os + r * ldo + cc);
                else
                    for (int e = 0; e < 8; e++)
                        ob[r * a.ot + cc + e] = Os[r * ldo + cc + e];
            }
        }
        PROF(6);
        /* the next chunk's first barrier orders these reads of Os before A is written again */
    }
    cp_async_wait<0>();
    if (a.ht && owner) {
        float *ht = a.ht + soff;
#pragma unroll
        for (int j = 0; j < 2 * NKT; j++)
            if (j < 2 * kt) {
                const int key = 8 * j + 2 * t;
                ht[(int64_t)key * V + vr] = s[j][0];
                ht[(int64_t)(key + 1) * V + vr] = s[j][1];
                ht[(int64_t)key * V + vr + 8] = s[j][2];
                ht[(int64_t)(key + 1) * V + vr + 8] = s[j][3];
            }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Host side
 * ------------------------------------------------------------------------------------------- */
template <typename T, typename SE, int NCG>
cudaError_t launch_decode(const la_args &a, int64_t NS, cudaStream_t s) {
    constexpr int NRG = DEC_THREADS / NCG, BVC = NCG * dec_cpt<SE>();
    const dim3 grid((unsigned)((a.V + BVC - 1) / BVC), (unsigned)a.HV, (unsigned)NS);
    const int64_t rows = (a.K + NRG - 1) / NRG; /* at most 64 / CPT (the caller) */
    if (rows <= 4)
        la_decode_kernel<T, SE, NCG, 4><<<grid, DEC_THREADS, 0, s>>>(a);
    else if (rows <= 8 || dec_cpt<SE>() == 8)
        la_decode_kernel<T, SE, NCG, 8><<<grid, DEC_THREADS, 0, s>>>(a);
    else if constexpr (dec_cpt<SE>() == 4)
        la_decode_kernel<T, SE, NCG, 16><<<grid, DEC_THREADS, 0, s>>>(a);
    return cudaGetLastError();
}

template <typename T, typename SE, int NW>
cudaError_t launch_decode_bulk(const la_args &a, int64_t NS, cudaStream_t s) {
    const size_t sm = (size_t)a.K * a.V * sizeof(SE);
    auto f = la_decode_bulk_kernel<T, SE, NW>;
    cudaError_t e = cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm);
    if (e == cudaSuccess) /* as many tiles an SM as fit */
        e = cudaFuncSetAttribute(f, cudaFuncAttributePreferredSharedMemoryCarveout,
                                 cudaSharedmemCarveoutMaxShared);
    if (e != cudaSuccess) return e;
    f<<<dim3(1, (unsigned)a.HV, (unsigned)NS), 32 * NW, sm, s>>>(a);
    return cudaGetLastError();
}

/* Whether the bulk decode kernel runs here: a device of compute capability 9.0 or above running
 * code built for it (not sm_80 code, nor PTX of compute_80 compiled for a newer device) */
template <typename T, typename SE> bool decode_bulk_runs(int dev) {
    static std::atomic<signed char> known[64]; /* per device: 0 not asked, 1 no, 2 yes */
    if (dev >= 0 && dev < 64 && known[dev].load(std::memory_order_relaxed))
        return known[dev].load(std::memory_order_relaxed) == 2;
    int major = 0;
    cudaFuncAttributes fa;
    const bool yes =
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
        major >= 9 && cudaFuncGetAttributes(&fa, la_decode_bulk_kernel<T, SE, 1>) == cudaSuccess &&
        fa.ptxVersion >= 90 && fa.binaryVersion >= 90;
    if (dev >= 0 && dev < 64) known[dev].store(yes ? 2 : 1, std::memory_order_relaxed);
    return yes;
}

/* The recurrence: the bulk decode where it applies (sm_90+, enough heads to fill the SMs, a
 * head's state up to 64 KB), else the register decode layout, else one thread a column. Column
 * groups a block of the register layout: enough to cover a row (contiguous reads), few enough
 * that a thread holds at most 64 state elements (two blocks an SM at 128 registers), at least 8;
 * halved while the grid would leave SMs idle. */
template <typename T, typename SE>
cudaError_t launch_recurrent(const la_args &a, int64_t NS, cudaStream_t s) {
    constexpr int CPT = dec_cpt<SE>();
    const bool aligned = !((uintptr_t)a.h0 & 15) && !((uintptr_t)a.ht & 15);
    int sms = 132, dev = 0;
    (void)cudaGetDevice(&dev);
    (void)cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    /* the bulk form: a head's state a block, up to 64 KB (three blocks an SM); a bf16 state only
     * for one token a sequence (it keeps the state in its storage dtype between tokens) */
    const int64_t wc = 8 * CPT, nw = (a.V + wc - 1) / wc;
    if (a.V % CPT == 0 && aligned && a.K <= 256 && nw <= 8 && NS * a.HV >= sms &&
        a.K * a.V * (int64_t)sizeof(SE) <= 64 * 1024 && (sizeof(SE) == 4 || a.T == 1) &&
        decode_bulk_runs<T, SE>(dev))
        return nw > 4    ? launch_decode_bulk<T, SE, 8>(a, NS, s)
               : nw > 2  ? launch_decode_bulk<T, SE, 4>(a, NS, s)
               : nw == 2 ? launch_decode_bulk<T, SE, 2>(a, NS, s)
                         : launch_decode_bulk<T, SE, 1>(a, NS, s);
    if (a.V % CPT == 0 && aligned && a.K <= (DEC_THREADS / 8) * (64 / CPT)) {
        int ncg = 8;
        while (ncg < 32 && ncg * CPT < a.V && ncg * 2 <= DEC_THREADS * 64 / (a.K * CPT))
            ncg *= 2;
        while (ncg > 8 && NS * a.HV * ((a.V + ncg * CPT - 1) / (ncg * CPT)) < sms)
            ncg /= 2;
        return ncg == 32   ? launch_decode<T, SE, 32>(a, NS, s)
               : ncg == 16 ? launch_decode<T, SE, 16>(a, NS, s)
                           : launch_decode<T, SE, 8>(a, NS, s);
    }
    const dim3 grid((unsigned)((a.V + 31) / 32), (unsigned)a.HV, (unsigned)NS);
    if (a.K <= 64)
        la_recurrent_kernel<T, SE, 8><<<grid, 32 * REC_WARPS, 0, s>>>(a);
    else if (a.K <= 128)
        la_recurrent_kernel<T, SE, 16><<<grid, 32 * REC_WARPS, 0, s>>>(a);
    else
        la_recurrent_kernel<T, SE, 32><<<grid, 32 * REC_WARPS, 0, s>>>(a);
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch_recurrent(const la_args &a, int64_t NS, int sbf16, cudaStream_t s) {
    return sbf16 ? launch_recurrent<T, __nv_bfloat16>(a, NS, s)
                 : launch_recurrent<T, float>(a, NS, s);
}

/* The raw gates to g and beta [B,T,HV] (contiguous), for the chunkwise kernels */
__global__ void raw_gates_kernel(la_args a, float *g, float *beta, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t hv = i % a.HV, t = i / a.HV % a.T, b = i / a.HV / a.T;
        if (a.ga) g[i] = raw_g(a, b, t, hv);
        if (a.gbr) beta[i] = raw_beta(a, b, t, hv);
    }
}

/* bf16 states to fp32 and back, for the chunkwise kernels (which keep fp32 states) */
__global__ void state_widen_kernel(float *dst, const __nv_bfloat16 *src, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}
__global__ void state_narrow_kernel(__nv_bfloat16 *dst, const float *src, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

template <typename T, int C, int BV>
cudaError_t launch_chunk_bv(const la_args &a, int64_t NS, cudaStream_t s) {
    const ch_layout<T> L(C, (int)a.K, BV);
    cudaError_t e = cudaFuncSetAttribute(la_chunk_kernel<T, C, BV>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)L.total);
    if (e != cudaSuccess) return e;
    const dim3 grid((unsigned)(a.V / BV), (unsigned)a.HV, (unsigned)NS);
    la_chunk_kernel<T, C, BV><<<grid, CH_THREADS, L.total, s>>>(a);
    return cudaGetLastError();
}

/* 32-token chunks (on an H200, bf16, H = 16, K = V = 128: 5-10% faster than 64 at every shape of
 * bench/cuda_la.cu, the key-side work of a chunk growing with C^2). Value columns a block: 64
 * where the state tile fits in shared memory; fewer only when the grid would leave half the GPU
 * idle, since every column block repeats the chunk's key-side work (measured: 4 x 4096 x 16 heads
 * ran 1.5x faster at 64 columns and 128 blocks than at 32 columns and 256 blocks; 1 x 32768 ran
 * 1.5x faster at 16 columns than at 64). */
template <typename T> cudaError_t launch_chunk(const la_args &a, int64_t NS, cudaStream_t s) {
    constexpr int C = 32;
    int sms = 132, dev = 0;
    (void)cudaGetDevice(&dev);
    (void)cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    int bv = (a.K <= 128 && a.V % 64 == 0) ? 64 : 32;
    while (bv > 16 && NS * a.HV * (a.V / bv) < (int64_t)sms / 2)
        bv /= 2;
    while (a.V % bv) /* V is a multiple of 16 */
        bv /= 2;
    if (bv == 64) return launch_chunk_bv<T, C, 64>(a, NS, s);
    if (bv == 32) return launch_chunk_bv<T, C, 32>(a, NS, s);
    return launch_chunk_bv<T, C, 16>(a, NS, s);
}

/* Value columns a block of the state pass: 16 a warp, as many warps as divide V up to 8 (all of
 * a head's columns for V <= 128). The pass is a chain of chunk steps whose length is set by the
 * step's latency, not by how many SMs hold a block: more warps share (and split) the staging of
 * the chunk's W and Kd, and fewer blocks read them. */
template <typename T, int KMAX>
cudaError_t launch_split_state(const la_args &a, const split_ws &w, int64_t NS, int nw,
                               cudaStream_t s) {
    const size_t sm = state_smem<T>((int)a.K, nw);
    const dim3 grid((unsigned)(a.V / (16 * nw)), (unsigned)a.HV, (unsigned)NS);
    const void *f = nw == 8   ? (const void *)la_split_state_kernel<T, KMAX, 8>
                    : nw == 4 ? (const void *)la_split_state_kernel<T, KMAX, 4>
                    : nw == 2 ? (const void *)la_split_state_kernel<T, KMAX, 2>
                              : (const void *)la_split_state_kernel<T, KMAX, 1>;
    cudaError_t e = cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm);
    if (e != cudaSuccess) return e;
    if (nw == 8)
        la_split_state_kernel<T, KMAX, 8><<<grid, 256, sm, s>>>(a, w);
    else if (nw == 4)
        la_split_state_kernel<T, KMAX, 4><<<grid, 128, sm, s>>>(a, w);
    else if (nw == 2)
        la_split_state_kernel<T, KMAX, 2><<<grid, 64, sm, s>>>(a, w);
    else
        la_split_state_kernel<T, KMAX, 1><<<grid, 32, sm, s>>>(a, w);
    return cudaGetLastError();
}

/* The split chunkwise forward: workspace (stream-ordered, freed before returning), then the
 * three kernels in order on the stream. */
template <typename T>
cudaError_t launch_split(const la_args &a, const dn_la_params *p, int64_t NS, cudaStream_t s) {
    int64_t nch = 0;
    split_ws w = {};
    if (p->cu_seqlens)
        for (int64_t n = 0; n < NS; n++)
            nch += (p->cu_seqlens[n + 1] - p->cu_seqlens[n] + SC - 1) / SC;
    else
        w.nt = (p->T + SC - 1) / SC, nch = p->B * w.nt;
    const int64_t NU = nch * p->HV;
    const size_t es = sizeof(T), bW = align256(es * (size_t)(NU * SC * p->K)),
                 bU = align256(es * (size_t)(NU * SC * p->V)),
                 bh = align256(es * (size_t)(NU * p->K * p->V)), bd = align256(4 * (size_t)NU),
                 bcb = p->cu_seqlens ? align256(8 * (size_t)(NS + 1)) : 0,
                 bcm = p->cu_seqlens ? align256(4 * (size_t)nch) : 0;
    char *ws = NULL;
    cudaError_t e = dn_cuda_scratch((void **)&ws, 2 * bW + bU + bh + bd + bcb + bcm, s);
    if (e != cudaSuccess) return e;
    w.W = ws, w.Kd = ws + bW, w.UT = ws + 2 * bW, w.hs = ws + 2 * bW + bU;
    w.dec = (float *)(ws + 2 * bW + bU + bh);
    if (p->cu_seqlens) {
        char *hb = (char *)malloc(bcb + bcm);
        if (!hb) e = cudaErrorMemoryAllocation;
        if (hb) {
            fill_chunk_map(p, NS, SC, (int64_t *)hb, (int *)(hb + bcb));
            char *dst = ws + 2 * bW + bU + bh + bd;
            /* pageable source: the call returns once it is staged, so hb may go */
            e = cudaMemcpyAsync(dst, hb, bcb + bcm, cudaMemcpyHostToDevice, s);
            free(hb);
            w.cb = (const int64_t *)dst, w.cmap = (const int *)(dst + bcb);
        }
    }
    if (e == cudaSuccess && nch > 0) {
        const prep_layout<T> L((int)a.K, (int)a.V);
        e = cudaFuncSetAttribute(la_split_prep_kernel<T>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)L.total);
        if (e == cudaSuccess) {
            la_split_prep_kernel<T>
                <<<dim3((unsigned)nch, (unsigned)a.HV), 32 * SW, L.total, s>>>(a, w);
            e = cudaGetLastError();
        }
    }
    if (e == cudaSuccess) {
        int sms = 132, dev = 0;
        (void)cudaGetDevice(&dev);
        (void)cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
        int nw = NS * a.HV >= sms ? 8 : 4;
        while (a.V % (16 * nw))
            nw /= 2;
        e = a.K <= 64    ? launch_split_state<T, 64>(a, w, NS, nw, s)
            : a.K <= 128 ? launch_split_state<T, 128>(a, w, NS, nw, s)
                         : launch_split_state<T, 256>(a, w, NS, nw, s);
    }
    if (e == cudaSuccess && nch > 0) {
        const out_layout<T> L((int)a.K);
        e = cudaFuncSetAttribute(la_split_out_kernel<T>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)L.total);
        if (e == cudaSuccess) {
            const dim3 grid((unsigned)nch, (unsigned)a.HV, (unsigned)((a.V + SBO - 1) / SBO));
            la_split_out_kernel<T><<<grid, 32 * SW, L.total, s>>>(a, w);
            e = cudaGetLastError();
        }
    }
    const cudaError_t f = cudaFreeAsync(ws, s);
    return e != cudaSuccess ? e : f;
}

/* The fused forward's state warps a block: the most (up to 8) whose columns divide V, halved while
 * the blocks do not fill the SMs (each block repeats the chunk-side products; DN_CUDA_FUSED_NW
 * sets it, for measurements). */
int fused_warps(const la_args &a, int64_t NS, int sms) {
    int nw = 8;
    while (nw > 1 && a.V % (16 * nw))
        nw /= 2;
    const char *env = getenv("DN_CUDA_FUSED_NW");
    if (env && (atoi(env) == 1 || atoi(env) == 2 || atoi(env) == 4 || atoi(env) == 8) &&
        a.V % (16 * atoi(env)) == 0)
        return atoi(env);
    while (nw > 1 && NS * a.HV * (a.V / (16 * nw)) < (int64_t)sms)
        nw /= 2;
    return nw;
}

template <typename T, int KMAX>
cudaError_t launch_fused_k(const la_args &a, int64_t NS, int nw, cudaStream_t s) {
    const fused_layout<T> L((int)a.K, 16 * nw);
    auto f = la_fused_kernel<T, KMAX>;
    cudaError_t e =
        cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)L.total);
    if (e != cudaSuccess) return e;
    f<<<dim3((unsigned)(a.V / (16 * nw)), (unsigned)a.HV, (unsigned)NS), 32 * FW, L.total, s>>>(a,
                                                                                                nw);
    return cudaGetLastError();
}

template <typename T> cudaError_t launch_fused(const la_args &a, int64_t NS, cudaStream_t s) {
    int sms = 132, dev = 0;
    (void)cudaGetDevice(&dev);
    (void)cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    const int nw = fused_warps(a, NS, sms);
    return a.K <= 64 ? launch_fused_k<T, 64>(a, NS, nw, s) : launch_fused_k<T, 128>(a, NS, nw, s);
}

/* Which chunkwise forward takes 16-bit inputs: the fused kernel where K <= 128 and the
 * sequences' heads give every SM a block (its chunks are a chain, a block an SM), the split one
 * otherwise (measured on an H200, docs/PERF.md: fused 0.43 ms against split 0.57 at 16 x 1024,
 * H = 16; split 0.60 against fused 0.78 at 4 x 4096); DN_CUDA_FWD=split or fused picks one where
 * both apply (for tests and measurements). */
bool use_fused(const dn_la_params *p, int64_t NS) {
    if (p->K > 128) return false;
    const char *env = getenv("DN_CUDA_FWD");
    if (env && !strcmp(env, "split")) return false;
    if (env && !strcmp(env, "fused")) return true;
    int sms = 132, dev = 0;
    (void)cudaGetDevice(&dev);
    (void)cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    return NS * p->HV >= sms;
}

/* the chunk kernel's shape limits: wmma tiles of 16 over K, value blocks of 32 */
bool chunk_supports(const dn_la_params *p) {
    return p->K % 16 == 0 && p->K <= 256 && p->V % 16 == 0;
}

int64_t longest_seq(const dn_la_params *p) {
    if (!p->cu_seqlens) return p->T;
    int64_t m = 0;
    for (int64_t n = 0; n < p->n_seqs; n++)
        if (p->cu_seqlens[n + 1] - p->cu_seqlens[n] > m)
            m = p->cu_seqlens[n + 1] - p->cu_seqlens[n];
    return m;
}

} // namespace

#ifdef DN_CUDA_PROF
extern "C" void dn_cuda_prof_dump(void) {
    unsigned long long h[16];
    cudaDeviceSynchronize();
    cudaMemcpyFromSymbol(h, prof_cycles, sizeof h);
    printf("prof cycles:");
    for (int i = 0; i < 9; i++)
        printf(" p%d=%llu", i, h[i]);
    printf("\n");
    unsigned long long z[16] = {0};
    cudaMemcpyToSymbol(prof_cycles, z, sizeof z);
}
#endif

dn_status dn_cuda_la_forward(const dn_la_params *p) {
    const char *name = dn_op_name(p->op);
    device_guard guard;
    dn_status st = enter_device(p->device, name, guard);
    if (st != DN_OK) return st;
    if (p->K > 256)
        return dn_fail(DN_ERR_UNSUPPORTED, "%s: the CUDA kernels take K up to 256 (got %lld)", name,
                       (long long)p->K);
    cudaStream_t s = (cudaStream_t)p->stream;
    const int64_t NS = p->cu_seqlens ? p->n_seqs : p->B;
    const int sbf16 = p->state_dtype == DN_BF16;
    const int64_t state_elems = NS * p->HV * p->K * p->V;
    const size_t state_bytes = (sbf16 ? 2 : 4) * (size_t)state_elems;
    if (p->T == 0) { /* no tokens: the final state is the initial one (or zeros) */
        if (!p->final_state || p->final_state == p->initial_state) return DN_OK;
        cudaError_t e = p->initial_state ? cudaMemcpyAsync(p->final_state, p->initial_state,
                                                           state_bytes, cudaMemcpyDefault, s)
                                         : cudaMemsetAsync(p->final_state, 0, state_bytes, s);
        return dn_cuda_error(e, name);
    }
    if (NS > 65535 || p->HV > 65535)
        return dn_fail(DN_ERR_UNSUPPORTED,
                       "%s: the CUDA grid takes at most 65535 sequences and heads", name);
    dn_impl impl = p->impl;
    if (impl == DN_IMPL_AUTO)
        impl = (longest_seq(p) < 16 || !chunk_supports(p)) ? DN_IMPL_RECURRENT : DN_IMPL_CHUNK;
    if (impl == DN_IMPL_CHUNK && !chunk_supports(p))
        return dn_fail(DN_ERR_UNSUPPORTED,
                       "%s: the CUDA chunkwise kernel needs K and V multiples of 16 (K=%lld "
                       "V=%lld); DN_IMPL_RECURRENT or AUTO run any size",
                       name, (long long)p->K, (long long)p->V);

    int64_t *cu = NULL;
    if ((st = upload_cu(p, s, &cu, name)) != DN_OK) return st;
    la_args a = make_args(p, cu);
    cudaError_t e = cudaSuccess;
    float *wide = NULL; /* a bf16 state under the chunkwise kernels: fp32 copies, h0 then ht */
    if (impl != DN_IMPL_RECURRENT && sbf16 && (p->initial_state || p->final_state)) {
        e = dn_cuda_scratch((void **)&wide, 2 * sizeof(float) * (size_t)state_elems, s);
        if (e == cudaSuccess && p->initial_state) {
            state_widen_kernel<<<conv_blocks(state_elems), 256, 0, s>>>(
                wide, (const __nv_bfloat16 *)(const void *)p->initial_state, state_elems);
            e = cudaGetLastError();
        }
        a.h0 = p->initial_state ? wide : NULL;
        a.ht = p->final_state ? wide + state_elems : NULL;
    }
    float *gates = NULL; /* raw gates under the chunkwise kernels: g and beta computed first */
    if (e == cudaSuccess && impl != DN_IMPL_RECURRENT && (a.ga || a.gbr)) {
        const int64_t n = p->B * p->T * p->HV;
        e = dn_cuda_scratch((void **)&gates, 2 * sizeof(float) * (size_t)n, s);
        if (e == cudaSuccess) {
            raw_gates_kernel<<<conv_blocks(n), 256, 0, s>>>(a, gates, gates + n, n);
            e = cudaGetLastError();
        }
        if (a.ga) a.g = gates, a.gb = p->T * p->HV, a.gt = p->HV, a.gh = 1;
        if (a.gbr) a.beta = gates + n, a.bb = p->T * p->HV, a.bt = p->HV, a.bh = 1;
        a.ga = a.gbr = NULL;
    }
    if (e == cudaSuccess) {
        if (impl == DN_IMPL_RECURRENT)
            e = p->dtype == DN_BF16  ? launch_recurrent<__nv_bfloat16>(a, NS, sbf16, s)
                : p->dtype == DN_F16 ? launch_recurrent<__half>(a, NS, sbf16, s)
                                     : launch_recurrent<float>(a, NS, sbf16, s);
        else if (p->dtype == DN_BF16 && DN_CUDA_SPLIT)
            e = use_fused(p, NS) ? launch_fused<__nv_bfloat16>(a, NS, s)
                                 : launch_split<__nv_bfloat16>(a, p, NS, s);
        else if (p->dtype == DN_F16 && DN_CUDA_SPLIT)
            e = use_fused(p, NS) ? launch_fused<__half>(a, NS, s)
                                 : launch_split<__half>(a, p, NS, s);
        else /* fp32 inputs: the single kernel, fp32 products on the CUDA cores */
            e = p->dtype == DN_BF16  ? launch_chunk<__nv_bfloat16>(a, NS, s)
                : p->dtype == DN_F16 ? launch_chunk<__half>(a, NS, s)
                                     : launch_chunk<float>(a, NS, s);
    }
    if (e == cudaSuccess && wide && p->final_state) {
        state_narrow_kernel<<<conv_blocks(state_elems), 256, 0, s>>>(
            (__nv_bfloat16 *)(void *)p->final_state, wide + state_elems, state_elems);
        e = cudaGetLastError();
    }
    if (wide) (void)cudaFreeAsync(wide, s);
    if (gates) (void)cudaFreeAsync(gates, s);
    st = dn_cuda_error(e, name);
    if (cu) (void)cudaFreeAsync(cu, s);
    return st;
}
