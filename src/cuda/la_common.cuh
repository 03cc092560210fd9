/*
 * cuda/la_common.cuh - what the linear family's forward (la.cu) and backward (la_bwd.cu) kernels
 * share: the kernel-side view of dn_la_params (la_args, built by make_args), dtype conversions,
 * a sequence's token range, 16-byte loads, a warp sum and small host helpers. Everything is in an
 * anonymous namespace: each translation unit keeps its own copy.
 */
#ifndef DN_CUDA_LA_COMMON_CUH
#define DN_CUDA_LA_COMMON_CUH

#include "cuda_common.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <type_traits>

namespace {

/* g below this is a full reset; clamping keeps gate differences finite (-inf - -inf would be NaN)
 * and exp(-1024) is 0 in float, so the function is unchanged (src/internal.h, dn_log_decay). */
constexpr float LOG_DECAY_MIN = -1024.0f;

struct la_args {
    const void *q, *k, *v;
    const float *g, *beta;
    void *o;
    const float *h0;
    float *ht;
    const int64_t *cu; /* device copy of cu_seqlens, or NULL */
    int64_t T, H, HV, K, V;
    int64_t qb, qt, qh, kb, kt, kh, vb, vt, vh, gb, gt, gh, bb, bt, bh, ob, ot, oh;
    float scale;
    int l2norm, gate, delta;
    int vec;  /* q, k, v 16-byte aligned with strides of whole 16-byte vectors */
    int ovec; /* o likewise */
    /* raw gates (the recurrence computes g and beta from them; NULL: g and beta are given) */
    const float *ga, *gbr, *A_log, *dt_bias;
    int64_t gab, gat, gah, gbb, gbt, gbh;
};

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) {
    return __bfloat162float(x);
}
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

__device__ __forceinline__ void seq_range(const la_args &a, int64_t n, int64_t *b, int64_t *t0,
                                          int64_t *t1) {
    if (a.cu) {
        *b = 0;
        *t0 = a.cu[n];
        *t1 = a.cu[n + 1];
    } else {
        *b = n;
        *t0 = 0;
        *t1 = a.T;
    }
}

/* 16 bytes of T elements at p: one vector load when p is 16-byte aligned (vec), else element loads
 * packed into the same register layout. */
template <typename T> __device__ __forceinline__ uint4 load16(const T *p, bool vec) {
    if (vec) return __ldg((const uint4 *)p);
    using R = typename std::conditional<sizeof(T) == 4, uint32_t, uint16_t>::type;
    union {
        uint4 u;
        R e[16 / sizeof(T)];
    } w;
    const R *pr = (const R *)p;
#pragma unroll
    for (int i = 0; i < (int)(16 / sizeof(T)); i++)
        w.e[i] = pr[i];
    return w.u;
}

/* Chunks of C tokens numbered across the sequences (the chunk-parallel kernels' grid): with
 * cu_seqlens, cb [NS+1] holds the first chunk of each sequence and cmap [chunks] the sequence of
 * each chunk; without, every sequence has nt chunks (cb and cmap NULL). The chunk's sequence n,
 * batch row b, first token tc and length Lc from its global index ci. */
