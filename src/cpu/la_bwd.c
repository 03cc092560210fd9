/*
 * cpu/la_bwd.c - fast CPU backward of the linear-attention family, chunkwise (docs/OPS.md).
 * Compiled once per SIMD level (see simd.h).
 *
 * A task is (sequence, key head) and walks the value heads that share the key head, so their
 * gradients of q and k add up without races. Per value head:
 *   1. a forward sweep over chunks keeps the state entering every chunk (checkpoints, (T/C) K V
 *      floats) and, for the delta rule, the corrected values U and residuals R of every token
 *      (2 T V floats): extra memory O(T V + (T/C) K V), never O(T K V);
 *   2. a backward sweep, last chunk first, carries dS and differentiates the chunk equations:
 *        dU  = M^T dO + diag(d) K dS1                 d = exp(gamma_L - gamma)
 *        dY  = (I + A)^{-T} dU, dR = b dY, dV = dR    (delta ops; else dV = dU)
 *        dA  = -dY U^T (strictly lower),  dM = dO U^T (lower)
 *        dS0 = e^{gamma_L} dS1 + Qs^T E dO - K^T E dR
 *        dQs = E dO S0^T + (dM * Gam) K
 *        dK  = (dM * Gam)^T Qs + Z K + Z^T K + diag(d) U dS1^T - E dR S0^T,  Z = dA * b Gam
 *      and the gate gradient from every place gamma enters (Gam in M and A, E in O and R,
 *      e^{gamma_L} and d in S1), summed from the end of the chunk (dg = reverse cumsum).
 * Products with S0^T and dS1^T are taken in transposed form (K x L outputs) so that only small
 * L x V blocks are transposed.
 */
#include "../internal.h"
#include "gemm.h"

#include <math.h>
#include <string.h>

#define ROUND_UP(x, m) (((x) + (m)-1) / (m) * (m))

typedef struct {
    int64_t K, V, C, Vp, Cp, nck; /* nck: checkpoints (chunks + 1) of the longest sequence */
    int delta, gate;
} bdims;

/* Per-thread scratch layout. */
typedef struct {
    float *ck;                        /* nck x K x Vp       states entering chunks */
    float *mats;                      /* nck x 4 x C x Cp   M, A, GK, Gam per chunk */
    float *Ub, *Rb;                   /* Tmax x Vp          per-token U and R */
    float *QK;                        /* 2C x K             Qs rows, then K rows */
    float *M, *A, *GK, *Gam, *W, *Z;  /* C x Cp each */
    float *dO, *KdS, *dU, *dY, *EdOR; /* C x Vp (EdOR 2C x Vp) */
    float *BT, *UT;                   /* Vp x 2Cp, Vp x Cp  transposed blocks */
    float *G1, *G2;                   /* K x 2Cp, K x Cp */
    float *dQr, *dKr;                 /* C x K */
    float *GT1, *GT2, *KT;            /* 2C x K, C x K, K x Cp */
    float *dS;                        /* K x Vp */
    float *eg, *dd, *bt, *dgam, *row; /* C, C, C, C, Cp */
    double *gam;                      /* C */
} bws;

static size_t bws_layout(const bdims *d, int64_t Tmax, bws *w, float *base) {
    const int64_t K = d->K, Vp = d->Vp, C = d->C, Cp = d->Cp;
    const int64_t sizes[] = {d->nck * K * Vp,
                             d->nck * 4 * C * Cp,
                             Tmax * Vp,
                             Tmax * Vp,
                             2 * C * K,
                             C * Cp,
                             C * Cp,
                             C * Cp,
                             C * Cp,
                             C * Cp,
                             C * Cp,
                             C * Vp,
                             C * Vp,
                             C * Vp,
                             C * Vp,
                             2 * C * Vp,
                             Vp * 2 * Cp,
                             Vp * Cp,
                             K * 2 * Cp,
                             K * Cp,
                             C * K,
                             C * K,
                             2 * C * K,
                             C * K,
                             K * Cp,
                             K * Vp,
                             C,
                             C,
                             C,
                             C,
                             Cp,
                             2 * C};
    float **slots[] = {&w->ck,  &w->mats, &w->Ub, &w->Rb, &w->QK,  &w->M,    &w->A,   &w->GK,
                       &w->Gam, &w->W,    &w->Z,  &w->dO, &w->KdS, &w->dU,   &w->dY,  &w->EdOR,
                       &w->BT,  &w->UT,   &w->G1, &w->G2, &w->dQr, &w->dKr,  &w->GT1, &w->GT2,
                       &w->KT,  &w->dS,   &w->eg, &w->dd, &w->bt,  &w->dgam, &w->row, NULL};
    size_t off = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        if (slots[i])
            *slots[i] = base ? base + off : NULL;
        else
            w->gam = base ? (double *)(void *)(base + off) : NULL;
        off += ROUND_UP((size_t)sizes[i], 16);
    }
    return off;
}

