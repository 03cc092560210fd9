/*
 * cpu/attn.c - fast CPU causal softmax attention: a tiled prefill with an online softmax, and a
 * split-key decode over the KV cache. Compiled once per SIMD level (see simd.h).
 *
 * Prefill: a task is (batch, KV head, block of queries) and stacks the queries of all G heads
 * that share the KV head into one tile, so each key/value block is read once for the group.
 * Per key block: S = (scale Q) K^T, masked, running max and sum updated, O = alpha O + P V.
 * Extra memory per thread: the Q and O tiles, one K^T and V block and one score tile, whatever T.
 *
 * Decode: the keys visible to the new queries are split into ranges across threads (so one KV
 * head can use every core); each range keeps its own (max, sum, output) and the ranges are merged
 * at the end. The cache is read once per step: a memory-bound loop.
 */
#include "../half.h"
#include "../internal.h"
#include "gemm.h"

#include <math.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

#define ROUND_UP(x, m) (((x) + (m)-1) / (m) * (m))
#define ATT_BC 64   /* keys per block, prefill */
#define DEC_BLK 64  /* keys per block, decode */
#define DEC_MIN 512 /* fewest keys worth a decode split of their own */

static int64_t att_br(int64_t G) { /* query rows per head in one tile: about 128 rows a tile */
    int64_t br = 128 / G;
    return br < 16 ? 16 : br;
}

typedef struct {
    float *Q, *O, *KT, *Vb, *S, *m, *l;
} att_ws;

static size_t att_layout(int64_t G, int64_t D, att_ws *w, float *base) {
    const int64_t R = G * att_br(G), Dp = ROUND_UP(D, DN_VW);
    int64_t sizes[] = {R * Dp, R * Dp, D * ATT_BC, ATT_BC * Dp, R * ATT_BC, R, R};
    float **slots[] = {&w->Q, &w->O, &w->KT, &w->Vb, &w->S, &w->m, &w->l};
    size_t off = 0;
    for (int i = 0; i < 7; i++) {
        *slots[i] = base ? base + off : NULL;
        off += ROUND_UP((size_t)sizes[i], 16);
    }
    return off;
}

size_t DN_ISA_FN(dn_cpu_attn_workspace)(const dn_attn_params *p, int nthreads) {
    att_ws w;
    return dn_parallel_ws_bytes(nthreads,
                                sizeof(float) * att_layout(p->H / p->HKV, p->D, &w, NULL));
}

/* Row update of the online softmax over one block: s holds n (multiple of DN_VW) scores, those
 * outside [a, e] are masked. Turns s into probabilities; returns the factor for the old state. */
static inline float softmax_row(float *s, int64_t n, int64_t a, int64_t e, float *m, float *l) {
    for (int64_t j = 0; j < a; j++)
        s[j] = -INFINITY;
    for (int64_t j = e + 1; j < n; j++)
        s[j] = -INFINITY;
    vf mx = vset1(-INFINITY);
    for (int64_t j = 0; j < n; j += DN_VW) {
        vf x = vload(s + j);
        vi gt = x > mx;
        mx = (vf)(((vi)x & gt) | ((vi)mx & ~gt));
    }
    float rowmax = -INFINITY;
    for (int i = 0; i < DN_VW; i++)
        rowmax = mx[i] > rowmax ? mx[i] : rowmax;
    const float mn = rowmax > *m ? rowmax : *m;
    const float alpha = *m == -INFINITY ? 0.0f : expf(*m - mn);
    vf sum = vzero(), mnv = vset1(mn);
    for (int64_t j = 0; j < n; j += DN_VW) {
        vf pj = vexp_neg(vload(s + j) - mnv);
        vstore(s + j, pj);
        sum += pj;
    }
    *l = *l * alpha + vhsum(sum);
    *m = mn;
    return alpha;
}

