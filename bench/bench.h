/*
 * bench.h - benchmark entry points, linked into the `deltanet` tool as subcommands.
 */
#ifndef DN_BENCH_H
#define DN_BENCH_H

#include "deltanet.h"

/* `deltanet bench`: the linear-attention family forward (bench/la.c). */
int dn_bench_gdn_main(int argc, char **argv);
/* `deltanet bench attn`: causal softmax attention prefill and KV-cache decode (bench/attn.c). */
int dn_bench_attn_main(int argc, char **argv);
/* `deltanet bench ssm`: Mamba-1, Mamba-2, RWKV-4 and the short convolution (bench/ssm.c). */
int dn_bench_ssm_main(int argc, char **argv);
/* `deltanet bench bwd`: forward + backward of Gated DeltaNet and attention (bench/bwd.c). */
int dn_bench_bwd_main(int argc, char **argv);

#endif

/* ---- helpers shared by the benchmarks and `deltanet compare` ---- */
#include <stdlib.h>
#include <time.h>

static inline double dn_now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static inline int dn_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* median of n timings (sorts them) */
static inline double dn_median(double *x, int n) {
    qsort(x, (size_t)n, sizeof *x, dn_cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

/* --isa NAME: 0 when set, else prints why not and returns 2 (the tool's usage-error status) */
#include <stdio.h>
static inline int dn_bench_set_isa(const char *who, const char *name) {
    dn_isa isa;
    if (dn_isa_from_name(name, &isa) != DN_OK || dn_set_isa(isa) != DN_OK) {
        fprintf(stderr, "%s: %s\n", who, dn_last_error());
        return 2;
    }
    return 0;
}