static bdims make_dims(const dn_la_params *p, int64_t *Tmax) {
    bdims d;
    d.K = p->K, d.V = p->V, d.C = p->chunk_size, d.Vp = ROUND_UP(p->V, DN_VW);
    d.Cp = ROUND_UP(d.C, DN_VW);
    d.delta = dn_op_has_delta(p->op), d.gate = dn_op_has_gate(p->op);
    int64_t m = p->T; /* without cu_seqlens every sequence has T tokens */
    if (p->cu_seqlens) {
        m = 0;
        for (int64_t n = 0; n < p->n_seqs; n++) {
            int64_t b, t0, t1;
            dn_la_seq(p, n, &b, &t0, &t1);
            if (t1 - t0 > m) m = t1 - t0;
        }
    }
    *Tmax = m > 0 ? m : 1;
    d.nck = (m + d.C - 1) / d.C + 1;
    return d;
}

/* What the backward sweep reads per (sequence, value head): the checkpoints, the chunk matrices,
 * U and R per token. In a thread's scratch (recomputed), or in the buffer of a training forward. */
typedef struct {
    float *ck, *mats, *Ub, *Rb, *qk; /* qk: normalised q and k rows per chunk (saved only) */
} sview;

static size_t saved_head_floats(const bdims *d, int64_t Tn) {
    const int64_t nch = (Tn + d->C - 1) / d->C;
    return ROUND_UP((size_t)((nch + 1) * d->K * d->Vp), 16) +
           ROUND_UP((size_t)(nch * 4 * d->C * d->Cp), 16) + 2 * ROUND_UP((size_t)(Tn * d->Vp), 16) +
           ROUND_UP((size_t)(nch * 2 * d->C * d->K), 16);
}

static sview saved_at(const dn_la_params *p, const bdims *d, float *base, int64_t n, int64_t hv) {
    size_t off = 0;
    for (int64_t m = 0; m < n; m++) {
        int64_t b, t0, t1;
        dn_la_seq(p, m, &b, &t0, &t1);
        off += (size_t)p->HV * saved_head_floats(d, t1 - t0);
    }
    int64_t b, t0, t1;
    dn_la_seq(p, n, &b, &t0, &t1);
    const int64_t Tn = t1 - t0, nch = (Tn + d->C - 1) / d->C;
    off += (size_t)hv * saved_head_floats(d, Tn);
    sview v;
    v.ck = base + off;
    v.mats = v.ck + ROUND_UP((size_t)((nch + 1) * d->K * d->Vp), 16);
    v.Ub = v.mats + ROUND_UP((size_t)(nch * 4 * d->C * d->Cp), 16);
    v.Rb = v.Ub + ROUND_UP((size_t)(Tn * d->Vp), 16);
    v.qk = v.Rb + ROUND_UP((size_t)(Tn * d->Vp), 16);
    return v;
}

size_t DN_ISA_FN(dn_cpu_la_saved_floats)(const dn_la_params *p) {
    int64_t Tmax;
    bdims d = make_dims(p, &Tmax);
    if (!p->cu_seqlens) return (size_t)(p->B * p->HV) * saved_head_floats(&d, p->T);
    size_t tot = 0;
    for (int64_t m = 0; m < dn_la_nseq(p); m++) {
        int64_t b, t0, t1;
        dn_la_seq(p, m, &b, &t0, &t1);
        tot += (size_t)p->HV * saved_head_floats(&d, t1 - t0);
    }
    return tot;
}

size_t DN_ISA_FN(dn_cpu_la_bwd_workspace)(const dn_la_params *p, int nthreads) {
    int64_t Tmax;
    bdims d = make_dims(p, &Tmax);
    bws w;
    return dn_parallel_ws_bytes(nthreads, sizeof(float) * bws_layout(&d, Tmax, &w, NULL));
}

/* x^ = x / sqrt(|x|^2 + 1e-6) times s (or x s) */
static inline void prep_row(float *dst, const float *x, int64_t K, int l2, float s) {
    float r = l2 ? 1.0f / sqrtf(dot_f32(x, x, K) + 1e-6f) : 1.0f;
    for (int64_t i = 0; i < K; i++)
        dst[i] = x[i] * r * s;
}
/* dx = s (r dy - r^3 (x.dy) x), or s dy without the normalisation. The projection is done in
 * double: where dy is (nearly) parallel to x, e.g. always for K = 1, the two terms cancel to
 * O(eps / |x|^2) of each, and fp32 would leave only rounding noise of r |dy| (relative error
 * 3e-3 seen by the fuzzer); in double the result keeps the accuracy of dy. O(K) per row. */