__device__ __forceinline__ void chunk_at(const la_args &a, const int64_t *cb, const int *cmap,
                                         int64_t nt, int C, int64_t ci, int64_t *n, int64_t *b,
                                         int64_t *tc, int *Lc) {
    int64_t c, t0, t1;
    if (cmap) {
        *n = cmap[ci];
        c = ci - cb[*n];
    } else {
        *n = ci / nt;
        c = ci % nt;
    }
    seq_range(a, *n, b, &t0, &t1);
    *tc = t0 + c * C;
    *Lc = (int)(t1 - *tc < C ? t1 - *tc : C);
}
/* Host side: cb and cmap for the varlen sequences of p (cb[NS] = the chunk count). */
inline void fill_chunk_map(const dn_la_params *p, int64_t NS, int C, int64_t *cb, int *cmap) {
    cb[0] = 0;
    for (int64_t n = 0; n < NS; n++) {
        const int64_t c = (p->cu_seqlens[n + 1] - p->cu_seqlens[n] + C - 1) / C;
        for (int64_t i = 0; i < c; i++)
            cmap[cb[n] + i] = (int)n;
        cb[n + 1] = cb[n] + c;
    }
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

inline la_args make_args(const dn_la_params *p, const int64_t *cu_dev) {
    la_args a;
    a.q = p->q, a.k = p->k, a.v = p->v, a.g = p->g, a.beta = p->beta, a.o = p->o;
    a.h0 = p->initial_state, a.ht = p->final_state, a.cu = cu_dev;
    a.T = p->T, a.H = p->H, a.HV = p->HV, a.K = p->K, a.V = p->V;
    a.qb = p->q_s.b, a.qt = p->q_s.t, a.qh = p->q_s.h;
    a.kb = p->k_s.b, a.kt = p->k_s.t, a.kh = p->k_s.h;
    a.vb = p->v_s.b, a.vt = p->v_s.t, a.vh = p->v_s.h;
    a.gb = p->g_s.b, a.gt = p->g_s.t, a.gh = p->g_s.h;
    a.bb = p->beta_s.b, a.bt = p->beta_s.t, a.bh = p->beta_s.h;
    a.ob = p->o_s.b, a.ot = p->o_s.t, a.oh = p->o_s.h;
    a.scale = p->scale;
    a.l2norm = p->qk_l2norm != 0;
    a.gate = p->op == DN_OP_GLA || p->op == DN_OP_GDN;
    a.delta = p->op == DN_OP_DELTANET || p->op == DN_OP_GDN;
    const int64_t epv = p->dtype == DN_F32 ? 4 : 8; /* elements in 16 bytes */
    const dn_strides st[3] = {p->q_s, p->k_s, p->v_s};
    const void *ptr[3] = {p->q, p->k, p->v};
    a.vec = 1;
    for (int i = 0; i < 3; i++)
        if (((uintptr_t)ptr[i] & 15) || st[i].b % epv || st[i].t % epv || st[i].h % epv) a.vec = 0;
    a.ovec = !(((uintptr_t)p->o & 15) || p->o_s.b % epv || p->o_s.t % epv || p->o_s.h % epv);
    a.ga = p->gate_a, a.gbr = p->gate_b, a.A_log = p->A_log, a.dt_bias = p->dt_bias;
    a.gab = p->gate_a_s.b, a.gat = p->gate_a_s.t, a.gah = p->gate_a_s.h;
    a.gbb = p->gate_b_s.b, a.gbt = p->gate_b_s.t, a.gbh = p->gate_b_s.h;
    return a;
}

inline unsigned conv_blocks(int64_t n) {
    return (unsigned)(n / 256 + 1 < 4096 ? n / 256 + 1 : 4096);
}
inline size_t align256(size_t x) { return (x + 255) / 256 * 256; }

/* Restores the caller's current device when the call leaves. */
struct device_guard {
    int prev = -1;
    ~device_guard() {
        if (prev >= 0) (void)cudaSetDevice(prev);
    }
};

/* Makes `device` current for the call (the guard restores the caller's on leaving). */
inline dn_status enter_device(int device, const char *name, device_guard &guard) {
    dn_status st = dn_cuda_need_device(device, name);
    if (st != DN_OK) return st;
    int cur = 0;
    if ((st = dn_cuda_error(cudaGetDevice(&cur), name)) != DN_OK) return st;
    if (cur != device) {
        if ((st = dn_cuda_error(cudaSetDevice(device), name)) != DN_OK) return st;
        guard.prev = cur;
    }
    return DN_OK;
}

/* A device copy of the host array cu_seqlens (n + 1 values) in stream-ordered memory; *cu
 * stays NULL without one. The caller frees it with cudaFreeAsync on s. */
inline dn_status upload_cu(const dn_la_params *p, cudaStream_t s, int64_t **cu, const char *name) {
    *cu = NULL;
    if (!p->cu_seqlens) return DN_OK;
    const size_t bytes = sizeof(int64_t) * (size_t)(p->n_seqs + 1);
    dn_status st = dn_cuda_error(dn_cuda_scratch((void **)cu, bytes, s), name);
    if (st != DN_OK) return st;
    st = dn_cuda_error(cudaMemcpyAsync(*cu, p->cu_seqlens, bytes, cudaMemcpyHostToDevice, s), name);
    if (st != DN_OK) {
        (void)cudaFreeAsync(*cu, s);
        *cu = NULL;
    }
    return st;
}

} // namespace

#endif
