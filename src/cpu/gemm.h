/*
 * gemm.h - small register-blocked fp32 matrix products for the fused CPU kernels.
 *
 * The chunkwise kernels multiply matrices of at most 2C x 128 x 128 that live in one thread's
 * cache, between steps that are not matrix products (gates, triangular solves, masks). A BLAS
 * call per product would cost more in dispatch than these products take, and its own threads
 * would fight ours, so the products are written here, with the A operand addressed through a
 * (row, column) stride pair so that transposes need no copy.
 *
 * Included by src/cpu/ files compiled once per SIMD level (see simd.h).
 */
#ifndef DN_CPU_GEMM_H
#define DN_CPU_GEMM_H

#include "simd.h"

#include <stdint.h>

/* C[MR rows][NV vectors] (+)= A[rows][0..kend) * B[0..kend)[cols] */
#define DN_GEMM_MICRO(NAME, MRX, NVX)                                                              \
    static inline void NAME(int64_t kend, const float *A, int64_t rs, int64_t cs, const float *B,  \
                            int64_t ldb, float *C, int64_t ldc, float beta, const float *Cin) {    \
        vf c[MRX][NVX];                                                                            \
        for (int m = 0; m < MRX; m++)                                                              \
            for (int r = 0; r < NVX; r++)                                                          \
                c[m][r] = beta != 0.0f ? vset1(beta) * vload(Cin + m * ldc + r * DN_VW) : vzero(); \
        for (int64_t k = 0; k < kend; k++) {                                                       \
            vf b[NVX];                                                                             \
            for (int r = 0; r < NVX; r++)                                                          \
                b[r] = vload(B + k * ldb + r * DN_VW);                                             \
            for (int m = 0; m < MRX; m++) {                                                        \
                vf a = vset1(A[m * rs + k * cs]);                                                  \
                for (int r = 0; r < NVX; r++)                                                      \
                    c[m][r] += a * b[r];                                                           \
            }                                                                                      \
        }                                                                                          \
        for (int m = 0; m < MRX; m++)                                                              \
            for (int r = 0; r < NVX; r++)                                                          \
                vstore(C + m * ldc + r * DN_VW, c[m][r]);                                          \
    }

DN_GEMM_MICRO(gemm_micro_full, DN_MR, DN_NR)
/* row tails of a full-width panel: 1 .. DN_MR - 1 rows at once instead of one by one */
DN_GEMM_MICRO(gemm_micro_t2, 2, DN_NR)
DN_GEMM_MICRO(gemm_micro_t3, 3, DN_NR)
DN_GEMM_MICRO(gemm_micro_t4, 4, DN_NR)
DN_GEMM_MICRO(gemm_micro_t5, 5, DN_NR)
DN_GEMM_MICRO(gemm_micro_half, DN_MR, (DN_NR + 1) / 2)
DN_GEMM_MICRO(gemm_micro_rows, DN_MR, 1)
DN_GEMM_MICRO(gemm_micro_cols, 1, DN_NR)
DN_GEMM_MICRO(gemm_micro_one, 1, 1)

/*
 * C[M][N] = beta C + A[M][Kc] * B[Kc][N]   (beta = 0: C is only written, never read)
 *   A element (i,k) at A[i*rs + k*cs]; B row-major with leading dim ldb; C with ldc.
 *   N must be a multiple of DN_VW (callers pad their buffers).
 *   tri & DN_TRI_A: A is lower triangular (A[i][k] = 0 for k > i, zeros stored), so row block
 *     i0..i0+mr stops its sum at k = i0+mr.
 *   tri & DN_TRI_C: only the lower triangle of C is wanted (C[i][j] for j <= i); column blocks
 *     wholly above the diagonal of a row block are skipped and left unwritten.
 */
enum { DN_TRI_A = 1, DN_TRI_C = 2 };