static inline void prep_row_back(float *dx, const float *x, const float *dy, int64_t K, int l2,
                                 float s, int add) {
    if (!l2) {
        for (int64_t i = 0; i < K; i++)
            dx[i] = add ? dx[i] + s * dy[i] : s * dy[i];
        return;
    }
    double ss = 0, xd = 0;
    for (int64_t i = 0; i < K; i++)
        ss += (double)x[i] * x[i], xd += (double)x[i] * dy[i];
    const double r = 1.0 / sqrt(ss + 1e-6), c = r * r * r * xd;
    for (int64_t i = 0; i < K; i++) {
        float v = (float)(s * (r * dy[i] - c * x[i]));
        dx[i] = add ? dx[i] + v : v;
    }
}

/* Gate and beta vectors of a chunk: gamma (cumulative, double), e^gamma, beta, e^{gamma_L - gamma}.
 */
static void load_gates(const dn_la_params *p, const bdims *d, bws *w, int64_t b, int64_t hv,
                       int64_t tc, int64_t L) {
    double gacc = 0;
    for (int64_t l = 0; l < L; l++) {
        const int64_t t = tc + l;
        if (d->gate) gacc += dn_log_decay(p->g[b * p->g_s.b + t * p->g_s.t + hv * p->g_s.h]);
        w->gam[l] = gacc;
        w->eg[l] = d->gate ? (float)exp(gacc) : 1.0f;
        w->bt[l] = d->delta ? p->beta[b * p->beta_s.b + t * p->beta_s.t + hv * p->beta_s.h] : 1.0f;
    }
    for (int64_t l = 0; l < L; l++)
        w->dd[l] = d->gate ? (float)exp(w->gam[L - 1] - w->gam[l]) : 1.0f;
}

/* Chunk rows Qs (scaled, normalised) and K (normalised) into w->QK, gates and betas; with dots,
 * also Gam, GK = Gam * K K^T (strictly lower), M = tril(Qs K^T * Gam) and A = b GK. */
static void load_chunk(const dn_la_params *p, const bdims *d, bws *w, int64_t b, int64_t h,
                       int64_t hv, int64_t tc, int64_t L, int need_q, int dots) {
    const int64_t K = d->K, Cp = d->Cp;
    float *Qc = w->QK, *Kc = w->QK + L * K;
    for (int64_t l = 0; l < L; l++) {
        const int64_t t = tc + l;
        prep_row(Kc + l * K, p->k + b * p->k_s.b + t * p->k_s.t + h * p->k_s.h, K, p->qk_l2norm,
                 1.0f);
        if (need_q)
            prep_row(Qc + l * K, p->q + b * p->q_s.b + t * p->q_s.t + h * p->q_s.h, K, p->qk_l2norm,
                     p->scale);
    }
    load_gates(p, d, w, b, hv, tc, L);
    if (!dots) return;
    /* Q K^T and K K^T, lower triangles, as products with K^T */
    const int64_t Lp = ROUND_UP(L, DN_VW);
    transpose_f32(w->KT, Cp, Kc, K, L, K);
    for (int64_t k = 0; k < K; k++)
        for (int64_t l = L; l < Lp; l++)
            w->KT[k * Cp + l] = 0;
    if (need_q) gemm_f32(L, Lp, K, Qc, K, 1, w->KT, Cp, w->M, Cp, 0, DN_TRI_C);
    if (d->delta) gemm_f32(L, Lp, K, Kc, K, 1, w->KT, Cp, w->GK, Cp, 0, DN_TRI_C);
    for (int64_t i = 0; i < L; i++) {
        float *gm = w->Gam + i * Cp, *gk = w->GK + i * Cp, *m = w->M + i * Cp, *a = w->A + i * Cp;
        if (d->gate) {
            for (int64_t j = 0; j <= i; j++)
                w->row[j] = (float)(w->gam[j] - w->gam[i]);
            for (int64_t j = 0; j <= i; j += DN_VW)
                vstore(gm + j, vexp_neg(-vload(w->row + j)));
        } else {
            for (int64_t j = 0; j <= i; j++)
                gm[j] = 1.0f;
        }
        for (int64_t j = 0; j <= i; j++) {
            m[j] = need_q ? gm[j] * m[j] : 0.0f;
            gk[j] = d->delta && j < i ? gm[j] * gk[j] : 0.0f;
            a[j] = w->bt[i] * gk[j];
        }
        for (int64_t j = i + 1; j < Cp; j++)
            gm[j] = gk[j] = m[j] = a[j] = 0.0f;
    }
}

/* x -= sum_{l in [l0, l1)} a[l * as] Y[l], over the Vp columns of the row x, eight vectors at a
 * time: eight independent FMA chains instead of one (the triangular solves of the chunk). */
