/*
 * bench/matmul.c - dense products at the shapes of a model's projections (`deltanet bench
 * matmul`): the built-in kernel and the BLAS the library was built with, side by side in one run,
 * each point timed for both alike (bench.h's policy: the same warm-up, the same number of timed
 * calls set by the size of the point, the median; and the same idle pause before each), as
 * GFLOP/s (2 M N K per call), the fraction of the fp32 FMA peak measured in the same run, and
 * the ratio built-in / BLAS.
 *
 * Default points: the products of a linear layer y = x W^T with W [out,in] (the layout of the
 * model layer's linear layers), over T tokens:
 *   forward     NT  Y = X W^T        M = T,    N = out,  K = in
 *   backward    NN  dX = dY W        M = T,    N = in,   K = out
 *   backward    TN  dW = dY^T X      M = out,  N = in,   K = T
 * at T from 512 to 4096 and widths from 256 to 2048, and the 2048 square.
 */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    int ta, tb;
    int64_t M, N, K;
} mm_point;

static const mm_point default_points[] = {
    {0, 1, 512, 256, 256},    {0, 1, 512, 1024, 1024},  {0, 0, 512, 1024, 1024},
    {1, 0, 1024, 1024, 512},  {0, 1, 4096, 2048, 512},  {0, 0, 4096, 512, 2048},
    {1, 0, 1024, 1024, 4096}, {0, 0, 2048, 2048, 2048},
};
#define N_DEFAULT (int)(sizeof default_points / sizeof default_points[0])
#define MAX_POINTS 32

typedef struct {
    int ta, tb;
    int64_t M, N, K;
    const float *A, *B;
    float *C;
} mm_call;

static dn_status run_mm(void *p) {
    const mm_call *c = p;
    return dn_matmul(c->ta ? DN_TRANS : DN_NO_TRANS, c->tb ? DN_TRANS : DN_NO_TRANS, c->M, c->N,
                     c->K, 1.0f, c->A, c->ta ? c->M : c->K, c->B, c->tb ? c->K : c->N, 0.0f, c->C,
                     c->N);
}

static float *buf(int64_t n, unsigned seed) {
    float *x = aligned_alloc(64, ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) & ~(size_t)63);
    if (!x) return NULL;
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = -1.0f + 2.0f * (float)((s >> 40) * (1.0 / 16777216.0));
    }
    return x;
}

/* "NN:512x1024x1024" */
static int parse_point(const char *s, mm_point *p) {
    char t[3];
    long long M, N, K;
    if (sscanf(s, "%2[NT]:%lldx%lldx%lld", t, &M, &N, &K) != 4 || strlen(t) != 2) return -1;
    if (M < 1 || N < 1 || K < 1 || M > 65536 || N > 65536 || K > 65536) return -1;
    *p = (mm_point){t[0] == 'T', t[1] == 'T', M, N, K};
    return 0;
}

static void usage(void) {
    printf("usage: deltanet bench matmul [options]\n"
           "  --shapes LIST   points as TT:MxNxK, comma-separated, TT one of NN NT TN TT\n"
           "                  (default: projection shapes, forward and backward, T = 512..4096)\n"
           "  --threads N     threads (default: all cores)\n"
           "  --reps N        timed calls of a point under 1 GFLOP (default 9; larger points 3)\n"
           "  --isa NAME      SIMD level of the built-in kernel: generic | avx2 | avx512\n"
           "  --json          machine-readable output\n");
}

