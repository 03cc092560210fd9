/*
 * cpu/rwkv4.c - fast CPU RWKV-4 WKV, vectorised over channels (each channel is an independent
 * recurrence), one contiguous range of channels per thread. Compiled once per SIMD level (see
 * simd.h).
 */
#include "../internal.h"
#include "simd.h"

#include <math.h>
#include <string.h>

/* Channels [c0, c1) of batch b, c1 - c0 a multiple of DN_VW. Tokens outside, channels inside, so
 * every token reads one contiguous stretch of k and v (a stream the prefetcher follows); the state
 * of the stretch, three floats per channel, stays in L1. */
static void rwkv_vectors(const dn_rwkv4_params *p, int64_t b, int64_t c0, int64_t c1, float *ws) {
    const int64_t C = p->C, n = c1 - c0;
    float *num = ws, *den = ws + n, *m = ws + 2 * n, *w = ws + 3 * n;
    for (int64_t i = 0; i < n; i++) {
        const int64_t c = c0 + i;
        w[i] = -expf(p->time_decay[c]);
        const float *s0 = p->initial_state ? p->initial_state + b * 3 * C : NULL;
        num[i] = s0 ? s0[c] : 0.0f, den[i] = s0 ? s0[C + c] : 0.0f,
        m[i] = s0 ? s0[2 * C + c] : -1e38f;
    }
    for (int64_t t = 0; t < p->T; t++) {
        const float *kr = p->k + b * p->k_s.b + t * p->k_s.t + c0;
        const float *vr = p->v + b * p->v_s.b + t * p->v_s.t + c0;
        float *yr = p->y + b * p->y_s.b + t * p->y_s.t + c0;
        for (int64_t i = 0; i < n; i += DN_VW) {
            const vf k = vload(kr + i), v = vload(vr + i), u = vload(p->time_first + c0 + i);
            vf nm = vload(num + i), dn = vload(den + i), mm = vload(m + i);
            vf uk = u + k, mo = vmax(mm, uk);
            vf e1 = vexp_neg(mm - mo), e2 = vexp_neg(uk - mo);
            vstore(yr + i, (e1 * nm + e2 * v) / (e1 * dn + e2));
            vf mw = mm + vload(w + i), mn = vmax(mw, k);
            e1 = vexp_neg(mw - mn), e2 = vexp_neg(k - mn);
            vstore(num + i, e1 * nm + e2 * v);
            vstore(den + i, e1 * dn + e2);
            vstore(m + i, mn);
        }
    }
    if (p->final_state) {
        float *s1 = p->final_state + b * 3 * C;
        for (int64_t i = 0; i < n; i++)
            s1[c0 + i] = num[i], s1[C + c0 + i] = den[i], s1[2 * C + c0 + i] = m[i];
    }
}

/* Channels past the last full block, one at a time (same arithmetic, scalar). */
static void rwkv_scalar(const dn_rwkv4_params *p, int64_t b, int64_t c) {
    const int64_t C = p->C;
    const float w = -expf(p->time_decay[c]), u = p->time_first[c];
    const float *s0 = p->initial_state ? p->initial_state + b * 3 * C : NULL;
    float num = s0 ? s0[c] : 0, den = s0 ? s0[C + c] : 0, m = s0 ? s0[2 * C + c] : -1e38f;
    for (int64_t t = 0; t < p->T; t++) {
        const float k = p->k[b * p->k_s.b + t * p->k_s.t + c],
                    v = p->v[b * p->v_s.b + t * p->v_s.t + c];
        float mo = fmaxf(m, u + k), e1 = expf(m - mo), e2 = expf(u + k - mo);
        p->y[b * p->y_s.b + t * p->y_s.t + c] = (e1 * num + e2 * v) / (e1 * den + e2);
        float mn = fmaxf(m + w, k);
        e1 = expf(m + w - mn), e2 = expf(k - mn);
        num = e1 * num + e2 * v, den = e1 * den + e2, m = mn;
    }
    if (p->final_state) {
        float *s1 = p->final_state + b * 3 * C;
        s1[c] = num, s1[C + c] = den, s1[2 * C + c] = m;
    }
}

/* The split shared by the forward and the backward: the nvec vectors of channels in `parts`
 * contiguous ranges of at most maxn channels (one range per thread), the tail channels apart. */
typedef struct {
    int64_t nvec, ntail, parts, maxn;
} rwkv_split;

static rwkv_split make_split(int64_t C, int nthreads) {
    rwkv_split s;
    s.nvec = C / DN_VW, s.ntail = C - s.nvec * DN_VW;
    s.parts = s.nvec < nthreads ? s.nvec : nthreads;
    s.maxn = s.parts > 0 ? (s.nvec + s.parts - 1) / s.parts * DN_VW : 0;
    return s;
}

