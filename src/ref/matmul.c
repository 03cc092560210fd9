/*
 * ref/matmul.c - reference dense product: C = alpha op(A) op(B) + beta C, every element summed in
 * double in k order, the loop nest that is the definition. The tests hold dn_matmul's backends
 * (the built-in kernel at every SIMD level, the BLAS) to it.
 */
#include "../internal.h"

void dn_ref_matmul(const dn_matmul_args *a) {
    /* alpha = 0 or K = 0: A and B are not read (the BLAS convention), so NaN in them is not
     * propagated; beta = 0: C is not read */
    const int use_ab = a->alpha != 0.0f && a->K > 0;
    for (int64_t i = 0; i < a->M; i++)
        for (int64_t j = 0; j < a->N; j++) {
            double s = 0;
            for (int64_t k = 0; use_ab && k < a->K; k++) {
                const double x = a->ta ? a->A[k * a->lda + i] : a->A[i * a->lda + k];
                const double y = a->tb ? dn_matmul_b(a, j, k) : dn_matmul_b(a, k, j);
                s += x * y;
            }
            float *c = &a->C[i * a->ldc + j];
            const double prev = a->beta != 0.0f ? (double)a->beta * (double)*c : 0.0;
            *c = (float)((use_ab ? (double)a->alpha * s : 0.0) + prev);
        }
}
