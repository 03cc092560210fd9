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

/* Sums n floats with independent vector accumulators: a read stream and nothing else. */
float DN_ISA_FN(dn_cpu_read_sum)(const float *x, int64_t n) {
    vf acc[8];
    for (int r = 0; r < 8; r++)
        acc[r] = vzero();
    int64_t i = 0;
    for (; i + 8 * DN_VW <= n; i += 8 * DN_VW) {
        /* software prefetch as the decode kernel does: the hardware prefetcher alone leaves a
         * core short of outstanding misses */
        for (int r = 0; r < 8 * DN_VW; r += 16)
            __builtin_prefetch(x + i + 1024 + r);
        for (int r = 0; r < 8; r++)
            acc[r] += vload(x + i + r * DN_VW);
    }
    for (int r = 1; r < 8; r++)
        acc[0] += acc[r];
    float s = vhsum(acc[0]);
    for (; i < n; i++)
        s += x[i];
    return s;
}