size_t DN_ISA_FN(dn_cpu_rwkv4_workspace)(const dn_rwkv4_params *p, int nthreads) {
    /* num, den, max and decay of a range */
    return dn_parallel_ws_bytes(nthreads,
                                sizeof(float) * (size_t)(4 * make_split(p->C, nthreads).maxn));
}

typedef struct {
    const dn_rwkv4_params *p;
    const dn_rwkv4_bwd_params *bp;
    rwkv_split s;
} rwkv_ctx;

static void fwd_run(void *vctx, int64_t task, int thread, void *ws) {
    const rwkv_ctx *c = vctx;
    const int64_t per_b = c->s.parts + c->s.ntail, b = task / per_b, i = task % per_b;
    const int64_t nvec = c->s.nvec, parts = c->s.parts;
    (void)thread;
    if (i < parts) {
        const int64_t v0 = nvec * i / parts, v1 = nvec * (i + 1) / parts;
        rwkv_vectors(c->p, b, v0 * DN_VW, v1 * DN_VW, ws);
    } else {
        rwkv_scalar(c->p, b, nvec * DN_VW + (i - parts));
    }
}

void DN_ISA_FN(dn_cpu_rwkv4_forward)(const dn_rwkv4_params *p, int nthreads, void *ws) {
    /* vector channels split into one contiguous range per thread, the rest one by one */
    rwkv_ctx c = {p, NULL, make_split(p->C, nthreads)};
    dn_parallel_tasks(nthreads, p->B * (c.s.parts + c.s.ntail), DN_SCHED_STATIC, fwd_run, &c, ws,
                      sizeof(float) * (size_t)(4 * c.s.maxn));
}

/* Backward, vectorised over channels: one contiguous channel range per task (in every batch row,
 * so that the parameter sums have one writer); the states of every token kept (3 T floats per
 * channel), then walked back on the branch each maximum took (see ref/rwkv4.c). */
