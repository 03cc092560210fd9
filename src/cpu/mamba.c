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
#ifdef _OPENMP
#include <omp.h>
#endif

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

void DN_ISA_FN(dn_cpu_mamba_forward)(const dn_mamba_params *p, int nthreads) {
    const int64_t nblk = (p->D + CB - 1) / CB, ntask = p->B * nblk;
    int nt = ntask < nthreads ? (int)ntask : nthreads;
    if (nt < 1) nt = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        float *h = aligned_alloc(64, sizeof(float) * (size_t)(CB * p->N + 16));
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t task = 0; task < ntask; task++) {
            const int64_t b = task / nblk, d0 = task % nblk * CB;
            if (h) mamba_block(p, b, d0, p->D - d0 < CB ? p->D - d0 : CB, h);
        }
        free(h);
    }
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
        if (p->initial_state) memcpy(h + i * N, p->initial_state + soff, sizeof(float) * (size_t)N);
        else memset(h + i * N, 0, sizeof(float) * (size_t)N);
    }
#define DT_OF(t, d)                                                                                \
    ({                                                                                             \
        float raw_ = p->dt[b * p->dt_s.b + (t)*p->dt_s.t + (d)] + (p->dt_bias ? p->dt_bias[d] : 0.0f); \
        p->dt_softplus ? softplus1(raw_) : raw_;                                                   \
    })
    /* forward: checkpoints */
    for (int64_t c = 0; c < nch; c++) {
        float *cur = w->ck + c * nd * N, *nxt = cur + nd * N;
        memcpy(nxt, cur, sizeof(float) * (size_t)(nd * N));
        for (int64_t t = c * MCK; t < T && t < (c + 1) * MCK; t++)
            for (int64_t i = 0; i < nd; i++) {
                const int64_t d = d0 + i, g = d / per_group;
                const float *Bm = p->Bm + b * p->Bm_s.b + t * p->Bm_s.t + g * p->Bm_s.h, *A = p->A + d * N;
                const float dt = DT_OF(t, d), dtx = dt * p->x[b * p->x_s.b + t * p->x_s.t + d];
                float *hd = nxt + i * N;
                int64_t n = 0;
                for (; n < Nv; n += DN_VW)
                    vstore(hd + n, vexp(vset1(dt) * vload(A + n)) * vload(hd + n) + vset1(dtx) * vload(Bm + n));
                for (; n < N; n++) hd[n] = expf(dt * A[n]) * hd[n] + dtx * Bm[n];
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
                const float *Bm = p->Bm + b * p->Bm_s.b + t * p->Bm_s.t + g * p->Bm_s.h, *A = p->A + d * N;
                const float dt = DT_OF(t, d), dtx = dt * p->x[b * p->x_s.b + t * p->x_s.t + d];
                float *hd = w->hs + (l + 1) * nd * N + i * N;
                int64_t n = 0;
                for (; n < Nv; n += DN_VW)
                    vstore(hd + n, vexp(vset1(dt) * vload(A + n)) * vload(hd + n) + vset1(dtx) * vload(Bm + n));
                for (; n < N; n++) hd[n] = expf(dt * A[n]) * hd[n] + dtx * Bm[n];
            }
        }
        for (int64_t l = L - 1; l >= 0; l--) {
            const int64_t t = t0 + l;
            for (int64_t i = 0; i < nd; i++) {
                const int64_t d = d0 + i, g = d / per_group;
                const float *Bm = p->Bm + b * p->Bm_s.b + t * p->Bm_s.t + g * p->Bm_s.h;
                const float *Cm = p->Cm + b * p->Cm_s.b + t * p->Cm_s.t + g * p->Cm_s.h, *A = p->A + d * N;
                float *dBa = w->dBacc + ((b * T + t) * p->G + g) * N, *dCa = w->dCacc + ((b * T + t) * p->G + g) * N;
                const float *ht = w->hs + (l + 1) * nd * N + i * N, *hp = w->hs + l * nd * N + i * N;
                float *dh = w->dh + i * N, *dA = w->dA + i * N;
                const float raw = p->dt[b * p->dt_s.b + t * p->dt_s.t + d] + (p->dt_bias ? p->dt_bias[d] : 0.0f);
                const float dt = p->dt_softplus ? softplus1(raw) : raw;
                const float x = p->x[b * p->x_s.b + t * p->x_s.t + d];
                float dy = bp->dy[b * bp->dy_s.b + t * bp->dy_s.t + d];
                if (p->z) {
                    float y = dot_f32(Cm, ht, N) + (p->Dskip ? p->Dskip[d] * x : 0.0f);
                    const float z = p->z[b * p->z_s.b + t * p->z_s.t + d], sg = 1.0f / (1.0f + expf(-z));
                    bp->dz[b * bp->dz_s.b + t * bp->dz_s.t + d] = dy * y * sg * (1.0f + z * (1.0f - sg));
                    dy *= z * sg;
                }
                float dx = p->Dskip ? dy * p->Dskip[d] : 0.0f;
                if (bp->dDskip) w->dA[nd * N + i] += dy * x; /* dDskip column after dA */
                vf vdt = vset1(dt), vdy = vset1(dy), vx = vset1(x), vdtx = vset1(dt * x);
                vf acc_dt = vzero(), acc_dx = vzero();
                int64_t n = 0;
                for (; n < Nv; n += DN_VW) {
                    vf cv = vload(Cm + n), bm = vload(Bm + n), a = vload(A + n), hpv = vload(hp + n);
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
            memcpy(bp->dinitial_state + (b * D + d0 + i) * N, w->dh + i * N, sizeof(float) * (size_t)N);
}

int DN_ISA_FN(dn_cpu_mamba_backward)(const dn_mamba_bwd_params *bp, int nthreads) {
    const dn_mamba_params *p = &bp->fwd;
    const int64_t N = p->N, T = p->T, nblk = (p->D + CB - 1) / CB, nch = (T + MCK - 1) / MCK;
    const size_t nbc = (size_t)(p->B * T * p->G * N);
    int nt = nblk < nthreads ? (int)nblk : nthreads;
    if (nt < 1) nt = 1;
    /* everything up front, so that a failed allocation is reported before any output is written */
    const size_t per = (size_t)((nch + 1) * CB * N + (MCK + 1) * CB * N + CB * N + CB * N + 2 * CB);
    float *acc_all = calloc(2 * nbc * (size_t)nt + 1, sizeof(float));
    float *scratch = malloc(sizeof(float) * per * (size_t)nt);
    if (!acc_all || !scratch) {
        free(acc_all), free(scratch);
        return -1;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
#ifdef _OPENMP
        const int me = omp_get_thread_num();
#else
        const int me = 0;
#endif
        mbws w;
        w.ck = scratch + per * (size_t)me;
        w.hs = w.ck + (nch + 1) * CB * N;
        w.dh = w.hs + (MCK + 1) * CB * N;
        w.dA = w.dh + CB * N; /* [nd*N | nd | nd]: dA, dDskip and ddt_bias partial sums */
        w.dBacc = acc_all + 2 * nbc * (size_t)me, w.dCacc = w.dBacc + nbc;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t blk = 0; blk < nblk; blk++) {
            const int64_t d0 = blk * CB, nd = p->D - d0 < CB ? p->D - d0 : CB;
            memset(w.dA, 0, sizeof(float) * (size_t)(nd * N + 2 * CB));
            for (int64_t b = 0; b < p->B; b++) mamba_bwd_block(bp, b, d0, nd, &w);
            for (int64_t i = 0; i < nd; i++) {
                for (int64_t n = 0; n < N; n++) bp->dA[(d0 + i) * N + n] += w.dA[i * N + n];
                if (bp->dDskip) bp->dDskip[d0 + i] += w.dA[nd * N + i];
                if (bp->ddt_bias) bp->ddt_bias[d0 + i] += w.dA[nd * N + nd + i];
            }
        }
    }
    /* dBm, dCm: the threads' sums */
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t g = 0; g < p->G; g++)
                for (int64_t n = 0; n < N; n++) {
                    const size_t o = (size_t)(((b * T + t) * p->G + g) * N + n);
                    float sb = 0, sc = 0;
                    for (int th = 0; th < nt; th++)
                        sb += acc_all[2 * nbc * th + o], sc += acc_all[2 * nbc * th + nbc + o];
                    bp->dBm[b * bp->dBm_s.b + t * bp->dBm_s.t + g * bp->dBm_s.h + n] = sb;
                    bp->dCm[b * bp->dCm_s.b + t * bp->dCm_s.t + g * bp->dCm_s.h + n] = sc;
                }
    free(acc_all), free(scratch);
    return 0;
}
