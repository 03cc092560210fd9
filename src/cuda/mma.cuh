/*
 * cuda/mma.cuh - the tensor-core building blocks of the linear family's chunkwise kernels (la.cu,
 * la_bwd.cu): the m16n8k16 product, ldmatrix fragment loads from shared memory, the
 * fragment-native (FN) tile layout, register packing and cp.async. 16-bit operands (bf16 or fp16),
 * fp32 accumulators; sm_80 and later.
 */
#ifndef DN_CUDA_MMA_CUH
#define DN_CUDA_MMA_CUH

#include "la_common.cuh"

namespace {

/* m16n8k16 tensor-core product, fp32 accumulators d (+)= a b. */
template <typename T>
__device__ __forceinline__ void mma16816(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <bool TRANS> __device__ __forceinline__ void ldsm_x4(uint32_t *r, const void *p) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    if constexpr (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(s));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(s));
}

/* two floats as a pair of the dtype in one register, x in the low half */
template <typename T> __device__ __forceinline__ uint32_t pack2(float x, float y) {
    union {
        uint32_t u;
        T e[2];
    } p;
    p.e[0] = from_f<T>(x);
    p.e[1] = from_f<T>(y);
    return p.u;
}

__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src));
}
/* 4 bytes (a gate, a beta), through L1 */
__device__ __forceinline__ void cp_async4(void *dst, const void *src) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* Fragments (m16n8k16, g = lane / 4, t = lane % 4): an A fragment of a row-major [16][16] tile at
 * p (pitch ld) by ldmatrix; the B fragments of two 8-column tiles, from [n][k] storage (rows of
 * B's columns: non-transposed) or [k][n] storage (transposed). */
template <typename T> __device__ __forceinline__ void frag_a(uint32_t *r, const T *p, int ld) {
    const int lane = threadIdx.x & 31;
    ldsm_x4<false>(r, p + (lane & 15) * ld + (lane >> 4) * 8);
}
/* A from [k][m] storage (A transposed in memory) */
template <typename T> __device__ __forceinline__ void frag_at(uint32_t *r, const T *p, int ld) {
    const int lane = threadIdx.x & 31;
    ldsm_x4<true>(r, p + ((lane & 7) + ((lane >> 4) << 3)) * ld + ((lane >> 3) & 1) * 8);
}
template <typename T> __device__ __forceinline__ void frag_b_nk(uint32_t *r, const T *p, int ld) {
    const int lane = threadIdx.x & 31;
    ldsm_x4<false>(r, p + ((lane & 7) + ((lane >> 4) << 3)) * ld + ((lane >> 3) & 1) * 8);
}
template <typename T> __device__ __forceinline__ void frag_b_kn(uint32_t *r, const T *p, int ld) {
    const int lane = threadIdx.x & 31;
    ldsm_x4<true>(r, p + ((lane & 7) + ((lane >> 3) & 1) * 8) * ld + (lane >> 4) * 8);
}
/* The A fragment of k-step kk from the accumulators of 8-column tiles 2 kk and 2 kk + 1. */
template <typename T>
__device__ __forceinline__ void acc_to_a(uint32_t *r, const float *c0, const float *c1) {
    r[0] = pack2<T>(c0[0], c0[1]), r[1] = pack2<T>(c0[2], c0[3]);
    r[2] = pack2<T>(c1[0], c1[1]), r[3] = pack2<T>(c1[2], c1[3]);
}

/* Fragment-native (FN) layout of the workspace's [R, Cc] matrices (R, Cc multiples of 16): 16 x 16
 * tiles of 512 bytes, lane l's 16 bytes at element 8 l of its tile holding (row g, cols 2t, 2t+1),
 * (g + 8, 2t ..), (g, 2t + 8 ..), (g + 8, 2t + 8 ..): the A fragment of the tile, the accumulators
 * of its two 8-column halves, and, when the rows are B's columns, the B fragments of its two 8-row
 * halves ({r0, r2} and {r1, r3}). A warp writes and reads a tile as 512 contiguous bytes. */
template <typename T>
__device__ __forceinline__ void st_frag(T *tile, const float *c0, const float *c1) {
    uint4 x;
    x.x = pack2<T>(c0[0], c0[1]), x.y = pack2<T>(c0[2], c0[3]);
    x.z = pack2<T>(c1[0], c1[1]), x.w = pack2<T>(c1[2], c1[3]);
    *(uint4 *)(tile + (threadIdx.x & 31) * 8) = x;
}
template <typename T> __device__ __forceinline__ void ld_frag(uint32_t *r, const T *tile) {
    const uint4 x = *(const uint4 *)(tile + (threadIdx.x & 31) * 8);
    r[0] = x.x, r[1] = x.y, r[2] = x.z, r[3] = x.w;
}
template <typename T> __device__ __forceinline__ float2 unpack2(uint32_t r) {
    union {
        uint32_t u;
        T e[2];
    } p;
    p.u = r;
    return make_float2(to_f(p.e[0]), to_f(p.e[1]));
}
} // namespace

#endif
