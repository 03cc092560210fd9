/*
 * cpu/matmul.c - the built-in dense product C = alpha op(A) op(B) + beta C (row-major), the
 * kernel dn_matmul runs when it does not call a BLAS.
 *
 * The Goto / BLIS structure. C is computed in column blocks of at most NC and depth blocks of at
 * most KC. op(B) is packed once, by all threads, into micro-panels of NR columns stored k-major
 * (the NR values of one k side by side), a group of depth blocks at a time (up to 16 MiB: for
 * the usual shapes all of K, so a call is two passes of the threads, pack then compute). Then
 * each task takes a block of at most MC rows of C (and, when row blocks are few, a part of the
 * columns) and, for each depth block of the group, packs its slice of op(A) into micro-panels of
 * MR rows in its thread's scratch and runs the micro-kernel over its (MR x NR) tiles: one B
 * micro-panel stays in L1 while the A block streams from L2. The micro-kernel holds the tile in
 * MR x NV vector accumulators and does MR x NV FMAs per k, from NV vector loads of B and MR
 * broadcasts of A. Packing reads op(A) and op(B) through their storage, so a transpose costs
 * nothing beyond the copy every case makes; panels are padded with zeros to whole micro-panels,
 * and an edge tile is computed whole and written only inside C. Tasks are handed out
 * dynamically, a few per thread, so that a thread slowed by another process on its core leaves
 * its share to the others. A product of fewer than MM_FEW rows skips the packing (few_rows).
 *
 * Every element of C is summed in one order whatever the thread count: k in order within a
 * depth block, each block's sum added to C in turn (alpha s + beta C for the first, C + alpha s
 * after), and tiles start at multiples of MR and NR from the origin however the rows and columns
 * are shared out. The result is bitwise the same run to run and across thread counts (at one ISA).
 *
 * Compiled once per SIMD level (see simd.h).
 */
#include "../internal.h"
#include "simd.h"

#if DN_VW == 16
/* 28 accumulators, 2 B vectors and 1 broadcast of the 32 zmm registers */
#define MM_MR 14
#else
/* 12 accumulators, 2 B vectors and 1 broadcast of the 16 ymm (or xmm) registers */
#define MM_MR 6
#endif
#define MM_NV 2
#define MM_NR (MM_NV * DN_VW)
/* KC: a B micro-panel of KC x NR floats (16 KiB at AVX2) stays in a 32 KiB L1 beside the A
 * micro-panel. MC (a multiple of every MR): an A block of MC x KC (168 KiB) sits in L2. NC (a
 * multiple of every NR): a B panel of KC x NC (4 MiB) in the last-level cache. (KC 128 to 512
 * and MC 96 to 240 measured within 5% of each other at AVX2 on Zen 3.) */
#define MM_KC 256
#define MM_MC 168
#define MM_NC 4096
/* Floats of B packed in one pass (16 MiB): as many depth blocks as fit, so that most calls make
 * two passes of the threads (pack B, then compute), not two per depth block, each ending in a
 * wait for the slowest thread. */
#define MM_BGROUP ((int64_t)4 << 20)
/* Fewer rows than this skip the packing (few_rows below): measured faster at M = 1 to 5 */
#define MM_FEW 6

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
/* x in every lane, one broadcast from memory: x - 0 is x for every x (-0 included), so the
 * subtraction folds away, where simd.h's vset1 (0 + x, which turns -0 into +0) costs an add */
static inline vf splat(float x) { return x - vzero(); }

/* Threads for a product: each gets at least MM_FMAS_PER_THREAD multiply-adds (about 25 us of
 * one core's work at AVX2), several times what starting and joining the threads of a parallel
 * pass costs, so that a small product (a layer of a small model) runs on one thread. */
#define MM_FMAS_PER_THREAD (1 << 20)
static int mm_threads(const dn_matmul_args *a, int nthreads) {
    const double fmas = (double)a->M * (double)a->N * (double)a->K;
    const double most = fmas / MM_FMAS_PER_THREAD;
    return nthreads <= 1 || most < 2 ? 1 : most < nthreads ? (int)most : nthreads;
}

/* How a call is cut. kc and nc fix the order in which each element is summed and depend on the
 * shape alone; mc, the row blocks and the column parts only move work between threads. */
