/*
 * test_matmul.c - dn_matmul against the double reference (src/ref/matmul.c) on every backend this
 * build and machine have: the built-in kernel at each SIMD level and the BLAS. Shapes from 1x1x1
 * through odd primes to ones straddling each block size of the built-in kernel, every transpose
 * combination, leading dimensions larger than needed, alpha and beta variations; C is poisoned
 * (NaN where beta = 0 lets it be, a canary between and around its rows) and the padding of A and
 * B is NaN, so a write outside C's view or a read outside A's and B's shows. Then the contract
 * (bad arguments return their status and leave C untouched), allocation failure, and bitwise
 * reproducibility of the built-in kernel.
 *
 * Tolerance, per element: the float error of a sum of K products, however it is ordered or
 * blocked, plus the roundings of alpha, beta and the final store, is within
 * gamma_{K+5} (|alpha| sum_k |a_ik||b_kj| + |beta||c_ij|), gamma_n = n u / (1 - n u),
 * u = FLT_EPSILON / 2 (Higham, Accuracy and Stability of Numerical Algorithms, 3.1).
 */
#include "test.h"

#include "../src/internal.h" /* dn_ref_matmul and its argument struct */

#include <stdint.h>

/* ---- backends ------------------------------------------------------------------------------ */

/* Backend b: 0 .. DN_ISA_COUNT-1 the built-in kernel at that SIMD level, DN_ISA_COUNT the BLAS.
 * Returns 0 (and records the skip for an ISA) when this build or machine lacks it. */
#define N_BACKENDS (DN_ISA_COUNT + 1)
static int use_backend(int b) {
    if (b == DN_ISA_COUNT) return dn_matmul_set_backend("blas") == DN_OK;
    if (dn_matmul_set_backend("builtin") != DN_OK) return 0;
    return test_use_isa((dn_isa)b);
}
static const char *backend_label(int b) {
    return b == DN_ISA_COUNT ? dn_matmul_backend() : dn_isa_name((dn_isa)b);
}
/* Puts back the process's backend (blas when there is one) after a case. */
static void restore_backend(void) {
    if (dn_matmul_set_backend("blas") != DN_OK) dn_matmul_set_backend("builtin");
}

/* ---- one product against the reference -------------------------------------------------- */

typedef struct {
    int64_t M, N, K;
} shape;

typedef struct {
    dn_trans ta, tb;
    int64_t M, N, K, lda, ldb, ldc;
    float alpha, beta;
    dn_dtype btype; /* B stored in 16 bits: dn_matmul_ex */
} mm_case;

#define GUARD 37 /* canary floats before and after C */
static const uint32_t CANARY = 0x7fc0beefu;

static float canary_value(void) {
    float f;
    memcpy(&f, &CANARY, sizeof f);
    return f;
}

/* A stored [rows, ld] matrix with its first cols columns random and the rest NaN */
static float *matrix_new(rng *r, int64_t rows, int64_t cols, int64_t ld) {
    const int64_t n = rows * ld;
    float *x = falloc(n);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < ld; j++)
            x[i * ld + j] = j < cols ? rng_uniform(r, -1, 1) : NAN;
    return x;
}

