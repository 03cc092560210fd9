/*
 * cpu/la.c - fast CPU forward of the linear-attention family (linear attention, GLA, DeltaNet,
 * Gated DeltaNet): a fused token-by-token recurrence and the chunkwise-parallel form.
 *
 * Compiled once per SIMD level (see simd.h). Work is split into tasks of (sequence, value head,
 * block of value columns): the recurrence is independent across columns of the state (column j
 * of S only ever meets v_j, u_j and o_j), so a head can be shared by several threads when there
 * are fewer (sequence, head) pairs than threads. Within a task the state lives in a padded
 * K x vbp tile (or directly in final_state for the recurrence).
 */
#include "../internal.h"
#include "gemm.h"

#include <math.h>
#include <string.h>
#include <time.h>

#define ROUND_UP(x, m) (((x) + (m)-1) / (m) * (m))

/* ---------------------------------------------------------------------------------------------
 * Task split
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    int64_t nvb; /* value-column blocks per head */
    int64_t
        vbw; /* columns per block (multiple of DN_VW, except that the last block may be short) */
    int64_t vbp; /* padded width of one block's tile */
} split;

static split make_split(const dn_la_params *p, int nthreads) {
    split s;
    int64_t pairs = dn_la_nseq(p) * p->HV;
    int64_t want = pairs >= 2 * nthreads ? 1 : (2 * nthreads + pairs - 1) / pairs;
    int64_t maxb = p->V / (2 * DN_VW); /* keep blocks at least two vectors wide */
    if (want > maxb) want = maxb;
    if (want < 1) want = 1;
    s.vbw = ROUND_UP((p->V + want - 1) / want, DN_VW);
    s.nvb = (p->V + s.vbw - 1) / s.vbw;
    s.vbp = s.vbw;
    return s;
}

static inline void prefetch_row(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i += 16)
        __builtin_prefetch(x + i);
}

