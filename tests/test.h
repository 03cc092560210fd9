/*
 * test.h - helpers shared by the test files: random inputs, poisoned buffers, relative RMS error,
 * and the case registry that tests/test_main.c walks.
 */
#ifndef DN_TEST_H
#define DN_TEST_H

#include "deltanet.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*fn)(void); /* returns the number of failed checks */
} test_case;

/* splitmix64: reproducible, seeded per case */
typedef struct {
    uint64_t s;
} rng;
static inline uint64_t rng_next(rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline float rng_uniform(rng *r, float lo, float hi) { /* [lo, hi) */
    return lo + (hi - lo) * (float)((rng_next(r) >> 40) * (1.0 / 16777216.0));
}
static inline void fill_uniform(rng *r, float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++)
        x[i] = rng_uniform(r, lo, hi);
}

static inline float *falloc(int64_t n) {
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!p) {
        fprintf(stderr, "test: out of memory (%lld floats)\n", (long long)n);
        exit(2);
    }
    return p;
}
static inline void poison(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        x[i] = NAN;
}

/* Relative RMS error of got against ref over n elements with strides: sqrt(sum d^2 / sum r^2).
 * Non-finite values in got make it infinite. *worst gets the index of the largest |d|. */
static inline double rel_rms(const float *got, const float *ref, int64_t n, int64_t *worst) {
    double num = 0, den = 0, wd = -1;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) {
            if (worst) *worst = i;
            return INFINITY;
        }
        double d = (double)got[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
        if (fabs(d) > wd) {
            wd = fabs(d);
            if (worst) *worst = i;
        }
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

/* Reports a comparison; returns 1 on failure. */
static inline int check_close(const char *what, const float *got, const float *ref, int64_t n,
                              double tol) {
    int64_t w = 0;
    double e = rel_rms(got, ref, n, &w);
    if (!(e <= tol)) {
        printf("    FAIL %s: rel RMS %.3g > %.1g (worst [%lld] got %.9g ref %.9g)\n", what, e, tol,
               (long long)w, n ? got[w] : 0.f, n ? ref[w] : 0.f);
        return 1;
    }
    return 0;
}

/* Selects a SIMD level for the fast paths; when this machine or build lacks it, records the skip
 * (the driver prints what was skipped after the case and counts it) and returns 0. */
extern unsigned test_isa_skipped; /* bit per dn_isa skipped in the current case */
static inline int test_use_isa(dn_isa isa) {
    if (dn_set_isa(isa) == DN_OK) return 1;
    test_isa_skipped |= 1u << (unsigned)isa;
    return 0;
}

/* Reset gates for the linear family's tests: g = -inf (exp(g) = 0) and finite gates so negative
 * that exp(g) underflows or a cumulative sum swallows its small terms. */
#define N_RESET_PATTERNS 7
static const char *const reset_names[N_RESET_PATTERNS] = {
    "-inf at t=0,16,37,64,T-1",   "-inf everywhere",  "-1e30 at t=5,64,100",
    "-FLT_MAX at t=0,33,127,128", "-80 from t=10 on", "-200 on runs, -inf on head 1 only",
    "-inf on the first 70 tokens"};

/* The gate of token t (of T) and value head h under a pattern, else the random base. */
static inline float reset_gate(int pattern, int64_t t, int64_t T, int64_t h, float base) {
    switch (pattern) {
    case 0: return t == 0 || t == 16 || t == 37 || t == 64 || t == T - 1 ? -INFINITY : base;
    case 1: return -INFINITY;
    case 2: return t == 5 || t == 64 || t == 100 ? -1e30f : base;
    case 3: return t == 0 || t == 33 || t == 127 || t == 128 ? -FLT_MAX : base;
    case 4: return t >= 10 ? -80.0f : base;
    case 5: return h == 1 && t % 50 == 20 ? -INFINITY : (t / 20) % 2 ? -200.0f : base;
    default: return t < 70 ? -INFINITY : base;
    }
}

/* Bitwise equality with an earlier run of the same call (reproducibility); reports the first
 * element that differs. Returns 1 on failure. */
static inline int check_same_bits(const char *what, const float *got, const float *first,
                                  int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (memcmp(got + i, first + i, sizeof(float)) != 0) {
            printf("    FAIL %s: not bitwise reproducible, [%lld] %.9g then %.9g\n", what,
                   (long long)i, first[i], got[i]);
            return 1;
        }
    return 0;
}

/* The library's fault-injection hook (src/mem.c; internal, reached through the static library):
 * the n-th allocation from now fails, once; n < 0 turns it off. */
void dn_fault_fail_alloc_after(long n);

/* Makes each allocation of call(ctx) fail in turn, for every allocation the call reaches: each
 * such call must return DN_ERR_ALLOC and leave the nout outputs (out[i], n[i] floats) bitwise as
 * they were. Returns the number of failed checks; *reached gets the allocations tried. */
typedef dn_status (*test_call_fn)(void *ctx);
static inline int check_alloc_failures(const char *what, test_call_fn call, void *ctx, float **out,
                                       const int64_t *n, int nout, long *reached) {
    int fails = 0;
    long k = 0;
    for (; k < 100; k++) {
        float *before[16];
        for (int i = 0; i < nout && i < 16; i++) {
            poison(out[i], n[i]);
            before[i] = malloc(sizeof(float) * (size_t)(n[i] > 0 ? n[i] : 1));
            memcpy(before[i], out[i], sizeof(float) * (size_t)n[i]);
        }
        dn_fault_fail_alloc_after(k);
        dn_status st = call(ctx);
        dn_fault_fail_alloc_after(-1);
        int done = st == DN_OK;
        if (!done && st != DN_ERR_ALLOC) {
            printf("    FAIL %s: allocation %ld failing gave '%s', not an allocation error\n", what,
                   k, dn_status_str(st));
            fails++;
        }
        for (int i = 0; !done && i < nout && i < 16; i++)
            if (memcmp(before[i], out[i], sizeof(float) * (size_t)n[i]) != 0) {
                printf("    FAIL %s: allocation %ld failed, yet output %d was written\n", what, k,
                       i);
                fails++;
            }
        for (int i = 0; i < nout && i < 16; i++)
            free(before[i]);
        if (done || fails) break;
    }
    *reached = k;
    return fails;
}

/* Repeats of a backward in the reproducibility tests */
#define REPEATS 20

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("    FAIL %s:%d: ", __FILE__, __LINE__);                                        \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
            fails++;                                                                               \
        }                                                                                          \
    } while (0)

#endif