/* Runs one case on the backend in use and checks it; returns the number of failed checks. */
static int check_case(const mm_case *c, rng *r, const char *label) {
    int fails = 0;
    const int64_t M = c->M, N = c->N, K = c->K;
    const int64_t ar = c->ta ? K : M, ac = c->ta ? M : K, br = c->tb ? N : K, bc = c->tb ? K : N;
    float *A = matrix_new(r, ar, ac, c->lda), *B = matrix_new(r, br, bc, c->ldb);
    /* 16-bit B: B holds the stored values widened, so the reference and the bound see them */
    uint16_t *B16 = NULL;
    if (c->btype != DN_F32) {
        B16 = calloc((size_t)(br * c->ldb) + 1, sizeof *B16);
        for (int64_t i = 0; i < br * c->ldb; i++) {
            B16[i] = c->btype == DN_BF16 ? dn_f32_to_bf16(B[i]) : dn_f32_to_f16(B[i]);
            B[i] = c->btype == DN_BF16 ? dn_bf16_to_f32(B16[i]) : dn_f16_to_f32(B16[i]);
        }
    }
    const int64_t nc = 2 * GUARD + M * c->ldc;
    float *cbuf = falloc(nc), *c0 = falloc(nc), *cref = falloc(nc);
    for (int64_t i = 0; i < nc; i++)
        cbuf[i] = canary_value();
    float *C = cbuf + GUARD;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++)
            C[i * c->ldc + j] = c->beta == 0.0f ? NAN : rng_uniform(r, -1, 1);
    memcpy(c0, cbuf, sizeof(float) * (size_t)nc);
    memcpy(cref, cbuf, sizeof(float) * (size_t)nc);
    const dn_matmul_args ra = {.ta = c->ta,
                               .tb = c->tb,
                               .M = M,
                               .N = N,
                               .K = K,
                               .alpha = c->alpha,
                               .beta = c->beta,
                               .A = A,
                               .B = B,
                               .C = cref + GUARD,
                               .lda = c->lda,
                               .ldb = c->ldb,
                               .ldc = c->ldc,
                               .btype = c->btype,
                               .B16 = B16};
    dn_ref_matmul(&ra);
    dn_status st = c->btype == DN_F32 ? dn_matmul(c->ta, c->tb, M, N, K, c->alpha, A, c->lda, B,
                                                  c->ldb, c->beta, C, c->ldc)
                                      : dn_matmul_ex(c->ta, c->tb, M, N, K, c->alpha, A, c->lda,
                                                     B16, c->btype, c->ldb, c->beta, C, c->ldc);
    char what[160];
    snprintf(what, sizeof what, "%s %s %s%s %lldx%lldx%lld alpha %g beta %g ld %lld,%lld,%lld",
             label, dn_dtype_name(c->btype), c->ta ? "T" : "N", c->tb ? "T" : "N", (long long)M,
             (long long)N, (long long)K, c->alpha, c->beta, (long long)c->lda, (long long)c->ldb,
             (long long)c->ldc);
    if (st != DN_OK) {
        printf("    FAIL %s: %s (%s)\n", what, dn_status_str(st), dn_last_error());
        fails++;
    } else {
        const double u = FLT_EPSILON / 2, n = (double)K + 5, gamma = n * u / (1 - n * u);
        double worst = 0, num = 0, den = 0;
        int64_t wi = 0, wj = 0;
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double s = 0;
                for (int64_t k = 0; c->alpha != 0.0f && k < K; k++) {
                    const float a = c->ta ? A[k * c->lda + i] : A[i * c->lda + k];
                    const float b = c->tb ? B[j * c->ldb + k] : B[k * c->ldb + j];
                    s += fabs((double)a * b);
                }
                const double prev = c->beta != 0.0f ? fabs((double)c0[GUARD + i * c->ldc + j]) : 0;
                const double bound = gamma * (fabs((double)c->alpha) * s + fabs(c->beta) * prev);
                const double got = C[i * c->ldc + j], want = cref[GUARD + i * c->ldc + j];
                const double d = fabs(got - want);
                num += d * d, den += want * want;
                /* ratio to the bound (NaN fails; 0 error against a 0 bound passes) */
                const double q = d == 0 ? 0 : d / bound;
                if (!(q <= worst) && !isnan(worst)) worst = q, wi = i, wj = j;
            }
        if (!(worst <= 1.0)) {
            printf("    FAIL %s: error %.3g x the bound at [%lld,%lld] (got %.9g, reference %.9g; "
                   "rel RMS %.3g)\n",
                   what, worst, (long long)wi, (long long)wj, C[wi * c->ldc + wj],
                   cref[GUARD + wi * c->ldc + wj], den > 0 ? sqrt(num / den) : sqrt(num));
            fails++;
        }
        /* nothing outside the view: the row padding and the guards keep their canaries */
        for (int64_t i = 0; i < nc; i++) {
            const int64_t off = i - GUARD, row = off / c->ldc, col = off % c->ldc;
            const int inside = off >= 0 && row < M && col < N;
            if (!inside && memcmp(&cbuf[i], &c0[i], sizeof(float))) {
                printf("    FAIL %s: wrote outside C's view (buffer element %lld)\n", what,
                       (long long)i);
                fails++;
                break;
            }
        }
    }
    free(A), free(B), free(B16), free(cbuf), free(c0), free(cref);
    return fails;
}