/* q (times scale) and k of one token, L2-normalised if asked. */
static void load_qk(float *qd, float *kd, const float *q, const float *k, int64_t K, float scale,
                    int l2norm) {
    if (l2norm) {
        float sq = dot_f32(q, q, K), sk = dot_f32(k, k, K);
        float rq = scale / sqrtf(sq + 1e-6f), rk = 1.0f / sqrtf(sk + 1e-6f);
        for (int64_t i = 0; i < K; i++) {
            qd[i] = q[i] * rq;
            kd[i] = k[i] * rk;
        }
    } else {
        for (int64_t i = 0; i < K; i++) {
            qd[i] = q[i] * scale;
            kd[i] = k[i];
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Recurrent form. Per token and per block of state columns, two passes over S:
 *   pass 1: sk = S^T k and sq = S^T q (one read of S)
 *   then    u = beta (v - e sk) (or v), o = e sq + (k.q) u   [since S' = e S + k u^T]
 *   pass 2: S = e S + k u^T
 * The column block is small enough (K x NV vectors) to stay in L1 between the passes.
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    float e, beta, kq;
    int gate, delta;
} tok;

#define REC_BLOCK(NAME, NV)                                                                        \
    static inline void NAME(float *S, int64_t ld, int64_t K, const float *q, const float *k,       \
                            const float *v, float *o, tok tk) {                                    \
        vf ak[NV], aq[NV], u[NV];                                                                  \
        for (int r = 0; r < NV; r++)                                                               \
            ak[r] = aq[r] = vzero();                                                               \
        if (tk.delta) {                                                                            \
            for (int64_t i = 0; i < K; i++) {                                                      \
                vf ki = vset1(k[i]), qi = vset1(q[i]);                                             \
                for (int r = 0; r < NV; r++) {                                                     \
                    vf s = vload(S + i * ld + r * DN_VW);                                          \
                    ak[r] += ki * s;                                                               \
                    aq[r] += qi * s;                                                               \
                }                                                                                  \
            }                                                                                      \
        } else {                                                                                   \
            for (int64_t i = 0; i < K; i++) {                                                      \
                vf qi = vset1(q[i]);                                                               \
                for (int r = 0; r < NV; r++)                                                       \
                    aq[r] += qi * vload(S + i * ld + r * DN_VW);                                   \
            }                                                                                      \
        }                                                                                          \
        vf e = vset1(tk.e), kq = vset1(tk.kq), beta = vset1(tk.beta);                              \
        for (int r = 0; r < NV; r++) {                                                             \
            vf vv = vload(v + r * DN_VW);                                                          \
            u[r] = tk.delta ? beta * (vv - e * ak[r]) : vv;                                        \
            vstore(o + r * DN_VW, e * aq[r] + kq * u[r]);                                          \
        }                                                                                          \
        if (tk.gate) {                                                                             \
            for (int64_t i = 0; i < K; i++) {                                                      \
                vf ki = vset1(k[i]);                                                               \
                for (int r = 0; r < NV; r++) {                                                     \
                    float *sp = S + i * ld + r * DN_VW;                                            \
                    vstore(sp, e *vload(sp) + ki * u[r]);                                          \
                }                                                                                  \
            }                                                                                      \
        } else {                                                                                   \
            for (int64_t i = 0; i < K; i++) {                                                      \
                vf ki = vset1(k[i]);                                                               \
                for (int r = 0; r < NV; r++) {                                                     \
                    float *sp = S + i * ld + r * DN_VW;                                            \
                    vstore(sp, vload(sp) + ki * u[r]);                                             \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

#define REC_NV 8 /* 128 columns with AVX-512: a whole K=V=128 head in one pass */
REC_BLOCK(rec_block_wide, REC_NV)
REC_BLOCK(rec_block_half, REC_NV / 2)
REC_BLOCK(rec_block_vec, 1)

/* Columns past the last full vector. */
static void rec_block_scalar(float *S, int64_t ld, int64_t K, int64_t w, const float *q,
                             const float *k, const float *v, float *o, tok tk) {
    for (int64_t j = 0; j < w; j++) {
        float ak = 0, aq = 0;
        for (int64_t i = 0; i < K; i++) {
            ak += k[i] * S[i * ld + j];
            aq += q[i] * S[i * ld + j];
        }
        float u = tk.delta ? tk.beta * (v[j] - tk.e * ak) : v[j];
        o[j] = tk.e * aq + tk.kq * u;
        for (int64_t i = 0; i < K; i++)
            S[i * ld + j] = tk.e * S[i * ld + j] + k[i] * u;
    }
}

static void rec_task(const dn_la_params *p, int64_t n, int64_t hv, int64_t v0, int64_t vb,
                     float *ws) {
    const int64_t K = p->K, V = p->V, h = hv / (p->HV / p->H);
    int64_t b, t0, t1;
    dn_la_seq(p, n, &b, &t0, &t1);
    const int64_t soff = (n * p->HV + hv) * K * V + v0;
    float *qd = ws, *kd = ws + ROUND_UP(K, 16), *tile = kd + ROUND_UP(K, 16);

    /* Work in final_state directly when there is one, else in a scratch tile. */
    float *S;
    int64_t ld;
    if (p->final_state) {
        S = p->final_state + soff;
        ld = V;
    } else {
        S = tile;
        ld = vb;
    }
    if (!p->initial_state || (const float *)S != p->initial_state + soff)
        for (int64_t i = 0; i < K; i++) {
            if (p->initial_state)
                memcpy(S + i * ld, p->initial_state + soff + i * V, sizeof(float) * vb);
            else
                memset(S + i * ld, 0, sizeof(float) * vb);
        }

    tok tk = {1.0f, 1.0f, 0.0f, dn_op_has_gate(p->op), dn_op_has_delta(p->op)};
    for (int64_t t = t0; t < t1; t++) {
        load_qk(qd, kd, p->q + b * p->q_s.b + t * p->q_s.t + h * p->q_s.h,
                p->k + b * p->k_s.b + t * p->k_s.t + h * p->k_s.h, K, p->scale, p->qk_l2norm);
        const float *v = p->v + b * p->v_s.b + t * p->v_s.t + hv * p->v_s.h + v0;
        float *o = p->o + b * p->o_s.b + t * p->o_s.t + hv * p->o_s.h + v0;
        if (tk.gate) tk.e = expf(p->g[b * p->g_s.b + t * p->g_s.t + hv * p->g_s.h]);
        if (tk.delta) tk.beta = p->beta[b * p->beta_s.b + t * p->beta_s.t + hv * p->beta_s.h];
        tk.kq = dot_f32(kd, qd, K);

        int64_t j = 0;
        for (; j + REC_NV * DN_VW <= vb; j += REC_NV * DN_VW)
            rec_block_wide(S + j, ld, K, qd, kd, v + j, o + j, tk);
        for (; j + REC_NV / 2 * DN_VW <= vb; j += REC_NV / 2 * DN_VW)
            rec_block_half(S + j, ld, K, qd, kd, v + j, o + j, tk);
        for (; j + DN_VW <= vb; j += DN_VW)
            rec_block_vec(S + j, ld, K, qd, kd, v + j, o + j, tk);
        if (j < vb) rec_block_scalar(S + j, ld, K, vb - j, qd, kd, v + j, o + j, tk);
    }
    /* T = 0 with no final state: nothing to return. */
}

/* ---------------------------------------------------------------------------------------------
 * Chunkwise form (docs/OPS.md), per chunk of L <= C tokens, with the entering state S0 held in
 * a K x vbp tile:
 *   X  = [Q; K] S0                       (one product, 2L x K x vb)
 *   P  = lower parts of Q K^T (masked by Gam) and of K K^T (A = b Gam K K^T, strictly lower),
 *        as dot products: only the triangle is needed and no transpose of K is made
 *   U  = (I + A)^{-1} diag(b) (V - E K S0)   by forward substitution (delta ops), else U = V
 *   O  = E Q S0 + tril(Q K^T * Gam) U
 *   S1 = e^{gamma_L} S0 + K^T diag(e^{gamma_L - gamma}) U   (the decay folded into the product)
 * q is pre-scaled, so O needs no further scale. P and A depend only on keys and gates; with
 * several column blocks per head they are recomputed per block, cheap next to the three K x vb
 * products.
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    float *S;    /* K x vbp    state tile */
    float *QK;   /* 2C x K     rows 0..L-1: scaled q, rows L..2L-1: k */
    float *P;    /* 2C x Cp    [Q; K] K^T, then masked */
    float *X;    /* 2C x vbp   [Q; K] S0, then O in rows 0..L-1 */
    float *U;    /* C x vbp */
    float *eg;   /* C          e^{gamma_i} */
    float *bt;   /* C          beta */
    float *row;  /* Cp         one row of Gam */
    double *gam; /* C          gamma, cumulative log decay within the chunk */
} chunk_ws;

static size_t chunk_floats(int64_t K, int64_t C, int64_t vbp, chunk_ws *w, float *base) {
    const int64_t Cp = ROUND_UP(C, DN_VW);
    int64_t sizes[] = {K * vbp, 2 * C * K, 2 * C * Cp, 2 * C * vbp, C * vbp,
                       C,       C,         Cp,         2 * C /* doubles */};
    float **slots[] = {&w->S, &w->QK, &w->P, &w->X, &w->U, &w->eg, &w->bt, &w->row, NULL};
    size_t off = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        if (base) {
            if (slots[i])
                *slots[i] = base + off;
            else
                w->gam = (double *)(void *)(base + off);
        }
        off += ROUND_UP((size_t)sizes[i], 16);
    }
    return off;
}

/* U = (I + A)^{-1} diag(b) (V - E KS) by forward substitution, NV column vectors at a time so
 * that NV independent FMA chains hide the latency. U holds V on entry; KS is K S0. */
#define SOLVE_ROWS(NAME, NV)                                                                       \
    static inline void NAME(float *U, const float *KS, int64_t ld, const float *A, int64_t lda,    \
                            const float *eg, const float *bt, int64_t L) {                         \
        for (int64_t i = 0; i < L; i++) {                                                          \
            vf acc[NV], e = vset1(eg[i]), b = vset1(bt[i]);                                        \
            for (int r = 0; r < NV; r++)                                                           \
                acc[r] = b * (vload(U + i * ld + r * DN_VW) - e * vload(KS + i * ld + r * DN_VW)); \
            const float *a = A + i * lda;                                                          \
            for (int64_t l = 0; l < i; l++) {                                                      \
                vf al = vset1(a[l]);                                                               \
                for (int r = 0; r < NV; r++)                                                       \
                    acc[r] -= al * vload(U + l * ld + r * DN_VW);                                  \
            }                                                                                      \
            for (int r = 0; r < NV; r++)                                                           \
                vstore(U + i * ld + r * DN_VW, acc[r]);                                            \
        }                                                                                          \
    }
#define SOLVE_NV (DN_NR * 2)
SOLVE_ROWS(solve_rows_wide, SOLVE_NV)
SOLVE_ROWS(solve_rows_one, 1)

static void chunk_task(const dn_la_params *p, int64_t n, int64_t hv, int64_t v0, int64_t vb,
                       int64_t vbp, float *ws) {
    const int64_t K = p->K, V = p->V, h = hv / (p->HV / p->H), C = p->chunk_size;
    const int64_t Cp = ROUND_UP(C, DN_VW);
    const int gate = dn_op_has_gate(p->op), delta = dn_op_has_delta(p->op);
    int64_t b, t0, t1;
    dn_la_seq(p, n, &b, &t0, &t1);
    const int64_t soff = (n * p->HV + hv) * K * V + v0;
    chunk_ws w;
    chunk_floats(K, C, vbp, &w, ws);

    for (int64_t i = 0; i < K; i++) {
        float *row = w.S + i * vbp;
        if (p->initial_state)
            memcpy(row, p->initial_state + soff + i * V, sizeof(float) * vb);
        else
            memset(row, 0, sizeof(float) * vb);
        memset(row + vb, 0, sizeof(float) * (vbp - vb));
    }

    for (int64_t tc = t0; tc < t1; tc += C) {
        const int64_t L = t1 - tc < C ? t1 - tc : C;
        float *Qc = w.QK, *Kc = w.QK + L * K;

        /* Load q (scaled), k, gates; ask for the next chunk's rows meanwhile (rows of one head
         * are H*K apart, too far apart for the hardware prefetcher to follow). */
        double gacc = 0;
        for (int64_t l = 0; l < L; l++) {
            const int64_t t = tc + l;
            if (t + C < t1) {
                prefetch_row(p->q + b * p->q_s.b + (t + C) * p->q_s.t + h * p->q_s.h, K);
                prefetch_row(p->k + b * p->k_s.b + (t + C) * p->k_s.t + h * p->k_s.h, K);
                prefetch_row(p->v + b * p->v_s.b + (t + C) * p->v_s.t + hv * p->v_s.h + v0, vb);
            }
            load_qk(Qc + l * K, Kc + l * K, p->q + b * p->q_s.b + t * p->q_s.t + h * p->q_s.h,
                    p->k + b * p->k_s.b + t * p->k_s.t + h * p->k_s.h, K, p->scale, p->qk_l2norm);
            if (gate) gacc += dn_log_decay(p->g[b * p->g_s.b + t * p->g_s.t + hv * p->g_s.h]);
            w.gam[l] = gacc;
            w.eg[l] = gate ? (float)exp(gacc) : 1.0f;
            w.bt[l] = delta ? p->beta[b * p->beta_s.b + t * p->beta_s.t + hv * p->beta_s.h] : 1.0f;
        }
        const int64_t Lp = ROUND_UP(L, DN_VW);

        /* X = [Q; K] S0. P: rows 0..L-1 hold tril(Q K^T * Gam), rows L..2L-1 hold
         * A = strictly-lower(diag(b) Gam K K^T), zeros above. */
        const int64_t M = delta ? 2 * L : L;
        gemm_f32(M, vbp, K, w.QK, K, 1, w.S, vbp, w.X, vbp, 0, 0);
        for (int64_t i = 0; i < L; i++) {
            float *pq = w.P + i * Cp, *pa = w.P + (L + i) * Cp;
            if (gate) {
                /* Gam[i][j] = exp(gamma_i - gamma_j) <= 1: differences taken in double, so that
                 * long cumulative sums lose nothing, then exponentiated in vectors. */
                for (int64_t j = 0; j <= i; j++)
                    w.row[j] = (float)(w.gam[j] - w.gam[i]);
                for (int64_t j = 0; j <= i; j += DN_VW)
                    vstore(w.row + j, vexp_neg(-vload(w.row + j)));
            }
            for (int64_t j = 0; j <= i; j++) {
                float gm = gate ? w.row[j] : 1.0f;
                pq[j] = gm * dot_f32(Qc + i * K, Kc + j * K, K);
                if (delta) pa[j] = j < i ? w.bt[i] * gm * dot_f32(Kc + i * K, Kc + j * K, K) : 0.0f;
            }
            for (int64_t j = i + 1; j < Lp; j++) {
                pq[j] = 0;
                if (delta) pa[j] = 0;
            }
        }

        /* U: load V rows (padded), then the delta correction and the triangular solve. */
        for (int64_t l = 0; l < L; l++) {
            const int64_t t = tc + l;
            float *ur = w.U + l * vbp;
            memcpy(ur, p->v + b * p->v_s.b + t * p->v_s.t + hv * p->v_s.h + v0, sizeof(float) * vb);
            memset(ur + vb, 0, sizeof(float) * (vbp - vb));
        }
        if (delta) {
            int64_t j = 0;
            for (; j + SOLVE_NV * DN_VW <= vbp; j += SOLVE_NV * DN_VW)
                solve_rows_wide(w.U + j, w.X + L * vbp + j, vbp, w.P + L * Cp, Cp, w.eg, w.bt, L);
            for (; j < vbp; j += DN_VW)
                solve_rows_one(w.U + j, w.X + L * vbp + j, vbp, w.P + L * Cp, Cp, w.eg, w.bt, L);
        }

        /* O = E (Q S0) + tril(QK^T * Gam) U, written to o. */
        if (gate)
            for (int64_t i = 0; i < L; i++) {
                vf e = vset1(w.eg[i]);
                for (int64_t j = 0; j < vbp; j += DN_VW)
                    vstore(w.X + i * vbp + j, e * vload(w.X + i * vbp + j));
            }
        gemm_f32(L, vbp, L, w.P, Cp, 1, w.U, vbp, w.X, vbp, 1, DN_TRI_A);
        for (int64_t l = 0; l < L; l++) {
            const int64_t t = tc + l;
            memcpy(p->o + b * p->o_s.b + t * p->o_s.t + hv * p->o_s.h + v0, w.X + l * vbp,
                   sizeof(float) * vb);
        }

        /* S1 = e^{gamma_L} S0 + K^T (diag(e^{gamma_L - gamma}) U); U is not needed after. */
        if (gate)
            for (int64_t l = 0; l < L; l++) {
                vf d = vset1((float)exp(w.gam[L - 1] - w.gam[l]));
                for (int64_t j = 0; j < vbp; j += DN_VW)
                    vstore(w.U + l * vbp + j, d * vload(w.U + l * vbp + j));
            }
        gemm_f32(K, vbp, L, Kc, 1, K, w.U, vbp, w.S, vbp, gate ? w.eg[L - 1] : 1.0f, 0);
    }

    if (p->final_state)
        for (int64_t i = 0; i < K; i++)
            memcpy(p->final_state + soff + i * V, w.S + i * vbp, sizeof(float) * vb);
}

/* ---------------------------------------------------------------------------------------------
 * Entry points
 * ------------------------------------------------------------------------------------------- */
static size_t per_thread_floats(const dn_la_params *p, dn_impl impl, split s) {
    chunk_ws layout_only;
    if (impl == DN_IMPL_CHUNK) return chunk_floats(p->K, p->chunk_size, s.vbp, &layout_only, NULL);
    return 2 * ROUND_UP((size_t)p->K, 16) + (size_t)(p->K * s.vbp);
}

size_t DN_ISA_FN(dn_cpu_la_workspace)(const dn_la_params *p, dn_impl impl, int nthreads) {
    split s = make_split(p, nthreads);
    return dn_parallel_ws_bytes(nthreads, sizeof(float) * per_thread_floats(p, impl, s));
}

typedef struct {
    const dn_la_params *p;
    dn_impl impl;
    split s;
} fwd_ctx;

static void run_task(void *vctx, int64_t task, int thread, void *ws) {
    const fwd_ctx *c = vctx;
    const dn_la_params *p = c->p;
    const split s = c->s;
    (void)thread;
    const int64_t vbi = task % s.nvb, pair = task / s.nvb;
    const int64_t hv = pair % p->HV, n = pair / p->HV;
    const int64_t v0 = vbi * s.vbw;
    const int64_t vb = p->V - v0 < s.vbw ? p->V - v0 : s.vbw;
    if (c->impl == DN_IMPL_CHUNK)
        chunk_task(p, n, hv, v0, vb, s.vbp, ws);
    else
        rec_task(p, n, hv, v0, vb, ws);
}

void DN_ISA_FN(dn_cpu_la_forward)(const dn_la_params *p, dn_impl impl, int nthreads, void *ws) {
    fwd_ctx c = {p, impl, make_split(p, nthreads)};
    const size_t per = per_thread_floats(p, impl, c.s);
    const int64_t ntask = dn_la_nseq(p) * p->HV * c.s.nvb;
    /* Equal-length sequences: a static split, so that a head's state stays in the cache of the
     * core that updated it on the previous call (decode calls this once per token; a dynamic
     * schedule moved states between cores and cost 2x). Ragged varlen batches: dynamic. */
    const dn_schedule sched = p->cu_seqlens != NULL ? DN_SCHED_DYNAMIC : DN_SCHED_STATIC;
    dn_parallel_tasks(nthreads, ntask, sched, run_task, &c, ws, sizeof(float) * per);
}