static void att_task(const dn_attn_params *p, int64_t b, int64_t kh, int64_t qb, float *base) {
    const int64_t G = p->H / p->HKV, D = p->D, Dp = ROUND_UP(D, DN_VW), br = att_br(G);
    const int64_t q0 = qb * br, nq = p->TQ - q0 < br ? p->TQ - q0 : br, R = G * nq;
    const int64_t W = p->window;
    att_ws w;
    att_layout(G, D, &w, base);

    for (int64_t g = 0; g < G; g++)
        for (int64_t i = 0; i < nq; i++) {
            const float *q = p->q + b * p->q_s.b + (q0 + i) * p->q_s.t + (kh * G + g) * p->q_s.h;
            float *row = w.Q + (g * nq + i) * Dp;
            for (int64_t d = 0; d < D; d++)
                row[d] = q[d] * p->scale;
            for (int64_t d = D; d < Dp; d++)
                row[d] = 0;
        }
    memset(w.O, 0, sizeof(float) * (size_t)(R * Dp));
    for (int64_t r = 0; r < R; r++)
        w.m[r] = -INFINITY, w.l[r] = 0;

    const int64_t posmin = p->TK - p->TQ + q0, posmax = posmin + nq - 1;
    int64_t jlo = W > 0 && posmin >= W ? posmin - W + 1 : 0; /* no overflow at huge W */
    int64_t jhi = posmax < p->TK - 1 ? posmax : p->TK - 1;
    for (int64_t j0 = jlo; j0 <= jhi; j0 += ATT_BC) {
        const int64_t nk = jhi + 1 - j0 < ATT_BC ? jhi + 1 - j0 : ATT_BC, nkp = ROUND_UP(nk, DN_VW);
        for (int64_t jj = 0; jj < nk; jj++) {
            const float *k = p->k + b * p->k_s.b + (j0 + jj) * p->k_s.t + kh * p->k_s.h;
            const float *v = p->v + b * p->v_s.b + (j0 + jj) * p->v_s.t + kh * p->v_s.h;
            for (int64_t d = 0; d < D; d++)
                w.KT[d * ATT_BC + jj] = k[d];
            memcpy(w.Vb + jj * Dp, v, sizeof(float) * (size_t)D);
            for (int64_t d = D; d < Dp; d++)
                w.Vb[jj * Dp + d] = 0;
        }
        for (int64_t d = 0; d < D; d++)
            for (int64_t jj = nk; jj < nkp; jj++)
                w.KT[d * ATT_BC + jj] = 0;

        gemm_f32(R, nkp, D, w.Q, Dp, 1, w.KT, ATT_BC, w.S, ATT_BC, 0, 0);
        int edge = 0; /* some row of the tile does not see some key of the block */
        for (int64_t r = 0; r < R; r++) {
            const int64_t pos = posmin + r % nq;
            int64_t a, e;
            dn_attn_visible(pos, W, j0, nk, &a, &e);
            float *s = w.S + r * ATT_BC;
            edge |= a > 0 || e < nk - 1;
            if (e < a) { /* this row sees no key of the block */
                memset(s, 0, sizeof(float) * (size_t)nkp);
                continue;
            }
            float alpha = softmax_row(s, nkp, a, e, &w.m[r], &w.l[r]);
            if (alpha != 1.0f) {
                vf av = vset1(alpha);
                float *o = w.O + r * Dp;
                for (int64_t d = 0; d < Dp; d += DN_VW)
                    vstore(o + d, av * vload(o + d));
            }
        }
        if (edge && !all_finite(w.Vb, nk * Dp)) {
            /* A masked weight is 0, but 0 * inf is NaN: with an inf or NaN among the values, each
             * row sums over its visible keys only, so that what a row cannot see cannot reach it.
             */
            for (int64_t r = 0; r < R; r++) {
                int64_t a, e;
                dn_attn_visible(posmin + r % nq, W, j0, nk, &a, &e);
                float *o = w.O + r * Dp;
                for (int64_t j = a; j <= e; j++) {
                    const vf pj = vset1(w.S[r * ATT_BC + j]);
                    for (int64_t d = 0; d < Dp; d += DN_VW)
                        vstore(o + d, vload(o + d) + pj * vload(w.Vb + j * Dp + d));
                }
            }
        } else {
            gemm_f32(R, Dp, nk, w.S, ATT_BC, 1, w.Vb, Dp, w.O, Dp, 1, 0);
        }
    }

    for (int64_t r = 0; r < R; r++) {
        const int64_t g = r / nq, i = r % nq, h = kh * G + g;
        float *o = p->o + b * p->o_s.b + (q0 + i) * p->o_s.t + h * p->o_s.h;
        const float inv = w.l[r] > 0 ? 1.0f / w.l[r] : 0.0f;
        for (int64_t d = 0; d < D; d++)
            o[d] = w.O[r * Dp + d] * inv;
        if (p->lse)
            p->lse[(b * p->H + h) * p->TQ + q0 + i] =
                w.l[r] > 0 ? w.m[r] + logf(w.l[r]) : -INFINITY;
    }
}