/* ---- the shapes -------------------------------------------------------------------------- */

/* Block sizes of the built-in kernel (src/cpu/matmul.c): MR 6 (14 at AVX-512), NR 8 / 16 / 32,
 * KC 256, MC 168, NC 4096; the shapes sit on both sides of each. */
static const shape shapes[] = {
    {1, 1, 1},      {7, 13, 29},     {2, 3, 5},    {6, 16, 1},     {5, 17, 3},    {14, 32, 7},
    {13, 31, 257},  {15, 33, 255},   {12, 9, 256}, {29, 65, 300},  {167, 17, 64}, {168, 8, 20},
    {169, 40, 513}, {337, 7, 11},    {3, 4097, 3}, {2, 4128, 2},   {1, 1000, 97}, {1000, 1, 37},
    {31, 23, 1},    {257, 129, 511}, {64, 64, 64}, {100, 200, 0},  {9, 3, 0},     {0, 5, 5},
    {5, 0, 5},      {4, 300, 700},   {6, 300, 70}, {5, 1100, 900}, {1, 1003, 40}, {1, 262, 1031},
};
#define N_SHAPES (int)(sizeof shapes / sizeof shapes[0])

static const float alphas[] = {1.0f, 1.0f, -0.5f, 2.0f, 0.0f, 0.75f};
static const float betas[] = {0.0f, 1.0f, 0.25f, -1.0f, 0.5f, 0.0f};
#define N_AB 6
static const int64_t ld_extra[] = {0, 3, 17};

/* Every shape, every transpose pair, with alpha/beta and leading dims varying across cases. */
static int run_grid(int b, rng *r, dn_dtype btype) {
    int fails = 0, idx = 0;
    for (int s = 0; s < N_SHAPES; s++)
        for (int t = 0; t < 4; t++, idx++) {
            mm_case c = {.ta = (dn_trans)(t >> 1),
                         .tb = (dn_trans)(t & 1),
                         .M = shapes[s].M,
                         .N = shapes[s].N,
                         .K = shapes[s].K,
                         .btype = btype};
            c.alpha = alphas[idx % N_AB], c.beta = betas[idx % N_AB];
            const int64_t ac = c.ta ? c.M : c.K, bc = c.tb ? c.K : c.N;
            c.lda = (ac > 1 ? ac : 1) + ld_extra[idx % 3];
            c.ldb = (bc > 1 ? bc : 1) + ld_extra[(idx + 1) % 3];
            c.ldc = (c.N > 1 ? c.N : 1) + ld_extra[(idx + 2) % 3];
            fails += check_case(&c, r, backend_label(b));
            if (fails > 8) return fails; /* enough to diagnose */
        }
    return fails;
}

static int test_vs_reference(void) {
    int fails = 0;
    rng r = {2024};
    for (int b = 0; b < N_BACKENDS; b++) {
        if (!use_backend(b)) continue;
        fails += run_grid(b, &r, DN_F32);
    }
    restore_backend();
    return fails;
}

/* B in bf16 and fp16 (dn_matmul_ex, the model's weights in their stored type): the same grid
 * against the reference over the widened values; every backend (16-bit B always takes the
 * built-in kernel). */
