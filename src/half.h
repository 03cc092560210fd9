/*
 * half.h - fp32 <-> fp16 / bf16 conversions, round to nearest even, in plain C (no F16C, no
 * _Float16) so every compiler and SIMD level gets the same bits. Used when a KV cache stores
 * 16-bit values and by the scalar tails of the kernels.
 */
#ifndef DN_HALF_H
#define DN_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t dn_f32_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    return x;
}
static inline float dn_bits_f32(uint32_t x) {
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

static inline uint16_t dn_f32_to_f16(float f) {
    const uint32_t x = dn_f32_bits(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds past 65504: inf */
    if (ax < 0x38800000u) {                                   /* below 2^-14: subnormal */
        /* a * 2^24 is exact; adding 2^23 rounds it to an integer, ties to even */
        float t = dn_bits_f32(ax) * 16777216.0f;
        t = (t + 8388608.0f) - 8388608.0f;
        return (uint16_t)(sign | (uint32_t)t);
    }
    uint32_t r = ax - 0x38000000u; /* exponent bias 127 -> 15 */
    r += 0x0fffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

static inline float dn_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        float f = (float)m * 5.9604644775390625e-8f; /* 2^-24 */
        return sign ? -f : f;
    }
    if (e == 31) return dn_bits_f32(sign | 0x7f800000u | (m << 13));
    return dn_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

static inline uint16_t dn_f32_to_bf16(float f) {
    const uint32_t x = dn_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

static inline float dn_bf16_to_f32(uint16_t h) { return dn_bits_f32((uint32_t)h << 16); }

#endif
