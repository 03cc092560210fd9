/*
 * compare.c - `deltanet compare`: the Transformer against Gated DeltaNet and its relatives,
 * measured on this machine.
 *
 * For softmax attention, linear attention, Mamba-2, DeltaNet, Gated DeltaNet, RWKV-4 and Mamba-1
 * at one model width (H heads of Dh by default): prefill time, GFLOP/s and peak memory against
 * sequence length; decode time per token and inference-state bytes against context; the growth
 * exponents of those curves, the crossover length of each linear op against attention, and the
 * decode speed ratio at the longest context. Then a memory-capacity experiment with no training:
 * N random key-value pairs written into the state of linear attention, DeltaNet and Gated
 * DeltaNet, and every key read back.
 */
#include "compare.h"
#include "bench.h"
#include "opts.h"
#include "svg.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { M_ATTN, M_LINEAR, M_MAMBA2, M_DELTANET, M_GDN, M_RWKV4, M_MAMBA1, M_COUNT };

static const struct {
    const char *name, *core;
} mechs[M_COUNT] = {
    [M_ATTN] = {"softmax_attn", "softmax(q K^T) V over every cached token"},
    [M_LINEAR] = {"linear_attn", "S += k v^T, o = S^T q"},
    [M_MAMBA2] = {"mamba2", "S = exp(dt A) S + B (dt x)^T, y = S^T C"},
    [M_DELTANET] = {"deltanet", "S += k (beta (v - S^T k))^T"},
    [M_GDN] = {"gdn", "S = exp(g) S, then the delta rule"},
    [M_RWKV4] = {"rwkv4", "decayed weighted average of v by exp(k)"},
    [M_MAMBA1] = {"mamba1", "h = exp(dt A) h + dt B x per channel"},
};

#define MAXPTS 16

typedef struct {
    int enabled[M_COUNT];
    int64_t H, Dh, threads;
    int64_t lens[MAXPTS], ctxs[MAXPTS];
    int nlens, nctx;
    int capacity, quick;
    const char *json_path, *out_dir;
} config;

typedef struct {
    double prefill_s[M_COUNT][MAXPTS], prefill_flops[M_COUNT][MAXPTS];
    double prefill_mem[M_COUNT][MAXPTS];
    double decode_s[M_COUNT][MAXPTS], state_bytes[M_COUNT][MAXPTS];
    int mem_measured;
} results;

/* ---------------------------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------------------------- */
static uint64_t rng_state = 88172645463325252ull;
static float frand(float lo, float hi) {
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return lo + (hi - lo) * (float)((rng_state >> 40) * (1.0 / 16777216.0));
}
static float *fbuf(int64_t n, float lo, float hi) {
    float *x = aligned_alloc(64, ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) & ~(size_t)63);
    if (!x) {
        fprintf(stderr, "compare: out of memory (%lld floats)\n", (long long)n);
        exit(1);
    }
    for (int64_t i = 0; i < n; i++)
        x[i] = frand(lo, hi);
    return x;
}

/* Peak resident memory of a region of work: the kernel's high-water mark is reset through
 * /proc/self/clear_refs before it and read after it. Returns -1 where that is not possible. */
static long read_status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl)) {
            v = atol(line + kl);
            break;
        }
    fclose(f);
    return v;
}
static long mem_begin(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return -1;
    int ok = fputs("5", f) >= 0;
    if (fclose(f) != 0 || !ok) return -1;
    return read_status_kb("VmRSS:");
}
static double mem_end(long base_kb) {
    if (base_kb < 0) return -1;
    long hwm = read_status_kb("VmHWM:");
    return hwm < 0 ? -1 : (double)(hwm - base_kb) * 1024.0;
}

static int tty;
static int step_done, step_total;
static void progress(const char *what, const char *op, int64_t n) {
    step_done++;
    if (!tty) return;
    fprintf(stderr, "\r\033[K[%3d/%3d] %-8s %-13s %6lld", step_done, step_total, what, op,
            (long long)n);
    fflush(stderr);
}

/* ---------------------------------------------------------------------------------------------
 * One prefill of mechanism m over T tokens: seconds (median), FLOPs, peak bytes.
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    double sec, flops, mem;
} meas;

/* Median seconds of fn(arg) under the timing policy of bench.h (the same warm-up, repeats and
 * statistic for every mechanism); exits on a failed call. */
static double time_runs(bench_fn fn, void *arg, int warmup, int reps) {
    double sec = bench_time(fn, arg, warmup, reps);
    if (sec < 0) {
        fprintf(stderr, "\ncompare: %s\n", dn_last_error());
        exit(1);
    }
    return sec;
}

static dn_status run_attn(void *p) { return dn_attn_forward(p); }
static dn_status run_la(void *p) { return dn_la_forward(p); }
static dn_status run_m2(void *p) { return dn_mamba2_forward(p); }
static dn_status run_m1(void *p) { return dn_mamba_forward(p); }
static dn_status run_rwkv(void *p) { return dn_rwkv4_forward(p); }

