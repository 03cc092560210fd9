/*
 * core.c - status and name tables, error messages, thread count, SIMD level selection.
 */
#include "internal.h"

#include <stdarg.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define DN_COUNTOF(a) (sizeof(a) / sizeof((a)[0]))

static const char *const status_names[] = {
    [DN_OK] = "ok",
    [DN_ERR_NULL] = "null pointer",
    [DN_ERR_SHAPE] = "bad shape",
    [DN_ERR_STRIDE] = "bad stride",
    [DN_ERR_ARG] = "bad argument",
    [DN_ERR_UNSUPPORTED] = "unsupported",
    [DN_ERR_ALLOC] = "out of memory",
    [DN_ERR_FULL] = "capacity exceeded",
};
_Static_assert(DN_COUNTOF(status_names) == DN_STATUS_COUNT, "status name table out of date");

static const char *const op_names[] = {
    [DN_OP_LINEAR_ATTN] = "linear_attn",
    [DN_OP_GLA] = "gla",
    [DN_OP_DELTANET] = "deltanet",
    [DN_OP_GDN] = "gdn",
    [DN_OP_SOFTMAX_ATTN] = "softmax_attn",
    [DN_OP_MAMBA1] = "mamba1",
    [DN_OP_MAMBA2] = "mamba2",
    [DN_OP_RWKV4] = "rwkv4",
    [DN_OP_SHORT_CONV] = "short_conv",
};
_Static_assert(DN_COUNTOF(op_names) == DN_OP_COUNT, "op name table out of date");

static const char *const impl_names[] = {
    [DN_IMPL_AUTO] = "auto",
    [DN_IMPL_REF] = "ref",
    [DN_IMPL_RECURRENT] = "recurrent",
    [DN_IMPL_CHUNK] = "chunk",
};
_Static_assert(DN_COUNTOF(impl_names) == DN_IMPL_COUNT, "impl name table out of date");

static const char *const isa_names[] = {
    [DN_ISA_GENERIC] = "generic",
    [DN_ISA_AVX2] = "avx2",
    [DN_ISA_AVX512] = "avx512",
};
_Static_assert(DN_COUNTOF(isa_names) == DN_ISA_COUNT, "isa name table out of date");

const char *dn_status_str(dn_status s) {
    if ((unsigned)s >= DN_STATUS_COUNT) return "unknown status";
    return status_names[s];
}

const char *dn_op_name(dn_op op) { return (unsigned)op < DN_OP_COUNT ? op_names[op] : NULL; }

dn_status dn_op_from_name(const char *name, dn_op *op) {
    if (!name || !op) return dn_fail(DN_ERR_NULL, "dn_op_from_name: NULL argument");
    for (int i = 0; i < DN_OP_COUNT; i++)
        if (strcmp(name, op_names[i]) == 0) {
            *op = (dn_op)i;
            return DN_OK;
        }
    return dn_fail(DN_ERR_ARG, "unknown op '%s' (expected one of linear_attn, gla, deltanet, gdn, "
                               "softmax_attn, mamba1, mamba2, rwkv4, short_conv)", name);
}

const char *dn_impl_name(dn_impl impl) {
    return (unsigned)impl < DN_IMPL_COUNT ? impl_names[impl] : NULL;
}

static const char *const dtype_names[] = {[DN_F32] = "f32", [DN_F16] = "f16", [DN_BF16] = "bf16"};
_Static_assert(DN_COUNTOF(dtype_names) == DN_DTYPE_COUNT, "dtype name table out of date");

const char *dn_dtype_name(dn_dtype t) { return (unsigned)t < DN_DTYPE_COUNT ? dtype_names[t] : NULL; }

const char *dn_isa_name(dn_isa isa) { return (unsigned)isa < DN_ISA_COUNT ? isa_names[isa] : NULL; }

dn_status dn_isa_from_name(const char *name, dn_isa *isa) {
    if (!name || !isa) return dn_fail(DN_ERR_NULL, "dn_isa_from_name: NULL argument");
    for (int i = 0; i < DN_ISA_COUNT; i++)
        if (strcmp(name, isa_names[i]) == 0) {
            *isa = (dn_isa)i;
            return DN_OK;
        }
    return dn_fail(DN_ERR_ARG, "unknown ISA '%s' (expected generic, avx2 or avx512)", name);
}

/* ---- errors ---- */
static _Thread_local char last_error[256] = "no error";

dn_status dn_fail(dn_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return st;
}

const char *dn_last_error(void) { return last_error; }

/* ---- threads ---- */
static int default_threads = 0;

void dn_set_num_threads(int n) { default_threads = n > 0 ? n : 0; }

int dn_get_num_threads(void) {
#ifdef _OPENMP
    return default_threads > 0 ? default_threads : omp_get_max_threads();
#else
    return 1;
#endif
}

