/*
 * matmul.c - dense row-major matrix product: checks and a plain implementation.
 * (Placeholder kernel: a triple loop in double; the BLAS path and the blocked kernel replace it.)
 */
#include "internal.h"

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

dn_status dn_matmul(dn_trans ta, dn_trans tb, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                    int64_t ldc) {
    if ((unsigned)ta > 1 || (unsigned)tb > 1) return dn_fail(DN_ERR_ARG, "matmul: bad transpose");
    if (M < 0 || N < 0 || K < 0) return dn_fail(DN_ERR_SHAPE, "matmul: negative dimension");
    if (lda < max64(1, ta ? M : K) || ldb < max64(1, tb ? K : N) || ldc < max64(1, N))
        return dn_fail(DN_ERR_SHAPE, "matmul: leading dimension too small");
    if (M == 0 || N == 0) return DN_OK;
    if (!C || (K > 0 && (!A || !B))) return dn_fail(DN_ERR_NULL, "matmul: NULL matrix");
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++) {
                float a = ta ? A[k * lda + i] : A[i * lda + k];
                float b = tb ? B[j * ldb + k] : B[k * ldb + j];
                s += (double)a * b;
            }
            float *c = &C[i * ldc + j];
            *c = (float)(alpha * s + (beta != 0.0f ? (double)beta * *c : 0.0));
        }
    return DN_OK;
}

const char *dn_matmul_backend(void) { return "built-in (plain loop)"; }
