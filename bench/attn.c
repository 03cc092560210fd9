/*
 * bench/attn.c - benchmark of causal softmax attention on CPU (`deltanet bench attn`).
 *
 * Prefill (tiled, online softmax) at T = 512, 4096, 16384 with H = 16, D = 128: GFLOP/s against
 * the FMA peak measured in the same run. FLOPs: 4 D per visible (query, key) pair per head, the
 * two products Q K^T and P V; a causal T-token prefill has T (T + 1) / 2 pairs.
 * Decode (one query token over the KV cache) at contexts 1k, 4k, 16k, 64k with 8 heads of 128, fp32
 * and bf16 caches: time per token and GB/s of cache read against the streaming-read bandwidth
 * measured in the same run (a decode step reads the cache once; the memcpy rate is printed for
 * context only). Cache bytes are computed from the shape, not measured.
 */
#include "bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static float *rand_buf(int64_t n, unsigned seed) {
    float *x = aligned_alloc(64, ((size_t)n * sizeof(float) + 63) & ~(size_t)63);
    if (!x) return NULL;
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = (float)((s >> 40) * (2.0 / 16777216.0) - 1.0);
    }
    return x;
}

typedef struct {
    int json, reps, threads;
    int64_t H, HKV, D, DH;
    int64_t Ts[8], ctx[8];
    int nT, nctx;
    double peak, copy_bw, read_bw;
} abench;

static int first = 1;

static void rec(const abench *c, const char *phase, const char *dtype, int64_t T, int64_t H,
                double sec, double flops, double bytes) {
    double gf = flops / sec * 1e-9, gbs = bytes / sec * 1e-9;
    if (c->json) {
        printf("%s  {\"op\": \"softmax_attn\", \"phase\": \"%s\", \"cache\": \"%s\", \"T\": %lld, "
               "\"H\": %lld, \"D\": %lld, \"threads\": %d, \"isa\": \"%s\", \"seconds\": %.9g, "
               "\"gflops\": %.6g, \"fraction_of_peak\": %.4f, \"cache_bytes_computed\": %.0f, "
               "\"gb_per_s\": %.6g, \"fraction_of_read_bw\": %.4f}",
               first ? "" : ",\n", phase, dtype, (long long)T, (long long)H, (long long)c->D,
               c->threads, dn_isa_name(dn_isa_active()), sec, gf, gf / c->peak, bytes, gbs,
               gbs / c->read_bw);
        first = 0;
    } else if (bytes == 0) {
        printf("  prefill  T=%-6lld H=%-3lld %9.2f ms  %7.1f GFLOP/s  %5.1f%% of FMA peak\n",
               (long long)T, (long long)H, sec * 1e3, gf, 100 * gf / c->peak);
    } else {
        printf("  decode   ctx=%-6lld %-4s cache %7.1f MiB (computed) %9.1f us/token %6.1f GB/s  "
               "%5.1f%% of read bw\n",
               (long long)T, dtype, bytes / 1048576.0, sec * 1e6, gbs, 100 * gbs / c->read_bw);
    }
}

static dn_status run_attn(void *p) { return dn_attn_forward(p); }

static int prefill(abench *c, int64_t T) {
    const int64_t H = c->H, D = c->D;
    dn_attn_params p = dn_attn_params_default(1, T, H, H, D);
    float *q = rand_buf(T * H * D, 1), *k = rand_buf(T * H * D, 2), *v = rand_buf(T * H * D, 3);
    float *o = rand_buf(T * H * D, 4);
    if (!q || !k || !v || !o) return fprintf(stderr, "out of memory\n"), 1;
    p.q = q, p.k = k, p.v = v, p.o = o, p.n_threads = c->threads;
    double sec = bench_time(run_attn, &p, BENCH_WARMUP, bench_attn_prefill_reps(T, c->reps));
    if (sec < 0) return fprintf(stderr, "%s\n", dn_last_error()), 1;
    double pairs = (double)T * (double)(T + 1) / 2;
    rec(c, "prefill", "-", T, H, sec, 4.0 * pairs * (double)D * (double)H, 0);
    free(q), free(k), free(v), free(o);
    return 0;
}