static meas prefill(const config *c, int m, int64_t T) {
    const int64_t H = c->H, Dh = c->Dh, W = H * Dh;
    const int reps = c->quick ? 1 : T <= 1024 ? 5 : T <= 4096 ? 3 : 1;
    meas r = {0, 0, 0};
    long base = mem_begin();
    if (m == M_ATTN) {
        dn_attn_params p = dn_attn_params_default(1, T, H, H, Dh);
        float *q = fbuf(T * W, -1, 1), *k = fbuf(T * W, -1, 1), *v = fbuf(T * W, -1, 1);
        float *o = fbuf(T * W, 0, 0);
        p.q = q, p.k = k, p.v = v, p.o = o, p.n_threads = (int)c->threads;
        r.sec = time_runs(run_attn, &p, BENCH_WARMUP, reps);
        r.mem = mem_end(base);
        r.flops = 4.0 * (double)T * (double)(T + 1) / 2 * (double)Dh * (double)H;
        free(q), free(k), free(v), free(o);
    } else if (m == M_LINEAR || m == M_DELTANET || m == M_GDN) {
        dn_op op = m == M_LINEAR ? DN_OP_LINEAR_ATTN : m == M_DELTANET ? DN_OP_DELTANET : DN_OP_GDN;
        dn_la_params p = dn_la_params_default(op, 1, T, H, H, Dh, Dh);
        float *q = fbuf(T * W, -1, 1), *k = fbuf(T * W, -1, 1), *v = fbuf(T * W, -1, 1);
        float *g = fbuf(T * H, -0.2f, 0), *beta = fbuf(T * H, 0, 1), *o = fbuf(T * W, 0, 0);
        float *st = fbuf(H * Dh * Dh, 0, 0);
        p.q = q, p.k = k, p.v = v, p.o = o, p.final_state = st, p.qk_l2norm = 1;
        p.g = op == DN_OP_GDN ? g : NULL;
        p.beta = op != DN_OP_LINEAR_ATTN ? beta : NULL;
        p.n_threads = (int)c->threads;
        size_t ws = 0; /* kept across calls, as a model keeps it (policy in bench.h) */
        if (dn_la_workspace_size(&p, &ws) != DN_OK) {
            fprintf(stderr, "\ncompare: %s\n", dn_last_error());
            exit(1);
        }
        p.workspace = ws ? aligned_alloc(64, (ws + 63) & ~(size_t)63) : NULL;
        p.workspace_bytes = ws;
        if (ws && !p.workspace) {
            fprintf(stderr, "\ncompare: out of memory (workspace of %zu bytes)\n", ws);
            exit(1);
        }
        r.sec = time_runs(run_la, &p, BENCH_WARMUP, reps);
        r.mem = mem_end(base);
        free(p.workspace);
        r.flops = (m == M_LINEAR     ? 4.0
                   : m == M_DELTANET ? 6.0
                                     : 7.0) *
                  (double)(Dh * Dh) * (double)(T * H);
        free(q), free(k), free(v), free(g), free(beta), free(o), free(st);
    } else if (m == M_MAMBA2) {
        const int64_t H2 = 2 * H, P = Dh / 2 > 0 ? Dh / 2 : 1, N = 128;
        dn_mamba2_params p = dn_mamba2_params_default(1, T, H2, P, N, 1);
        float *x = fbuf(T * H2 * P, -1, 1), *dt = fbuf(T * H2, 0.001f, 0.1f),
              *A = fbuf(H2, -2, -0.5f);
        float *Bm = fbuf(T * N, -1, 1), *Cm = fbuf(T * N, -1, 1), *Ds = fbuf(H2, -1, 1);
        float *y = fbuf(T * H2 * P, 0, 0), *st = fbuf(H2 * N * P, 0, 0);
        p.x = x, p.dt = dt, p.A = A, p.Bm = Bm, p.Cm = Cm, p.Dskip = Ds, p.y = y,
        p.final_state = st;
        p.n_threads = (int)c->threads;
        r.sec = time_runs(run_m2, &p, BENCH_WARMUP, reps);
        r.mem = mem_end(base);
        r.flops = 5.0 * (double)(N * P) * (double)(T * H2);
        free(x), free(dt), free(A), free(Bm), free(Cm), free(Ds), free(y), free(st);
    } else if (m == M_MAMBA1) {
        const int64_t N = 16;
        dn_mamba_params p = dn_mamba_params_default(1, T, W, N, 1);
        float *x = fbuf(T * W, -1, 1), *dt = fbuf(T * W, -4, 0), *z = fbuf(T * W, -2, 2);
        float *A = fbuf(W * N, -8, -0.5f), *Bm = fbuf(T * N, -1, 1), *Cm = fbuf(T * N, -1, 1);
        float *Ds = fbuf(W, -1, 1), *y = fbuf(T * W, 0, 0), *st = fbuf(W * N, 0, 0);
        p.x = x, p.dt = dt, p.z = z, p.A = A, p.Bm = Bm, p.Cm = Cm, p.Dskip = Ds, p.y = y;
        p.dt_softplus = 1, p.final_state = st, p.n_threads = (int)c->threads;
        r.sec = time_runs(run_m1, &p, BENCH_WARMUP, reps);
        r.mem = mem_end(base);
        r.flops = 6.0 * (double)(W * N) * (double)T; /* decay, input and readout per element */
        free(x), free(dt), free(z), free(A), free(Bm), free(Cm), free(Ds), free(y), free(st);
    } else { /* RWKV-4 */
        dn_rwkv4_params p = dn_rwkv4_params_default(1, T, W);
        float *k = fbuf(T * W, -5, 5), *v = fbuf(T * W, -1, 1), *td = fbuf(W, -3, 1);
        float *tf = fbuf(W, -1, 1), *y = fbuf(T * W, 0, 0), *st = fbuf(3 * W, 0, 0);
        p.k = k, p.v = v, p.time_decay = td, p.time_first = tf, p.y = y, p.final_state = st;
        p.n_threads = (int)c->threads;
        r.sec = time_runs(run_rwkv, &p, BENCH_WARMUP, reps);
        r.mem = mem_end(base);
        r.flops = 14.0 * (double)W * (double)T; /* 4 exponentials counted as 1, 10 mul/add */
        free(k), free(v), free(td), free(tf), free(y), free(st);
    }
    return r;
}

/* ---------------------------------------------------------------------------------------------
 * Decode: time per generated token at each context, and the bytes of inference state.
 * ------------------------------------------------------------------------------------------- */
/* Attention and the recurrent ops get the same warm-up and the same number of timed steps at
 * every context (timing policy in bench.h). */
static int decode_reps(const config *c) { return c->quick ? 5 : 101; }

static void decode_attn(const config *c, results *res) {
    const int64_t H = c->H, Dh = c->Dh, W = H * Dh, chunk = 1024;
    dn_kv_cache *kv;
    if (dn_kv_cache_create(&kv, 1, H, Dh, 1024, DN_F32, DN_KV_GROW) != DN_OK) {
        fprintf(stderr, "compare: %s\n", dn_last_error());
        exit(1);
    }
    float *k = fbuf(chunk * W, -1, 1), *v = fbuf(chunk * W, -1, 1), *q = fbuf(W, -1, 1);
    float *o = fbuf(W, 0, 0);
    dn_strides s = {chunk * W, W, Dh}, s1 = {W, W, Dh};
    for (int i = 0; i < c->nctx; i++) {
        while (dn_kv_cache_len(kv) < c->ctxs[i]) {
            int64_t n = c->ctxs[i] - dn_kv_cache_len(kv);
            if (dn_kv_cache_append(kv, k, s, v, s, n < chunk ? n : chunk) != DN_OK) {
                fprintf(stderr, "compare: %s\n", dn_last_error());
                exit(1);
            }
        }
        attend_ctx a = {kv, o, q, s1, H, Dh, (int)c->threads};
        res->decode_s[M_ATTN][i] = time_runs(run_attend, &a, BENCH_WARMUP_STEP, decode_reps(c));
        /* bytes the cache holds, computed from its length and dtype */
        res->state_bytes[M_ATTN][i] = (double)dn_kv_cache_used_bytes(kv);
        progress("decode", mechs[M_ATTN].name, c->ctxs[i]);
    }
    dn_kv_cache_free(kv);
    free(k), free(v), free(q), free(o);
}