typedef struct {
    int nt;          /* threads */
    int64_t kc;      /* depth block (the last one may be shorter) */
    int64_t nkg;     /* depth blocks packed together, in one pass over B */
    int64_t nc;      /* column block, a multiple of NR (the last one may be shorter) */
    int64_t mc, nrb; /* rows per block (a multiple of MR), number of row blocks */
} mm_plan;

static mm_plan plan_for(const dn_matmul_args *a, int nthreads) {
    mm_plan p;
    /* depth blocks of equal size (K = 257 gives 129 + 128, not 256 + 1) */
    p.kc = cdiv(a->K, cdiv(a->K, MM_KC));
    p.nc = cdiv(cdiv(a->N, cdiv(a->N, MM_NC)), MM_NR) * MM_NR;
    p.nkg = MM_BGROUP / (p.kc * p.nc);
    if (p.nkg < 1) p.nkg = 1;
    p.nt = mm_threads(a, nthreads);
    /* row blocks: a multiple of the thread count, as even as whole micro-panels allow */
    int64_t nrb = cdiv(a->M, MM_MC);
    nrb = cdiv(nrb, p.nt) * p.nt;
    nrb = min64(nrb, cdiv(a->M, MM_MR));
    p.mc = cdiv(cdiv(a->M, nrb), MM_MR) * MM_MR;
    p.nrb = cdiv(a->M, p.mc);
    return p;
}

/* Floats of the shared B panels: nkg depth blocks of kc x nc (at most K deep) */
static size_t b_floats(const mm_plan *p, int64_t K) {
    return (size_t)(min64(p->nkg * p->kc, K) * p->nc);
}

size_t DN_ISA_FN(dn_cpu_matmul_workspace)(const dn_matmul_args *a, int nthreads) {
    if (a->M < MM_FEW) return a->ta ? (size_t)(a->M * a->K) * sizeof(float) : 0;
    const mm_plan p = plan_for(a, nthreads);
    const size_t bp = (b_floats(&p, a->K) * sizeof(float) + 63) & ~(size_t)63;
    return bp + dn_parallel_ws_bytes(p.nt, (size_t)(p.mc * p.kc) * sizeof(float));
}

typedef struct {
    const dn_matmul_args *a;
    mm_plan p;
    float *bp;       /* the packed B panels of the current group: block q at q kc nc */
    int64_t jc, nc;  /* current column block */
    int64_t np;      /* its micro-panels: cdiv(nc, NR) */
    int64_t pg, nq;  /* current group: depth blocks starting at pg, nq of them */
    int64_t ncp, pw; /* column parts per row block, micro-panels per part */
} mm_ctx;

/* Task: micro-panel jp of depth block q of the current group: bp[k][0..NR) = op(B)[pc + k][j0 ..
 * j0 + NR), zeros past column N. */
static void pack_b(void *ctx, int64_t task, int thread, void *scratch) {
    (void)thread, (void)scratch;
    const mm_ctx *c = ctx;
    const dn_matmul_args *a = c->a;
    const int64_t q = task / c->np, jp = task % c->np;
    const int64_t pc = c->pg + q * c->p.kc, kc = min64(c->p.kc, a->K - pc);
    const int64_t j0 = c->jc + jp * MM_NR, nj = min64(MM_NR, c->jc + c->nc - j0);
    float *dst = c->bp + q * c->p.kc * c->p.nc + jp * MM_NR * kc;
    if (a->btype != DN_F32) { /* 16-bit B, widened as it is packed */
        for (int64_t k = 0; k < kc; k++, dst += MM_NR)
            for (int64_t j = 0; j < MM_NR; j++)
                dst[j] = j >= nj ? 0.0f
                         : a->tb ? dn_matmul_b(a, j0 + j, pc + k)
                                 : dn_matmul_b(a, pc + k, j0 + j);
        return;
    }
    if (!a->tb) { /* op(B)[k][j] = B[k ldb + j]: rows of B copied in order */
        const float *src = a->B + pc * a->ldb + j0;
        for (int64_t k = 0; k < kc; k++, src += a->ldb, dst += MM_NR) {
            if (nj == MM_NR) {
                for (int r = 0; r < MM_NV; r++)
                    vstore(dst + r * DN_VW, vload(src + r * DN_VW));
            } else {
                for (int64_t j = 0; j < MM_NR; j++)
                    dst[j] = j < nj ? src[j] : 0.0f;
            }
        }
    } else { /* op(B)[k][j] = B[j ldb + k]: nj rows of B become the panel's columns */
        transpose_f32(dst, MM_NR, a->B + j0 * a->ldb + pc, a->ldb, nj, kc);
        for (int64_t k = 0; nj < MM_NR && k < kc; k++)
            for (int64_t j = nj; j < MM_NR; j++)
                dst[k * MM_NR + j] = 0.0f;
    }
}