#define SUBST_NV 8
static void subst_row(float *x, const float *Y, int64_t Vp, const float *a, int64_t as, int64_t l0,
                      int64_t l1) {
    int64_t j = 0;
    for (; j + SUBST_NV * DN_VW <= Vp; j += SUBST_NV * DN_VW) {
        vf acc[SUBST_NV];
        for (int r = 0; r < SUBST_NV; r++)
            acc[r] = vload(x + j + r * DN_VW);
        for (int64_t l = l0; l < l1; l++) {
            const vf al = vset1(a[l * as]);
            for (int r = 0; r < SUBST_NV; r++)
                acc[r] -= al * vload(Y + l * Vp + j + r * DN_VW);
        }
        for (int r = 0; r < SUBST_NV; r++)
            vstore(x + j + r * DN_VW, acc[r]);
    }
    for (; j < Vp; j += DN_VW) {
        vf acc = vload(x + j);
        for (int64_t l = l0; l < l1; l++)
            acc -= vset1(a[l * as]) * vload(Y + l * Vp + j);
        vstore(x + j, acc);
    }
}

/* Asks for the rows [t0, t1) of one head ahead of their use: rows of one head are a head stride
 * apart, too far for the hardware prefetcher to follow. */
static inline void prefetch_rows(const float *src, dn_strides s, int64_t b, int64_t t0, int64_t t1,
                                 int64_t head, int64_t n) {
    for (int64_t t = t0; t < t1; t++)
        for (int64_t i = 0; i < n; i += 16)
            __builtin_prefetch(src + b * s.b + t * s.t + head * s.h + i);
}

/* Rows of one (b, t, head) tensor of width n into a padded L x ld block. */
static void load_rows(float *dst, int64_t ld, const float *src, dn_strides s, int64_t b, int64_t tc,
                      int64_t head, int64_t L, int64_t n) {
    for (int64_t l = 0; l < L; l++) {
        memcpy(dst + l * ld, src + b * s.b + (tc + l) * s.t + head * s.h, sizeof(float) * n);
        memset(dst + l * ld + n, 0, sizeof(float) * (ld - n));
    }
}

/* Forward sweep: checkpoints, chunk matrices, U and R per token (and, when saving, the q and k
 * rows) into sv; with outputs, also the forward's o and final_state. */
static void fwd_sweep(const dn_la_params *p, const bdims *d, bws *w, sview sv, int64_t n,
                      int64_t hv, int outputs) {
    const int64_t K = d->K, V = d->V, Vp = d->Vp, C = d->C, Cp = d->Cp, h = hv / (p->HV / p->H);
    int64_t b, t0, t1;
    dn_la_seq(p, n, &b, &t0, &t1);
    const int64_t soff = (n * p->HV + hv) * K * V, nch = (t1 - t0 + C - 1) / C;
    float *S = sv.ck;
    for (int64_t i = 0; i < K; i++) {
        if (p->initial_state)
            memcpy(S + i * Vp, p->initial_state + soff + i * V, sizeof(float) * V);
        else
            memset(S + i * Vp, 0, sizeof(float) * V);
        memset(S + i * Vp + V, 0, sizeof(float) * (Vp - V));
    }
    for (int64_t c = 0; c < nch; c++) {
        const int64_t tc = t0 + c * C, L = t1 - tc < C ? t1 - tc : C;
        float *S0 = sv.ck + c * K * Vp, *S1 = S0 + K * Vp, *U = sv.Ub + (tc - t0) * Vp;
        float *R = sv.Rb + (tc - t0) * Vp, *Qc = w->QK, *Kc = w->QK + L * K;
        float *mc = sv.mats + c * 4 * C * Cp;
        w->M = mc, w->A = mc + C * Cp, w->GK = mc + 2 * C * Cp, w->Gam = mc + 3 * C * Cp;
        if (c + 1 < nch) { /* the next chunk's rows */
            const int64_t n0 = tc + L, n1 = t1 - n0 < C ? t1 : n0 + C;
            prefetch_rows(p->q, p->q_s, b, n0, n1, h, K);
            prefetch_rows(p->k, p->k_s, b, n0, n1, h, K);
            prefetch_rows(p->v, p->v_s, b, n0, n1, hv, V);
        }
        load_chunk(p, d, w, b, h, hv, tc, L, 1, 1);
        if (sv.qk) memcpy(sv.qk + c * 2 * C * K, w->QK, sizeof(float) * (size_t)(2 * L * K));
        load_rows(U, Vp, p->v, p->v_s, b, tc, hv, L, V);
        if (d->delta) {
            gemm_f32(L, Vp, K, Kc, K, 1, S0, Vp, R, Vp, 0, 0); /* K S0 */
            for (int64_t i = 0; i < L; i++) { /* R = V - E K S0, then U = (I + A)^{-1} b R */
                vf e = vset1(w->eg[i]), bb = vset1(w->bt[i]);
                for (int64_t j = 0; j < Vp; j += DN_VW) {
                    vf r = vload(U + i * Vp + j) - e * vload(R + i * Vp + j);
                    vstore(R + i * Vp + j, r);
                    vstore(U + i * Vp + j, bb * r);
                }
                subst_row(U + i * Vp, U, Vp, w->A + i * Cp, 1, 0, i);
            }
        }
        /* S1 = e^{gamma_L} S0 + K^T diag(d) U */
        for (int64_t l = 0; l < L; l++) {
            vf dl = vset1(w->dd[l]);
            for (int64_t j = 0; j < Vp; j += DN_VW)
                vstore(w->dU + l * Vp + j, dl * vload(U + l * Vp + j));
        }
        if (outputs) { /* O = E (Q S0) + M U, into o */
            float *O = w->KdS;
            gemm_f32(L, Vp, K, Qc, K, 1, S0, Vp, O, Vp, 0, 0);
            if (d->gate)
                for (int64_t i = 0; i < L; i++) {
                    const vf e = vset1(w->eg[i]);
                    for (int64_t j = 0; j < Vp; j += DN_VW)
                        vstore(O + i * Vp + j, e * vload(O + i * Vp + j));
                }
            gemm_f32(L, Vp, L, w->M, Cp, 1, U, Vp, O, Vp, 1.0f, DN_TRI_A);
            for (int64_t l = 0; l < L; l++)
                memcpy(p->o + b * p->o_s.b + (tc + l) * p->o_s.t + hv * p->o_s.h, O + l * Vp,
                       sizeof(float) * (size_t)V);
        }
        gemm_f32_from(K, Vp, L, Kc, 1, K, w->dU, Vp, S1, Vp, d->gate ? w->eg[L - 1] : 1.0f, S0, 0);
    }
    if (outputs && p->final_state)
        for (int64_t i = 0; i < K; i++)
            memcpy(p->final_state + soff + i * V, sv.ck + nch * K * Vp + i * Vp,
                   sizeof(float) * (size_t)V);
}

