/*
 * cpu/attn_bwd.c - fast CPU backward of causal softmax attention. Compiled once per SIMD level.
 *
 * A task owns one block of keys of one KV head, so its dk and dv rows are written by no one else;
 * it walks the query blocks (all G heads of the group stacked) that can see the block and
 * recomputes, per tile: S = (scale Q) K^T, P = exp(S - lse), dP = dO V^T, dS = P (dP - D) with
 * D = dO . o per row; then dV += P^T dO, dK += dS^T (scale Q), and dQ += dS K. Nothing of size
 * TQ x TK is formed.
 *
 * dQ sums over key blocks. A task takes every nseg-th key block of one (batch, KV head), from
 * block s on, and adds the blocks' dQ in block order into an accumulator of its own (TQ x G rows);
 * so the result does not depend on which thread runs which task, and the schedule can stay
 * dynamic (the causal work is ragged). With nseg = 1 (enough heads to keep the threads busy) the
 * task writes its group's dq itself; otherwise the nseg accumulators of a group are summed in
 * segment order afterwards. Bitwise the same run to run; across thread counts as long as nseg is.
 */
#include "../internal.h"
#include "gemm.h"

#include <math.h>
#include <string.h>

#define ROUND_UP(x, m) (((x) + (m)-1) / (m) * (m))
#define BC 64 /* keys per task */

static int64_t bwd_br(int64_t G) {
    int64_t br = 64 / G;
    return br < 8 ? 8 : br;
}

typedef struct {
    float *Q, *dO, *dQt;   /* R x Dp */
    float *KT, *VT;        /* D x BC */
    float *Kb, *dKb, *dVb; /* BC x Dp */
    float *S, *dP;         /* R x BC */
    float *lse, *Dr;       /* R */
} abws;

static size_t abws_layout(const dn_attn_params *p, abws *w, float *base) {
    const int64_t G = p->H / p->HKV, R = G * bwd_br(G), Dp = ROUND_UP(p->D, DN_VW), D = p->D;
    const int64_t sizes[] = {R * Dp,  R * Dp,  R * Dp, D * BC, D * BC, BC * Dp,
                             BC * Dp, BC * Dp, R * BC, R * BC, R,      R};
    float **slots[] = {&w->Q,   &w->dO,  &w->dQt, &w->KT, &w->VT,  &w->Kb,
                       &w->dKb, &w->dVb, &w->S,   &w->dP, &w->lse, &w->Dr};
    size_t off = 0;
    for (int i = 0; i < 12; i++) {
        *slots[i] = base ? base + off : NULL;
        off += ROUND_UP((size_t)sizes[i], 16);
    }
    return off;
}

/* How the work is split: nseg tasks per (batch, KV head), each with a dQ accumulator of TQ x G
 * rows of Dp: in the thread's scratch when nseg = 1, else in the shared part of the workspace. */
typedef struct {
    int64_t nkb, nseg;
    size_t per_thread, acc; /* floats */
} abplan;

static abplan make_plan(const dn_attn_params *p, int nthreads) {
    abplan pl;
    const int64_t heads = p->B * p->HKV, nt = nthreads < 1 ? 1 : nthreads;
    abws w;
    pl.nkb = (p->TK + BC - 1) / BC;
    /* whole heads balance when they divide evenly among the threads or outnumber them well;
     * otherwise about two tasks per thread, each on interleaved key blocks (similar costs) */
    pl.nseg = heads % nt == 0 || heads >= 4 * nt ? 1 : (2 * nt + heads - 1) / heads;
    if (pl.nseg > pl.nkb) pl.nseg = pl.nkb > 0 ? pl.nkb : 1;
    pl.acc = ROUND_UP((size_t)(p->TQ * (p->H / p->HKV) * ROUND_UP(p->D, DN_VW)), 16);
    pl.per_thread = abws_layout(p, &w, NULL) + (pl.nseg == 1 ? pl.acc : 0);
    return pl;
}

/* Workspace: the threads' scratch, then D_i = dO_i . o_i for every row, then (nseg > 1) the
 * accumulators of every task. */
static size_t shared_floats(const dn_attn_params *p, const abplan *pl) {
    return ROUND_UP((size_t)(p->B * p->H * p->TQ), 16) +
           (pl->nseg > 1 ? (size_t)(p->B * p->HKV * pl->nseg) * pl->acc : 0);
}