static int decode(abench *c, int64_t ctx, dn_dtype dt) {
    const int64_t H = c->DH, D = c->D, chunk = 1024;
    dn_kv_cache *kv;
    if (dn_kv_cache_create(&kv, 1, H, D, ctx, dt, 0) != DN_OK)
        return fprintf(stderr, "%s\n", dn_last_error()), 1;
    float *k = rand_buf(chunk * H * D, 5), *v = rand_buf(chunk * H * D, 6);
    float *q = rand_buf(H * D, 7), *o = rand_buf(H * D, 8);
    if (!k || !v || !q || !o) return fprintf(stderr, "out of memory\n"), 1;
    dn_strides s = {chunk * H * D, H * D, D}, s1 = {H * D, H * D, D};
    for (int64_t t = 0; t < ctx; t += chunk)
        if (dn_kv_cache_append(kv, k, s, v, s, ctx - t < chunk ? ctx - t : chunk) != DN_OK)
            return fprintf(stderr, "%s\n", dn_last_error()), 1;
    int n = ctx >= 65536 ? 15 : 5 * c->reps;
    attend_ctx a = {kv, o, q, s1, H, D, c->threads};
    double sec = bench_time(run_attend, &a, BENCH_WARMUP_STEP, n);
    if (sec < 0) return fprintf(stderr, "%s\n", dn_last_error()), 1;
    rec(c, "decode", dn_dtype_name(dt), ctx, H, sec, 4.0 * (double)ctx * D * H,
        (double)dn_kv_cache_used_bytes(kv));
    free(k), free(v), free(q), free(o);
    dn_kv_cache_free(kv);
    return 0;
}

static int list(const char *s, int64_t *out) {
    int n = 0;
    while (*s && n < 8) {
        char *end;
        long long x = strtoll(s, &end, 10);
        if (end == s || x < 1 || (*end && *end != ',')) return -1;
        out[n++] = x;
        s = *end ? end + 1 : end;
    }
    return n;
}

int dn_bench_attn_main(int argc, char **argv) {
    abench c = {0, 7, 0, 16, 16, 128, 8, {512, 4096, 16384}, {1024, 4096, 16384, 65536},
                3, 4, 0, 0,  0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) {
            c.json = 1;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: deltanet bench attn [--T LIST|none] [--ctx LIST|none] [--heads N] "
                   "[--decode-heads N] [--d N] [--threads N] [--reps N] [--isa NAME] [--json]\n"
                   "  defaults: prefill T=512,4096,16384 with 16 heads; decode contexts "
                   "1024,4096,16384,65536 with 8 heads; D=128\n");
            return 0;
        }
        if (!val) return fprintf(stderr, "bench attn: %s needs a value\n", a), 2;
        i++;
        if (!strcmp(a, "--T")) {
            c.nT = strcmp(val, "none") ? list(val, c.Ts) : 0; /* none: decode only */
            if (c.nT < 0) return fprintf(stderr, "bad --T\n"), 2;
        } else if (!strcmp(a, "--ctx")) {
            c.nctx = strcmp(val, "none") ? list(val, c.ctx) : 0; /* none: prefill only */
            if (c.nctx < 0) return fprintf(stderr, "bad --ctx\n"), 2;
        } else if (!strcmp(a, "--heads"))
            c.H = atoll(val);
        else if (!strcmp(a, "--decode-heads"))
            c.DH = atoll(val);
        else if (!strcmp(a, "--d"))
            c.D = atoll(val);
        else if (!strcmp(a, "--threads"))
            c.threads = atoi(val);
        else if (!strcmp(a, "--reps"))
            c.reps = atoi(val);
        else if (!strcmp(a, "--isa")) {
            if (dn_bench_set_isa("bench attn", val)) return 2;
        } else
            return fprintf(stderr, "bench attn: unknown option %s\n", a), 2;
    }
    if (c.H < 1 || c.DH < 1 || c.D < 1 || c.D > 256 || c.reps < 1 || c.reps > 30 || c.threads < 0)
        return fprintf(stderr, "bench attn: heads, d (<= 256) and reps (<= 30) out of range\n"), 2;
    if (c.threads > 0) dn_set_num_threads(c.threads);
    c.threads = dn_get_num_threads();
    c.peak = bench_measure_fma_peak(c.threads, 0.3);
    c.copy_bw = bench_measure_copy_bandwidth(c.threads, 0.5);
    c.read_bw = bench_measure_read_bandwidth(c.threads, 0.5);
    if (c.json)
        printf("{\"build\": \"%s\", \"fma_peak_gflops\": %.6g, \"copy_gb_per_s\": %.6g, "
               "\"read_gb_per_s\": %.6g, \"records\": [\n",
               dn_build_info(), c.peak, c.copy_bw, c.read_bw);
    else
        printf("%s\ncausal softmax attention, fp32, %d threads; measured: FMA peak %.1f GFLOP/s, "
               "streaming read %.1f GB/s (the decode ceiling); memcpy %.1f GB/s (bytes copied "
               "per second, for context)\n",
               dn_build_info(), c.threads, c.peak, c.read_bw, c.copy_bw);
    for (int i = 0; i < c.nT; i++)
        if (prefill(&c, c.Ts[i])) return 1;
    for (int i = 0; i < c.nctx; i++)
        for (int dt = 0; dt < DN_DTYPE_COUNT; dt += 2) /* f32 and bf16 */
            if (decode(&c, c.ctx[i], (dn_dtype)dt)) return 1;
    if (c.json) printf("\n]}\n");
    return 0;
}