static int test_16bit_b(void) {
    int fails = 0;
    rng r = {77};
    for (int b = 0; b < N_BACKENDS; b++) {
        if (!use_backend(b)) continue;
        fails += run_grid(b, &r, DN_BF16);
        fails += run_grid(b, &r, DN_F16);
    }
    restore_backend();
    float a[4] = {1, 2, 3, 4}, c[4];
    uint16_t w[4] = {0x3f80, 0, 0, 0x3f80}; /* bf16 identity */
    CHECK(dn_matmul_ex(DN_NO_TRANS, DN_TRANS, 2, 2, 2, 1.0f, a, 2, w, DN_BF16, 2, 0.0f, c, 2) ==
                  DN_OK &&
              c[0] == 1 && c[1] == 2 && c[2] == 3 && c[3] == 4,
          "bf16 identity: %s", dn_last_error());
    CHECK(dn_matmul_ex(DN_NO_TRANS, DN_TRANS, 2, 2, 2, 1.0f, a, 2, w, (dn_dtype)7, 2, 0.0f, c, 2) ==
              DN_ERR_ARG,
          "unknown B dtype");
    CHECK(dn_matmul_ex(DN_NO_TRANS, DN_TRANS, 2, 2, 2, 1.0f, a, 2, NULL, DN_BF16, 2, 0.0f, c, 2) ==
              DN_ERR_NULL,
          "NULL 16-bit B");
    /* a decode step (one row, bf16 B transposed: four rows of B at a time) gives the same bits
     * as the same row inside a two-row product (one row of B at a time): one summation order */
    for (int isa = 0; isa < DN_ISA_COUNT; isa++) {
        if (!test_use_isa((dn_isa)isa)) continue;
        const int64_t N = 263, K = 1037, ld = K + 5;
        float *x2 = falloc(2 * K), *c1 = falloc(N), *c2 = falloc(2 * N);
        uint16_t *B = calloc((size_t)(N * ld), sizeof *B);
        for (int64_t i = 0; i < K; i++)
            x2[i] = x2[K + i] = rng_uniform(&r, -1, 1);
        for (int64_t i = 0; i < N * ld; i++)
            B[i] = dn_f32_to_bf16(rng_uniform(&r, -1, 1));
        CHECK(dn_matmul_ex(DN_NO_TRANS, DN_TRANS, 1, N, K, 1.0f, x2, K, B, DN_BF16, ld, 0.0f, c1,
                           N) == DN_OK &&
                  dn_matmul_ex(DN_NO_TRANS, DN_TRANS, 2, N, K, 1.0f, x2, K, B, DN_BF16, ld, 0.0f,
                               c2, N) == DN_OK &&
                  !memcmp(c1, c2, sizeof(float) * (size_t)N) &&
                  !memcmp(c1, c2 + N, sizeof(float) * (size_t)N),
              "bf16 decode row (%s): not the bits of the two-row product",
              dn_isa_name((dn_isa)isa));
        free(x2), free(c1), free(c2), free(B);
    }
    dn_set_isa(dn_isa_best());
    return fails;
}

/* The same grid with one thread (and with three, an odd split, when there are threads). */
static int test_threads(void) {
    int fails = 0;
    rng r = {99};
    const int counts[] = {1, 3};
    for (int i = 0; i < 2; i++) {
        dn_set_num_threads(counts[i]);
        for (int b = 0; b < N_BACKENDS; b++) {
            if (!use_backend(b)) continue;
            fails += run_grid(b, &r, DN_F32);
        }
    }
    dn_set_num_threads(0);
    restore_backend();
    return fails;
}

/* C = A1 B1, then C += A2 B2 (beta = 1) over the two halves of K, as a gradient accumulates:
 * against the reference of the whole product. */