typedef struct {
    const dn_attn_params *p;
    int64_t nqb;
} att_ctx;

static void att_run(void *vctx, int64_t t, int thread, void *mine) {
    const att_ctx *c = vctx;
    (void)thread;
    /* causal rows grow with the query index: hand out the last (longest) blocks first */
    const int64_t qb = c->nqb - 1 - t % c->nqb, bh = t / c->nqb;
    att_task(c->p, bh / c->p->HKV, bh % c->p->HKV, qb, mine);
}

void DN_ISA_FN(dn_cpu_attn_forward)(const dn_attn_params *p, int nthreads, void *ws) {
    const int64_t G = p->H / p->HKV, nqb = (p->TQ + att_br(G) - 1) / att_br(G);
    att_ws w;
    const size_t per = att_layout(G, p->D, &w, NULL);
    att_ctx c = {p, nqb};
    dn_parallel_tasks(nthreads, p->B * p->HKV * nqb, DN_SCHED_DYNAMIC, att_run, &c, ws,
                      sizeof(float) * per);
}

/* ---------------------------------------------------------------------------------------------
 * Decode over the KV cache
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    int64_t R, Dp, nsplit, jlo, jhi, per_split;
} dec_plan;

static dec_plan dec_make_plan(const dn_kv_view *kv, int64_t TQ, int64_t H, int64_t window,
                              int nthreads) {
    dec_plan pl;
    pl.R = (H / kv->HKV) * TQ;
    pl.Dp = ROUND_UP(kv->D, DN_VW);
    const int64_t posmin = kv->len - TQ;
    pl.jlo = window > 0 && posmin >= window ? posmin - window + 1 : 0; /* no overflow at huge W */
    pl.jhi = kv->len - 1;
    const int64_t range = pl.jhi >= pl.jlo ? pl.jhi - pl.jlo + 1 : 0;
    int64_t want = (4 * (int64_t)nthreads + kv->B * kv->HKV - 1) / (kv->B * kv->HKV);
    int64_t most = range / DEC_MIN;
    if (want > most) want = most;
    if (want < 1) want = 1;
    pl.per_split = ROUND_UP((range + want - 1) / want, DEC_BLK);
    if (pl.per_split < DEC_BLK) pl.per_split = DEC_BLK;
    pl.nsplit = range > 0 ? (range + pl.per_split - 1) / pl.per_split : 1;
    return pl;
}

/* Partial results of one (b, kv head, split): m[R], l[R], O[R][Dp]. Scratch per thread: the
 * q tile R x Dp and the scores R x DEC_BLK. */
static size_t dec_partial_floats(const dec_plan *pl) {
    return ROUND_UP((size_t)(pl->R * (pl->Dp + 2)), 16);
}
static size_t dec_thread_floats(const dec_plan *pl) {
    return ROUND_UP((size_t)(pl->R * pl->Dp + pl->R * DEC_BLK), 16);
}

size_t DN_ISA_FN(dn_cpu_decode_workspace)(const dn_kv_view *kv, int64_t TQ, int64_t H,
                                          int64_t window, int nthreads) {
    dec_plan pl = dec_make_plan(kv, TQ, H, window, nthreads);
    const int64_t ntask = kv->B * kv->HKV * pl.nsplit;
    return sizeof(float) * dec_partial_floats(&pl) * (size_t)ntask +
           dn_parallel_ws_bytes(nthreads, sizeof(float) * dec_thread_floats(&pl));
}

/* Loading DN_VW cached values as fp32, and one value, per storage type: the decode loops below are
 * instantiated once per type so that 16-bit caches convert in registers, with no extra pass. */
