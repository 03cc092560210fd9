/*
 * core.c - status and name tables, error messages, thread count, SIMD level selection.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>
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
    [DN_ERR_FORMAT] = "malformed input",
    [DN_ERR_IO] = "i/o error",
    [DN_ERR_DEVICE] = "device error",
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
    return dn_fail(DN_ERR_ARG,
                   "unknown op '%s' (expected one of linear_attn, gla, deltanet, gdn, "
                   "softmax_attn, mamba1, mamba2, rwkv4, short_conv)",
                   name);
}

const char *dn_impl_name(dn_impl impl) {
    return (unsigned)impl < DN_IMPL_COUNT ? impl_names[impl] : NULL;
}

static const char *const dtype_names[] = {[DN_F32] = "f32", [DN_F16] = "f16", [DN_BF16] = "bf16"};
_Static_assert(DN_COUNTOF(dtype_names) == DN_DTYPE_COUNT, "dtype name table out of date");

const char *dn_dtype_name(dn_dtype t) {
    return (unsigned)t < DN_DTYPE_COUNT ? dtype_names[t] : NULL;
}

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
/* Process-wide settings read by every call on every thread: atomics, so that one thread may
 * change them while another runs an op (the op sees the old or the new value, never a torn one). */
static _Atomic int default_threads = 0;

void dn_set_num_threads(int n) { atomic_store(&default_threads, n > 0 ? n : 0); }

int dn_get_num_threads(void) {
#ifdef _OPENMP
    const int n = atomic_load(&default_threads);
    return n > 0 ? n : omp_get_max_threads();
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
#if defined(DN_HAVE_X86_KERNELS)
#include <cpuid.h>
/* F16C (CPUID leaf 1, ECX bit 29): asked of the processor directly, as not every compiler's
 * __builtin_cpu_supports knows its name. */
static int has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}
#endif
static int isa_supported(dn_isa isa) {
    switch (isa) {
    case DN_ISA_GENERIC: return 1;
#if defined(DN_HAVE_X86_KERNELS)
    /* every extension the level's kernels are compiled with (Makefile: ISA_FLAGS_*) */
    case DN_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    case DN_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               isa_supported(DN_ISA_AVX2);
#endif
    default: return 0;
    }
}

dn_isa dn_isa_best(void) {
    for (int i = DN_ISA_COUNT - 1; i > 0; i--)
        if (isa_supported((dn_isa)i)) return (dn_isa)i;
    return DN_ISA_GENERIC;
}

/* -1 until first use; then the level chosen from the processor and DN_ISA. Two threads racing
 * on the first use compute the same value, and only the first store wins (compare-exchange), so
 * a dn_set_isa made meanwhile is never overwritten by the lazy default. */
static _Atomic int active_isa = -1;

dn_isa dn_isa_active(void) {
    int cur = atomic_load(&active_isa);
    if (cur >= 0) return (dn_isa)cur;
    dn_isa want = dn_isa_best();
    const char *env = getenv("DN_ISA");
    dn_isa asked;
    if (env && dn_isa_from_name(env, &asked) == DN_OK && isa_supported(asked)) want = asked;
    int expected = -1;
    if (atomic_compare_exchange_strong(&active_isa, &expected, (int)want)) return want;
    return (dn_isa)expected; /* another thread set it first */
}

dn_status dn_set_isa(dn_isa isa) {
    if ((unsigned)isa >= DN_ISA_COUNT) return dn_fail(DN_ERR_ARG, "unknown ISA %d", (int)isa);
    if (!isa_supported(isa))
        return dn_fail(DN_ERR_UNSUPPORTED, "ISA %s is not supported by this processor or build",
                       isa_names[isa]);
    atomic_store(&active_isa, (int)isa);
    return DN_OK;
}

const char *dn_build_info(void) {
    static _Thread_local char
        buf[256]; /* per thread: a caller's string is never rewritten under it */
    const char *blas = dn_matmul_blas_name();
    snprintf(buf, sizeof buf,
             "deltanet %d.%d.%d, %s, kernels: generic%s, %s, BLAS: %s, isa in use: %s",
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
             blas ? blas : "none", isa_names[dn_isa_active()]);
    return buf;
}