static int test_accumulate(void) {
    int fails = 0;
    rng r = {5};
    const int64_t M = 97, N = 71, K = 600, K1 = 259;
    float *A = falloc(M * K), *B = falloc(K * N), *C = falloc(M * N), *R = falloc(M * N);
    fill_uniform(&r, A, M * K, -1, 1);
    fill_uniform(&r, B, K * N, -1, 1);
    const dn_matmul_args ra = {.M = M,
                               .N = N,
                               .K = K,
                               .alpha = 1.0f,
                               .beta = 0.0f,
                               .A = A,
                               .B = B,
                               .C = R,
                               .lda = K,
                               .ldb = N,
                               .ldc = N};
    dn_ref_matmul(&ra);
    for (int b = 0; b < N_BACKENDS; b++) {
        if (!use_backend(b)) continue;
        poison(C, M * N);
        dn_status s1 = dn_matmul(DN_NO_TRANS, DN_NO_TRANS, M, N, K1, 1.0f, A, K, B, N, 0.0f, C, N);
        dn_status s2 = dn_matmul(DN_NO_TRANS, DN_NO_TRANS, M, N, K - K1, 1.0f, A + K1, K,
                                 B + K1 * N, N, 1.0f, C, N);
        CHECK(s1 == DN_OK && s2 == DN_OK, "%s: %s", backend_label(b), dn_last_error());
        /* |a|, |b| <= 1: sum |a||b| <= K, and two float sums of at most K terms each */
        for (int64_t i = 0; i < M * N; i++) {
            const double bound = (K + 6) * (FLT_EPSILON / 2) * K;
            if (!(fabs((double)C[i] - R[i]) <= bound)) {
                printf("    FAIL %s accumulate: [%lld] %.9g, reference %.9g\n", backend_label(b),
                       (long long)i, C[i], R[i]);
                fails++;
                break;
            }
        }
    }
    restore_backend();
    free(A), free(B), free(C), free(R);
    return fails;
}

/* alpha = 0 or K = 0: A and B are not read, C = beta C (beta = 0: zeros over NaN). */
static int test_no_product(void) {
    int fails = 0;
    const int64_t M = 9, N = 11, K = 5;
    float A[9 * 5], B[5 * 11], C[9 * 11], C0[9 * 11];
    for (int i = 0; i < M * K; i++)
        A[i] = NAN;
    for (int i = 0; i < K * N; i++)
        B[i] = NAN;
    fill_uniform(&(rng){3}, C0, M * N, -1, 1);
    for (int b = 0; b < N_BACKENDS; b++) {
        if (!use_backend(b)) continue;
        const float betas_[3] = {0.0f, 1.0f, 0.5f};
        for (int j = 0; j < 3; j++)
            for (int k0 = 0; k0 < 2; k0++) {
                memcpy(C, C0, sizeof C);
                if (betas_[j] == 0.0f) poison(C, M * N);
                /* alpha = 0 with K = 5, or alpha = 1 with K = 0 */
                dn_status st = dn_matmul(DN_NO_TRANS, DN_NO_TRANS, M, N, k0 ? 0 : K,
                                         k0 ? 1.0f : 0.0f, A, K, B, N, betas_[j], C, N);
                CHECK(st == DN_OK, "%s: %s", backend_label(b), dn_last_error());
                for (int i = 0; i < M * N; i++)
                    if (C[i] != betas_[j] * C0[i]) {
                        printf("    FAIL %s %s, beta %g: C[%d] = %g, want %g\n", backend_label(b),
                               k0 ? "K = 0" : "alpha = 0", betas_[j], i, C[i], betas_[j] * C0[i]);
                        fails++;
                        break;
                    }
            }
    }
    restore_backend();
    return fails;
}

/* ---- the contract ---------------------------------------------------------------------- */

#define POOL 4096
static float pool_a[POOL], pool_b[POOL], pool_c[POOL], pool_c0[POOL];

static int expect(dn_status want, dn_status got, const char *what) {
    int fails = 0;
    if (got != want) {
        printf("    FAIL %s: got %s (%s), want %s\n", what, dn_status_str(got), dn_last_error(),
               dn_status_str(want));
        fails++;
    }
    if (memcmp(pool_c, pool_c0, sizeof pool_c)) {
        printf("    FAIL %s: C was written\n", what);
        fails++;
    }
    return fails;
}