/* One decode step of a recurrent op with its inputs drawn inside the op's contract (docs/OPS.md):
 * the step runs hundreds of times on the same state, so a gate above 0, a beta outside [0, 1] or
 * a Mamba A >= 0 would grow the state towards overflow and time something no model runs. */
typedef struct {
    int m;
    int64_t H, Dh;
    int threads;
    float *q, *k, *v, *g, *beta;    /* linear family: q, k, v [H,Dh]; g <= 0, beta in [0,1] [H] */
    float *x, *dt, *A, *Bm, *Cm;    /* Mamba: dt' > 0, A < 0 */
    float *rk, *rv, *decay, *first; /* RWKV-4 */
    float *out, *st;
} step_ctx;

static dn_status run_step(void *arg) {
    const step_ctx *c = arg;
    const int64_t H = c->H, Dh = c->Dh, W = H * Dh;
    if (c->m == M_LINEAR || c->m == M_DELTANET || c->m == M_GDN) {
        dn_op op = c->m == M_LINEAR     ? DN_OP_LINEAR_ATTN
                   : c->m == M_DELTANET ? DN_OP_DELTANET
                                        : DN_OP_GDN;
        return dn_la_step(op, c->out, c->st, c->q, c->k, c->v, op == DN_OP_GDN ? c->g : NULL,
                          op != DN_OP_LINEAR_ATTN ? c->beta : NULL, 1, H, H, Dh, Dh, 0, 1);
    }
    if (c->m == M_MAMBA2) {
        const int64_t H2 = 2 * H, P = Dh / 2 > 0 ? Dh / 2 : 1, N = 128;
        dn_mamba2_params p = dn_mamba2_params_default(1, 1, H2, P, N, 1);
        p.x = c->x, p.dt = c->dt, p.A = c->A, p.Bm = c->Bm,
        p.Cm = c->Cm; /* dt_softplus off: dt > 0 */
        p.y = c->out, p.initial_state = p.final_state = c->st, p.n_threads = c->threads;
        return dn_mamba2_forward(&p);
    }
    if (c->m == M_MAMBA1) {
        dn_mamba_params p = dn_mamba_params_default(1, 1, W, 16, 1);
        p.x = c->x, p.dt = c->dt, p.A = c->A, p.Bm = c->Bm, p.Cm = c->Cm, p.dt_softplus = 1;
        p.y = c->out, p.initial_state = p.final_state = c->st, p.n_threads = c->threads;
        return dn_mamba_forward(&p);
    }
    dn_rwkv4_params p = dn_rwkv4_params_default(1, 1, W);
    p.k = c->rk, p.v = c->rv, p.time_decay = c->decay, p.time_first = c->first;
    p.y = c->out, p.initial_state = p.final_state = c->st, p.n_threads = c->threads;
    return dn_rwkv4_forward(&p);
}

/* The recurrent ops: one step with a fixed-size state, whatever the context (which is the
 * point); measured at every context all the same. The state bytes are computed from the shape. */
static void decode_recurrent(const config *c, int m, results *res) {
    const int64_t H = c->H, Dh = c->Dh, W = H * Dh, H2 = 2 * H, P = Dh / 2 > 0 ? Dh / 2 : 1;
    step_ctx s = {.m = m, .H = H, .Dh = Dh, .threads = (int)c->threads};
    double bytes;
    if (m == M_LINEAR || m == M_DELTANET || m == M_GDN) {
        s.q = fbuf(W, -1, 1), s.k = fbuf(W, -1, 1), s.v = fbuf(W, -1, 1);
        s.g = fbuf(H, -0.2f, 0), s.beta = fbuf(H, 0, 1);
        s.st = fbuf(H * Dh * Dh, 0, 0), s.out = fbuf(W, 0, 0);
        bytes = (double)(H * Dh * Dh) * sizeof(float);
    } else if (m == M_MAMBA2) { /* the prefill's ranges: dt in (0, 0.1], A in [-2, -0.5] */
        const int64_t N = 128;
        s.x = fbuf(H2 * P, -1, 1), s.dt = fbuf(H2, 0.001f, 0.1f), s.A = fbuf(H2, -2, -0.5f);
        s.Bm = fbuf(N, -1, 1), s.Cm = fbuf(N, -1, 1);
        s.st = fbuf(H2 * N * P, 0, 0), s.out = fbuf(H2 * P, 0, 0);
        bytes = (double)(H2 * N * P) * sizeof(float);
    } else if (m == M_MAMBA1) { /* dt before softplus in [-4, 0], A in [-8, -0.5] */
        s.x = fbuf(W, -1, 1), s.dt = fbuf(W, -4, 0), s.A = fbuf(W * 16, -8, -0.5f);
        s.Bm = fbuf(16, -1, 1), s.Cm = fbuf(16, -1, 1);
        s.st = fbuf(W * 16, 0, 0), s.out = fbuf(W, 0, 0);
        bytes = (double)(W * 16) * sizeof(float);
    } else {
        s.rk = fbuf(W, -5, 5), s.rv = fbuf(W, -1, 1), s.decay = fbuf(W, -3, 1);
        s.first = fbuf(W, -1, 1), s.st = fbuf(3 * W, 0, 0), s.out = fbuf(W, 0, 0);
        bytes = (double)(3 * W) * sizeof(float);
    }
    for (int i = 0; i < c->nctx; i++) {
        res->decode_s[m][i] = time_runs(run_step, &s, BENCH_WARMUP_STEP, decode_reps(c));
        res->state_bytes[m][i] = bytes;
        progress("decode", mechs[m].name, c->ctxs[i]);
    }
    free(s.q), free(s.k), free(s.v), free(s.g), free(s.beta), free(s.x), free(s.dt), free(s.A);
    free(s.Bm), free(s.Cm), free(s.rk), free(s.rv), free(s.decay), free(s.first), free(s.out);
    free(s.st);
}