size_t DN_ISA_FN(dn_cpu_attn_bwd_workspace)(const dn_attn_params *p, int nthreads) {
    const abplan pl = make_plan(p, nthreads);
    return dn_parallel_ws_bytes(nthreads, sizeof(float) * pl.per_thread) +
           sizeof(float) * shared_floats(p, &pl);
}

/* One key block [j0, j0 + BC) of KV head kh: writes its dk, dv rows and adds its part of dQ
 * (unscaled) into dQ [TQ, G, Dp]. */
static void key_block(const dn_attn_bwd_params *bp, abws *w, const float *Dall, float *dQ,
                      int64_t b, int64_t kh, int64_t j0) {
    const dn_attn_params *p = &bp->fwd;
    const int64_t G = p->H / p->HKV, D = p->D, Dp = ROUND_UP(D, DN_VW), br = bwd_br(G);
    const int64_t W = p->window, off = p->TK - p->TQ;
    const int64_t nk = p->TK - j0 < BC ? p->TK - j0 : BC, nkp = ROUND_UP(nk, DN_VW);
    for (int64_t jj = 0; jj < nk; jj++) {
        const float *k = p->k + b * p->k_s.b + (j0 + jj) * p->k_s.t + kh * p->k_s.h;
        const float *v = p->v + b * p->v_s.b + (j0 + jj) * p->v_s.t + kh * p->v_s.h;
        for (int64_t d = 0; d < D; d++)
            w->KT[d * BC + jj] = k[d], w->VT[d * BC + jj] = v[d];
        memcpy(w->Kb + jj * Dp, k, sizeof(float) * (size_t)D);
        memset(w->Kb + jj * Dp + D, 0, sizeof(float) * (size_t)(Dp - D));
    }
    for (int64_t d = 0; d < D; d++)
        for (int64_t jj = nk; jj < nkp; jj++)
            w->KT[d * BC + jj] = w->VT[d * BC + jj] = 0;
    memset(w->dKb, 0, sizeof(float) * (size_t)(BC * Dp));
    memset(w->dVb, 0, sizeof(float) * (size_t)(BC * Dp));
    const int k_finite = all_finite(w->Kb, nk * Dp);

    /* query rows that see some key of the block: j0 <= pos, and pos - W + 1 <= j0 + nk - 1 */
    int64_t ilo = j0 - off > 0 ? j0 - off : 0, ihi = p->TQ - 1;
    const int64_t last = j0 + nk - 1 - off;              /* the block's last key as a query index */
    if (W > 0 && W - 1 < ihi - last) ihi = last + W - 1; /* no overflow at huge W */
    for (int64_t i0 = ilo; i0 <= ihi; i0 += br) {
        const int64_t nq = ihi + 1 - i0 < br ? ihi + 1 - i0 : br, R = G * nq;
        for (int64_t g = 0; g < G; g++)
            for (int64_t i = 0; i < nq; i++) {
                const int64_t h = kh * G + g, t = i0 + i, r = g * nq + i;
                const float *q = p->q + b * p->q_s.b + t * p->q_s.t + h * p->q_s.h;
                const float *dO = bp->dout + b * bp->dout_s.b + t * bp->dout_s.t + h * bp->dout_s.h;
                for (int64_t d = 0; d < D; d++)
                    w->Q[r * Dp + d] = q[d] * p->scale;
                memcpy(w->dO + r * Dp, dO, sizeof(float) * (size_t)D);
                for (int64_t d = D; d < Dp; d++)
                    w->Q[r * Dp + d] = w->dO[r * Dp + d] = 0;
                w->lse[r] = p->lse[(b * p->H + h) * p->TQ + t];
                w->Dr[r] = Dall[(b * p->H + h) * p->TQ + t];
            }
        gemm_f32(R, nkp, D, w->Q, Dp, 1, w->KT, BC, w->S, BC, 0, 0);
        gemm_f32(R, nkp, D, w->dO, Dp, 1, w->VT, BC, w->dP, BC, 0, 0);
        int edge = 0; /* some row of the tile does not see some key of the block */
        for (int64_t r = 0; r < R; r++) {
            const int64_t pos = off + i0 + r % nq;
            int64_t a, e;
            dn_attn_visible(pos, W, j0, nk, &a, &e);
            float *s = w->S + r * BC, *dp = w->dP + r * BC;
            if (e < a || w->lse[r] == -INFINITY) {
                memset(s, 0, sizeof(float) * (size_t)nkp);
                memset(dp, 0, sizeof(float) * (size_t)nkp);
                edge = 1;
                continue;
            }
            edge |= a > 0 || e < nk - 1;
            for (int64_t j = 0; j < a; j++)
                s[j] = -INFINITY;
            for (int64_t j = e + 1; j < nkp; j++)
                s[j] = -INFINITY;
            const vf l = vset1(w->lse[r]), dr = vset1(w->Dr[r]);
            for (int64_t j = 0; j < nkp; j += DN_VW) {
                vf pj = vexp_neg(vload(s + j) - l);
                vstore(s + j, pj);
                vstore(dp + j, pj * (vload(dp + j) - dr)); /* dS */
            }
            /* P is 0 there, but dP of a masked key (dO . v) may be inf or NaN: dS = 0 exactly */
            for (int64_t j = 0; j < a; j++)
                dp[j] = 0;
            for (int64_t j = e + 1; j < nkp; j++)
                dp[j] = 0;
        }
        if (edge && !(k_finite && all_finite(w->Q, R * Dp) && all_finite(w->dO, R * Dp))) {
            /* An inf or NaN in a key, query or output gradient would meet a masked (zero) weight
             * in the products below (0 * inf = NaN): each (row, key) pair that is visible only. */
            memset(w->dQt, 0, sizeof(float) * (size_t)(R * Dp));
            for (int64_t r = 0; r < R; r++) {
                int64_t a, e;
                dn_attn_visible(off + i0 + r % nq, W, j0, nk, &a, &e);
                if (w->lse[r] == -INFINITY) continue;
                const float *q = w->Q + r * Dp, *dO = w->dO + r * Dp;
                float *dq = w->dQt + r * Dp;
                for (int64_t j = a; j <= e; j++) {
                    const vf pj = vset1(w->S[r * BC + j]), dsj = vset1(w->dP[r * BC + j]);
                    float *dk = w->dKb + j * Dp, *dv = w->dVb + j * Dp;
                    const float *k = w->Kb + j * Dp;
                    for (int64_t d = 0; d < Dp; d += DN_VW) {
                        vstore(dv + d, vload(dv + d) + pj * vload(dO + d));
                        vstore(dk + d, vload(dk + d) + dsj * vload(q + d));
                        vstore(dq + d, vload(dq + d) + dsj * vload(k + d));
                    }
                }
            }
        } else {
            /* dV += P^T dO;  dK += dS^T (scale Q);  dQt = dS K */
            gemm_f32(nk, Dp, R, w->S, 1, BC, w->dO, Dp, w->dVb, Dp, 1.0f, 0);
            gemm_f32(nk, Dp, R, w->dP, 1, BC, w->Q, Dp, w->dKb, Dp, 1.0f, 0);
            gemm_f32(R, Dp, nk, w->dP, BC, 1, w->Kb, Dp, w->dQt, Dp, 0, 0);
        }
        for (int64_t g = 0; g < G; g++)
            for (int64_t i = 0; i < nq; i++) {
                const int64_t r = g * nq + i;
                float *acc = dQ + ((i0 + i) * G + g) * Dp;
                for (int64_t d = 0; d < Dp; d += DN_VW)
                    vstore(acc + d, vload(acc + d) + vload(w->dQt + r * Dp + d));
            }
    }
    for (int64_t jj = 0; jj < nk; jj++) {
        memcpy(bp->dk + b * bp->dk_s.b + (j0 + jj) * bp->dk_s.t + kh * bp->dk_s.h, w->dKb + jj * Dp,
               sizeof(float) * (size_t)D);
        memcpy(bp->dv + b * bp->dv_s.b + (j0 + jj) * bp->dv_s.t + kh * bp->dv_s.h, w->dVb + jj * Dp,
               sizeof(float) * (size_t)D);
    }
}