static void rwkv_bwd_range(const dn_rwkv4_bwd_params *bp, int64_t b, int64_t c0, int64_t n,
                           float *st, float *gwu) {
    const dn_rwkv4_params *p = &bp->fwd;
    const int64_t C = p->C, T = p->T;
    float *w = st + 3 * (T + 1) * n; /* n decays after the states */
    for (int64_t i = 0; i < n; i++) {
        const int64_t c = c0 + i;
        w[i] = -expf(p->time_decay[c]);
        const float *s0 = p->initial_state ? p->initial_state + b * 3 * C : NULL;
        st[i] = s0 ? s0[c] : 0.0f, st[n + i] = s0 ? s0[C + c] : 0.0f,
        st[2 * n + i] = s0 ? s0[2 * C + c] : -1e38f;
    }
    for (int64_t t = 0; t < T; t++) {
        const float *kr = p->k + b * p->k_s.b + t * p->k_s.t + c0,
                    *vr = p->v + b * p->v_s.b + t * p->v_s.t + c0;
        const float *cur = st + 3 * t * n;
        float *nx = st + 3 * (t + 1) * n;
        for (int64_t i = 0; i < n; i += DN_VW) {
            vf k = vload(kr + i), v = vload(vr + i), a = vload(cur + i), bb = vload(cur + n + i);
            vf mw = vload(cur + 2 * n + i) + vload(w + i), q2 = vmax(mw, k);
            vf f1 = vexp_neg(mw - q2), f2 = vexp_neg(k - q2);
            vstore(nx + i, f1 * a + f2 * v), vstore(nx + n + i, f1 * bb + f2),
                vstore(nx + 2 * n + i, q2);
        }
    }
    float *ga = gwu + 2 * n, *gb = ga + n, *gp = gb + n; /* gwu: [gw | gu | ga | gb | gp] */
    for (int64_t i = 0; i < n; i++) {
        const float *sT = bp->dfinal_state ? bp->dfinal_state + b * 3 * C : NULL;
        ga[i] = sT ? sT[c0 + i] : 0.0f, gb[i] = sT ? sT[C + c0 + i] : 0.0f,
        gp[i] = sT ? sT[2 * C + c0 + i] : 0.0f;
    }
    const vf one = vset1(1.0f), zero = vzero();
    for (int64_t t = T - 1; t >= 0; t--) {
        const float *kr = p->k + b * p->k_s.b + t * p->k_s.t + c0,
                    *vr = p->v + b * p->v_s.b + t * p->v_s.t + c0;
        const float *gyr = bp->dy + b * bp->dy_s.b + t * bp->dy_s.t + c0, *cur = st + 3 * t * n;
        float *dkr = bp->dk + b * bp->dk_s.b + t * bp->dk_s.t + c0,
              *dvr = bp->dv + b * bp->dv_s.b + t * bp->dv_s.t + c0;
        for (int64_t i = 0; i < n; i += DN_VW) {
            const vf k = vload(kr + i), v = vload(vr + i), a = vload(cur + i),
                     bb = vload(cur + n + i);
            const vf pp = vload(cur + 2 * n + i), gy = vload(gyr + i),
                     u = vload(p->time_first + c0 + i);
            const vf gav = vload(ga + i), gbv = vload(gb + i), gpv = vload(gp + i);
            const vf mw = pp + vload(w + i), q2 = vmax(mw, k), f1 = vexp_neg(mw - q2),
                     f2 = vexp_neg(k - q2);
            const vi first = mw >= k; /* the maximum was w + p */
#define SEL(x, y) ((vf)(((vi)(x)&first) | ((vi)(y) & ~first)))
            const vf dap = SEL(-(f2 * v), f1 * a), dbp = SEL(-f2, f1 * bb), dpp = SEL(one, zero);
            const vf dak = SEL(f2 * v, -(f1 * a)), dbk = SEL(f2, -(f1 * bb)), dpk = SEL(zero, one);
#undef SEL
            vf gk = gav * dak + gbv * dbk + gpv * dpk, gv = gav * f2;
            vf gpp = gav * dap + gbv * dbp + gpv * dpp;
            vstore(gwu + i, vload(gwu + i) + gpp);
            vf gaa = gav * f1, gbb = gbv * f1;
            const vf uk = u + k, q = vmax(pp, uk), e1 = vexp_neg(pp - q), e2 = vexp_neg(uk - q);
            const vf Dn = e1 * bb + e2, y = (e1 * a + e2 * v) / Dn, r = gy / Dn;
            gaa += r * e1;
            gbb -= r * e1 * y;
            gpp += r * e1 * (a - y * bb);
            const vf gku = r * e2 * (v - y);
            gk += gku, gv += r * e2;
            vstore(gwu + n + i, vload(gwu + n + i) + gku);
            vstore(dkr + i, gk), vstore(dvr + i, gv);
            vstore(ga + i, gaa), vstore(gb + i, gbb), vstore(gp + i, gpp);
        }
    }
    if (bp->dinitial_state) {
        float *d0 = bp->dinitial_state + b * 3 * C;
        for (int64_t i = 0; i < n; i++)
            d0[c0 + i] = ga[i], d0[C + c0 + i] = gb[i], d0[2 * C + c0 + i] = gp[i];
    }
}

/* One channel, scalar: the channels past the last full vector. */
static void rwkv_bwd_scalar(const dn_rwkv4_bwd_params *bp, int64_t b, int64_t c, float *st,
                            float *gw_out, float *gu_out) {
    const dn_rwkv4_params *p = &bp->fwd;
    const int64_t C = p->C, T = p->T;
    const float w = -expf(p->time_decay[c]), u = p->time_first[c];
    const float *s0 = p->initial_state ? p->initial_state + b * 3 * C : NULL;
    st[0] = s0 ? s0[c] : 0.0f, st[1] = s0 ? s0[C + c] : 0.0f, st[2] = s0 ? s0[2 * C + c] : -1e38f;
    for (int64_t t = 0; t < T; t++) {
        const float k = p->k[b * p->k_s.b + t * p->k_s.t + c],
                    v = p->v[b * p->v_s.b + t * p->v_s.t + c];
        const float mw = st[3 * t + 2] + w, q2 = fmaxf(mw, k), f1 = expf(mw - q2),
                    f2 = expf(k - q2);
        st[3 * t + 3] = f1 * st[3 * t] + f2 * v, st[3 * t + 4] = f1 * st[3 * t + 1] + f2;
        st[3 * t + 5] = q2;
    }
    const float *sT = bp->dfinal_state ? bp->dfinal_state + b * 3 * C : NULL;
    float ga = sT ? sT[c] : 0, gb = sT ? sT[C + c] : 0, gp = sT ? sT[2 * C + c] : 0, gw = 0, gu = 0;
    for (int64_t t = T - 1; t >= 0; t--) {
        const float k = p->k[b * p->k_s.b + t * p->k_s.t + c],
                    v = p->v[b * p->v_s.b + t * p->v_s.t + c];
        const float a = st[3 * t], bb = st[3 * t + 1], pp = st[3 * t + 2];
        const float gy = bp->dy[b * bp->dy_s.b + t * bp->dy_s.t + c];
        const float mw = pp + w, q2 = fmaxf(mw, k), f1 = expf(mw - q2), f2 = expf(k - q2);
        const int first = mw >= k;
        const float dap = first ? -f2 * v : f1 * a, dbp = first ? -f2 : f1 * bb,
                    dpp = first ? 1.0f : 0.0f;
        const float dak = first ? f2 * v : -f1 * a, dbk = first ? f2 : -f1 * bb,
                    dpk = first ? 0.0f : 1.0f;
        float gk = ga * dak + gb * dbk + gp * dpk, gv = ga * f2,
              gpp = ga * dap + gb * dbp + gp * dpp;
        gw += gpp;
        float gaa = ga * f1, gbb = gb * f1;
        const float q = fmaxf(pp, u + k), e1 = expf(pp - q), e2 = expf(u + k - q);
        const float Dn = e1 * bb + e2, y = (e1 * a + e2 * v) / Dn, r = gy / Dn;
        gaa += r * e1, gbb -= r * e1 * y, gpp += r * e1 * (a - y * bb);
        const float gku = r * e2 * (v - y);
        gk += gku, gu += gku, gv += r * e2;
        bp->dk[b * bp->dk_s.b + t * bp->dk_s.t + c] = gk;
        bp->dv[b * bp->dv_s.b + t * bp->dv_s.t + c] = gv;
        ga = gaa, gb = gbb, gp = gpp;
    }
    *gw_out += gw, *gu_out += gu;
    if (bp->dinitial_state) {
        float *d0 = bp->dinitial_state + b * 3 * C;
        d0[c] = ga, d0[C + c] = gb, d0[2 * C + c] = gp;
    }
}