/* Backward sweep over the chunks, last first, reading sv. */
static void bwd_sweep(const dn_la_bwd_params *bp, const bdims *d, bws *w, sview sv, int64_t n,
                      int64_t hv, int first) {
    const dn_la_params *p = &bp->fwd;
    const int64_t K = d->K, V = d->V, Vp = d->Vp, C = d->C, Cp = d->Cp, h = hv / (p->HV / p->H);
    int64_t b, t0, t1;
    dn_la_seq(p, n, &b, &t0, &t1);
    const int64_t soff = (n * p->HV + hv) * K * V, nch = (t1 - t0 + C - 1) / C;
    float *dS = w->dS;
    for (int64_t i = 0; i < K; i++) {
        if (bp->dfinal_state)
            memcpy(dS + i * Vp, bp->dfinal_state + soff + i * V, sizeof(float) * V);
        else
            memset(dS + i * Vp, 0, sizeof(float) * V);
        memset(dS + i * Vp + V, 0, sizeof(float) * (Vp - V));
    }
    for (int64_t c = nch - 1; c >= 0; c--) {
        const int64_t tc = t0 + c * C, L = t1 - tc < C ? t1 - tc : C, Lp = ROUND_UP(L, DN_VW);
        const float *S0 = sv.ck + c * K * Vp, *U = sv.Ub + (tc - t0) * Vp,
                    *R = sv.Rb + (tc - t0) * Vp;
        float *QKc = sv.qk ? sv.qk + c * 2 * C * K : w->QK;
        float *Qc = QKc, *Kc = QKc + L * K;
        float *mc = sv.mats + c * 4 * C * Cp;
        w->M = mc, w->A = mc + C * Cp, w->GK = mc + 2 * C * Cp, w->Gam = mc + 3 * C * Cp;
        if (c > 0) { /* the previous chunk's rows, next in this sweep */
            prefetch_rows(p->q, p->q_s, b, tc - C, tc, h, K);
            prefetch_rows(p->k, p->k_s, b, tc - C, tc, h, K);
            prefetch_rows(bp->dout, bp->dout_s, b, tc - C, tc, hv, V);
        }
        if (sv.qk)
            load_gates(p, d, w, b, hv, tc, L);
        else
            load_chunk(p, d, w, b, h, hv, tc, L, 1, 0);
        load_rows(w->dO, Vp, bp->dout, bp->dout_s, b, tc, hv, L, V);
        for (int64_t l = 0; l < L; l++)
            w->dgam[l] = 0;
        double dgL = 0; /* gradient reaching gamma_L through e^{gamma_L} and d */

        /* dU = M^T dO + diag(d) K dS1 */
        gemm_f32(L, Vp, K, Kc, K, 1, dS, Vp, w->KdS, Vp, 0, 0);
        gemm_f32(L, Vp, L, w->M, 1, Cp, w->dO, Vp, w->dU, Vp, 0, 0);
        for (int64_t i = 0; i < L; i++) {
            vf di = vset1(w->dd[i]);
            for (int64_t j = 0; j < Vp; j += DN_VW)
                vstore(w->dU + i * Vp + j,
                       vload(w->dU + i * Vp + j) + di * vload(w->KdS + i * Vp + j));
        }
        /* delta: dY = (I + A)^{-T} dU by back substitution; dR = b dY; db = dY . R */
        const float *dVsrc = w->dU;
        if (d->delta) {
            for (int64_t i = L - 1; i >= 0; i--) {
                memcpy(w->dY + i * Vp, w->dU + i * Vp, sizeof(float) * (size_t)Vp);
                subst_row(w->dY + i * Vp, w->dY, Vp, w->A + i, Cp, i + 1, L);
            }
            for (int64_t i = 0; i < L; i++) {
                w->row[i] = dot_f32(w->dY + i * Vp, R + i * Vp, Vp); /* db, before the A term */
                vf bb = vset1(w->bt[i]);
                for (int64_t j = 0; j < Vp; j += DN_VW)
                    vstore(w->KdS + i * Vp + j, bb * vload(w->dY + i * Vp + j)); /* KdS := dR */
            }
            dVsrc = w->KdS;
        }
        for (int64_t l = 0; l < L; l++)
            memcpy(bp->dv + b * bp->dv_s.b + (tc + l) * bp->dv_s.t + hv * bp->dv_s.h,
                   dVsrc + l * Vp, sizeof(float) * V);
        const float *dR = w->KdS;

        /* dM = lower(dO U^T) -> W = dM * Gam; dA = -dY U^T (strictly lower) -> Z = dA b Gam;
         * gamma gets dM*M and dA*A (+ at i, - at j); db gets sum_j dA GK. The products with U^T
         * fill W and Z first (lower triangles), then are turned into the masked forms. */
        transpose_f32(w->UT, Cp, U, Vp, L, Vp);
        for (int64_t j = 0; j < Vp; j++)
            for (int64_t i = L; i < Lp; i++)
                w->UT[j * Cp + i] = 0;
        gemm_f32(L, Lp, Vp, w->dO, Vp, 1, w->UT, Cp, w->W, Cp, 0, DN_TRI_C);
        if (d->delta) gemm_f32(L, Lp, Vp, w->dY, Vp, 1, w->UT, Cp, w->Z, Cp, 0, DN_TRI_C);
        for (int64_t i = 0; i < L; i++) {
            float *wr = w->W + i * Cp, *zr = w->Z + i * Cp;
            double db_extra = 0, dgi = 0;
            for (int64_t j = 0; j <= i; j++) {
                const float dm = wr[j];
                wr[j] = dm * w->Gam[i * Cp + j];
                const float tm = dm * w->M[i * Cp + j];
                float ta = 0;
                if (d->delta && j < i) {
                    const float da = -zr[j];
                    zr[j] = da * w->bt[i] * w->Gam[i * Cp + j];
                    db_extra += (double)da * w->GK[i * Cp + j];
                    ta = da * w->A[i * Cp + j];
                } else if (d->delta) {
                    zr[j] = 0;
                }
                dgi += (double)tm + ta;
                w->dgam[j] -= tm + ta;
            }
            w->dgam[i] += (float)dgi;
            for (int64_t j = i + 1; j < Cp; j++)
                wr[j] = zr[j] = 0;
            if (d->delta) w->row[i] += (float)db_extra;
        }
        if (bp->dbeta)
            for (int64_t l = 0; l < L; l++)
                bp->dbeta[b * bp->dbeta_s.b + (tc + l) * bp->dbeta_s.t + hv * bp->dbeta_s.h] =
                    w->row[l];

        /* E-scaled [dO; -dR] blocks, and their transposes */
        float *EdO = w->EdOR, *EdR = w->EdOR + L * Vp;
        for (int64_t i = 0; i < L; i++) {
            vf e = vset1(w->eg[i]);
            for (int64_t j = 0; j < Vp; j += DN_VW) {
                vstore(EdO + i * Vp + j, e * vload(w->dO + i * Vp + j));
                if (d->delta) vstore(EdR + i * Vp + j, -(e * vload(dR + i * Vp + j)));
            }
        }
        const int64_t M2 = d->delta ? 2 * L : L, N2 = ROUND_UP(M2, DN_VW);
        transpose_f32(w->BT, 2 * Cp, w->EdOR, Vp, M2, Vp);
        for (int64_t j = 0; j < Vp; j++)
            for (int64_t i = M2; i < N2; i++)
                w->BT[j * 2 * Cp + i] = 0;
        /* G1 = S0 [E dO | -E dR]^T (K x 2L);  G2 = dS1 U^T (K x L) */
        gemm_f32(K, N2, Vp, S0, Vp, 1, w->BT, 2 * Cp, w->G1, 2 * Cp, 0, 0);
        gemm_f32(K, Lp, Vp, dS, Vp, 1, w->UT, Cp, w->G2, Cp, 0, 0);

        /* G1, G2 into rows: GT1 (M2 x K), GT2 (L x K) */
        transpose_f32(w->GT1, K, w->G1, 2 * Cp, K, M2);
        transpose_f32(w->GT2, K, w->G2, Cp, K, L);
        /* gamma: E in O (qs_i . G1[:, i]), E in R (dR_i . (R_i - V_i)), d in S1, e^{gamma_L} */
        if (d->gate) {
            for (int64_t i = 0; i < L; i++) {
                double acc = dot_f32(Qc + i * K, w->GT1 + i * K, K);
                const double kg = dot_f32(Kc + i * K, w->GT2 + i * K, K);
                if (d->delta) { /* R_i - V_i = -e_i S0^T k_i, the derivative of R_i in gamma_i */
                    const float *vrow = p->v + b * p->v_s.b + (tc + i) * p->v_s.t + hv * p->v_s.h;
                    acc += dot_f32(dR + i * Vp, R + i * Vp, V) - dot_f32(dR + i * Vp, vrow, V);
                }
                w->dgam[i] += (float)(acc - w->dd[i] * kg);
                dgL += w->dd[i] * kg;
            }
            dgL += w->eg[L - 1] * (double)dot_f32(dS, S0, K * Vp);
            w->dgam[L - 1] += (float)dgL;
        }

        /* dS0 = e^{gamma_L} dS1 + [Qs; K]^T [E dO; -E dR], in place in dS */
        gemm_f32(K, Vp, M2, QKc, 1, K, w->EdOR, Vp, dS, Vp, d->gate ? w->eg[L - 1] : 1.0f, 0);

        /* row parts: dQs = W K;  dK = W^T Qs + Z K + Z^T K */
        gemm_f32(L, K % DN_VW ? 0 : K, L, w->W, Cp, 1, Kc, K, w->dQr, K, 0, 0);
        gemm_f32(L, K % DN_VW ? 0 : K, L, w->W, 1, Cp, Qc, K, w->dKr, K, 0, 0);
        if (K % DN_VW) { /* K not a multiple of the vector width: plain loops */
            for (int64_t i = 0; i < L; i++)
                for (int64_t k = 0; k < K; k++) {
                    float aq = 0, ak = 0;
                    for (int64_t j = 0; j < L; j++) {
                        aq += w->W[i * Cp + j] * Kc[j * K + k];
                        ak += w->W[j * Cp + i] * Qc[j * K + k];
                    }
                    w->dQr[i * K + k] = aq, w->dKr[i * K + k] = ak;
                }
        }
        if (d->delta) { /* dk_i += sum_j (Z_ij + Z_ji) k_j, with Z + Z^T built in W (done with;
                         * not in GK, which may be the training forward's saved buffer: read only)
                         */
            for (int64_t i = 0; i < L; i++)
                for (int64_t j = 0; j < L; j++)
                    w->W[i * Cp + j] = w->Z[i * Cp + j] + w->Z[j * Cp + i];
            if (K % DN_VW == 0)
                gemm_f32(L, K, L, w->W, Cp, 1, Kc, K, w->dKr, K, 1.0f, 0);
            else
                for (int64_t i = 0; i < L; i++)
                    for (int64_t j = 0; j < L; j++) {
                        const float zs = w->W[i * Cp + j];
                        for (int64_t k = 0; k < K; k++)
                            w->dKr[i * K + k] += zs * Kc[j * K + k];
                    }
        }
        /* add the transposed parts, then through the normalisation into dq, dk */
        for (int64_t i = 0; i < L; i++) {
            float *dq_i = w->dQr + i * K, *dk_i = w->dKr + i * K;
            const float di = w->dd[i], *g1 = w->GT1 + i * K, *g2 = w->GT2 + i * K;
            const float *g1r = d->delta ? w->GT1 + (L + i) * K : NULL;
            for (int64_t k = 0; k < K; k++) {
                dq_i[k] += g1[k];
                dk_i[k] += di * g2[k] + (g1r ? g1r[k] : 0.0f);
            }
            const int64_t t = tc + i;
            prep_row_back(bp->dq + b * bp->dq_s.b + t * bp->dq_s.t + h * bp->dq_s.h,
                          p->q + b * p->q_s.b + t * p->q_s.t + h * p->q_s.h, dq_i, K, p->qk_l2norm,
                          p->scale, !first);
            prep_row_back(bp->dk + b * bp->dk_s.b + t * bp->dk_s.t + h * bp->dk_s.h,
                          p->k + b * p->k_s.b + t * p->k_s.t + h * p->k_s.h, dk_i, K, p->qk_l2norm,
                          1.0f, !first);
        }
        if (bp->dg) {
            /* dg_l = sum of dgamma from l to the chunk's end. That sum is also exp(g_l) times the
             * gradient of exp(g_l): exactly 0 where the decay is 0 (a reset), so the sum restarts
             * there rather than carry the rounding of terms that cancel. */
            float acc = 0;
            for (int64_t l = L - 1; l >= 0; l--) {
                acc += w->dgam[l];
                if (dn_decay_is_zero(p->g[b * p->g_s.b + (tc + l) * p->g_s.t + hv * p->g_s.h]))
                    acc = 0;
                bp->dg[b * bp->dg_s.b + (tc + l) * bp->dg_s.t + hv * bp->dg_s.h] = acc;
            }
        }
    }
    if (bp->dinitial_state)
        for (int64_t i = 0; i < K; i++)
            memcpy(bp->dinitial_state + soff + i * V, dS + i * Vp, sizeof(float) * V);
}