/* Rows [i0, i0 + m) of op(A), depth block [pc, pc + kc), as micro-panels of MR rows: dst[k][i],
 * zeros past the last row. */
static void pack_a(const dn_matmul_args *a, float *dst, int64_t i0, int64_t m, int64_t pc,
                   int64_t kc) {
    for (int64_t ip = 0; ip < m; ip += MM_MR, dst += MM_MR * kc) {
        const int64_t mi = min64(MM_MR, m - ip);
        if (!a->ta) { /* op(A)[i][k] = A[i lda + k] */
            for (int64_t i = 0; i < MM_MR; i++) {
                if (i < mi) {
                    const float *src = a->A + (i0 + ip + i) * a->lda + pc;
                    for (int64_t k = 0; k < kc; k++)
                        dst[k * MM_MR + i] = src[k];
                } else {
                    for (int64_t k = 0; k < kc; k++)
                        dst[k * MM_MR + i] = 0.0f;
                }
            }
        } else { /* op(A)[i][k] = A[k lda + i]: MR contiguous values per k */
            const float *src = a->A + pc * a->lda + i0 + ip;
            for (int64_t k = 0; k < kc; k++, src += a->lda)
                for (int64_t i = 0; i < MM_MR; i++)
                    dst[k * MM_MR + i] = i < mi ? src[i] : 0.0f;
        }
    }
}

/* An edge tile: C[0..mi)[0..nj) = alpha t + beta C from the whole tile's sums t */
static void mm_edge(const float *t, float *C, int64_t ldc, int64_t mi, int64_t nj, float alpha,
                    float beta) {
    for (int64_t i = 0; i < mi; i++)
        for (int64_t j = 0; j < nj; j++) {
            float *c = C + i * ldc + j;
            const float s = t[i * MM_NR + j];
            if (beta == 0.0f)
                *c = alpha * s;
            else if (beta == 1.0f)
                *c = *c + alpha * s;
            else
                *c = alpha * s + beta * *c;
        }
}

/* One tile: s = A micro-panel x B micro-panel over kc, then C[0..mi)[0..nj) = alpha s + beta C
 * (beta = 0: C not read). The tile's rows of C, and from `next` on one cache line per k, are
 * prefetched while it runs. */
static inline void mm_tile(int64_t kc, const float *restrict ap, const float *restrict bp,
                           uintptr_t next, float *C, int64_t ldc, int64_t mi, int64_t nj,
                           float alpha, float beta) {
    vf acc[MM_MR][MM_NV];
    for (int i = 0; i < MM_MR; i++) {
        __builtin_prefetch(C + i * ldc, 1);
        __builtin_prefetch(C + i * ldc + MM_NR - 1, 1);
        for (int r = 0; r < MM_NV; r++)
            acc[i][r] = vzero();
    }
    for (int64_t k = 0; k < kc; k++, ap += MM_MR, bp += MM_NR) {
        __builtin_prefetch((const void *)(next + 64 * (uintptr_t)k));
        vf b[MM_NV];
        for (int r = 0; r < MM_NV; r++)
            b[r] = vload(bp + r * DN_VW);
        for (int i = 0; i < MM_MR; i++) {
            const vf ai = splat(ap[i]);
            for (int r = 0; r < MM_NV; r++)
                acc[i][r] += ai * b[r];
        }
    }
    if (mi < MM_MR || nj < MM_NR) {
        float t[MM_MR * MM_NR];
        for (int i = 0; i < MM_MR; i++)
            for (int r = 0; r < MM_NV; r++)
                vstore(t + i * MM_NR + r * DN_VW, acc[i][r]);
        mm_edge(t, C, ldc, mi, nj, alpha, beta);
        return;
    }
    const vf va = splat(alpha), vb = splat(beta);
    for (int i = 0; i < MM_MR; i++)
        for (int r = 0; r < MM_NV; r++) {
            float *c = C + i * ldc + r * DN_VW;
            if (beta == 0.0f)
                vstore(c, va * acc[i][r]);
            else if (beta == 1.0f)
                vstore(c, vload(c) + va * acc[i][r]);
            else
                vstore(c, va * acc[i][r] + vb * vload(c));
        }
}

