/*
 * simd.h - the vector type the fast CPU kernels are written in.
 *
 * One source, several builds: each file in src/cpu is compiled once per SIMD level with the matching -m
 * flags and DN_ISA_SUFFIX, and GCC/Clang vector extensions lower the same code to AVX-512, AVX2
 * with FMA, or the baseline (SSE2 on x86-64, whatever the target has elsewhere). The runtime
 * picks a build with dn_isa_active(). Register blocking (DN_MR x DN_NR vectors) follows the
 * register file of each level.
 */
#ifndef DN_CPU_SIMD_H
#define DN_CPU_SIMD_H

#include <string.h>

#if defined(__AVX512F__)
#define DN_VW 16
#define DN_MR 6
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

static inline vf vload(const float *p) {
    vf r;
    memcpy(&r, p, sizeof r);
    return r;
}
static inline void vstore(float *p, vf x) { memcpy(p, &x, sizeof x); }
static inline vf vset1(float x) { return (vf){0} + x; }
static inline vf vzero(void) { return (vf){0}; }

#define DN_CAT2(a, b) a##_##b
#define DN_CAT(a, b) DN_CAT2(a, b)
/* dn_cpu_la_forward -> dn_cpu_la_forward_avx2, ... */
#define DN_ISA_FN(name) DN_CAT(name, DN_ISA_SUFFIX)

#endif
