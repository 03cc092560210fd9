/*
 * cpu/mamba.c - fast CPU Mamba-1 selective scan. Compiled once per SIMD level (see simd.h).
 *
 * A task is (batch, block of channels); tokens run in order and, for each token, the block's
 * channels one after another, so the state updates of different channels (independent) fill the
 * gap while one channel's update is in flight. Each channel's state [N] is a vector loop over n:
 * decay exp(dt A) with the vector exponential, the input term and the readout in FMAs.
 */
#include "../internal.h"
#include "simd.h"

#include <math.h>
#include <string.h>

#define CB 16 /* channels per task */

static inline float softplus1(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

static void mamba_block(const dn_mamba_params *p, int64_t b, int64_t d0, int64_t nd, float *h) {
    const int64_t N = p->N, per_group = p->D / p->G, Nv = N / DN_VW * DN_VW;
    for (int64_t i = 0; i < nd; i++) {
        const int64_t soff = (b * p->D + d0 + i) * N;
        if (p->initial_state)
            memcpy(h + i * N, p->initial_state + soff, sizeof(float) * (size_t)N);
        else
            memset(h + i * N, 0, sizeof(float) * (size_t)N);
    }
    float dts[CB], gate[CB];
    for (int64_t t = 0; t < p->T; t++) {
        const float *xr = p->x + b * p->x_s.b + t * p->x_s.t;
        const float *dtr = p->dt + b * p->dt_s.b + t * p->dt_s.t;
        float *yr = p->y + b * p->y_s.b + t * p->y_s.t;
        /* the block's dt' and output gates in vectors: the per-channel loop below is then
         * only the state update */
        int64_t i = 0;
        for (; i + DN_VW <= nd; i += DN_VW) {
            vf dv = vload(dtr + d0 + i);
            if (p->dt_bias) dv += vload(p->dt_bias + d0 + i);
            vstore(dts + i, p->dt_softplus ? vsoftplus(dv) : dv);
            if (p->z) {
                const vf z = vload(p->z + b * p->z_s.b + t * p->z_s.t + d0 + i);
                vstore(gate + i, z / (vset1(1.0f) + vexp(-z)));
            }
        }
        for (; i < nd; i++) {
            const float dv = dtr[d0 + i] + (p->dt_bias ? p->dt_bias[d0 + i] : 0.0f);
            dts[i] = p->dt_softplus ? softplus1(dv) : dv;
            if (p->z) {
                const float z = p->z[b * p->z_s.b + t * p->z_s.t + d0 + i];
                gate[i] = z / (1.0f + expf(-z));
            }
        }
        for (i = 0; i < nd; i++) {
            const int64_t d = d0 + i, g = d / per_group;
            const float *Bm = p->Bm + b * p->Bm_s.b + t * p->Bm_s.t + g * p->Bm_s.h;
            const float *Cm = p->Cm + b * p->Cm_s.b + t * p->Cm_s.t + g * p->Cm_s.h;
            const float *A = p->A + d * N;
            float *hd = h + i * N;
            const float x = xr[d], dt = dts[i];
            const vf dtv = vset1(dt), dtx = vset1(dt * x);
            vf acc = vzero();
            int64_t n = 0;
            for (; n < Nv; n += DN_VW) {
                vf hv = vexp(dtv * vload(A + n)) * vload(hd + n) + dtx * vload(Bm + n);
                vstore(hd + n, hv);
                acc += vload(Cm + n) * hv;
            }
            float y = vhsum(acc);
            for (; n < N; n++) {
                hd[n] = expf(dt * A[n]) * hd[n] + dt * x * Bm[n];
                y += Cm[n] * hd[n];
            }
            if (p->Dskip) y += p->Dskip[d] * x;
            if (p->z) y *= gate[i];
            yr[d] = y;
        }
    }
    if (p->final_state)
        for (int64_t i = 0; i < nd; i++)
            memcpy(p->final_state + (b * p->D + d0 + i) * N, h + i * N, sizeof(float) * (size_t)N);
}

size_t DN_ISA_FN(dn_cpu_mamba_workspace)(const dn_mamba_params *p, int nthreads) {
    return dn_parallel_ws_bytes(nthreads, sizeof(float) * (size_t)(CB * p->N)); /* the states */
}

static void fwd_run(void *ctx, int64_t task, int thread, void *h) {
    const dn_mamba_params *p = ctx;
    const int64_t nblk = (p->D + CB - 1) / CB, b = task / nblk, d0 = task % nblk * CB;
    (void)thread;
    mamba_block(p, b, d0, p->D - d0 < CB ? p->D - d0 : CB, h);
}

void DN_ISA_FN(dn_cpu_mamba_forward)(const dn_mamba_params *p, int nthreads, void *ws) {
    const int64_t nblk = (p->D + CB - 1) / CB;
    dn_parallel_tasks(nthreads, p->B * nblk, DN_SCHED_STATIC, fwd_run, (void *)p, ws,
                      sizeof(float) * (size_t)(CB * p->N));
}

/* Backward. A task owns a block of channels in every batch row (their dA, dDskip, ddt_bias sums
 * have one writer); dBm and dCm, sums over the channels of a group, go to per-thread
 * accumulators added up at the end. States: checkpoints every MCK tokens, recomputed per chunk. */
#define MCK 64

typedef struct {
    float *ck, *hs, *dh, *dA, *dBacc, *dCacc;
} mbws;

static void mamba_bwd_block(const dn_mamba_bwd_params *bp, int64_t b, int64_t d0, int64_t nd,
                            mbws *w) {
    const dn_mamba_params *p = &bp->fwd;
    const int64_t N = p->N, D = p->D, T = p->T, per_group = D / p->G, nch = (T + MCK - 1) / MCK;
    const int64_t Nv = N / DN_VW * DN_VW;
    float *h = w->ck; /* checkpoint c at ck + c * nd * N */
    for (int64_t i = 0; i < nd; i++) {
        const int64_t soff = (b * D + d0 + i) * N;
        if (p->initial_state)
            memcpy(h + i * N, p->initial_state + soff, sizeof(float) * (size_t)N);
        else
            memset(h + i * N, 0, sizeof(float) * (size_t)N);
    }
#define DT_OF(t, d)                                                                                \
    ({                                                                                             \
        float raw_ =                                                                               \
            p->dt[b * p->dt_s.b + (t)*p->dt_s.t + (d)] + (p->dt_bias ? p->dt_bias[d] : 0.0f);      \
        p->dt_softplus ? softplus1(raw_) : raw_;                                                   \
    })
    /* forward: checkpoints */
    for (int64_t c = 0; c < nch; c++) {
        float *cur = w->ck + c * nd * N, *nxt = cur + nd * N;
        memcpy(nxt, cur, sizeof(float) * (size_t)(nd * N));
        for (int64_t t = c * MCK; t < T && t < (c + 1) * MCK; t++)
            for (int64_t i = 0; i < nd; i++) {
                const int64_t d = d0 + i, g = d / per_group;
                const float *Bm = p->Bm + b * p->Bm_s.b + t * p->Bm_s.t + g * p->Bm_s.h,
                            *A = p->A + d * N;
                const float dt = DT_OF(t, d), dtx = dt * p->x[b * p->x_s.b + t * p->x_s.t + d];
                float *hd = nxt + i * N;
                int64_t n = 0;
                for (; n < Nv; n += DN_VW)
                    vstore(hd + n, vexp(vset1(dt) * vload(A + n)) * vload(hd + n) +
                                       vset1(dtx) * vload(Bm + n));
                for (; n < N; n++)
                    hd[n] = expf(dt * A[n]) * hd[n] + dtx * Bm[n];
            }
    }
    /* backward */
    for (int64_t i = 0; i < nd; i++)
        for (int64_t n = 0; n < N; n++) {
            w->dh[i * N + n] = bp->dfinal_state ? bp->dfinal_state[(b * D + d0 + i) * N + n] : 0.0f;
        }
    for (int64_t c = nch - 1; c >= 0; c--) {
        const int64_t t0 = c * MCK, L = T - t0 < MCK ? T - t0 : MCK;
        /* states inside the chunk: hs[l] = state after token t0 + l - 1 (hs[0] = checkpoint) */
        memcpy(w->hs, w->ck + c * nd * N, sizeof(float) * (size_t)(nd * N));
        for (int64_t l = 0; l < L; l++) {
            const int64_t t = t0 + l;
            memcpy(w->hs + (l + 1) * nd * N, w->hs + l * nd * N, sizeof(float) * (size_t)(nd * N));
            for (int64_t i = 0; i < nd; i++) {
                const int64_t d = d0 + i, g = d / per_group;
                const float *Bm = p->Bm + b * p->Bm_s.b + t * p->Bm_s.t + g * p->Bm_s.h,
                            *A = p->A + d * N;
                const float dt = DT_OF(t, d), dtx = dt * p->x[b * p->x_s.b + t * p->x_s.t + d];
                float *hd = w->hs + (l + 1) * nd * N + i * N;
                int64_t n = 0;
                for (; n < Nv; n += DN_VW)
                    vstore(hd + n, vexp(vset1(dt) * vload(A + n)) * vload(hd + n) +
                                       vset1(dtx) * vload(Bm + n));
                for (; n < N; n++)
                    hd[n] = expf(dt * A[n]) * hd[n] + dtx * Bm[n];
            }
        }
        for (int64_t l = L - 1; l >= 0; l--) {
            const int64_t t = t0 + l;
            for (int64_t i = 0; i < nd; i++) {
                const int64_t d = d0 + i, g = d / per_group;
                const float *Bm = p->Bm + b * p->Bm_s.b + t * p->Bm_s.t + g * p->Bm_s.h;
                const float *Cm = p->Cm + b * p->Cm_s.b + t * p->Cm_s.t + g * p->Cm_s.h,
                            *A = p->A + d * N;
                float *dBa = w->dBacc + ((b * T + t) * p->G + g) * N,
                      *dCa = w->dCacc + ((b * T + t) * p->G + g) * N;
                const float *ht = w->hs + (l + 1) * nd * N + i * N,
                            *hp = w->hs + l * nd * N + i * N;
                float *dh = w->dh + i * N, *dA = w->dA + i * N;
                const float raw =
                    p->dt[b * p->dt_s.b + t * p->dt_s.t + d] + (p->dt_bias ? p->dt_bias[d] : 0.0f);
                const float dt = p->dt_softplus ? softplus1(raw) : raw;
                const float x = p->x[b * p->x_s.b + t * p->x_s.t + d];
                float dy = bp->dy[b * bp->dy_s.b + t * bp->dy_s.t + d];
                if (p->z) {
                    float y = dot_f32(Cm, ht, N) + (p->Dskip ? p->Dskip[d] * x : 0.0f);
                    const float z = p->z[b * p->z_s.b + t * p->z_s.t + d],
                                sg = 1.0f / (1.0f + expf(-z));
                    bp->dz[b * bp->dz_s.b + t * bp->dz_s.t + d] =
                        dy * y * sg * (1.0f + z * (1.0f - sg));
                    dy *= z * sg;
                }
                float dx = p->Dskip ? dy * p->Dskip[d] : 0.0f;
                if (bp->dDskip) w->dA[nd * N + i] += dy * x; /* dDskip column after dA */
                vf vdt = vset1(dt), vdy = vset1(dy), vx = vset1(x), vdtx = vset1(dt * x);
                vf acc_dt = vzero(), acc_dx = vzero();
                int64_t n = 0;
                for (; n < Nv; n += DN_VW) {
                    vf cv = vload(Cm + n), bm = vload(Bm + n), a = vload(A + n),
                       hpv = vload(hp + n);
                    vstore(dCa + n, vload(dCa + n) + vdy * vload(ht + n));
                    vf dhv = vload(dh + n) + vdy * cv;
                    vf e = vexp(vdt * a);
                    acc_dt += dhv * (e * a * hpv + bm * vx);
                    vstore(dA + n, vload(dA + n) + dhv * e * vdt * hpv);
                    vstore(dBa + n, vload(dBa + n) + dhv * vdtx);
                    acc_dx += dhv * vdt * bm;
                    vstore(dh + n, dhv * e);
                }
                float ddt = vhsum(acc_dt);
                dx += vhsum(acc_dx);
                for (; n < N; n++) {
                    dCa[n] += dy * ht[n];
                    const float dhv = dh[n] + dy * Cm[n], e = expf(dt * A[n]);
                    ddt += dhv * (e * A[n] * hp[n] + Bm[n] * x);
                    dA[n] += dhv * e * dt * hp[n];
                    dBa[n] += dhv * dt * x;
                    dx += dhv * dt * Bm[n];
                    dh[n] = dhv * e;
                }
                if (p->dt_softplus) ddt *= 1.0f / (1.0f + expf(-raw));
                if (bp->ddt_bias) w->dA[nd * N + nd + i] += ddt;
                bp->dx[b * bp->dx_s.b + t * bp->dx_s.t + d] = dx;
                bp->ddt[b * bp->ddt_s.b + t * bp->ddt_s.t + d] = ddt;
            }
        }
    }
#undef DT_OF
    if (bp->dinitial_state)
        for (int64_t i = 0; i < nd; i++)
            memcpy(bp->dinitial_state + (b * D + d0 + i) * N, w->dh + i * N,
                   sizeof(float) * (size_t)N);
}

/* Workspace: per thread, the checkpoints, the states of a chunk, dh and the block's parameter sums;
 * then, shared, one dBm and one dCm accumulator [B,T,G,N] per thread. */
static size_t bwd_thread_floats(const dn_mamba_params *p) {
    const int64_t N = p->N, nch = (p->T + MCK - 1) / MCK;
    return (size_t)((nch + 1) * CB * N + (MCK + 1) * CB * N + CB * N + CB * N + 2 * CB);
}

static int bwd_sizes(const dn_mamba_params *p, int nthreads, size_t *per_thread, size_t *acc_floats,
                     size_t *total) {
    const int nt = dn_parallel_threads(nthreads, (p->D + CB - 1) / CB);
    int64_t nbc, acc;
    *per_thread = sizeof(float) * bwd_thread_floats(p);
    if (!DN_PROD(&nbc, p->B, p->T, p->G, p->N) ||
        !DN_PROD(&acc, 2, nbc, nt, (int64_t)sizeof(float)))
        return 0;
    *acc_floats = (size_t)(2 * nbc);
    const size_t threads = dn_parallel_ws_bytes(nthreads, *per_thread);
    if (threads == SIZE_MAX || (size_t)acc > SIZE_MAX - threads) return 0;
    *total = threads + (size_t)acc;
    return 1;
}

size_t DN_ISA_FN(dn_cpu_mamba_bwd_workspace)(const dn_mamba_params *p, int nthreads) {
    size_t per, accf, total;
    return bwd_sizes(p, nthreads, &per, &accf, &total) ? total : SIZE_MAX;
}

typedef struct {
    const dn_mamba_bwd_params *bp;
    float *acc; /* per thread: dBm then dCm sums, acc_floats each */
    size_t acc_floats;
    int nt;
} mbwd_ctx;

static void bwd_zero(void *vctx, int64_t th, int thread, void *scratch) {
    const mbwd_ctx *c = vctx;
    (void)thread, (void)scratch;
    memset(c->acc + c->acc_floats * (size_t)th, 0, sizeof(float) * c->acc_floats);
}

static void bwd_run(void *vctx, int64_t blk, int thread, void *scratch) {
    const mbwd_ctx *c = vctx;
    const dn_mamba_bwd_params *bp = c->bp;
    const dn_mamba_params *p = &bp->fwd;
    const int64_t N = p->N, nch = (p->T + MCK - 1) / MCK;
    const size_t nbc = c->acc_floats / 2;
    mbws w;
    w.ck = scratch;
    w.hs = w.ck + (nch + 1) * CB * N;
    w.dh = w.hs + (MCK + 1) * CB * N;
    w.dA = w.dh + CB * N; /* [nd*N | nd | nd]: dA, dDskip and ddt_bias partial sums */
    w.dBacc = c->acc + c->acc_floats * (size_t)thread, w.dCacc = w.dBacc + nbc;
    const int64_t d0 = blk * CB, nd = p->D - d0 < CB ? p->D - d0 : CB;
    memset(w.dA, 0, sizeof(float) * (size_t)(nd * N + 2 * CB));
    for (int64_t b = 0; b < p->B; b++)
        mamba_bwd_block(bp, b, d0, nd, &w);
    for (int64_t i = 0; i < nd; i++) {
        for (int64_t n = 0; n < N; n++)
            bp->dA[(d0 + i) * N + n] += w.dA[i * N + n];
        if (bp->dDskip) bp->dDskip[d0 + i] += w.dA[nd * N + i];
        if (bp->ddt_bias) bp->ddt_bias[d0 + i] += w.dA[nd * N + nd + i];
    }
}

/* dBm, dCm of one token (all groups): the threads' sums, in thread order */
static void bwd_sum(void *vctx, int64_t bt, int thread, void *scratch) {
    const mbwd_ctx *c = vctx;
    const dn_mamba_bwd_params *bp = c->bp;
    const dn_mamba_params *p = &bp->fwd;
    const int64_t N = p->N, b = bt / p->T, t = bt % p->T;
    const size_t nbc = c->acc_floats / 2;
    (void)thread, (void)scratch;
    for (int64_t g = 0; g < p->G; g++)
        for (int64_t n = 0; n < N; n++) {
            const size_t o = (size_t)((bt * p->G + g) * N + n);
            float sb = 0, sc = 0;
            for (int th = 0; th < c->nt; th++)
                sb += c->acc[c->acc_floats * (size_t)th + o],
                    sc += c->acc[c->acc_floats * (size_t)th + nbc + o];
            bp->dBm[b * bp->dBm_s.b + t * bp->dBm_s.t + g * bp->dBm_s.h + n] = sb;
            bp->dCm[b * bp->dCm_s.b + t * bp->dCm_s.t + g * bp->dCm_s.h + n] = sc;
        }
}

void DN_ISA_FN(dn_cpu_mamba_backward)(const dn_mamba_bwd_params *bp, int nthreads, void *ws) {
    const dn_mamba_params *p = &bp->fwd;
    const int64_t nblk = (p->D + CB - 1) / CB;
    size_t per, accf, total;
    DN_ASSERT(bwd_sizes(p, nthreads, &per, &accf, &total));
    /* a static schedule: each thread sums the same blocks into its accumulator on every call, so
     * the sums over threads below are reproducible at a given thread count */
    mbwd_ctx c = {bp, (float *)((char *)ws + dn_parallel_ws_bytes(nthreads, per)), accf,
                  dn_parallel_threads(nthreads, nblk)};
    dn_parallel_tasks(nthreads, c.nt, DN_SCHED_STATIC, bwd_zero, &c, NULL, 0);
    dn_parallel_tasks(nthreads, nblk, DN_SCHED_STATIC, bwd_run, &c, ws, per);
    dn_parallel_tasks(nthreads, p->B * p->T, DN_SCHED_STATIC, bwd_sum, &c, NULL, 0);
}

/* ---------------------------------------------------------------------------------------------
 * Mamba-2 runs as GLA (see ../mamba.c); these are its elementwise steps around the GLA call.
 * ------------------------------------------------------------------------------------------- */
#define M2_ROWS 64 /* (b, t, h) rows per task */

typedef struct {
    const dn_mamba2_params *p;
    float *g, *v, *dtp;
} m2_ctx;

/* below this many elements the loops are not worth a thread team */
static int m2_threads(const dn_mamba2_params *p, int nthreads) {
    return p->B * p->T * p->H * p->P > 65536 ? nthreads : 1;
}

static void m2_prepare_run(void *vctx, int64_t task, int thread, void *scratch) {
    const m2_ctx *c = vctx;
    const dn_mamba2_params *p = c->p;
    const int64_t T = p->T, H = p->H, P = p->P, rows = p->B * T * H;
    (void)thread, (void)scratch;
    for (int64_t row = task * M2_ROWS; row < rows && row < (task + 1) * M2_ROWS; row++) {
        const int64_t b = row / (T * H), t = row / H % T, h = row % H;
        float dt = p->dt[b * p->dt_s.b + t * p->dt_s.t + h * p->dt_s.h];
        if (p->dt_bias) dt += p->dt_bias[h];
        if (p->dt_softplus) dt = softplus1(dt);
        if (c->dtp) c->dtp[row] = dt;
        c->g[row] = dt * p->A[h];
        const float *x = p->x + b * p->x_s.b + t * p->x_s.t + h * p->x_s.h;
        for (int64_t k = 0; k < P; k++)
            c->v[row * P + k] = dt * x[k];
    }
}

void DN_ISA_FN(dn_cpu_mamba2_prepare)(const dn_mamba2_params *p, float *g, float *v, float *dtp,
                                      int nthreads) {
    m2_ctx c = {p, g, v, dtp};
    const int64_t rows = p->B * p->T * p->H;
    dn_parallel_tasks(m2_threads(p, nthreads), (rows + M2_ROWS - 1) / M2_ROWS, DN_SCHED_STATIC,
                      m2_prepare_run, &c, NULL, 0);
}

static void m2_finish_run(void *vctx, int64_t task, int thread, void *scratch) {
    const m2_ctx *c = vctx;
    const dn_mamba2_params *p = c->p;
    const int64_t T = p->T, H = p->H, P = p->P, rows = p->B * T * H;
    (void)thread, (void)scratch;
    for (int64_t row = task * M2_ROWS; row < rows && row < (task + 1) * M2_ROWS; row++) {
        const int64_t b = row / (T * H), t = row / H % T, h = row % H;
        const float *x = p->x + b * p->x_s.b + t * p->x_s.t + h * p->x_s.h;
        float *y = p->y + b * p->y_s.b + t * p->y_s.t + h * p->y_s.h;
        for (int64_t k = 0; k < P; k++)
            y[k] += p->Dskip[h] * x[k];
    }
}

void DN_ISA_FN(dn_cpu_mamba2_finish)(const dn_mamba2_params *p, int nthreads) {
    m2_ctx c = {p, NULL, NULL, NULL};
    const int64_t rows = p->B * p->T * p->H;
    if (!p->Dskip) return;
    dn_parallel_tasks(m2_threads(p, nthreads), (rows + M2_ROWS - 1) / M2_ROWS, DN_SCHED_STATIC,
                      m2_finish_run, &c, NULL, 0);
}