/* ---------------------------------------------------------------------------------------------
 * Fits and summaries
 * ------------------------------------------------------------------------------------------- */

/* Least-squares slope of log y against log x over the points with x >= xmin. */
static double loglog_slope(const int64_t *x, const double *y, int n, double xmin) {
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int k = 0;
    for (int i = 0; i < n; i++) {
        if ((double)x[i] < xmin || !(y[i] > 0)) continue;
        double lx = log((double)x[i]), ly = log(y[i]);
        sx += lx, sy += ly, sxx += lx * lx, sxy += lx * ly, k++;
    }
    if (k < 2) return NAN;
    return (k * sxy - sx * sy) / (k * sxx - sx * sx);
}

/* Length where op's prefill time falls below attention's, interpolated on log-log axes; 0 when
 * the op is cheaper at every measured length, -1 when it never is. */
static double crossover(const config *c, const results *r, int m) {
    for (int i = 0; i < c->nlens; i++) {
        double a = r->prefill_s[M_ATTN][i], b = r->prefill_s[m][i];
        if (b < a) {
            if (i == 0) return 0;
            double d0 = log(r->prefill_s[m][i - 1] / r->prefill_s[M_ATTN][i - 1]), d1 = log(b / a);
            double f = d0 / (d0 - d1);
            return exp(log((double)c->lens[i - 1]) +
                       f * (log((double)c->lens[i]) - log((double)c->lens[i - 1])));
        }
    }
    return -1;
}

static void fmt_bytes(char *b, size_t n, double v) {
    if (v < 0)
        snprintf(b, n, "n/a");
    else if (v >= 1 << 30)
        snprintf(b, n, "%.2f GiB", v / (1 << 30));
    else if (v >= 1 << 20)
        snprintf(b, n, "%.1f MiB", v / (1 << 20));
    else if (v >= 1 << 10)
        snprintf(b, n, "%.1f KiB", v / (1 << 10));
    else
        snprintf(b, n, "%.0f B", v);
}

static void fmt_time(char *b, size_t n, double s) {
    if (s >= 1)
        snprintf(b, n, "%.2f s", s);
    else if (s >= 1e-3)
        snprintf(b, n, "%.2f ms", s * 1e3);
    else
        snprintf(b, n, "%.1f us", s * 1e6);
}

/* ---------------------------------------------------------------------------------------------
 * Memory capacity: N pairs written, every key read back
 * ------------------------------------------------------------------------------------------- */
static void unit_vectors(float *x, int64_t n, int64_t d) {
    for (int64_t i = 0; i < n; i++) {
        double ss = 0;
        for (int64_t j = 0; j < d; j++) { /* Gaussian by Box-Muller, then normalised */
            double u1 = frand(1e-7f, 1), u2 = frand(0, 1);
            x[i * d + j] = (float)(sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
            ss += (double)x[i * d + j] * x[i * d + j];
        }
        for (int64_t j = 0; j < d; j++)
            x[i * d + j] = (float)(x[i * d + j] / sqrt(ss));
    }
}

dn_status dn_compare_capacity(dn_op op, int64_t K, int64_t N, int64_t distractors, float gate,
                              int close_gate, uint64_t seed, double *err, double *acc,
                              double *err_last) {
    if (K < 1 || N < 1 || distractors < 0) return DN_ERR_SHAPE;
    const int64_t T = distractors + N;
    uint64_t saved = rng_state;
    rng_state = seed * 0x9e3779b97f4a7c15ull + 12345;
    float *k = malloc(sizeof(float) * (size_t)(T * K)),
          *v = malloc(sizeof(float) * (size_t)(T * K));
    float *q = calloc((size_t)(T * K), sizeof(float)), *o = malloc(sizeof(float) * (size_t)(T * K));
    float *g = malloc(sizeof(float) * (size_t)T), *beta = malloc(sizeof(float) * (size_t)T);
    float *S = malloc(sizeof(float) * (size_t)(K * K));
    double *vh = malloc(sizeof(double) * (size_t)K);
    dn_status st = DN_ERR_ALLOC;
    if (k && v && q && o && g && beta && S && vh) {
        /* the queried pairs first, so that they are the same with and without distractors */
        unit_vectors(k + distractors * K, N, K);
        unit_vectors(v + distractors * K, N, K);
        unit_vectors(k, distractors, K);
        unit_vectors(v, distractors, K);
        for (int64_t t = 0; t < T; t++) {
            g[t] = gate;
            beta[t] = 1.0f;
        }
        if (close_gate && distractors > 0) g[distractors] = -30.0f; /* forget at the boundary */
        dn_la_params p = dn_la_params_default(op, 1, T, 1, 1, K, K);
        p.q = q, p.k = k, p.v = v, p.o = o, p.final_state = S, p.scale = 1.0f;
        p.g = op == DN_OP_GLA || op == DN_OP_GDN ? g : NULL;
        p.beta = op == DN_OP_DELTANET || op == DN_OP_GDN ? beta : NULL;
        st = dn_la_forward(&p);
        if (st == DN_OK) {
            double e = 0;
            int64_t hits = 0;
            for (int64_t i = distractors; i < T; i++) {
                const float *ki = k + i * K, *vi = v + i * K;
                double num = 0, den = 0;
                for (int64_t j = 0; j < K; j++) { /* read: S^T k */
                    double s = 0;
                    for (int64_t a = 0; a < K; a++)
                        s += (double)S[a * K + j] * ki[a];
                    vh[j] = s;
                    num += (s - vi[j]) * (s - vi[j]), den += (double)vi[j] * vi[j];
                }
                e += num / den;
                if (i == T - 1 && err_last) *err_last = num / den;
                int64_t best = -1;
                double bs = -INFINITY;
                for (int64_t c2 = distractors; c2 < T; c2++) { /* nearest stored value */
                    double d = 0;
                    for (int64_t j = 0; j < K; j++)
                        d += vh[j] * v[c2 * K + j];
                    if (d > bs) bs = d, best = c2;
                }
                hits += best == i;
            }
            *err = e / (double)N;
            *acc = (double)hits / (double)N;
        }
    }
    free(k), free(v), free(q), free(o), free(g), free(beta), free(S), free(vh);
    rng_state = saved;
    return st;
}

#define NCAP 10
typedef struct {
    const char *name;
    dn_op op;
    float gate;
    int close_gate;
} cap_variant;

static const cap_variant cap_plain[] = {
    {"linear_attn", DN_OP_LINEAR_ATTN, 0, 0},
    {"deltanet", DN_OP_DELTANET, 0, 0},
    {"gdn (decay 0.98)", DN_OP_GDN, -0.0202027f, 0},
};
static const cap_variant cap_distract[] = {
    {"linear_attn", DN_OP_LINEAR_ATTN, 0, 0},
    {"deltanet", DN_OP_DELTANET, 0, 0},
    {"gdn (decay 0.98)", DN_OP_GDN, -0.0202027f, 0},
    {"gdn (gate closes at boundary)", DN_OP_GDN, 0, 1},
};

/* ---------------------------------------------------------------------------------------------
 * Output
 * ------------------------------------------------------------------------------------------- */
static void machine_line(char *buf, size_t n) {
    char model[128] = "unknown CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "model name", 10)) {
                char *p = strchr(line, ':');
                if (p) {
                    snprintf(model, sizeof model, "%s", p + 2);
                    model[strcspn(model, "\n")] = 0;
                }
                break;
            }
        fclose(f);
    }
    snprintf(buf, n, "%s, %ld online CPUs", model, sysconf(_SC_NPROCESSORS_ONLN));
}