int dn_threads_for(int requested) {
#ifdef _OPENMP
    return requested > 0 ? requested : dn_get_num_threads();
#else
    (void)requested;
    return 1;
#endif
}

/* ---- SIMD level ---- */
static int isa_supported(dn_isa isa) {
    switch (isa) {
    case DN_ISA_GENERIC: return 1;
#if defined(DN_HAVE_X86_KERNELS)
    case DN_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case DN_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
#endif
    default: return 0;
    }
}

dn_isa dn_isa_best(void) {
    for (int i = DN_ISA_COUNT - 1; i > 0; i--)
        if (isa_supported((dn_isa)i)) return (dn_isa)i;
    return DN_ISA_GENERIC;
}

static int active_isa = -1;

dn_isa dn_isa_active(void) {
    if (active_isa < 0) {
        dn_isa best = dn_isa_best(), want = best;
        const char *env = getenv("DN_ISA");
        dn_isa asked;
        if (env && dn_isa_from_name(env, &asked) == DN_OK && isa_supported(asked)) want = asked;
        active_isa = (int)want;
    }
    return (dn_isa)active_isa;
}

dn_status dn_set_isa(dn_isa isa) {
    if ((unsigned)isa >= DN_ISA_COUNT) return dn_fail(DN_ERR_ARG, "unknown ISA %d", (int)isa);
    if (!isa_supported(isa))
        return dn_fail(DN_ERR_UNSUPPORTED, "ISA %s is not supported by this processor or build",
                       isa_names[isa]);
    active_isa = (int)isa;
    return DN_OK;
}

const char *dn_build_info(void) {
    static char buf[256];
    snprintf(buf, sizeof buf, "deltanet %d.%d.%d, %s, kernels: generic%s, %s, isa in use: %s",
             DN_VERSION_MAJOR, DN_VERSION_MINOR, DN_VERSION_PATCH,
#if defined(__clang__)
             "clang " __clang_version__,
#elif defined(__GNUC__)
             "gcc " __VERSION__,
#else
             "unknown compiler",
#endif
#if defined(DN_HAVE_X86_KERNELS)
             " avx2 avx512",
#else
             "",
#endif
#ifdef _OPENMP
             "OpenMP",
#else
             "no OpenMP",
#endif
             isa_names[dn_isa_active()]);
    return buf;
}

double dn_measure_fma_peak(int n_threads, double seconds) {
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

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Both probes stream 256 MiB buffers (8x a 32 MiB last-level cache), one slice per thread, and
 * keep the best of several passes: the ceiling, on a machine shared with others. */
#define BW_BYTES ((size_t)256 << 20)

double dn_measure_copy_bandwidth(int n_threads, double seconds) {
    int nt = dn_threads_for(n_threads);
    char *src = dn_alloc(BW_BYTES), *dst = dn_alloc(BW_BYTES);
    if (!src || !dst) {
        dn_free(src);
        dn_free(dst);
        return 0;
    }
    memset(src, 1, BW_BYTES);
    memset(dst, 2, BW_BYTES);
    double best = 0, t_end = now_s() + seconds;
    for (int rep = 0; rep < 50 && (rep < 3 || now_s() < t_end); rep++) {
        double t0 = now_s();
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static)
#endif
        for (int i = 0; i < nt; i++) {
            size_t lo = BW_BYTES / (size_t)nt * (size_t)i;
            size_t hi = i == nt - 1 ? BW_BYTES : lo + BW_BYTES / (size_t)nt;
            memcpy(dst + lo, src + lo, hi - lo);
        }
        double gbs = (double)BW_BYTES / (now_s() - t0) * 1e-9;
        if (gbs > best) best = gbs;
    }
    dn_free(src);
    dn_free(dst);
    return best;
}

double dn_measure_read_bandwidth(int n_threads, double seconds) {
    int nt = dn_threads_for(n_threads);
    const int64_t n = (int64_t)(BW_BYTES / sizeof(float));
    float *x = dn_alloc(BW_BYTES);
    if (!x) return 0;
    for (int64_t i = 0; i < n; i++) x[i] = (float)(i & 7);
    float (*sum)(const float *, int64_t) = dn_cpu()->read_sum;
    volatile float sink = 0;
    double best = 0, t_end = now_s() + seconds;
    for (int rep = 0; rep < 50 && (rep < 3 || now_s() < t_end); rep++) {
        double t0 = now_s();
        float tot = 0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : tot)
#endif
        for (int i = 0; i < nt; i++) {
            int64_t lo = n / nt * i, hi = i == nt - 1 ? n : lo + n / nt;
            tot += sum(x + lo, hi - lo);
        }
        sink = tot;
        double gbs = (double)BW_BYTES / (now_s() - t0) * 1e-9;
        if (gbs > best) best = gbs;
    }
    (void)sink;
    dn_free(x);
    return best;
}