/* As gemm_f32, with the beta term read from Cin (same leading dimension as C) instead of C. */
static void gemm_f32_from(int64_t M, int64_t N, int64_t Kc, const float *A, int64_t rs, int64_t cs,
                          const float *B, int64_t ldb, float *C, int64_t ldc, float beta,
                          const float *Cin, int tri) {
    /* Column blocks outside, row blocks inside: one K x (DN_NR vectors) panel of B stays in L1
     * while all rows of A stream past it. */
    const int lowa = tri & DN_TRI_A, lowc = tri & DN_TRI_C;
    const int64_t HALF = (DN_NR + 1) / 2;
    int64_t j = 0;
#define DN_PANEL(WIDTH, BIG, ONE)                                                                  \
    for (; j + (WIDTH)*DN_VW <= N; j += (WIDTH)*DN_VW) {                                           \
        int64_t i = lowc ? j / DN_MR * DN_MR : 0;                                                  \
        for (; i + DN_MR <= M; i += DN_MR) {                                                       \
            int64_t kend = lowa && i + DN_MR < Kc ? i + DN_MR : Kc;                                \
            BIG(kend, A + i * rs, rs, cs, B + j, ldb, C + i * ldc + j, ldc, beta,                  \
                Cin + i * ldc + j);                                                                \
        }                                                                                          \
        if ((WIDTH) == DN_NR && !lowc && M - i >= 2) { /* the row tail in one tile */              \
            const int64_t rem = M - i, kend = lowa && i + rem < Kc ? i + rem : Kc;                 \
            const float *a_ = A + i * rs, *b_ = B + j, *ci_ = Cin + i * ldc + j;                   \
            float *c_ = C + i * ldc + j;                                                           \
            if (rem == 2)                                                                          \
                gemm_micro_t2(kend, a_, rs, cs, b_, ldb, c_, ldc, beta, ci_);                      \
            else if (rem == 3)                                                                     \
                gemm_micro_t3(kend, a_, rs, cs, b_, ldb, c_, ldc, beta, ci_);                      \
            else if (rem == 4)                                                                     \
                gemm_micro_t4(kend, a_, rs, cs, b_, ldb, c_, ldc, beta, ci_);                      \
            else                                                                                   \
                gemm_micro_t5(kend, a_, rs, cs, b_, ldb, c_, ldc, beta, ci_);                      \
            i = M;                                                                                 \
        }                                                                                          \
        for (; i < M; i++) {                                                                       \
            if (lowc && i < j) continue;                                                           \
            int64_t kend = lowa && i + 1 < Kc ? i + 1 : Kc;                                        \
            ONE(kend, A + i * rs, rs, cs, B + j, ldb, C + i * ldc + j, ldc, beta,                  \
                Cin + i * ldc + j);                                                                \
        }                                                                                          \
    }
    DN_PANEL(DN_NR, gemm_micro_full, gemm_micro_cols)
    if (HALF > 1 && HALF < DN_NR) {
        for (; j + HALF * DN_VW <= N; j += HALF * DN_VW) {
            int64_t i = lowc ? j / DN_MR * DN_MR : 0;
            for (; i + DN_MR <= M; i += DN_MR) {
                int64_t kend = lowa && i + DN_MR < Kc ? i + DN_MR : Kc;
                gemm_micro_half(kend, A + i * rs, rs, cs, B + j, ldb, C + i * ldc + j, ldc, beta,
                                Cin + i * ldc + j);
            }
            for (; i < M; i++) {
                if (lowc && i < j) continue;
                int64_t kend = lowa && i + 1 < Kc ? i + 1 : Kc;
                for (int64_t jj = j; jj < j + HALF * DN_VW; jj += DN_VW)
                    gemm_micro_one(kend, A + i * rs, rs, cs, B + jj, ldb, C + i * ldc + jj, ldc,
                                   beta, Cin + i * ldc + jj);
            }
        }
    }
    DN_PANEL(1, gemm_micro_rows, gemm_micro_one)
#undef DN_PANEL
}

static inline void gemm_f32(int64_t M, int64_t N, int64_t Kc, const float *A, int64_t rs,
                            int64_t cs, const float *B, int64_t ldb, float *C, int64_t ldc,
                            float beta, int tri) {
    gemm_f32_from(M, N, Kc, A, rs, cs, B, ldb, C, ldc, beta, C, tri);
}

#endif
