/*
 * matmul.c - public entry point of the dense product: checks, the backend choice (the system
 * BLAS the library was built with, else the built-in kernel of src/cpu/matmul.c), and the calls
 * that need no product (M or N = 0, K = 0, alpha = 0).
 */
#include "internal.h"

#include <limits.h>
#include <stdatomic.h>
#include <string.h>

#if defined(DN_HAVE_BLAS)
#include <cblas.h>
#if defined(DN_BLAS_OPENBLAS)
#define BLAS_NAME "openblas"
#elif defined(DN_BLAS_BLIS)
#include <blis.h>
#define BLAS_NAME "blis"
#else
#define BLAS_NAME "cblas"
#endif
#define HAVE_BLAS 1
#else
#define BLAS_NAME NULL
#define HAVE_BLAS 0
#endif

const char *dn_matmul_blas_name(void) { return BLAS_NAME; }

/* ---- the backend: a process-wide setting like the SIMD level (src/core.c) ---- */
enum { MM_BUILTIN = 0, MM_BLAS = 1 };
/* fewer rows than this run on the built-in kernel even with a BLAS (see dn_matmul) */
#define DN_MATMUL_BLAS_MIN_ROWS 16

/* -1 until first use; then the BLAS when there is one, unless DN_MATMUL says builtin. The first
 * store wins (compare-exchange), so a dn_matmul_set_backend made meanwhile is never undone. */
static _Atomic int mm_backend = -1;

static int backend_from_name(const char *name) {
    if (!strcmp(name, "builtin") || !strcmp(name, "built-in")) return MM_BUILTIN;
    if (!strcmp(name, "blas")) return MM_BLAS;
#if HAVE_BLAS
    if (!strcmp(name, BLAS_NAME)) return MM_BLAS;
#endif
    return -1;
}

static int backend_now(void) {
    const int cur = atomic_load(&mm_backend);
    if (cur >= 0) return cur;
    int want = HAVE_BLAS ? MM_BLAS : MM_BUILTIN;
    const char *env = getenv("DN_MATMUL");
    const int asked = env ? backend_from_name(env) : -1;
    if (asked == MM_BUILTIN || (asked == MM_BLAS && HAVE_BLAS)) want = asked;
    int expected = -1;
    if (atomic_compare_exchange_strong(&mm_backend, &expected, want)) return want;
    return expected;
}

dn_status dn_matmul_set_backend(const char *name) {
    if (!name) return dn_fail(DN_ERR_NULL, "dn_matmul_set_backend: name is NULL");
    const int b = backend_from_name(name);
    if (b < 0)
        return dn_fail(DN_ERR_ARG, "unknown matmul backend '%s' (expected builtin or blas)", name);
    if (b == MM_BLAS && !HAVE_BLAS)
        return dn_fail(DN_ERR_UNSUPPORTED,
                       "matmul backend blas: this library was built without a BLAS (BLAS=0, or "
                       "none found at build time)");
    atomic_store(&mm_backend, b);
    return DN_OK;
}

const char *dn_matmul_backend(void) { return backend_now() == MM_BLAS ? BLAS_NAME : "built-in"; }

#if defined(DN_BLAS_OPENBLAS) || defined(DN_BLAS_BLIS)
/* The BLAS's own thread pool follows dn_get_num_threads(). Setting it is a global change inside
 * the BLAS, so it is made only when the count differs from the last one set, by one thread at a
 * time. */
static _Atomic int blas_threads = 0;
static atomic_flag blas_threads_lock = ATOMIC_FLAG_INIT;

static void blas_set_threads(int n) {
    if (atomic_load(&blas_threads) == n) return;
    while (atomic_flag_test_and_set(&blas_threads_lock)) {
    }
    if (atomic_load(&blas_threads) != n) {
#if defined(DN_BLAS_OPENBLAS)
        openblas_set_num_threads(n);
#else
        bli_thread_set_num_threads(n);
#endif
        atomic_store(&blas_threads, n);
    }
    atomic_flag_clear(&blas_threads_lock);
}
#elif defined(DN_HAVE_BLAS)
static void blas_set_threads(int n) { (void)n; } /* a CBLAS without a thread setting */
#endif