typedef struct {
    const dn_attn_bwd_params *bp;
    abplan pl;
    float *Dall, *accs;
} abctx;

#define ROWS_PER_TASK 64

/* D_i = dO_i . o_i, rows in the order [B,H,TQ] */
static void rows_D(void *vctx, int64_t task, int thread, void *scratch) {
    const abctx *c = vctx;
    const dn_attn_bwd_params *bp = c->bp;
    const dn_attn_params *p = &bp->fwd;
    const int64_t nrows = p->B * p->H * p->TQ;
    (void)thread, (void)scratch;
    for (int64_t row = task * ROWS_PER_TASK; row < nrows && row < (task + 1) * ROWS_PER_TASK;
         row++) {
        const int64_t b = row / (p->H * p->TQ), h = row / p->TQ % p->H, t = row % p->TQ;
        c->Dall[row] = dot_f32(bp->dout + b * bp->dout_s.b + t * bp->dout_s.t + h * bp->dout_s.h,
                               p->o + b * p->o_s.b + t * p->o_s.t + h * p->o_s.h, p->D);
    }
}

/* Task (batch, KV head, segment s): key blocks s, s + nseg, ... in order. */
static void key_task(void *vctx, int64_t task, int thread, void *scratch) {
    const abctx *c = vctx;
    const dn_attn_bwd_params *bp = c->bp;
    const dn_attn_params *p = &bp->fwd;
    const int64_t G = p->H / p->HKV, D = p->D, Dp = ROUND_UP(D, DN_VW), nseg = c->pl.nseg;
    const int64_t s = task % nseg, bh = task / nseg, b = bh / p->HKV, kh = bh % p->HKV;
    (void)thread;
    abws w;
    const size_t lay = abws_layout(p, &w, scratch);
    float *dQ = nseg == 1 ? (float *)scratch + lay : c->accs + (size_t)task * c->pl.acc;
    memset(dQ, 0, sizeof(float) * (size_t)(p->TQ * G * Dp));
    for (int64_t kb = s; kb < c->pl.nkb; kb += nseg)
        key_block(bp, &w, c->Dall, dQ, b, kh, kb * BC);
    if (nseg == 1)
        for (int64_t t = 0; t < p->TQ; t++)
            for (int64_t g = 0; g < G; g++) {
                const int64_t h = kh * G + g;
                float *out = bp->dq + b * bp->dq_s.b + t * bp->dq_s.t + h * bp->dq_s.h;
                for (int64_t d = 0; d < D; d++)
                    out[d] = dQ[(t * G + g) * Dp + d] * p->scale;
            }
}