/* Task: row block rb, column part cp, every depth block of the current group in order. */
static void mm_block(void *ctx, int64_t task, int thread, void *scratch) {
    (void)thread;
    const mm_ctx *c = ctx;
    const dn_matmul_args *a = c->a;
    const int64_t rb = task / c->ncp, cp = task % c->ncp;
    const int64_t i0 = rb * c->p.mc, m = min64(c->p.mc, a->M - i0);
    const int64_t jp0 = cp * c->pw, jp1 = min64(jp0 + c->pw, c->np);
    float *ap = scratch;
    for (int64_t q = 0; q < c->nq; q++) {
        const int64_t pc = c->pg + q * c->p.kc, kc = min64(c->p.kc, a->K - pc);
        const float beta = pc == 0 ? a->beta : 1.0f;
        pack_a(a, ap, i0, m, pc, kc);
        for (int64_t jp = jp0; jp < jp1; jp++) {
            const int64_t j = c->jc + jp * MM_NR, nj = min64(MM_NR, c->jc + c->nc - j);
            const float *bp = c->bp + q * c->p.kc * c->p.nc + jp * MM_NR * kc;
            for (int64_t ip = 0; ip < m; ip += MM_MR) {
                /* a cache line per k into L1 meanwhile: the next A micro-panel, or after the
                 * last one the next B micro-panel (an address: a prefetch past the end of the
                 * panels is harmless) */
                const uintptr_t next = ip + MM_MR < m ? (uintptr_t)(ap + (ip + MM_MR) * kc)
                                                      : (uintptr_t)bp + MM_NR * kc * sizeof(float);
                mm_tile(kc, ap + ip * kc, bp, next, a->C + (i0 + ip) * a->ldc + j, a->ldc,
                        min64(MM_MR, m - ip), nj, a->alpha, beta);
            }
        }
    }
}

/* ---- few rows (M < MM_FEW, as in a decode step): B used where it lies, not packed ----
 * Packing B for so few rows would move it twice for each pass of the product. Instead each task
 * owns MM_FEW_COLS columns of C and sweeps K once. With B not transposed, the task's rows of C
 * accumulate in an L1 buffer, a_ik times the contiguous piece of B's row k, k in order; with B
 * transposed, each element is the dot product of two contiguous rows (simd.h's dot_f32). The
 * rows of op(A) are read in place, or copied contiguous first when A is transposed. Each
 * element's summation order depends on K alone. */
#define MM_FEW_COLS 256

typedef struct {
    const dn_matmul_args *a;
    const float *arows; /* op(A) [M,K], row stride lda (in place) or K (copied) */
    int64_t lda;
} few_ctx;

static inline float few_store(const float *c, float s, float alpha, float beta) {
    return beta == 0.0f ? alpha * s : beta == 1.0f ? *c + alpha * s : alpha * s + beta * *c;
}