static void json_escape(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        if ((unsigned char)*s >= 0x20) fputc(*s, f);
    }
}

static int mkdir_p(const char *dir) {
    if (mkdir(dir, 0755) == 0 || errno == EEXIST) return 0;
    return -1;
}

static int geometric(int64_t lo, int64_t hi, int64_t *out) {
    int n = 0;
    for (int64_t t = lo; t <= hi && n < MAXPTS; t *= 2)
        out[n++] = t;
    return n;
}

static void usage(void) {
    printf("usage: deltanet compare [options]\n"
           "  Measures softmax attention against the linear-attention family and its relatives on\n"
           "  this machine: prefill cost against length, decode cost and state bytes against\n"
           "  context, and the memory capacity of linear attention, DeltaNet and Gated DeltaNet.\n"
           "  --max-len N      longest prefill / context of the geometric sweep from 32 (16384)\n"
           "  --lengths LIST   prefill lengths, comma-separated (overrides --max-len)\n"
           "  --contexts LIST  decode contexts, comma-separated (default: the prefill lengths)\n"
           "  --heads N        heads (8); --dim N  head dimension (128); model width heads x dim\n"
           "  --threads N      threads (all cores)\n"
           "  --ops LIST       any of softmax_attn,linear_attn,mamba2,deltanet,gdn,rwkv4,mamba1\n"
           "  --no-capacity    skip the memory-capacity experiment\n"
           "  --out DIR        where the SVG charts and compare.json go (deltanet-compare)\n"
           "  --json FILE      write the JSON records to FILE ('-' for standard output)\n"
           "  --quick          one repetition per point (smoke runs)\n");
}