int dn_bench_matmul_main(int argc, char **argv) {
    mm_point pts[MAX_POINTS];
    int npts = 0, json = 0, threads = 0, reps = 9;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) {
            json = 1;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(), 0;
        if (!val) return fprintf(stderr, "bench matmul: %s needs a value\n", a), usage(), 2;
        i++;
        if (!strcmp(a, "--threads"))
            threads = atoi(val);
        else if (!strcmp(a, "--reps"))
            reps = atoi(val);
        else if (!strcmp(a, "--isa")) {
            if (dn_bench_set_isa("bench matmul", val)) return 2;
        } else if (!strcmp(a, "--shapes")) {
            char list[1024];
            snprintf(list, sizeof list, "%s", val);
            for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
                if (npts == MAX_POINTS || parse_point(tok, &pts[npts]))
                    return fprintf(stderr, "bench matmul: bad point '%s'\n", tok), 2;
                npts++;
            }
        } else
            return fprintf(stderr, "bench matmul: unknown option %s\n", a), usage(), 2;
    }
    if (threads < 0 || reps < 1)
        return fprintf(stderr, "bench matmul: threads >= 0 and reps >= 1\n"), 2;
    if (!npts) {
        memcpy(pts, default_points, sizeof default_points);
        npts = N_DEFAULT;
    }
    if (threads > 0) dn_set_num_threads(threads);
    threads = dn_get_num_threads();
    const int have_blas = dn_matmul_set_backend("blas") == DN_OK;
    const char *blas = have_blas ? dn_matmul_backend() : "none";
    const double peak = bench_measure_fma_peak(threads, 0.3);
    if (json)
        printf("{\"build\": \"%s\", \"fma_peak_gflops\": %.6g, \"records\": [\n", dn_build_info(),
               peak);
    else {
        printf("%s\n", dn_build_info());
        printf("dense products C = op(A) op(B), fp32, %d threads, built-in kernel at %s, BLAS: %s;"
               " measured FMA peak %.1f GFLOP/s (%.1f per thread); medians\n",
               threads, dn_isa_name(dn_isa_active()), blas, peak, peak / threads);
        printf("  %-4s %-16s %12s %7s %12s %7s %9s\n", "op", "M x N x K", "built-in", "peak",
               have_blas ? blas : "BLAS", "peak", "ratio");
    }
    int first = 1, status = 0;
    for (int p = 0; p < npts && !status; p++) {
        mm_call c = {pts[p].ta, pts[p].tb, pts[p].M, pts[p].N, pts[p].K, NULL, NULL, NULL};
        const double flops = 2.0 * (double)c.M * (double)c.N * (double)c.K;
        float *A = buf(c.M * c.K, 1), *B = buf(c.K * c.N, 2), *C = buf(c.M * c.N, 3);
        if (!A || !B || !C) {
            fprintf(stderr, "bench matmul: out of memory\n");
            status = 1;
        }
        c.A = A, c.B = B, c.C = C;
        /* timed calls by size, the same for both backends */
        const int n = flops < 1e9 ? reps : 3;
        double gf[2] = {0, 0};
        for (int b = 0; b < 1 + have_blas && !status; b++) {
            dn_matmul_set_backend(b ? "blas" : "builtin");
            /* an OpenBLAS built on pthreads keeps its workers spinning for about 0.1 s after a
             * call (THREAD_TIMEOUT), on the cores the built-in kernel's OpenMP threads use next:
             * each point starts after a pause that outlasts it (untimed, for both backends) */
            nanosleep(&(struct timespec){0, 250 * 1000 * 1000}, NULL);
            const double sec = bench_time(run_mm, &c, BENCH_WARMUP, n);
            if (sec < 0) {
                fprintf(stderr, "bench matmul: %s\n", dn_last_error());
                status = 1;
                break;
            }
            gf[b] = flops / sec * 1e-9;
            if (json) {
                printf("%s  {\"op\": \"matmul\", \"ta\": %d, \"tb\": %d, \"M\": %lld, \"N\": %lld, "
                       "\"K\": %lld, \"backend\": \"%s\", \"threads\": %d, \"isa\": \"%s\", "
                       "\"seconds\": %.9g, \"gflops\": %.6g, \"peak_gflops\": %.6g, "
                       "\"fraction_of_peak\": %.4f}",
                       first ? "" : ",\n", c.ta, c.tb, (long long)c.M, (long long)c.N,
                       (long long)c.K, dn_matmul_backend(), threads, dn_isa_name(dn_isa_active()),
                       sec, gf[b], peak, gf[b] / peak);
                first = 0;
            }
        }
        if (!json && !status) {
            char dims[48];
            snprintf(dims, sizeof dims, "%lldx%lldx%lld", (long long)c.M, (long long)c.N,
                     (long long)c.K);
            printf("  %c%c   %-16s %7.1f GF/s %6.1f%%", c.ta ? 'T' : 'N', c.tb ? 'T' : 'N', dims,
                   gf[0], 100 * gf[0] / peak);
            if (have_blas)
                printf(" %7.1f GF/s %6.1f%% %8.2fx\n", gf[1], 100 * gf[1] / peak, gf[0] / gf[1]);
            else
                printf(" %12s %7s %9s\n", "-", "-", "-");
        }
        free(A), free(B), free(C);
    }
    if (json) printf("\n]}\n");
    /* the process's default again: the BLAS when there is one */
    if (have_blas) dn_matmul_set_backend("blas");
    return status;
}