static int test_contract(void) {
    int fails = 0;
    rng r = {11};
    fill_uniform(&r, pool_a, POOL, -1, 1);
    fill_uniform(&r, pool_b, POOL, -1, 1);
    fill_uniform(&r, pool_c0, POOL, -1, 1);
    const int64_t BIG = (int64_t)1 << 40;
    for (int b = 0; b < N_BACKENDS; b++) {
        if (!use_backend(b)) continue;
        memcpy(pool_c, pool_c0, sizeof pool_c);
        float *A = pool_a, *B = pool_b, *C = pool_c;
        const dn_trans NT = DN_NO_TRANS, T = DN_TRANS;
        fails += expect(DN_ERR_ARG, dn_matmul((dn_trans)2, NT, 4, 4, 4, 1, A, 4, B, 4, 0, C, 4),
                        "ta = 2");
        fails += expect(DN_ERR_ARG, dn_matmul(NT, (dn_trans)-1, 4, 4, 4, 1, A, 4, B, 4, 0, C, 4),
                        "tb = -1");
        fails += expect(DN_ERR_SHAPE, dn_matmul(NT, NT, -1, 4, 4, 1, A, 4, B, 4, 0, C, 4), "M < 0");
        fails += expect(DN_ERR_SHAPE, dn_matmul(NT, NT, 4, -1, 4, 1, A, 4, B, 4, 0, C, 4), "N < 0");
        fails += expect(DN_ERR_SHAPE, dn_matmul(NT, NT, 4, 4, -1, 1, A, 4, B, 4, 0, C, 4), "K < 0");
        /* leading dims below the stored row length: A [M,K] or [K,M], B [K,N] or [N,K] */
        fails +=
            expect(DN_ERR_SHAPE, dn_matmul(NT, NT, 4, 6, 5, 1, A, 4, B, 6, 0, C, 6), "lda < K");
        fails +=
            expect(DN_ERR_SHAPE, dn_matmul(T, NT, 4, 6, 5, 1, A, 3, B, 6, 0, C, 6), "lda < M (ta)");
        fails +=
            expect(DN_ERR_SHAPE, dn_matmul(NT, NT, 4, 6, 5, 1, A, 5, B, 5, 0, C, 6), "ldb < N");
        fails +=
            expect(DN_ERR_SHAPE, dn_matmul(NT, T, 4, 6, 5, 1, A, 5, B, 4, 0, C, 6), "ldb < K (tb)");
        fails +=
            expect(DN_ERR_SHAPE, dn_matmul(NT, NT, 4, 6, 5, 1, A, 5, B, 6, 0, C, 5), "ldc < N");
        fails += expect(DN_ERR_SHAPE, dn_matmul(NT, NT, 4, 6, 0, 1, A, 0, B, 6, 0, C, 6),
                        "lda = 0 with K = 0");
        /* products that overflow, with buffers far smaller than the shapes: a wrapped size would
         * read or write out of bounds (AddressSanitizer) or change C */
        fails +=
            expect(DN_ERR_SHAPE, dn_matmul(NT, NT, BIG, BIG, BIG, 1, A, BIG, B, BIG, 0, C, BIG),
                   "M = N = K = 2^40");
        fails += expect(DN_ERR_SHAPE, dn_matmul(T, T, BIG, BIG, BIG, 1, A, BIG, B, BIG, 0, C, BIG),
                        "M = N = K = 2^40, transposed");
        fails +=
            expect(DN_ERR_SHAPE, dn_matmul(NT, NT, (int64_t)1 << 62, 4, 4, 1, A, 4, B, 4, 0, C, 4),
                   "M = 2^62");
        fails += expect(DN_ERR_SHAPE, dn_matmul(NT, NT, 0, BIG, BIG, 1, A, BIG, B, BIG, 0, C, BIG),
                        "M = 0, B [2^40,2^40]");
        fails += expect(DN_ERR_SHAPE, dn_matmul(NT, NT, 2, 2, 2, 1, A, INT64_MAX, B, 2, 0, C, 2),
                        "lda = INT64_MAX");
        /* NULLs */
        fails +=
            expect(DN_ERR_NULL, dn_matmul(NT, NT, 4, 4, 4, 1, NULL, 4, B, 4, 0, C, 4), "A NULL");
        fails +=
            expect(DN_ERR_NULL, dn_matmul(NT, NT, 4, 4, 4, 1, A, 4, NULL, 4, 0, C, 4), "B NULL");
        fails +=
            expect(DN_ERR_NULL, dn_matmul(NT, NT, 4, 4, 4, 1, A, 4, B, 4, 0, NULL, 4), "C NULL");
        fails += expect(DN_OK, dn_matmul(NT, NT, 0, 4, 4, 1, NULL, 4, NULL, 4, 0, NULL, 4),
                        "M = 0, all NULL");
        fails += expect(DN_OK, dn_matmul(NT, NT, 4, 0, 4, 1, NULL, 4, NULL, 1, 0, NULL, 1),
                        "N = 0, all NULL");
        /* C overlapping A or B */
        fails += expect(DN_ERR_ARG, dn_matmul(NT, NT, 4, 4, 4, 1, C, 4, B, 4, 0, C, 4), "C == A");
        fails += expect(DN_ERR_ARG, dn_matmul(NT, NT, 4, 4, 4, 1, A, 4, C + 10, 4, 0, C, 4),
                        "C overlaps B");
        fails += expect(DN_ERR_ARG, dn_matmul(T, NT, 4, 4, 4, 1, C + 15, 4, B, 4, 0, C, 4),
                        "C's last element is A's first");
        /* K = 0 with A and B NULL: C = beta C, so C changes: checked apart */
        memcpy(C, pool_c0, sizeof pool_c);
        dn_status st = dn_matmul(NT, NT, 4, 4, 0, 1, NULL, 1, NULL, 4, 2.0f, C, 4);
        CHECK(st == DN_OK && C[5] == 2.0f * pool_c0[5] && C[16] == pool_c0[16],
              "K = 0 with A, B NULL: %s", dn_status_str(st));
        /* adjacent, not overlapping: valid */
        memcpy(C, pool_c0, sizeof pool_c);
        memcpy(C + 16, pool_a, 16 * sizeof(float));
        st = dn_matmul(NT, NT, 4, 4, 4, 1, C + 16, 4, B, 4, 0, C, 4);
        CHECK(st == DN_OK, "A right after C: %s", dn_last_error());
    }
    /* the backend setting */
    CHECK(dn_matmul_set_backend(NULL) == DN_ERR_NULL, "set_backend(NULL)");
    CHECK(dn_matmul_set_backend("fastest") == DN_ERR_ARG, "set_backend(\"fastest\")");
    CHECK(dn_matmul_set_backend("built-in") == DN_OK && !strcmp(dn_matmul_backend(), "built-in"),
          "set_backend(\"built-in\")");
    dn_status st = dn_matmul_set_backend("blas");
    CHECK(st == DN_OK || st == DN_ERR_UNSUPPORTED, "set_backend(\"blas\"): %s", dn_status_str(st));
    if (st == DN_OK) {
        const char *name = dn_matmul_backend();
        CHECK(strcmp(name, "built-in") != 0, "blas selected, backend says %s", name);
        CHECK(dn_matmul_set_backend(name) == DN_OK, "the BLAS's own name %s", name);
    } else
        CHECK(!strcmp(dn_matmul_backend(), "built-in"), "no BLAS, backend %s", dn_matmul_backend());
    restore_backend();
    return fails;
}

