/*
 * bench.h - benchmark entry points, linked into the `deltanet` tool as subcommands, and the
 * helpers they share with `deltanet compare`: the timer and its policy, the machine's measured
 * ceilings (bench/machine.c), the --isa option.
 */
#ifndef DN_BENCH_H
#define DN_BENCH_H

#include "deltanet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* `deltanet bench`: the linear-attention family forward (bench/la.c). */
int dn_bench_gdn_main(int argc, char **argv);
/* `deltanet bench attn`: causal softmax attention prefill and KV-cache decode (bench/attn.c). */
int dn_bench_attn_main(int argc, char **argv);
/* `deltanet bench ssm`: Mamba-1, Mamba-2, RWKV-4 and the short convolution (bench/ssm.c). */
int dn_bench_ssm_main(int argc, char **argv);
/* `deltanet bench bwd`: forward + backward of Gated DeltaNet and attention (bench/bwd.c). */
int dn_bench_bwd_main(int argc, char **argv);
/* `deltanet bench model`: language-model training MFU and decode against context (bench/model.c).
 */
int dn_bench_model_main(int argc, char **argv);
int dn_bench_qwen_main(int argc, char **argv);
/* `deltanet bench matmul`: dense products, the built-in kernel against the BLAS (bench/matmul.c).
 */
int dn_bench_matmul_main(int argc, char **argv);

/* ---- the machine's ceilings (bench/machine.c), measured in the run they bound ---- */

/* fp32 FMA throughput of the active ISA over n_threads threads (0: default), GFLOP/s (one FMA =
 * 2 FLOP); runs for about `seconds`. */
double bench_measure_fma_peak(int n_threads, double seconds);
/* memcpy rate over n_threads threads: bytes copied per second (each byte read once and written
 * once; the STREAM convention would count it twice), GB/s, on buffers well past the last-level
 * cache. Reported for context only: it is not the ceiling of a read-only decode. */
double bench_measure_copy_bandwidth(int n_threads, double seconds);
/* Streaming read over n_threads threads, GB/s, with the decode kernels' software prefetch: the
 * ceiling every decode fraction is taken against (a decode step reads its state or cache once). */
double bench_measure_read_bandwidth(int n_threads, double seconds);

/* ---- timing ---- */

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

/*
 * Timing policy. One rule for every benchmark under bench/, `deltanet compare` and the ggml
 * driver of bench/ggml_side_by_side.sh, so that the two sides of every comparison are treated
 * alike; nothing below depends on which op is timed.
 *   - Warm-up: BENCH_WARMUP untimed calls before a prefill or training point, BENCH_WARMUP_STEP
 *     before a decode-step point, at every size. A long call does not warm itself: the first
 *     one also pays for first touches of its output and scratch pages and the thread pool.
 *   - Repeats: the number of timed calls is set by the phase and the size of the point (and
 *     --reps), never by the op, so both sides of a comparison run equally often.
 *   - Statistic: the median of the timed calls, everywhere.
 *   - Scratch: an op whose API takes a workspace from the caller (dn_la_forward,
 *     dn_la_backward) gets one, allocated once before the warm-up and kept across calls, as a
 *     model or trainer keeps its scratch; an op whose API allocates its own (softmax attention
 *     forward and backward, the KV-cache attend, the training forward, Mamba-2's v and g)
 *     allocates inside every call, as a caller would see it; the warm-up has handed that memory
 *     to the allocator (glibc keeps freed blocks up to its 32 MiB mmap ceiling), so the timed
 *     calls do not pay the first touch of fresh pages.
 *   - Inputs: drawn inside each op's contract (docs/OPS.md): gates g <= 0, beta in [0, 1],
 *     Mamba's A < 0 and dt' > 0, q and k L2-normalised (inside the op) for the delta rule.
 */
enum { BENCH_WARMUP = 1, BENCH_WARMUP_STEP = 20 };

typedef dn_status (*bench_fn)(void *ctx);

/* timed calls of one attention prefill point (`bench attn` and the ggml driver): fewer for the
 * long ones, a 16k prefill is seconds */
static inline int bench_attn_prefill_reps(int64_t T, int reps) {
    return T >= 16384 ? 3 : T >= 4096 ? 5 : reps;
}

/* Median seconds of `reps` timed calls of fn(ctx) after `warmup` untimed ones (policy above);
 * -1 when a call fails (dn_last_error() says why) or reps < 1. */
static inline double bench_time(bench_fn fn, void *ctx, int warmup, int reps) {
    if (reps < 1) return -1;
    double *t = malloc(sizeof(double) * (size_t)reps);
    if (!t) return -1;
    for (int i = -warmup; i < reps; i++) {
        double t0 = dn_now_s();
        if (fn(ctx) != DN_OK) {
            free(t);
            return -1;
        }
        if (i >= 0) t[i] = dn_now_s() - t0;
    }
    double med = dn_median(t, reps);
    free(t);
    return med;
}

/* --isa NAME: 0 when set, else prints why not and returns 2 (the tool's usage-error status) */
static inline int dn_bench_set_isa(const char *who, const char *name) {
    dn_isa isa;
    if (dn_isa_from_name(name, &isa) != DN_OK || dn_set_isa(isa) != DN_OK) {
        fprintf(stderr, "%s: %s\n", who, dn_last_error());
        return 2;
    }
    return 0;
}

/* One decode step over a KV cache (one query token per sequence, scale 1/sqrt(D)), in the shape
 * bench_time calls: shared by `bench attn` and `compare` so both time the same call. */
typedef struct {
    const dn_kv_cache *kv;
    float *o;
    const float *q;
    dn_strides s1;
    int64_t H, D;
    int threads;
} attend_ctx;
static inline dn_status run_attend(void *arg) {
    const attend_ctx *a = arg;
    const float scale = (float)(1.0 / sqrt((double)a->D));
    return dn_kv_cache_attend(a->kv, a->o, a->s1, NULL, a->q, a->s1, 1, a->H, scale, 0, a->threads);
}

#endif