static inline vf ld_f32(const void *p, int64_t i) { return vload((const float *)p + i); }
static inline float ld1_f32(const void *p, int64_t i) { return ((const float *)p)[i]; }
static inline vf ld_bf16(const void *p, int64_t i) { return vload_bf16((const uint16_t *)p + i); }
static inline float ld1_bf16(const void *p, int64_t i) {
    return dn_bf16_to_f32(((const uint16_t *)p)[i]);
}
static inline vf ld_f16(const void *p, int64_t i) {
    const uint16_t *h = (const uint16_t *)p + i;
#if defined(__AVX512F__)
    return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)h));
#elif defined(__F16C__)
    return (vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
#else
    vf r;
    for (int k = 0; k < DN_VW; k++)
        r[k] = dn_f16_to_f32(h[k]);
    return r;
#endif
}
static inline float ld1_f16(const void *p, int64_t i) {
    return dn_f16_to_f32(((const uint16_t *)p)[i]);
}

/* s[j] = q . k_j for nk keys (rows of D values starting at element row0 * D), four keys at a time
 * so that four FMA chains overlap; and o += sum_j p[j] v_j with o held in registers across keys,
 * eight vectors at a time. */
#define DEC_LOOPS(T)                                                                               \
    static void dec_scores_##T(float *s, const float *q, const void *K, int64_t row0, int64_t nk,  \
                               int64_t D) {                                                        \
        const int64_t Dv = D / DN_VW * DN_VW;                                                      \
        int64_t j = 0;                                                                             \
        for (; j + 4 <= nk; j += 4) {                                                              \
            const int64_t r0 = (row0 + j) * D;                                                     \
            for (int64_t d = 0; d < 4 * D; d += 64 / (int64_t)sizeof(float))                       \
                __builtin_prefetch((const char *)K + (r0 + DEC_AHEAD * D) * ESZ_##T +              \
                                   d * ESZ_##T);                                                   \
            vf a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();                             \
            for (int64_t d = 0; d < Dv; d += DN_VW) {                                              \
                vf qv = vload(q + d);                                                              \
                a0 += qv * ld_##T(K, r0 + d);                                                      \
                a1 += qv * ld_##T(K, r0 + D + d);                                                  \
                a2 += qv * ld_##T(K, r0 + 2 * D + d);                                              \
                a3 += qv * ld_##T(K, r0 + 3 * D + d);                                              \
            }                                                                                      \
            float s0 = vhsum(a0), s1 = vhsum(a1), s2 = vhsum(a2), s3 = vhsum(a3);                  \
            for (int64_t d = Dv; d < D; d++) {                                                     \
                s0 += q[d] * ld1_##T(K, r0 + d), s1 += q[d] * ld1_##T(K, r0 + D + d);              \
                s2 += q[d] * ld1_##T(K, r0 + 2 * D + d), s3 += q[d] * ld1_##T(K, r0 + 3 * D + d);  \
            }                                                                                      \
            s[j] = s0, s[j + 1] = s1, s[j + 2] = s2, s[j + 3] = s3;                                \
        }                                                                                          \
        for (; j < nk; j++) {                                                                      \
            const int64_t r0 = (row0 + j) * D;                                                     \
            vf a0 = vzero();                                                                       \
            for (int64_t d = 0; d < Dv; d += DN_VW)                                                \
                a0 += vload(q + d) * ld_##T(K, r0 + d);                                            \
            float s0 = vhsum(a0);                                                                  \
            for (int64_t d = Dv; d < D; d++)                                                       \
                s0 += q[d] * ld1_##T(K, r0 + d);                                                   \
            s[j] = s0;                                                                             \
        }                                                                                          \
    }                                                                                              \
    static void dec_accumulate_##T(float *o, const float *p, const void *Vc, int64_t row0,         \
                                   int64_t nk, int64_t D) {                                        \
        const int64_t Dv = D / DN_VW * DN_VW;                                                      \
        int64_t d0 = 0;                                                                            \
        for (; d0 + 8 * DN_VW <= Dv; d0 += 8 * DN_VW) {                                            \
            vf acc[8];                                                                             \
            for (int c = 0; c < 8; c++)                                                            \
                acc[c] = vload(o + d0 + c * DN_VW);                                                \
            for (int64_t j = 0; j < nk; j++) {                                                     \
                vf pj = vset1(p[j]);                                                               \
                const int64_t r0 = (row0 + j) * D + d0;                                            \
                for (int64_t d = 0; d < 8 * DN_VW; d += 64 / (int64_t)sizeof(float))               \
                    __builtin_prefetch((const char *)Vc + (r0 + DEC_AHEAD * D + d) * ESZ_##T);     \
                for (int c = 0; c < 8; c++)                                                        \
                    acc[c] += pj * ld_##T(Vc, r0 + c * DN_VW);                                     \
            }                                                                                      \
            for (int c = 0; c < 8; c++)                                                            \
                vstore(o + d0 + c * DN_VW, acc[c]);                                                \
        }                                                                                          \
        for (; d0 < Dv; d0 += DN_VW) {                                                             \
            vf acc = vload(o + d0);                                                                \
            for (int64_t j = 0; j < nk; j++)                                                       \
                acc += vset1(p[j]) * ld_##T(Vc, (row0 + j) * D + d0);                              \
            vstore(o + d0, acc);                                                                   \
        }                                                                                          \
        for (int64_t d = Dv; d < D; d++) {                                                         \
            float acc = o[d];                                                                      \
            for (int64_t j = 0; j < nk; j++)                                                       \
                acc += p[j] * ld1_##T(Vc, (row0 + j) * D + d);                                     \
            o[d] = acc;                                                                            \
        }                                                                                          \
    }
/* The same for four query rows of one KV head at once (grouped-query decode: the rows share every
 * key and value): each key and value vector is loaded and widened once for the four rows, not
 * once per row. Scores two keys at a time (eight FMA chains); s has row stride ss, q row stride
 * qs. The accumulation takes p with row stride ps and o with row stride os, two vectors of each
 * row at a time; the next block's rows are prefetched on the way (one pass, not one per row). */
#define DEC_LOOPS4(T)                                                                              \
    static void dec_scores4_##T(float *s, int64_t ss, const float *q, int64_t qs, const void *K,   \
                                int64_t row0, int64_t nk, int64_t D) {                             \
        const int64_t Dv = D / DN_VW * DN_VW;                                                      \
        const float *q0 = q, *q1 = q + qs, *q2 = q + 2 * qs, *q3 = q + 3 * qs;                     \
        int64_t j = 0;                                                                             \
        for (; j < nk; j += 2) {                                                                   \
            const int two = j + 1 < nk;                                                            \
            const int64_t ra = (row0 + j) * D, rb = two ? ra + D : ra;                             \
            const uintptr_t pf = (uintptr_t)K + (uintptr_t)((ra + DEC_BLK * D) * ESZ_##T);         \
            for (int64_t d = 0; d < 2 * D * ESZ_##T; d += 64)                                      \
                __builtin_prefetch((const void *)(pf + (uintptr_t)d));                             \
            vf a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();                             \
            vf b0 = vzero(), b1 = vzero(), b2 = vzero(), b3 = vzero();                             \
            for (int64_t d = 0; d < Dv; d += DN_VW) {                                              \
                const vf ka = ld_##T(K, ra + d), kb = ld_##T(K, rb + d);                           \
                vf x = vload(q0 + d);                                                              \
                a0 += x * ka, b0 += x * kb;                                                        \
                x = vload(q1 + d);                                                                 \
                a1 += x * ka, b1 += x * kb;                                                        \
                x = vload(q2 + d);                                                                 \
                a2 += x * ka, b2 += x * kb;                                                        \
                x = vload(q3 + d);                                                                 \
                a3 += x * ka, b3 += x * kb;                                                        \
            }                                                                                      \
            float sa[4] = {vhsum(a0), vhsum(a1), vhsum(a2), vhsum(a3)};                            \
            float sb[4] = {vhsum(b0), vhsum(b1), vhsum(b2), vhsum(b3)};                            \
            for (int64_t d = Dv; d < D; d++) {                                                     \
                const float ka = ld1_##T(K, ra + d), kb = ld1_##T(K, rb + d);                      \
                sa[0] += q0[d] * ka, sb[0] += q0[d] * kb, sa[1] += q1[d] * ka;                     \
                sb[1] += q1[d] * kb, sa[2] += q2[d] * ka, sb[2] += q2[d] * kb;                     \
                sa[3] += q3[d] * ka, sb[3] += q3[d] * kb;                                          \
            }                                                                                      \
            for (int r = 0; r < 4; r++) {                                                          \
                s[r * ss + j] = sa[r];                                                             \
                if (two) s[r * ss + j + 1] = sb[r];                                                \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    static void dec_accumulate4_##T(float *o, int64_t os, const float *p, int64_t ps,              \
                                    const void *Vc, int64_t row0, int64_t nk, int64_t D) {         \
        const int64_t Dv = D / DN_VW * DN_VW;                                                      \
        int64_t d0 = 0;                                                                            \
        for (; d0 < Dv; d0 += DN_VW) {                                                             \
            const int two = d0 + DN_VW < Dv;                                                       \
            /* this pass's columns of the next block's rows, once per cache line */                \
            const int pf = ((d0 * ESZ_##T) & 63) == 0;                                             \
            const uintptr_t pf0 =                                                                  \
                (uintptr_t)Vc + (uintptr_t)(((row0 + DEC_BLK) * D + d0) * ESZ_##T);                \
            const int64_t d1 = two ? d0 + DN_VW : d0;                                              \
            vf a0 = vload(o + d0), a1 = vload(o + os + d0), a2 = vload(o + 2 * os + d0);           \
            vf a3 = vload(o + 3 * os + d0);                                                        \
            vf b0 = vload(o + d1), b1 = vload(o + os + d1), b2 = vload(o + 2 * os + d1);           \
            vf b3 = vload(o + 3 * os + d1);                                                        \
            for (int64_t j = 0; j < nk; j++) {                                                     \
                const int64_t r = (row0 + j) * D;                                                  \
                if (pf) __builtin_prefetch((const void *)(pf0 + (uintptr_t)(j * D * ESZ_##T)));    \
                const vf va = ld_##T(Vc, r + d0), vb = ld_##T(Vc, r + d1);                         \
                vf x = vset1(p[j]);                                                                \
                a0 += x * va, b0 += x * vb;                                                        \
                x = vset1(p[ps + j]);                                                              \
                a1 += x * va, b1 += x * vb;                                                        \
                x = vset1(p[2 * ps + j]);                                                          \
                a2 += x * va, b2 += x * vb;                                                        \
                x = vset1(p[3 * ps + j]);                                                          \
                a3 += x * va, b3 += x * vb;                                                        \
            }                                                                                      \
            vstore(o + d0, a0), vstore(o + os + d0, a1), vstore(o + 2 * os + d0, a2);              \
            vstore(o + 3 * os + d0, a3);                                                           \
            if (two) {                                                                             \
                vstore(o + d1, b0), vstore(o + os + d1, b1), vstore(o + 2 * os + d1, b2);          \
                vstore(o + 3 * os + d1, b3);                                                       \
                d0 += DN_VW;                                                                       \
            }                                                                                      \
        }                                                                                          \
        for (int64_t d = Dv; d < D; d++)                                                           \
            for (int rr = 0; rr < 4; rr++) {                                                       \
                float acc = o[rr * os + d];                                                        \
                for (int64_t j = 0; j < nk; j++)                                                   \
                    acc += p[rr * ps + j] * ld1_##T(Vc, (row0 + j) * D + d);                       \
                o[rr * os + d] = acc;                                                              \
            }                                                                                      \
    }
#define ESZ_f32 4
#define ESZ_bf16 2
#define ESZ_f16 2
#define DEC_AHEAD 16 /* rows of software prefetch ahead of the loads */
DEC_LOOPS(f32)
DEC_LOOPS(bf16)
DEC_LOOPS(f16)
DEC_LOOPS4(f32)
DEC_LOOPS4(bf16)
DEC_LOOPS4(f16)

static void dec_task(const dn_kv_view *kv, const dec_plan *pl, const float *q, dn_strides q_s,
                     int64_t TQ, int64_t H, float scale, int64_t window, int64_t b, int64_t kh,
                     int64_t split, float *part, float *scratch) {
    const int64_t G = H / kv->HKV, D = kv->D, Dp = pl->Dp, R = pl->R;
    float *Q = scratch, *S = Q + R * Dp;
    float *m = part, *l = part + R, *O = part + 2 * R;
    for (int64_t r = 0; r < R; r++) {
        const int64_t g = r / TQ, i = r % TQ;
        const float *qr = q + b * q_s.b + i * q_s.t + (kh * G + g) * q_s.h;
        for (int64_t d = 0; d < D; d++)
            Q[r * Dp + d] = qr[d] * scale;
        for (int64_t d = D; d < Dp; d++)
            Q[r * Dp + d] = 0;
        m[r] = -INFINITY, l[r] = 0;
    }
    memset(O, 0, sizeof(float) * (size_t)(R * Dp));
    const int64_t s0 = pl->jlo + split * pl->per_split;
    const int64_t s1 = s0 + pl->per_split - 1 < pl->jhi ? s0 + pl->per_split - 1 : pl->jhi;
    const int64_t rowbase = (b * kv->HKV + kh) * kv->cap;
    /* the loops for the cache's storage type */
    void (*scores)(float *, const float *, const void *, int64_t, int64_t, int64_t) =
        kv->dtype == DN_F32    ? dec_scores_f32
        : kv->dtype == DN_BF16 ? dec_scores_bf16
                               : dec_scores_f16;
    void (*accumulate)(float *, const float *, const void *, int64_t, int64_t, int64_t) =
        kv->dtype == DN_F32    ? dec_accumulate_f32
        : kv->dtype == DN_BF16 ? dec_accumulate_bf16
                               : dec_accumulate_f16;
    void (*scores4)(float *, int64_t, const float *, int64_t, const void *, int64_t, int64_t,
                    int64_t) = kv->dtype == DN_F32    ? dec_scores4_f32
                               : kv->dtype == DN_BF16 ? dec_scores4_bf16
                                                      : dec_scores4_f16;
    void (*accumulate4)(float *, int64_t, const float *, int64_t, const void *, int64_t, int64_t,
                        int64_t) = kv->dtype == DN_F32    ? dec_accumulate4_f32
                                   : kv->dtype == DN_BF16 ? dec_accumulate4_bf16
                                                          : dec_accumulate4_f16;

    for (int64_t j0 = s0; j0 <= s1; j0 += DEC_BLK) {
        const int64_t nk = s1 + 1 - j0 < DEC_BLK ? s1 + 1 - j0 : DEC_BLK, nkp = ROUND_UP(nk, DN_VW);
        int64_t r4 = 0; /* rows in fours, then one by one */
        for (; r4 + 4 <= R; r4 += 4)
            scores4(S + r4 * DEC_BLK, DEC_BLK, Q + r4 * Dp, Dp, kv->k, rowbase + j0, nk, D);
        for (int64_t r = r4; r < R; r++)
            scores(S + r * DEC_BLK, Q + r * Dp, kv->k, rowbase + j0, nk, D);
        int any = 0;
        for (int64_t r = 0; r < R; r++) {
            const int64_t pos = kv->len - TQ + r % TQ;
            int64_t a, e;
            dn_attn_visible(pos, window, j0, nk, &a, &e);
            float *s = S + r * DEC_BLK;
            if (e < a) {
                memset(s, 0, sizeof(float) * (size_t)nkp);
                continue;
            }
            any = 1;
            float alpha = softmax_row(s, nkp, a, e, &m[r], &l[r]);
            if (alpha != 1.0f) {
                vf av = vset1(alpha);
                for (int64_t d = 0; d < Dp; d += DN_VW)
                    vstore(O + r * Dp + d, av * vload(O + r * Dp + d));
            }
        }
        if (!any) continue;
        /* each row over its visible keys only: a masked weight is 0, but 0 * inf is NaN; four
         * rows together where they see the same keys (always, for one query token) */
        for (int64_t r = 0; r < R;) {
            int64_t a, e, n = 1;
            dn_attn_visible(kv->len - TQ + r % TQ, window, j0, nk, &a, &e);
            for (; n < 4 && r + n < R; n++) {
                int64_t a2, e2;
                dn_attn_visible(kv->len - TQ + (r + n) % TQ, window, j0, nk, &a2, &e2);
                if (a2 != a || e2 != e) break;
            }
            if (e >= a && n == 4)
                accumulate4(O + r * Dp, Dp, S + r * DEC_BLK + a, DEC_BLK, kv->v, rowbase + j0 + a,
                            e - a + 1, D);
            else if (e >= a)
                accumulate(O + r * Dp, S + r * DEC_BLK + a, kv->v, rowbase + j0 + a, e - a + 1, D);
            r += e >= a && n == 4 ? 4 : 1;
        }
    }
}

typedef struct {
    const dn_kv_view *kv;
    const dec_plan *pl;
    const float *q;
    dn_strides q_s;
    int64_t TQ, H, window;
    float scale;
    float *parts;
    size_t per_part;
} dec_ctx;

static void dec_run(void *vctx, int64_t t, int thread, void *mine) {
    const dec_ctx *c = vctx;
    (void)thread;
    const int64_t split = t % c->pl->nsplit, bh = t / c->pl->nsplit;
    dec_task(c->kv, c->pl, c->q, c->q_s, c->TQ, c->H, c->scale, c->window, bh / c->kv->HKV,
             bh % c->kv->HKV, split, c->parts + c->per_part * (size_t)t, mine);
}

void DN_ISA_FN(dn_cpu_decode)(const dn_kv_view *kv, float *o, dn_strides o_s, float *lse,
                              const float *q, dn_strides q_s, int64_t TQ, int64_t H, float scale,
                              int64_t window, int nthreads, void *ws) {
    if (scale == 0.0f) scale = 1.0f / sqrtf((float)kv->D);
    const dec_plan pl = dec_make_plan(kv, TQ, H, window, nthreads);
    const int64_t G = H / kv->HKV, R = pl.R, Dp = pl.Dp, D = kv->D;
    const int64_t ntask = kv->B * kv->HKV * pl.nsplit;
    const size_t per_part = dec_partial_floats(&pl), per_thread = dec_thread_floats(&pl);
    float *parts = ws, *scratch = parts + per_part * (size_t)ntask;
    dec_ctx c = {kv, &pl, q, q_s, TQ, H, window, scale, parts, per_part};
    dn_parallel_tasks(nthreads, ntask, DN_SCHED_STATIC, dec_run, &c, scratch,
                      sizeof(float) * per_thread);
    /* Merge the splits of each (b, kv head): rescale every split to the common max. */
    for (int64_t bh = 0; bh < kv->B * kv->HKV; bh++)
        for (int64_t r = 0; r < R; r++) {
            const int64_t b = bh / kv->HKV, kh = bh % kv->HKV, g = r / TQ, i = r % TQ;
            const int64_t h = kh * G + g;
            float M = -INFINITY;
            for (int64_t s = 0; s < pl.nsplit; s++) {
                const float *part = parts + per_part * (size_t)(bh * pl.nsplit + s);
                if (part[r] > M) M = part[r];
            }
            float *out = o + b * o_s.b + i * o_s.t + h * o_s.h;
            for (int64_t d = 0; d < D; d++)
                out[d] = 0;
            float L = 0;
            if (M != -INFINITY)
                for (int64_t s = 0; s < pl.nsplit; s++) {
                    const float *part = parts + per_part * (size_t)(bh * pl.nsplit + s);
                    if (part[r] == -INFINITY) continue;
                    const float f = expf(part[r] - M);
                    L += f * part[R + r];
                    const float *Os = part + 2 * R + r * Dp;
                    for (int64_t d = 0; d < D; d++)
                        out[d] += f * Os[d];
                }
            const float inv = L > 0 ? 1.0f / L : 0.0f;
            for (int64_t d = 0; d < D; d++)
                out[d] *= inv;
            if (lse) lse[(b * H + h) * TQ + i] = L > 0 ? M + logf(L) : -INFINITY;
        }
}