/* ---- allocation failure and reproducibility ------------------------------------------------ */

typedef struct {
    const float *A, *B;
    float *C;
    int64_t M, N, K;
} alloc_ctx;
static dn_status alloc_call(void *p) {
    const alloc_ctx *c = p;
    return dn_matmul(DN_TRANS, DN_NO_TRANS, c->M, c->N, c->K, 1.0f, c->A, c->M, c->B, c->N, 0.0f,
                     c->C, c->N);
}

/* Packed panels (M = 70) and the gathered rows of a transposed A on the few-rows path (M = 3) */
static int test_alloc_failure(void) {
    int fails = 0;
    rng r = {8};
    const int64_t Ms[2] = {70, 3}, N = 50, K = 300;
    for (int s = 0; s < 2; s++) {
        const int64_t M = Ms[s];
        float *A = falloc(K * M), *B = falloc(K * N), *C = falloc(M * N);
        fill_uniform(&r, A, K * M, -1, 1);
        fill_uniform(&r, B, K * N, -1, 1);
        alloc_ctx ctx = {A, B, C, M, N, K};
        for (int b = 0; b < DN_ISA_COUNT; b++) {
            if (!use_backend(b)) continue;
            long reached = 0;
            int64_t n = M * N;
            char what[64];
            snprintf(what, sizeof what, "builtin %s, M = %lld", backend_label(b), (long long)M);
            fails += check_alloc_failures(what, alloc_call, &ctx, &C, &n, 1, &reached);
            CHECK(reached >= 1, "%s: no allocation reached the hook", what);
        }
        free(A), free(B), free(C);
    }
    restore_backend();
    return fails;
}

