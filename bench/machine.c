/*
 * bench/machine.c - the machine's ceilings, measured by the benchmarks and the tool in the same
 * run as the figures they bound: fp32 FMA throughput, memcpy rate and streaming-read rate. Not
 * part of the library's API: the per-ISA loops live in src/cpu/probe.c (compiled once per SIMD
 * level) and are reached through the internal kernel table, which the tool and test binaries
 * see because they link the static library.
 */
#include "bench.h"

#include "../src/internal.h"

#include <stdlib.h>
#include <string.h>

double bench_measure_fma_peak(int n_threads, double seconds) {
    int nt = dn_threads_for(n_threads);
    double (*fn)(long, double *) = dn_cpu()->fma_peak;
    /* Calibrate the iteration count on one thread, then run all threads at once. */
    long iters = 1 << 16;
    double t = 0, flops = 0;
    for (;;) {
        t = fn(iters, &flops);
        if (t > 0.02 || iters > (1L << 40)) break;
        iters *= 4;
    }
    double flops_per_iter = flops / (double)iters;
    iters = (long)(iters * (seconds / (t > 0 ? t : 1e-3)));
    if (iters < 1) iters = 1;
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        double tmax = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) reduction(max : tmax)
#endif
        {
            double f = 0, tt = fn(iters, &f);
            tmax = tt > tmax ? tt : tmax;
        }
        /* every thread did the same work; the slowest one bounds the rate */
        double gf = (double)nt * flops_per_iter * (double)iters / tmax * 1e-9;
        if (gf > best) best = gf;
    }
    return best;
}

/* Both bandwidth probes stream 256 MiB buffers (8x a 32 MiB last-level cache), one slice per
 * thread, and keep the best of several passes: the ceiling, on a machine shared with others. */
#define BW_BYTES ((size_t)256 << 20)

double bench_measure_copy_bandwidth(int n_threads, double seconds) {
    int nt = dn_threads_for(n_threads);
    char *src = aligned_alloc(64, BW_BYTES), *dst = aligned_alloc(64, BW_BYTES);
    if (!src || !dst) {
        free(src);
        free(dst);
        return 0;
    }
    memset(src, 1, BW_BYTES);
    memset(dst, 2, BW_BYTES);
    double best = 0, t_end = dn_now_s() + seconds;
    for (int rep = 0; rep < 50 && (rep < 3 || dn_now_s() < t_end); rep++) {
        double t0 = dn_now_s();
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static)
#endif
        for (int i = 0; i < nt; i++) {
            size_t lo = BW_BYTES / (size_t)nt * (size_t)i;
            size_t hi = i == nt - 1 ? BW_BYTES : lo + BW_BYTES / (size_t)nt;
            memcpy(dst + lo, src + lo, hi - lo);
        }
        double gbs = (double)BW_BYTES / (dn_now_s() - t0) * 1e-9;
        if (gbs > best) best = gbs;
    }
    free(src);
    free(dst);
    return best;
}

double bench_measure_read_bandwidth(int n_threads, double seconds) {
    int nt = dn_threads_for(n_threads);
    const int64_t n = (int64_t)(BW_BYTES / sizeof(float));
    float *x = aligned_alloc(64, BW_BYTES);
    if (!x) return 0;
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(i & 7);
    float (*sum)(const float *, int64_t) = dn_cpu()->read_sum;
    volatile float sink = 0;
    double best = 0, t_end = dn_now_s() + seconds;
    for (int rep = 0; rep < 50 && (rep < 3 || dn_now_s() < t_end); rep++) {
        double t0 = dn_now_s();
        float tot = 0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : tot)
#endif
        for (int i = 0; i < nt; i++) {
            int64_t lo = n / nt * i, hi = i == nt - 1 ? n : lo + n / nt;
            tot += sum(x + lo, hi - lo);
        }
        sink = tot;
        double gbs = (double)BW_BYTES / (dn_now_s() - t0) * 1e-9;
        if (gbs > best) best = gbs;
    }
    (void)sink;
    free(x);
    return best;
}
