/*
 * bench/ssm.c - benchmark of the recurrent relatives on CPU (`deltanet bench ssm`): Mamba-1
 * selective scan, Mamba-2 (through GLA), RWKV-4 WKV and the short convolution, prefill at T = 512
 * and one decode token, as tokens/s. Mamba-2 defaults to the shape of llama.cpp's SSM_SCAN
 * comparison (N = 128, P = 64, H = 48).
 */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static float *buf(int64_t n, float lo, float hi, unsigned seed) {
    float *x = aligned_alloc(64, ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) & ~(size_t)63);
    if (!x) {
        fprintf(stderr, "bench ssm: out of memory\n");
        exit(1);
    }
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = lo + (hi - lo) * (float)((s >> 40) * (1.0 / 16777216.0));
    }
    return x;
}

static dn_status run_mamba(void *p) { return dn_mamba_forward(p); }
static dn_status run_mamba2(void *p) { return dn_mamba2_forward(p); }
static dn_status run_rwkv(void *p) { return dn_rwkv4_forward(p); }
static dn_status run_conv(void *p) { return dn_conv_forward(p); }

static int json, first = 1, reps = 9;

/* Median seconds of fn(params): the policy of bench.h, prefill and decode warm-ups apart. */
static double timeit(bench_fn fn, void *params, int warmup, int n) {
    double sec = bench_time(fn, params, warmup, n);
    if (sec < 0) {
        fprintf(stderr, "bench ssm: %s\n", dn_last_error());
        exit(1);
    }
    return sec;
}

static void report(const char *op, const char *shape, const char *phase, int64_t T, double sec) {
    if (json) {
        printf("%s  {\"op\": \"%s\", \"shape\": \"%s\", \"phase\": \"%s\", \"T\": %lld, "
               "\"threads\": %d, \"isa\": \"%s\", \"seconds\": %.9g, \"tokens_per_s\": %.6g}",
               first ? "" : ",\n", op, shape, phase, (long long)T, dn_get_num_threads(),
               dn_isa_name(dn_isa_active()), sec, (double)T / sec);
        first = 0;
    } else {
        printf("  %-10s %-22s %-8s T=%-5lld %9.3f ms %12.0f tok/s\n", op, shape, phase,
               (long long)T, sec * 1e3, (double)T / sec);
    }
}