/* nseg > 1: dq of rows (b, t, h) = scale * the segments' accumulators summed in segment order */
static void dq_rows(void *vctx, int64_t task, int thread, void *scratch) {
    const abctx *c = vctx;
    const dn_attn_bwd_params *bp = c->bp;
    const dn_attn_params *p = &bp->fwd;
    const int64_t G = p->H / p->HKV, D = p->D, Dp = ROUND_UP(D, DN_VW), nseg = c->pl.nseg;
    const int64_t nrows = p->B * p->TQ * p->H;
    (void)thread, (void)scratch;
    for (int64_t row = task * ROWS_PER_TASK; row < nrows && row < (task + 1) * ROWS_PER_TASK;
         row++) {
        const int64_t b = row / (p->TQ * p->H), t = row / p->H % p->TQ, h = row % p->H;
        const int64_t kh = h / G, g = h % G;
        const float *acc =
            c->accs + (size_t)((b * p->HKV + kh) * nseg) * c->pl.acc + (t * G + g) * Dp;
        float *out = bp->dq + b * bp->dq_s.b + t * bp->dq_s.t + h * bp->dq_s.h;
        for (int64_t d = 0; d < D; d++) {
            float sum = 0;
            for (int64_t s = 0; s < nseg; s++)
                sum += acc[(size_t)s * c->pl.acc + d];
            out[d] = sum * p->scale;
        }
    }
}

void DN_ISA_FN(dn_cpu_attn_backward)(const dn_attn_bwd_params *bp, int nthreads, void *ws) {
    const dn_attn_params *p = &bp->fwd;
    abctx c;
    c.bp = bp;
    c.pl = make_plan(p, nthreads);
    c.Dall =
        (float *)((char *)ws + dn_parallel_ws_bytes(nthreads, sizeof(float) * c.pl.per_thread));
    c.accs = c.Dall + ROUND_UP((size_t)(p->B * p->H * p->TQ), 16);
    const int64_t nrows = p->B * p->H * p->TQ, nrt = (nrows + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
    dn_parallel_tasks(nthreads, nrt, DN_SCHED_STATIC, rows_D, &c, NULL, 0);
    dn_parallel_tasks(nthreads, p->B * p->HKV * c.pl.nseg, DN_SCHED_DYNAMIC, key_task, &c, ws,
                      sizeof(float) * c.pl.per_thread);
    if (c.pl.nseg > 1) dn_parallel_tasks(nthreads, nrt, DN_SCHED_STATIC, dq_rows, &c, NULL, 0);
}
