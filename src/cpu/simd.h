/*
 * simd.h - the vector type the fast CPU kernels are written in.
 *
 * One source, several builds: each file in src/cpu is compiled once per SIMD level with the
 * matching -m flags and DN_ISA_SUFFIX, and GCC/Clang vector extensions lower the same code to
 * AVX-512, AVX2 with FMA, or the baseline (SSE2 on x86-64, whatever the target has elsewhere). The
 * runtime picks a build with dn_isa_active(). Register blocking (DN_MR x DN_NR vectors) follows the
 * register file of each level.
 */
#ifndef DN_CPU_SIMD_H
#define DN_CPU_SIMD_H

#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define DN_VW 16
#define DN_MR 4
#define DN_NR 4
#elif defined(__AVX2__)
#define DN_VW 8
#define DN_MR 6
#define DN_NR 2
#else
#define DN_VW 4
#define DN_MR 4
#define DN_NR 2
#endif

typedef float vf __attribute__((vector_size(DN_VW * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(DN_VW * sizeof(int32_t))));

typedef uint16_t vu16 __attribute__((vector_size(DN_VW * sizeof(uint16_t))));
typedef uint32_t vu32 __attribute__((vector_size(DN_VW * sizeof(uint32_t))));

/* DN_VW bf16 values widened to fp32 (exactly: the bits shifted into the upper half). On AVX2 and
 * AVX-512 one zero-extending load (vpmovzxwd): GCC 12 lowers the generic conversion below to two
 * half-width extensions and an insert, which costs the decode loops a third of their speed. */
static inline vf vload_bf16(const uint16_t *p) {
#if defined(__AVX512F__) && DN_VW == 16
    return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
#elif defined(__AVX2__) && DN_VW == 8
    return (vf)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
#else
    vu16 h;
    memcpy(&h, p, sizeof h);
    const vu32 w = __builtin_convertvector(h, vu32) << 16;
    vf r;
    memcpy(&r, &w, sizeof r);
    return r;
#endif
}

static inline vf vload(const float *p) {
    vf r;
    memcpy(&r, p, sizeof r);
    return r;
}
static inline void vstore(float *p, vf x) { memcpy(p, &x, sizeof x); }
static inline vf vset1(float x) { return (vf){0} + x; }
static inline vf vzero(void) { return (vf){0}; }

/* Horizontal sum by halving: 16 -> 8 -> 4 lanes in vector adds, then the last four. */
typedef float vf4 __attribute__((vector_size(4 * sizeof(float))));
static inline float vhsum(vf x) {
#if DN_VW >= 8
    typedef float vhalf __attribute__((vector_size(DN_VW / 2 * sizeof(float))));
    vhalf a, b;
    memcpy(&a, &x, sizeof a);
    memcpy(&b, (char *)&x + sizeof a, sizeof b);
    a += b;
#if DN_VW == 16
    vf4 c, d;
    memcpy(&c, &a, sizeof c);
    memcpy(&d, (char *)&a + sizeof c, sizeof d);
    c += d;
#else
    vf4 c = a;
#endif
#else
    vf4 c = x;
#endif
    return (c[0] + c[2]) + (c[1] + c[3]);
}

/* sum a[i] b[i] with vector partial sums (a plain loop would be summed lane by lane in order,
 * since the compiler may not reassociate float additions). */
static inline float dot_f32(const float *a, const float *b, int64_t n) {
    vf acc0 = vzero(), acc1 = vzero();
    int64_t i = 0;
    for (; i + 2 * DN_VW <= n; i += 2 * DN_VW) {
        acc0 += vload(a + i) * vload(b + i);
        acc1 += vload(a + i + DN_VW) * vload(b + i + DN_VW);
    }
    for (; i + DN_VW <= n; i += DN_VW)
        acc0 += vload(a + i) * vload(b + i);
    float s = vhsum(acc0 + acc1);
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* sum a[i] widen(b[i]) over bf16 b, with vector partial sums as dot_f32. */
static inline float dot_f32_bf16(const float *a, const uint16_t *b, int64_t n) {
    vf acc0 = vzero(), acc1 = vzero();
    int64_t i = 0;
    for (; i + 2 * DN_VW <= n; i += 2 * DN_VW) {
        acc0 += vload(a + i) * vload_bf16(b + i);
        acc1 += vload(a + i + DN_VW) * vload_bf16(b + i + DN_VW);
    }
    for (; i + DN_VW <= n; i += DN_VW)
        acc0 += vload(a + i) * vload_bf16(b + i);
    float s = vhsum(acc0 + acc1);
    for (; i < n; i++) {
        const uint32_t u = (uint32_t)b[i] << 16;
        float f;
        memcpy(&f, &u, sizeof f);
        s += a[i] * f;
    }
    return s;
}

/* dot_f32_bf16 of a with four rows of b at once, b, b + gap, b + 2 gap, b + 3 gap (elements): a
 * is loaded once for the four, and eight independent FMA chains keep the loads in flight (a
 * decode step's matrix-vector product is bound by reading b). Far-apart rows are four memory
 * streams, which a core reads faster than one; each is prefetched `ahead` bytes on (the next
 * row of its stream). Each row is summed in exactly dot_f32_bf16's order: the same bits. */
static inline void dot4_f32_bf16(float out[4], const float *a, const uint16_t *b, int64_t gap,
                                 int64_t ahead, int64_t n) {
    const uint16_t *b0 = b, *b1 = b + gap, *b2 = b + 2 * gap, *b3 = b + 3 * gap;
    /* a prefetch address may lie past the matrix: formed as an integer, never a pointer */
    const uintptr_t row = (uintptr_t)gap * sizeof(uint16_t);
    vf p0 = vzero(), q0 = vzero(), p1 = vzero(), q1 = vzero();
    vf p2 = vzero(), q2 = vzero(), p3 = vzero(), q3 = vzero();
    int64_t i = 0;
    for (; i + 2 * DN_VW <= n; i += 2 * DN_VW) {
        const uintptr_t at = (uintptr_t)(b0 + i) + (uintptr_t)ahead;
        __builtin_prefetch((const void *)at), __builtin_prefetch((const void *)(at + row));
        __builtin_prefetch((const void *)(at + 2 * row));
        __builtin_prefetch((const void *)(at + 3 * row));
        const vf x = vload(a + i), y = vload(a + i + DN_VW);
        p0 += x * vload_bf16(b0 + i), q0 += y * vload_bf16(b0 + i + DN_VW);
        p1 += x * vload_bf16(b1 + i), q1 += y * vload_bf16(b1 + i + DN_VW);
        p2 += x * vload_bf16(b2 + i), q2 += y * vload_bf16(b2 + i + DN_VW);
        p3 += x * vload_bf16(b3 + i), q3 += y * vload_bf16(b3 + i + DN_VW);
    }
    for (; i + DN_VW <= n; i += DN_VW) {
        const vf x = vload(a + i);
        p0 += x * vload_bf16(b0 + i), p1 += x * vload_bf16(b1 + i);
        p2 += x * vload_bf16(b2 + i), p3 += x * vload_bf16(b3 + i);
    }
    out[0] = vhsum(p0 + q0), out[1] = vhsum(p1 + q1), out[2] = vhsum(p2 + q2);
    out[3] = vhsum(p3 + q3);
    for (; i < n; i++) {
        const uint32_t u0 = (uint32_t)b0[i] << 16, u1 = (uint32_t)b1[i] << 16;
        const uint32_t u2 = (uint32_t)b2[i] << 16, u3 = (uint32_t)b3[i] << 16;
        float f0, f1, f2, f3;
        memcpy(&f0, &u0, sizeof f0), memcpy(&f1, &u1, sizeof f1);
        memcpy(&f2, &u2, sizeof f2), memcpy(&f3, &u3, sizeof f3);
        out[0] += a[i] * f0, out[1] += a[i] * f1, out[2] += a[i] * f2, out[3] += a[i] * f3;
    }
}

/* exp(x), about 2 ulp: x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r, and 2^n
 * put into the exponent bits. Inputs below -87.3 (where e^x leaves the normal range) give 0;
 * inputs above 88 are clamped there (e^88 = 1.65e38), so the result is always finite. */
static inline vf vexp(vf x) {
    const vf lo = vset1(-87.3f), hi = vset1(88.0f);
    vi keep = x >= lo;
    vi over = x > hi;
    x = (vf)(((vi)x & keep) | ((vi)lo & ~keep));
    x = (vf)(((vi)x & ~over) | ((vi)hi & over));
    const vf shifter = vset1(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    vf nf = x * vset1(1.44269504088896341f) + shifter;
    nf -= shifter;
    vf r = x - nf * vset1(0.693359375f);
    r -= nf * vset1(-2.12194440e-4f);
    vf p = vset1(1.0f / 720);
    p = p * r + vset1(1.0f / 120);
    p = p * r + vset1(1.0f / 24);
    p = p * r + vset1(1.0f / 6);
    p = p * r + vset1(0.5f);
    p = p * r + vset1(1.0f);
    p = p * r + vset1(1.0f);
    vi n = __builtin_convertvector(nf, vi);
    vf scale = (vf)((n + 127) << 23);
    return (vf)((vi)(p * scale) & keep);
}

/* The kernels' decays and softmax weights: arguments known to be <= 0. */
static inline vf vexp_neg(vf x) { return vexp(x); }

/* softplus(x) = max(x, 0) + log1p(e^{-|x|}), with log1p(e) = 2 atanh(e / (2 + e)) as an odd series
 * in s = e / (2 + e) <= 1/3 (terms to s^13: under 1e-8 relative). */
static inline vf vsoftplus(vf x) {
    const vi absmask = (vi){0} + 0x7fffffff;
    const vf ax = (vf)((vi)x & absmask), e = vexp(-ax);
    const vf s = e / (vset1(2.0f) + e), s2 = s * s;
    vf p = vset1(1.0f / 13);
    p = p * s2 + vset1(1.0f / 11);
    p = p * s2 + vset1(1.0f / 9);
    p = p * s2 + vset1(1.0f / 7);
    p = p * s2 + vset1(1.0f / 5);
    p = p * s2 + vset1(1.0f / 3);
    p = p * s2 + vset1(1.0f);
    const vi pos = x > vzero();
    const vf relu = (vf)((vi)x & pos);
    return relu + vset1(2.0f) * s * p;
}

/* Whether the n floats at x (n a multiple of DN_VW) are all finite: x * 0 is 0 for a finite x and
 * NaN for inf or NaN, and a NaN lane survives the sum. The masking kernels ask it before they let
 * a product multiply a masked (zero) weight by a value it must not see. */
static inline int all_finite(const float *x, int64_t n) {
    vf acc = vzero();
    for (int64_t i = 0; i < n; i += DN_VW)
        acc += vload(x + i) * vzero();
    const float s = vhsum(acc);
    return s == s;
}

static inline vf vmax(vf a, vf b) {
    vi gt = a > b;
    return (vf)(((vi)a & gt) | ((vi)b & ~gt));
}

/* dst[j][i] = src[i][j] for i < nr, j < nc (leading dimensions lds, ldd): 8 x 8 tiles in AVX
 * registers where the build has them, element by element at the edges and elsewhere. */
#if defined(__AVX2__)
#include <immintrin.h>
static inline void transpose8(float *dst, int64_t ldd, const float *src, int64_t lds) {
    __m256 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++)
        r[i] = _mm256_loadu_ps(src + i * lds);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
    }
}
#endif

static inline void transpose_f32(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t nr,
                                 int64_t nc) {
    int64_t i0 = 0;
#if defined(__AVX2__)
    for (; i0 + 8 <= nr; i0 += 8) {
        int64_t j0 = 0;
        for (; j0 + 8 <= nc; j0 += 8)
            transpose8(dst + j0 * ldd + i0, ldd, src + i0 * lds + j0, lds);
        for (int64_t i = i0; i < i0 + 8; i++)
            for (int64_t j = j0; j < nc; j++)
                dst[j * ldd + i] = src[i * lds + j];
    }
#endif
    for (int64_t i = i0; i < nr; i++)
        for (int64_t j = 0; j < nc; j++)
            dst[j * ldd + i] = src[i * lds + j];
}

#define DN_CAT2(a, b) a##_##b
#define DN_CAT(a, b) DN_CAT2(a, b)
/* dn_cpu_la_forward -> dn_cpu_la_forward_avx2, ... */
#define DN_ISA_FN(name) DN_CAT(name, DN_ISA_SUFFIX)

#endif