int dn_bench_ssm_main(int argc, char **argv) {
    int64_t T = 512;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--T") && i + 1 < argc)
            T = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            dn_set_num_threads(atoi(argv[++i]));
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--isa") && i + 1 < argc) {
            const char *v = argv[++i];
            if (dn_bench_set_isa("bench ssm", v)) return 2;
        } else {
            printf("usage: deltanet bench ssm [--T N] [--threads N] [--reps N] [--isa NAME] "
                   "[--json]\n");
            return strcmp(argv[i], "--help") && strcmp(argv[i], "-h") ? 2 : 0;
        }
    }
    if (T < 1 || reps < 1) return fprintf(stderr, "bench ssm: T and reps must be positive\n"), 2;
    if (json)
        printf("{\"build\": \"%s\", \"records\": [\n", dn_build_info());
    else
        printf("%s\nrecurrent relatives, fp32, %d threads, medians\n", dn_build_info(),
               dn_get_num_threads());

    { /* Mamba-1, a Mamba-130m-sized layer: D = 1536, N = 16 */
        const int64_t D = 1536, N = 16;
        dn_mamba_params p = dn_mamba_params_default(1, T, D, N, 1);
        float *x = buf(T * D, -1, 1, 1), *dt = buf(T * D, -4, 0, 2), *z = buf(T * D, -2, 2, 3);
        float *A = buf(D * N, -8, -0.5f, 4), *Bm = buf(T * N, -1, 1, 5), *Cm = buf(T * N, -1, 1, 6);
        float *Ds = buf(D, -1, 1, 7), *bias = buf(D, -1, 0, 8), *y = buf(T * D, 0, 0, 9);
        float *st = buf(D * N, 0, 0, 10);
        p.x = x, p.dt = dt, p.z = z, p.A = A, p.Bm = Bm, p.Cm = Cm, p.Dskip = Ds, p.dt_bias = bias;
        p.dt_softplus = 1, p.y = y, p.final_state = st;
        report("mamba1", "D=1536 N=16", "prefill", T, timeit(run_mamba, &p, BENCH_WARMUP, reps));
        p.T = 1, p.initial_state = st;
        report("mamba1", "D=1536 N=16", "decode", 1,
               timeit(run_mamba, &p, BENCH_WARMUP_STEP, 20 * reps));
        free(x), free(dt), free(z), free(A), free(Bm), free(Cm), free(Ds), free(bias), free(y),
            free(st);
    }
    { /* Mamba-2 at the SSM_SCAN comparison shape */
        const int64_t H = 48, P = 64, N = 128, G = 1;
        dn_mamba2_params p = dn_mamba2_params_default(1, T, H, P, N, G);
        float *x = buf(T * H * P, -1, 1, 1), *dt = buf(T * H, 0.001f, 0.1f, 2);
        float *A = buf(H, -2, -0.5f, 3), *Bm = buf(T * G * N, -1, 1, 4),
              *Cm = buf(T * G * N, -1, 1, 5);
        float *Ds = buf(H, -1, 1, 6), *y = buf(T * H * P, 0, 0, 7), *st = buf(H * N * P, 0, 0, 8);
        p.x = x, p.dt = dt, p.A = A, p.Bm = Bm, p.Cm = Cm, p.Dskip = Ds, p.y = y,
        p.final_state = st;
        report("mamba2", "H=48 P=64 N=128", "prefill", T,
               timeit(run_mamba2, &p, BENCH_WARMUP, reps));
        p.T = 1, p.initial_state = st;
        report("mamba2", "H=48 P=64 N=128", "decode", 1,
               timeit(run_mamba2, &p, BENCH_WARMUP_STEP, 20 * reps));
        free(x), free(dt), free(A), free(Bm), free(Cm), free(Ds), free(y), free(st);
    }
    { /* RWKV-4, an RWKV-4-169m-sized layer: C = 768 */
        const int64_t C = 768;
        dn_rwkv4_params p = dn_rwkv4_params_default(1, T, C);
        float *k = buf(T * C, -5, 5, 1), *v = buf(T * C, -1, 1, 2), *td = buf(C, -3, 1, 3);
        float *tf = buf(C, -1, 1, 4), *y = buf(T * C, 0, 0, 5), *st = buf(3 * C, 0, 0, 6);
        p.k = k, p.v = v, p.time_decay = td, p.time_first = tf, p.y = y, p.final_state = st;
        report("rwkv4", "C=768", "prefill", T, timeit(run_rwkv, &p, BENCH_WARMUP, reps));
        p.T = 1, p.initial_state = st;
        report("rwkv4", "C=768", "decode", 1, timeit(run_rwkv, &p, BENCH_WARMUP_STEP, 20 * reps));
        free(k), free(v), free(td), free(tf), free(y), free(st);
    }
    { /* short convolution of a Mamba / Gated DeltaNet layer: D = 2048, W = 4, SiLU */
        const int64_t D = 2048, W = 4;
        dn_conv_params p = dn_conv_params_default(1, T, D, W);
        float *x = buf(T * D, -1, 1, 1), *w = buf(D * W, -1, 1, 2), *bias = buf(D, -1, 1, 3);
        float *y = buf(T * D, 0, 0, 4), *st = buf(D * (W - 1), 0, 0, 5);
        p.x = x, p.weight = w, p.bias = bias, p.silu = 1, p.y = y, p.final_state = st;
        report("short_conv", "D=2048 W=4", "prefill", T, timeit(run_conv, &p, BENCH_WARMUP, reps));
        p.T = 1, p.initial_state = st;
        report("short_conv", "D=2048 W=4", "decode", 1,
               timeit(run_conv, &p, BENCH_WARMUP_STEP, 20 * reps));
        free(x), free(w), free(bias), free(y), free(st);
    }
    if (json) printf("\n]}\n");
    return 0;
}