int dn_compare_main(int argc, char **argv) {
    config c;
    memset(&c, 0, sizeof c);
    for (int m = 0; m < M_COUNT; m++)
        c.enabled[m] = 1;
    c.H = 8, c.Dh = 128, c.capacity = 1, c.out_dir = "deltanet-compare";
    int64_t maxlen = 16384;
    int have_lens = 0, have_ctx = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(), 0;
        if (!strcmp(a, "--no-capacity")) {
            c.capacity = 0;
            continue;
        }
        if (!strcmp(a, "--quick")) {
            c.quick = 1;
            continue;
        }
        if (!val) return fprintf(stderr, "compare: %s needs a value\n", a), 2;
        i++;
        if (!strcmp(a, "--max-len"))
            maxlen = atoll(val);
        else if (!strcmp(a, "--lengths")) {
            if ((c.nlens = opt_i64_list("compare", a, val, 1, (int64_t)1 << 40, c.lens, MAXPTS)) <
                1)
                return 2;
            have_lens = 1;
        } else if (!strcmp(a, "--contexts")) {
            if ((c.nctx = opt_i64_list("compare", a, val, 1, (int64_t)1 << 40, c.ctxs, MAXPTS)) < 1)
                return 2;
            have_ctx = 1;
        } else if (!strcmp(a, "--heads"))
            c.H = atoll(val);
        else if (!strcmp(a, "--dim"))
            c.Dh = atoll(val);
        else if (!strcmp(a, "--threads"))
            c.threads = atoll(val);
        else if (!strcmp(a, "--out"))
            c.out_dir = val;
        else if (!strcmp(a, "--json"))
            c.json_path = val;
        else if (!strcmp(a, "--ops")) {
            for (int m = 0; m < M_COUNT; m++)
                c.enabled[m] = 0;
            char tmp[256];
            snprintf(tmp, sizeof tmp, "%s", val);
            for (char *tok = strtok(tmp, ","); tok; tok = strtok(NULL, ",")) {
                int found = 0;
                for (int m = 0; m < M_COUNT; m++)
                    if (!strcmp(tok, mechs[m].name)) c.enabled[m] = found = 1;
                if (!found) return fprintf(stderr, "compare: unknown op '%s'\n", tok), 2;
            }
            c.enabled[M_ATTN] = 1; /* the baseline every comparison needs */
        } else
            return fprintf(stderr, "compare: unknown option %s\n", a), usage(), 2;
    }
    if (c.H < 1 || c.H > 64 || c.Dh < 2 || c.Dh > 256 || c.threads < 0 || maxlen < 1 ||
        maxlen > (1 << 22))
        return fprintf(stderr, "compare: heads 1-64, dim 2-256, max-len 1-4194304\n"), 2;
    if (!have_lens) c.nlens = geometric(maxlen < 32 ? maxlen : 32, maxlen, c.lens);
    if (!have_ctx) { /* contexts from 256: below, every decode is a few microseconds */
        c.nctx = 0;
        for (int i = 0; i < c.nlens; i++)
            if (c.lens[i] >= 256 || c.lens[i] == c.lens[c.nlens - 1]) c.ctxs[c.nctx++] = c.lens[i];
    }
    if (c.threads > 0) dn_set_num_threads((int)c.threads);
    c.threads = dn_get_num_threads();
    tty = isatty(2);

    results *r = calloc(1, sizeof *r);
    if (!r) return fprintf(stderr, "compare: out of memory\n"), 1;
    int nm = 0;
    for (int m = 0; m < M_COUNT; m++)
        nm += c.enabled[m];
    step_total = nm * (c.nlens + c.nctx) + (c.capacity ? 2 : 0);
    double t_start = dn_now_s();
    char machine[256];
    machine_line(machine, sizeof machine);
    printf("deltanet compare: %s\n%s\nmodel width %lld = %lld heads x %lld, fp32, %lld threads\n",
           machine, dn_build_info(), (long long)(c.H * c.Dh), (long long)c.H, (long long)c.Dh,
           (long long)c.threads);
    fflush(stdout);

    r->mem_measured = mem_begin() >= 0;
    for (int i = 0; i < c.nlens; i++)
        for (int m = 0; m < M_COUNT; m++) {
            if (!c.enabled[m]) continue;
            meas x = prefill(&c, m, c.lens[i]);
            r->prefill_s[m][i] = x.sec, r->prefill_flops[m][i] = x.flops,
            r->prefill_mem[m][i] = x.mem;
            progress("prefill", mechs[m].name, c.lens[i]);
        }
    for (int m = 0; m < M_COUNT; m++) {
        if (!c.enabled[m]) continue;
        if (m == M_ATTN)
            decode_attn(&c, r);
        else
            decode_recurrent(&c, m, r);
    }

    /* capacity */
    static const int64_t capN[NCAP] = {1, 8, 16, 32, 48, 64, 96, 128, 192, 256};
    const int64_t capK = 64, distract = 256;
    double cap_err[2][4][NCAP], cap_acc[2][4][NCAP];
    if (c.capacity) {
        for (int run = 0; run < 2; run++) {
            const cap_variant *vs = run ? cap_distract : cap_plain;
            int nv = run ? 4 : 3;
            for (int vi = 0; vi < nv; vi++)
                for (int ni = 0; ni < NCAP; ni++) {
                    double e = 0, a = 0;
                    dn_compare_capacity(vs[vi].op, capK, capN[ni], run ? distract : 0, vs[vi].gate,
                                        vs[vi].close_gate, 1000 + ni, &e, &a, NULL);
                    cap_err[run][vi][ni] = e, cap_acc[run][vi][ni] = a;
                }
            progress("capacity", run ? "distractors" : "plain", capK);
        }
    }
    if (tty) fprintf(stderr, "\r\033[K");
    const double elapsed = dn_now_s() - t_start;

    /* ---- summary ---- */
    const int L = c.nlens - 1, X = c.nctx - 1;
    const double fit_from = (double)c.lens[L] / 16;
    char b1[32], b2[32], b3[32];
    printf("\n== Summary (times measured here, state bytes computed from the shapes; exponents "
           "fitted on log-log axes from T = %.0f) ==\n",
           fit_from < c.lens[0] ? (double)c.lens[0] : fit_from);
    printf("%-13s %9s %11s %14s %11s %11s %9s  %s\n", "mechanism", "prefill", "cheaper than",
           "state at max", "decode at", "decode vs", "decode", "core operation");
    printf("%-13s %9s %11s %14s %11s %11s %9s\n", "", "exponent", "attention at", "ctx, computed",
           "max context", "attention", "exponent");
    for (int m = 0; m < M_COUNT; m++) {
        if (!c.enabled[m]) continue;
        double ex = loglog_slope(c.lens, r->prefill_s[m], c.nlens, fit_from);
        double dx = loglog_slope(c.ctxs, r->decode_s[m], c.nctx, (double)c.ctxs[X] / 16);
        char cross[32];
        if (m == M_ATTN)
            snprintf(cross, sizeof cross, "-");
        else {
            double xo = crossover(&c, r, m);
            if (xo == 0)
                snprintf(cross, sizeof cross, "all T");
            else if (xo < 0)
                snprintf(cross, sizeof cross, "> %lld", (long long)c.lens[L]);
            else
                snprintf(cross, sizeof cross, "T > %.0f", xo);
        }
        fmt_bytes(b1, sizeof b1, r->state_bytes[m][X]);
        fmt_time(b2, sizeof b2, r->decode_s[m][X]);
        snprintf(b3, sizeof b3, m == M_ATTN ? "1x" : "%.1fx faster",
                 r->decode_s[M_ATTN][X] / r->decode_s[m][X]);
        printf("%-13s %9.2f %11s %14s %11s %11s %9.2f  %s\n", mechs[m].name, ex, cross, b1, b2, b3,
               dx, mechs[m].core);
    }
    printf("\nPoint by point:\n");
    double ea = loglog_slope(c.lens, r->prefill_s[M_ATTN], c.nlens, fit_from);
    double eg =
        c.enabled[M_GDN] ? loglog_slope(c.lens, r->prefill_s[M_GDN], c.nlens, fit_from) : NAN;
    printf("  complexity: softmax attention prefill grows as T^%.2f (theory: 2); Gated DeltaNet as "
           "T^%.2f (theory: 1).\n",
           ea, eg);
    if (c.enabled[M_GDN]) {
        double xo = crossover(&c, r, M_GDN);
        if (xo > 0)
            printf(
                "  crossover: Gated DeltaNet prefill is cheaper than attention from T = %.0f on.\n",
                xo);
        else if (xo == 0)
            printf("  crossover: Gated DeltaNet prefill is cheaper at every length measured.\n");
        else
            printf("  crossover: beyond the longest length measured (%lld).\n",
                   (long long)c.lens[L]);
    }
    fmt_bytes(b1, sizeof b1, r->state_bytes[M_ATTN][X]);
    fmt_bytes(b2, sizeof b2, c.enabled[M_GDN] ? r->state_bytes[M_GDN][X] : 0);
    printf("  inference memory (computed from the shapes): the KV cache holds %s at %lld tokens "
           "and grows by %.0f bytes per token; Gated DeltaNet's state stays %s.\n",
           b1, (long long)c.ctxs[X], r->state_bytes[M_ATTN][X] / (double)c.ctxs[X], b2);
    if (c.enabled[M_GDN])
        printf("  decode speed: at %lld tokens of context, attention takes %.1fx as long per token "
               "as Gated DeltaNet (%.1fx at %lld).\n",
               (long long)c.ctxs[X], r->decode_s[M_ATTN][X] / r->decode_s[M_GDN][X],
               r->decode_s[M_ATTN][0] / r->decode_s[M_GDN][0], (long long)c.ctxs[0]);
    if (c.capacity)
        printf(
            "  memory: with N = %lld pairs in a K = %lld state, linear attention reads back with "
            "relative error %.2f (interference grows as (N-1)/K), DeltaNet %.2f (each write "
            "corrects the key it writes);\n    after %lld older pairs linear attention's error is "
            "%.2f, DeltaNet's %.2f, and Gated DeltaNet's, its gate closed at the boundary, %.2f.\n",
            (long long)capN[3], (long long)capK, cap_err[0][0][3], cap_err[0][1][3],
            (long long)distract, cap_err[1][0][3], cap_err[1][1][3], cap_err[1][3][3]);
    printf("  core operation: attention compares each query with every cached key; the linear "
           "family updates one fixed-size state per head.\n");

    /* ---- measured tables ---- */
    printf("\n== Prefill time (median) ==\n%8s", "T");
    for (int m = 0; m < M_COUNT; m++)
        if (c.enabled[m]) printf(" %13s", mechs[m].name);
    for (int i = 0; i < c.nlens; i++) {
        printf("\n%8lld", (long long)c.lens[i]);
        for (int m = 0; m < M_COUNT; m++)
            if (c.enabled[m]) fmt_time(b1, sizeof b1, r->prefill_s[m][i]), printf(" %13s", b1);
    }
    printf("\n\n== Prefill GFLOP/s ==\n%8s", "T");
    for (int m = 0; m < M_COUNT; m++)
        if (c.enabled[m]) printf(" %13s", mechs[m].name);
    for (int i = 0; i < c.nlens; i++) {
        printf("\n%8lld", (long long)c.lens[i]);
        for (int m = 0; m < M_COUNT; m++)
            if (c.enabled[m]) printf(" %13.1f", r->prefill_flops[m][i] / r->prefill_s[m][i] * 1e-9);
    }
    printf("\n\n== Prefill peak memory (%s) ==\n%8s",
           r->mem_measured ? "resident high-water mark of inputs, outputs and scratch"
                           : "not measurable here",
           "T");
    for (int m = 0; m < M_COUNT; m++)
        if (c.enabled[m]) printf(" %13s", mechs[m].name);
    for (int i = 0; i < c.nlens; i++) {
        printf("\n%8lld", (long long)c.lens[i]);
        for (int m = 0; m < M_COUNT; m++)
            if (c.enabled[m]) fmt_bytes(b1, sizeof b1, r->prefill_mem[m][i]), printf(" %13s", b1);
    }
    printf("\n\n== Decode time per token ==\n%8s", "context");
    for (int m = 0; m < M_COUNT; m++)
        if (c.enabled[m]) printf(" %13s", mechs[m].name);
    for (int i = 0; i < c.nctx; i++) {
        printf("\n%8lld", (long long)c.ctxs[i]);
        for (int m = 0; m < M_COUNT; m++)
            if (c.enabled[m]) fmt_time(b1, sizeof b1, r->decode_s[m][i]), printf(" %13s", b1);
    }
    printf("\n\n== Inference state bytes, computed from the shapes (KV cache or recurrent state) "
           "==\n%8s",
           "context");
    for (int m = 0; m < M_COUNT; m++)
        if (c.enabled[m]) printf(" %13s", mechs[m].name);
    for (int i = 0; i < c.nctx; i++) {
        printf("\n%8lld", (long long)c.ctxs[i]);
        for (int m = 0; m < M_COUNT; m++)
            if (c.enabled[m]) fmt_bytes(b1, sizeof b1, r->state_bytes[m][i]), printf(" %13s", b1);
    }
    printf("\n");
    if (c.capacity)
        for (int run = 0; run < 2; run++) {
            const cap_variant *vs = run ? cap_distract : cap_plain;
            int nv = run ? 4 : 3;
            printf("\n== Memory capacity, K = %lld%s: relative error of S^T k against v (top-1 "
                   "accuracy) ==\n%6s %5s",
                   (long long)capK, run ? ", after 256 old distractor pairs" : "", "N", "N/K");
            for (int vi = 0; vi < nv; vi++)
                printf(" %24s", vs[vi].name);
            for (int ni = 0; ni < NCAP; ni++) {
                printf("\n%6lld %5.2f", (long long)capN[ni], (double)capN[ni] / capK);
                for (int vi = 0; vi < nv; vi++)
                    printf("        %8.3g (%5.1f%%)", cap_err[run][vi][ni],
                           100 * cap_acc[run][vi][ni]);
            }
            printf("\n");
        }

    /* ---- charts ---- */
    int wrote = 0;
    if (c.out_dir && mkdir_p(c.out_dir) == 0) {
        char path[1024];
        svg_series ser[8];
        double xs[MAXPTS], ys[8][MAXPTS];
        int ns = 0;
        for (int i = 0; i < c.nlens; i++)
            xs[i] = (double)c.lens[i];
        for (int m = 0; m < M_COUNT; m++)
            if (c.enabled[m]) {
                for (int i = 0; i < c.nlens; i++)
                    ys[ns][i] = r->prefill_s[m][i] * 1e3;
                ser[ns] = (svg_series){mechs[m].name, xs, ys[ns], c.nlens}, ns++;
            }
        svg_chart ch = {"Prefill time against sequence length",
                        "sequence length (tokens)",
                        "time (ms)",
                        "log-log: slope 2 is quadratic, slope 1 linear",
                        ser,
                        ns};
        snprintf(path, sizeof path, "%s/prefill_time.svg", c.out_dir);
        wrote += svg_chart_write(path, &ch) == 0;
        double xc[MAXPTS];
        for (int i = 0; i < c.nctx; i++)
            xc[i] = (double)c.ctxs[i];
        ns = 0;
        for (int m = 0; m < M_COUNT; m++)
            if (c.enabled[m]) {
                for (int i = 0; i < c.nctx; i++)
                    ys[ns][i] = r->decode_s[m][i] * 1e6;
                ser[ns] = (svg_series){mechs[m].name, xc, ys[ns], c.nctx}, ns++;
            }
        ch = (svg_chart){"Decode time per token against context",
                         "context (tokens)",
                         "time per token (us)",
                         NULL,
                         ser,
                         ns};
        snprintf(path, sizeof path, "%s/decode_time.svg", c.out_dir);
        wrote += svg_chart_write(path, &ch) == 0;
        ns = 0;
        for (int m = 0; m < M_COUNT; m++)
            if (c.enabled[m]) {
                for (int i = 0; i < c.nctx; i++)
                    ys[ns][i] = r->state_bytes[m][i];
                ser[ns] = (svg_series){mechs[m].name, xc, ys[ns], c.nctx}, ns++;
            }
        ch = (svg_chart){"Inference state against context (computed)",
                         "context (tokens)",
                         "state bytes (computed)",
                         "KV cache (softmax attention) against fixed recurrent states",
                         ser,
                         ns};
        snprintf(path, sizeof path, "%s/state_bytes.svg", c.out_dir);
        wrote += svg_chart_write(path, &ch) == 0;
        if (c.capacity) {
            double xk[NCAP], ye[8][NCAP];
            for (int ni = 0; ni < NCAP; ni++)
                xk[ni] = (double)capN[ni] / capK;
            ns = 0;
            for (int run = 0; run < 2; run++) {
                const cap_variant *vs = run ? cap_distract : cap_plain;
                int nv = run ? 4 : 3;
                static char names[8][64];
                for (int vi = 0; vi < nv; vi++) { /* from N = 8: one pair is exact (error ~1e-15) */
                    for (int ni = 1; ni < NCAP; ni++)
                        ye[ns][ni] = cap_err[run][vi][ni];
                    snprintf(names[ns], sizeof names[ns], "%s%s", vs[vi].name,
                             run ? ", distractors" : "");
                    ser[ns] = (svg_series){names[ns], xk + 1, ye[ns] + 1, NCAP - 1}, ns++;
                }
            }
            ch = (svg_chart){"Recall from the state: N key-value pairs, K = 64",
                             "N / K",
                             "relative error of S^T k",
                             "256 older distractor pairs before the queried ones where marked",
                             ser,
                             ns};
            snprintf(path, sizeof path, "%s/capacity.svg", c.out_dir);
            wrote += svg_chart_write(path, &ch) == 0;
        }
    }

    /* ---- JSON ---- */
    char jpath[1024];
    const char *jp = c.json_path;
    if (!jp && c.out_dir) snprintf(jpath, sizeof jpath, "%s/compare.json", c.out_dir), jp = jpath;
    FILE *jf = !jp ? NULL : strcmp(jp, "-") ? fopen(jp, "w") : stdout;
    if (jf) {
        fprintf(jf, "{\"machine\": \"");
        json_escape(jf, machine);
        fprintf(jf, "\", \"build\": \"");
        json_escape(jf, dn_build_info());
        fprintf(jf,
                "\", \"threads\": %lld, \"heads\": %lld, \"head_dim\": %lld, \"seconds\": %.3f,\n"
                " \"records\": [\n",
                (long long)c.threads, (long long)c.H, (long long)c.Dh, elapsed);
        int first = 1;
        for (int m = 0; m < M_COUNT; m++) {
            if (!c.enabled[m]) continue;
            for (int i = 0; i < c.nlens; i++, first = 0)
                fprintf(
                    jf,
                    "%s  {\"kind\": \"prefill\", \"op\": \"%s\", \"T\": %lld, \"seconds\": %.9g, "
                    "\"flops\": %.6g, \"gflops\": %.6g, \"peak_bytes\": %.0f}",
                    first ? "" : ",\n", mechs[m].name, (long long)c.lens[i], r->prefill_s[m][i],
                    r->prefill_flops[m][i], r->prefill_flops[m][i] / r->prefill_s[m][i] * 1e-9,
                    r->prefill_mem[m][i]);
            for (int i = 0; i < c.nctx; i++)
                fprintf(jf,
                        ",\n  {\"kind\": \"decode\", \"op\": \"%s\", \"context\": %lld, "
                        "\"seconds_per_token\": %.9g, \"state_bytes_computed\": %.0f}",
                        mechs[m].name, (long long)c.ctxs[i], r->decode_s[m][i],
                        r->state_bytes[m][i]);
            fprintf(
                jf,
                ",\n  {\"kind\": \"fit\", \"op\": \"%s\", \"prefill_exponent\": %.4f, "
                "\"decode_exponent\": %.4f, \"crossover_T\": %.1f, \"decode_ratio_at_max\": %.4f}",
                mechs[m].name, loglog_slope(c.lens, r->prefill_s[m], c.nlens, fit_from),
                loglog_slope(c.ctxs, r->decode_s[m], c.nctx, (double)c.ctxs[X] / 16),
                m == M_ATTN ? -1.0 : crossover(&c, r, m),
                r->decode_s[M_ATTN][X] / r->decode_s[m][X]);
        }
        if (c.capacity)
            for (int run = 0; run < 2; run++) {
                const cap_variant *vs = run ? cap_distract : cap_plain;
                int nv = run ? 4 : 3;
                for (int vi = 0; vi < nv; vi++)
                    for (int ni = 0; ni < NCAP; ni++)
                        fprintf(jf,
                                ",\n  {\"kind\": \"capacity\", \"op\": \"%s\", \"K\": %lld, \"N\": "
                                "%lld, "
                                "\"distractors\": %lld, \"rel_error\": %.6g, \"top1\": %.4f}",
                                vs[vi].name, (long long)capK, (long long)capN[ni],
                                (long long)(run ? distract : 0), cap_err[run][vi][ni],
                                cap_acc[run][vi][ni]);
            }
        fprintf(jf, "\n]}\n");
        if (jf != stdout) fclose(jf);
    }
    printf("\n%d charts and %s written to %s/ (%.1f s)\n", wrote, jf ? "compare.json" : "no JSON",
           c.out_dir ? c.out_dir : ".", elapsed);
    free(r);
    return 0;
}