static void few_rows(void *ctx, int64_t task, int thread, void *scratch) {
    (void)thread, (void)scratch;
    const few_ctx *f = ctx;
    const dn_matmul_args *a = f->a;
    const int64_t j0 = task * MM_FEW_COLS, w = min64(a->N - j0, MM_FEW_COLS), K = a->K;
    if (a->tb && a->btype == DN_BF16) { /* a decode step over bf16 weights: rows read once */
        int64_t j = j0;
        if (a->M == 1) { /* the task's rows as four streams, a quarter of them apart */
            const int64_t q = w / 4, gap = q * a->ldb;
            for (int64_t t = 0; t < q; t++) {
                float s[4];
                dot4_f32_bf16(s, f->arows, a->B16 + (j0 + t) * a->ldb, gap,
                              a->ldb * (int64_t)sizeof(uint16_t), K);
                for (int r = 0; r < 4; r++) {
                    float *c = a->C + j0 + t + r * q;
                    *c = few_store(c, s[r], a->alpha, a->beta);
                }
            }
            j = j0 + 4 * q;
        }
        for (; j < j0 + w; j++)
            for (int64_t i = 0; i < a->M; i++) {
                float *c = a->C + i * a->ldc + j;
                *c = few_store(c, dot_f32_bf16(f->arows + i * f->lda, a->B16 + j * a->ldb, K),
                               a->alpha, a->beta);
            }
        return;
    }
    if (a->btype != DN_F32) { /* fp16, or bf16 not transposed: element by element */
        for (int64_t i = 0; i < a->M; i++)
            for (int64_t j = j0; j < j0 + w; j++) {
                const float *x = f->arows + i * f->lda;
                float s = 0;
                for (int64_t k = 0; k < K; k++)
                    s += x[k] * (a->tb ? dn_matmul_b(a, j, k) : dn_matmul_b(a, k, j));
                float *c = a->C + i * a->ldc + j;
                *c = few_store(c, s, a->alpha, a->beta);
            }
        return;
    }
    if (a->tb) {
        for (int64_t i = 0; i < a->M; i++)
            for (int64_t j = j0; j < j0 + w; j++) {
                float *c = a->C + i * a->ldc + j;
                *c = few_store(c, dot_f32(f->arows + i * f->lda, a->B + j * a->ldb, K), a->alpha,
                               a->beta);
            }
        return;
    }
    float t[MM_FEW - 1][MM_FEW_COLS];
    const int64_t wv = w / DN_VW * DN_VW;
    for (int64_t i = 0; i < a->M; i++)
        memset(t[i], 0, sizeof t[i]);
    for (int64_t k = 0; k < K; k++) {
        const float *b = a->B + k * a->ldb + j0;
        for (int64_t i = 0; i < a->M; i++) {
            const float aik = f->arows[i * f->lda + k];
            const vf ak = splat(aik);
            for (int64_t j = 0; j < wv; j += DN_VW)
                vstore(t[i] + j, vload(t[i] + j) + ak * vload(b + j));
            for (int64_t j = wv; j < w; j++)
                t[i][j] += aik * b[j];
        }
    }
    for (int64_t i = 0; i < a->M; i++)
        for (int64_t j = 0; j < w; j++) {
            float *c = a->C + i * a->ldc + j0 + j;
            *c = few_store(c, t[i][j], a->alpha, a->beta);
        }
}

static void mm_few(const dn_matmul_args *a, int nthreads, float *ws) {
    few_ctx f = {a, a->A, a->lda};
    if (a->ta) { /* op(A)[i][k] = A[k lda + i]: the rows gathered, K floats each */
        for (int64_t i = 0; i < a->M; i++)
            for (int64_t k = 0; k < a->K; k++)
                ws[i * a->K + k] = a->A[k * a->lda + i];
        f.arows = ws, f.lda = a->K;
    }
    dn_parallel_tasks(mm_threads(a, nthreads), cdiv(a->N, MM_FEW_COLS), DN_SCHED_DYNAMIC, few_rows,
                      &f, NULL, 0);
}

void DN_ISA_FN(dn_cpu_matmul)(const dn_matmul_args *a, int nthreads, void *ws) {
    if (a->M < MM_FEW) {
        mm_few(a, nthreads, ws);
        return;
    }
    mm_ctx c = {.a = a, .p = plan_for(a, nthreads), .bp = ws};
    const size_t bp_bytes = (b_floats(&c.p, a->K) * sizeof(float) + 63) & ~(size_t)63;
    void *per_thread = (char *)ws + bp_bytes;
    const size_t per_bytes = (size_t)(c.p.mc * c.p.kc) * sizeof(float);
    const int64_t nkb = cdiv(a->K, c.p.kc);
    for (c.jc = 0; c.jc < a->N; c.jc += c.p.nc) {
        c.nc = min64(c.p.nc, a->N - c.jc);
        c.np = cdiv(c.nc, MM_NR);
        /* a few tasks per thread, so that a thread slowed by another process on its core leaves
         * its share to the others; columns are shared out too when the row blocks are few, in
         * parts of at least 16 micro-panels (each part packs its rows of A again) */
        c.ncp = 1;
        if (c.p.nt > 1 && c.p.nrb < 4 * c.p.nt)
            c.ncp = min64(cdiv(4 * c.p.nt, c.p.nrb), c.np / 16 > 1 ? c.np / 16 : 1);
        c.pw = cdiv(c.np, c.ncp);
        c.ncp = cdiv(c.np, c.pw);
        for (int64_t g = 0; g < nkb; g += c.p.nkg) {
            c.pg = g * c.p.kc;
            c.nq = min64(c.p.nkg, nkb - g);
            dn_parallel_tasks(c.p.nt, c.nq * c.np, DN_SCHED_DYNAMIC, pack_b, &c, NULL, 0);
            dn_parallel_tasks(c.p.nt, c.p.nrb * c.ncp, DN_SCHED_DYNAMIC, mm_block, &c, per_thread,
                              per_bytes);
        }
    }
}
