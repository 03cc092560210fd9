/*
 * cpu/rwkv4.c - fast CPU RWKV-4 WKV, vectorised over channels (each channel is an independent
 * recurrence), one contiguous range of channels per thread. Compiled once per SIMD level (see simd.h).
 */
#include "../internal.h"
#include "simd.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

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
        num[i] = s0 ? s0[c] : 0.0f, den[i] = s0 ? s0[C + c] : 0.0f, m[i] = s0 ? s0[2 * C + c] : -1e38f;
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
        const float k = p->k[b * p->k_s.b + t * p->k_s.t + c], v = p->v[b * p->v_s.b + t * p->v_s.t + c];
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

void DN_ISA_FN(dn_cpu_rwkv4_forward)(const dn_rwkv4_params *p, int nthreads) {
    /* vector channels split into one contiguous range per thread, the rest one by one */
    const int64_t nvec = p->C / DN_VW, ntail = p->C - nvec * DN_VW;
    int64_t parts = nvec >= nthreads ? nthreads : nvec > 0 ? nvec : 0;
    const int64_t per_b = parts + ntail, ntask = p->B * per_b;
    int nt = ntask < nthreads ? (int)ntask : nthreads;
    if (nt < 1) nt = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        float *ws = aligned_alloc(64, sizeof(float) * (size_t)(4 * nvec * DN_VW + 16));
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t task = 0; task < ntask; task++) {
            const int64_t b = task / per_b, i = task % per_b;
            if (i < parts) {
                const int64_t v0 = nvec * i / parts, v1 = nvec * (i + 1) / parts;
                if (ws) rwkv_vectors(p, b, v0 * DN_VW, v1 * DN_VW, ws);
            } else {
                rwkv_scalar(p, b, nvec * DN_VW + (i - parts));
            }
        }
        free(ws);
    }
}