/* The built-in kernel: three runs at a fixed thread count are bitwise equal, and (it sums each
 * element in an order fixed by the shape) equal across thread counts too. The BLAS: three runs
 * at a fixed thread count are bitwise equal (what the header says of OpenBLAS). */
static int test_reproducible(void) {
    int fails = 0;
    rng r = {77};
    /* the packed path (B transposed) and the few-rows path (B not transposed) */
    const shape sh[2] = {{301, 203, 700}, {3, 2000, 1000}};
    const int threads[] = {2, 2, 2, 1, 3, 4};
    for (int s = 0; s < 2; s++) {
        const int64_t M = sh[s].M, N = sh[s].N, K = sh[s].K;
        const dn_trans tb = s == 0 ? DN_TRANS : DN_NO_TRANS;
        float *A = falloc(M * K), *B = falloc(N * K), *C = falloc(M * N), *first = falloc(M * N);
        fill_uniform(&r, A, M * K, -1, 1);
        fill_uniform(&r, B, N * K, -1, 1);
        for (int b = 0; b < N_BACKENDS; b++) {
            if (!use_backend(b)) continue;
            for (int i = 0; i < (b == DN_ISA_COUNT ? 3 : 6); i++) {
                dn_set_num_threads(threads[i]);
                poison(C, M * N);
                dn_status st =
                    dn_matmul(DN_NO_TRANS, tb, M, N, K, 0.5f, A, K, B, tb ? K : N, 0.0f, C, N);
                CHECK(st == DN_OK, "%s", dn_last_error());
                if (i == 0)
                    memcpy(first, C, sizeof(float) * (size_t)(M * N));
                else {
                    char what[80];
                    snprintf(what, sizeof what, "%s%s %lldx%lldx%lld, %d threads",
                             b < DN_ISA_COUNT ? "builtin " : "", backend_label(b), (long long)M,
                             (long long)N, (long long)K, threads[i]);
                    fails += check_same_bits(what, C, first, M * N);
                }
            }
        }
        dn_set_num_threads(0);
        free(A), free(B), free(C), free(first);
    }
    restore_backend();
    return fails;
}

const test_case dn_tests_matmul[] = {
    {"matmul_vs_reference", test_vs_reference},
    {"matmul_threads", test_threads},
    {"matmul_accumulate", test_accumulate},
    {"matmul_no_product", test_no_product},
    {"matmul_contract", test_contract},
    {"matmul_alloc_failure", test_alloc_failure},
    {"matmul_reproducible", test_reproducible},
    {"matmul_16bit_b", test_16bit_b},
    {NULL, NULL},
};