/* Per thread: the states of every token of a range, 3 (T + 1) floats per channel (one channel
 * for a tail task), then the range's decays and [gw | gu | ga | gb | gp]. */
static size_t bwd_thread_bytes(const dn_rwkv4_params *p, rwkv_split s) {
    int64_t st;
    if (!DN_PROD(&st, 3, p->T + 1, s.maxn > 1 ? s.maxn : 1) || st > INT64_MAX / 8 - 6 * s.maxn - 16)
        return SIZE_MAX;
    return sizeof(float) * (size_t)(st + 6 * s.maxn + 16);
}

size_t DN_ISA_FN(dn_cpu_rwkv4_bwd_workspace)(const dn_rwkv4_params *p, int nthreads) {
    return dn_parallel_ws_bytes(nthreads, bwd_thread_bytes(p, make_split(p->C, nthreads)));
}

static void bwd_run(void *vctx, int64_t task, int thread, void *ws) {
    const rwkv_ctx *c = vctx;
    const dn_rwkv4_bwd_params *bp = c->bp;
    const dn_rwkv4_params *p = c->p;
    const int64_t T = p->T, nvec = c->s.nvec, parts = c->s.parts;
    float *st = ws;
    (void)thread;
    if (task < parts) {
        const int64_t v0 = nvec * task / parts, v1 = nvec * (task + 1) / parts;
        const int64_t c0 = v0 * DN_VW, n = (v1 - v0) * DN_VW;
        float *gwu = st + 3 * (T + 1) * n + n;
        memset(gwu, 0, sizeof(float) * (size_t)(2 * n));
        for (int64_t b = 0; b < p->B; b++)
            rwkv_bwd_range(bp, b, c0, n, st, gwu);
        for (int64_t i = 0; i < n; i++) {
            bp->dtime_decay[c0 + i] += gwu[i] * -expf(p->time_decay[c0 + i]);
            bp->dtime_first[c0 + i] += gwu[n + i];
        }
    } else {
        const int64_t ch = nvec * DN_VW + (task - parts);
        float gw = 0, gu = 0;
        for (int64_t b = 0; b < p->B; b++)
            rwkv_bwd_scalar(bp, b, ch, st, &gw, &gu);
        bp->dtime_decay[ch] += gw * -expf(p->time_decay[ch]);
        bp->dtime_first[ch] += gu;
    }
}

void DN_ISA_FN(dn_cpu_rwkv4_backward)(const dn_rwkv4_bwd_params *bp, int nthreads, void *ws) {
    const dn_rwkv4_params *p = &bp->fwd;
    rwkv_ctx c = {p, bp, make_split(p->C, nthreads)};
    /* a task owns its channels in every batch row: their parameter sums have one writer */
    dn_parallel_tasks(nthreads, c.s.parts + c.s.ntail, DN_SCHED_DYNAMIC, bwd_run, &c, ws,
                      bwd_thread_bytes(p, c.s));
}
