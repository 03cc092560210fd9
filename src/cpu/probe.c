/*
 * cpu/probe.c - measuring the machine in the kernels' own vector code: fp32 FMA throughput and
 * the bandwidth of a streaming read (the access pattern of a KV-cache decode).
 */
#include "../internal.h"
#include "simd.h"

#include <time.h>

/* FMA throughput: independent multiply-adds on as many accumulators as the pipeline needs. */
#define PEAK_ACC 12
double DN_ISA_FN(dn_cpu_fma_peak)(long iters, double *flops) {
    volatile float seed = 1.0f;
    vf acc[PEAK_ACC], a = vset1(seed * 0.999999f), c = vset1(seed * 1e-7f);
    for (int r = 0; r < PEAK_ACC; r++)
        acc[r] = vset1(seed + (float)r);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long it = 0; it < iters; it++) {
        for (int r = 0; r < PEAK_ACC; r++)
            acc[r] = acc[r] * a + c;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    vf sum = vzero();
    for (int r = 0; r < PEAK_ACC; r++)
        sum += acc[r];
    volatile float sink = sum[0];
    (void)sink;
    *flops = (double)iters * PEAK_ACC * DN_VW * 2.0;
    return (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
}

/* Sums n floats: the fastest plain read this code reaches, the ceiling decode fractions are taken
 * against. The range is read as READ_STREAMS contiguous parts at once, 64 bytes of each per step,
 * each prefetched 1 KB ahead: a core keeps more misses in flight over several far-apart streams
 * than over one (on a Zen 5 guest, 51 GB/s over 2 cores against 35 GB/s for one stream). */
#define READ_STREAMS 8
float DN_ISA_FN(dn_cpu_read_sum)(const float *x, int64_t n) {
    const int64_t step = 64 / (int64_t)sizeof(float), len = n / READ_STREAMS / step * step;
    vf acc[READ_STREAMS];
    for (int r = 0; r < READ_STREAMS; r++)
        acc[r] = vzero();
    for (int64_t i = 0; i < len; i += step)
        for (int r = 0; r < READ_STREAMS; r++) {
            const float *p = x + r * len + i;
            __builtin_prefetch(p + 256);
            for (int64_t v = 0; v < step; v += DN_VW)
                acc[r] += vload(p + v);
        }
    for (int r = 1; r < READ_STREAMS; r++)
        acc[0] += acc[r];
    float s = vhsum(acc[0]);
    for (int64_t i = READ_STREAMS * len; i < n; i++)
        s += x[i];
    return s;
}