typedef struct {
    const dn_la_bwd_params *bp;
    const dn_la_params *p; /* the forward's params: &bp->fwd, or those of a training forward */
    const bdims *d;
    int64_t Tmax;
    void *saved;
} bwd_ctx;

/* One task of the backward: sequence n, key head h and its G value heads (the first writes dq and
 * dk, the others add to them). */
static void bwd_task(void *vctx, int64_t task, int thread, void *mine) {
    const bwd_ctx *c = vctx;
    const dn_la_bwd_params *bp = c->bp;
    const dn_la_params *p = c->p;
    const int64_t G = p->HV / p->H;
    (void)thread;
    bws w;
    bws_layout(c->d, c->Tmax, &w, mine);
    const int64_t n = task / p->H, h = task % p->H;
    for (int64_t g = 0; g < G; g++) {
        const int64_t hv = h * G + g;
        sview sv;
        if (bp->saved) {
            sv = saved_at(p, c->d, (float *)(uintptr_t)bp->saved, n, hv);
        } else {
            sv.ck = w.ck, sv.mats = w.mats, sv.Ub = w.Ub, sv.Rb = w.Rb, sv.qk = NULL;
            fwd_sweep(p, c->d, &w, sv, n, hv, 0);
        }
        bwd_sweep(bp, c->d, &w, sv, n, hv, g == 0);
    }
}