/* C = beta C, C not read when beta = 0: the whole call when K = 0 or alpha = 0 */
static void scale_c(const dn_matmul_args *a) {
    if (a->beta == 1.0f) return;
    for (int64_t i = 0; i < a->M; i++) {
        float *c = a->C + i * a->ldc;
        for (int64_t j = 0; j < a->N; j++)
            c[j] = a->beta == 0.0f ? 0.0f : a->beta * c[j];
    }
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

dn_status dn_matmul(dn_trans ta, dn_trans tb, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                    int64_t ldc) {
    return dn_matmul_ex(ta, tb, M, N, K, alpha, A, lda, B, DN_F32, ldb, beta, C, ldc);
}

dn_status dn_matmul_ex(dn_trans ta, dn_trans tb, int64_t M, int64_t N, int64_t K, float alpha,
                       const float *A, int64_t lda, const void *B, dn_dtype btype, int64_t ldb,
                       float beta, float *C, int64_t ldc) {
    const char *op = "matmul";
    if ((unsigned)btype >= DN_DTYPE_COUNT)
        return dn_fail(DN_ERR_ARG, "%s: B's dtype %d is not DN_F32, DN_F16 or DN_BF16", op,
                       (int)btype);
    const int64_t bsize = btype == DN_F32 ? 4 : 2;
    if ((unsigned)ta > 1 || (unsigned)tb > 1)
        return dn_fail(DN_ERR_ARG, "%s: ta = %d, tb = %d; each must be DN_NO_TRANS or DN_TRANS", op,
                       (int)ta, (int)tb);
    if (M < 0 || N < 0 || K < 0)
        return dn_fail(DN_ERR_SHAPE, "%s: M = %lld, N = %lld, K = %lld; none may be negative", op,
                       (long long)M, (long long)N, (long long)K);
    /* the stored shapes: A [ar,ac], B [br,bc], C [M,N], each row-major with its leading dim */
    const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    const struct {
        const char *name;
        int64_t ld, cols;
    } lds[3] = {{"lda", lda, ac}, {"ldb", ldb, bc}, {"ldc", ldc, N}};
    for (int i = 0; i < 3; i++)
        if (lds[i].ld < max64(1, lds[i].cols))
            return dn_fail(DN_ERR_SHAPE, "%s: %s = %lld is less than max(1, %lld), its row length",
                           op, lds[i].name, (long long)lds[i].ld, (long long)lds[i].cols);
    /* 16-bit B: checked as the flat run of floats that covers its bytes, ((br - 1) ldb + bc)
     * elements, which is what the NULL and overlap checks need */
    int64_t b16 = 0;
    if (bsize == 2 && (!DN_PROD(&b16, br > 0 ? br - 1 : 0, ldb) || b16 > INT64_MAX / 2 - bc))
        return dn_fail(DN_ERR_SHAPE, "%s: B [%lld,%lld] with row stride %lld overflows", op,
                       (long long)br, (long long)bc, (long long)ldb);
    b16 = br > 0 && bc > 0 ? (b16 + bc + 1) / 2 : 0;
    dn_arg args[3] = {
        {"A", A, {0, 0, lda}, 1, 1, ar, ac, 0, K == 0, 0},
        bsize == 4 ? (dn_arg){"B", B, {0, 0, ldb}, 1, 1, br, bc, 0, K == 0, 0}
                   : (dn_arg){"B", B, {0, 0, b16}, 1, 1, 1, b16, 0, K == 0, 0},
        {"C", C, {0, 0, ldc}, 1, 1, M, N, 1, 0, 0},
    };
    /* sizes first, so that an overflowing shape is an error even where no element is touched */
    for (int i = 0; i < 3; i++) {
        int64_t bytes, extent;
        if (!DN_PROD(&bytes, args[i].n2, args[i].D, (int64_t)sizeof(float)) ||
            !dn_view_extent(args[i].s, 1, 1, args[i].n2, args[i].D, &extent))
            return dn_fail(
                DN_ERR_SHAPE, "%s: %s [%lld,%lld] with row stride %lld overflows 64-bit sizes", op,
                args[i].name, (long long)args[i].n2, (long long)args[i].D, (long long)args[i].s.h);
    }
    if (M == 0 || N == 0) return DN_OK;
    dn_status st = dn_check_args(op, args, 3);
    if (st != DN_OK) return st;

    const dn_matmul_args a = {.ta = ta,
                              .tb = tb,
                              .M = M,
                              .N = N,
                              .K = K,
                              .alpha = alpha,
                              .beta = beta,
                              .A = A,
                              .B = btype == DN_F32 ? B : NULL,
                              .C = C,
                              .lda = lda,
                              .ldb = ldb,
                              .ldc = ldc,
                              .btype = btype,
                              .B16 = btype == DN_F32 ? NULL : B};
    if (K == 0 || alpha == 0.0f) {
        scale_c(&a);
        return DN_OK;
    }
#if defined(DN_HAVE_BLAS)
    /* the BLAS takes int dimensions: a larger call runs on the built-in kernel. So does a product
     * of few rows (a decode step's projections): the built-in few-rows path is the faster one
     * there (bench matmul), and it keeps the BLAS's pool of spinning threads, which would hold the
     * cores for ~0.1 s after each call, out of a decode step's run of small OpenMP regions. */
    const int fits = M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && lda <= INT_MAX &&
                     ldb <= INT_MAX && ldc <= INT_MAX;
    if (backend_now() == MM_BLAS && fits && M >= DN_MATMUL_BLAS_MIN_ROWS && btype == DN_F32) {
        blas_set_threads(dn_threads_for(0));
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
        return DN_OK;
    }
#endif
    const dn_cpu_kernels *kern = dn_cpu(); /* once: the workspace and the kernel of one level */
    const int nt = dn_threads_for(0);
    const size_t bytes = kern->matmul_workspace(&a, nt);
    void *ws = dn_alloc(bytes);
    if (!ws)
        return dn_fail(DN_ERR_ALLOC, "%s: no memory for %zu bytes of packed panels", op, bytes);
    kern->matmul(&a, nt, ws);
    dn_free(ws);
    return DN_OK;
}