void DN_ISA_FN(dn_cpu_la_backward)(const dn_la_bwd_params *bp, int nthreads, void *ws) {
    const dn_la_params *p = &bp->fwd;
    int64_t Tmax;
    bdims d = make_dims(p, &Tmax);
    bws layout;
    const size_t per = bws_layout(&d, Tmax, &layout, NULL);
    bwd_ctx c = {bp, p, &d, Tmax, NULL};
    /* every task writes only its own rows: the result does not depend on the schedule */
    dn_parallel_tasks(nthreads, dn_la_nseq(p) * p->H, DN_SCHED_DYNAMIC, bwd_task, &c, ws,
                      sizeof(float) * per);
}

/* One task of the training forward: sequence n, value head hv, its checkpoints into saved. */
static void train_task(void *vctx, int64_t task, int thread, void *mine) {
    const bwd_ctx *c = vctx;
    const dn_la_params *p = c->p;
    (void)thread;
    bws w;
    bws_layout(c->d, c->Tmax, &w, mine);
    const int64_t n = task / p->HV, hv = task % p->HV;
    fwd_sweep(p, c->d, &w, saved_at(p, c->d, (float *)c->saved, n, hv), n, hv, 1);
}

void DN_ISA_FN(dn_cpu_la_forward_train)(const dn_la_params *p, int nthreads, void *ws,
                                        void *saved) {
    int64_t Tmax;
    bdims d = make_dims(p, &Tmax);
    bws layout;
    const size_t per = bws_layout(&d, Tmax, &layout, NULL);
    bwd_ctx c = {NULL, p, &d, Tmax, saved};
    dn_parallel_tasks(nthreads, dn_la_nseq(p) * p->HV, DN_SCHED_DYNAMIC, train_task, &c, ws,
                      sizeof(float) * per);
}
