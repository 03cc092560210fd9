/*
 * cpu/rwkv4.c - fast CPU RWKV-4 WKV, vectorised over channels (each channel is an independent
 * recurrence). The state (num, den, m) of a block of RB vectors of channels stays in registers
 * across the tokens. Compiled once per SIMD level (see simd.h).
 */
#include "../internal.h"
#include "simd.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define RB 4 /* vectors of channels per block */

static void rwkv_vectors(const dn_rwkv4_params *p, int64_t b, int64_t c0) {
    const int64_t C = p->C;
    vf num[RB], den[RB], m[RB], w[RB], u[RB];
    for (int r = 0; r < RB; r++) {
        const int64_t c = c0 + r * DN_VW;
        for (int i = 0; i < DN_VW; i++) w[r][i] = -expf(p->time_decay[c + i]);
        u[r] = vload(p->time_first + c);
        if (p->initial_state) {
            const float *s0 = p->initial_state + b * 3 * C;
            num[r] = vload(s0 + c), den[r] = vload(s0 + C + c), m[r] = vload(s0 + 2 * C + c);
        } else {
            num[r] = den[r] = vzero(), m[r] = vset1(-1e38f);
        }
    }
    for (int64_t t = 0; t < p->T; t++) {
        const float *kr = p->k + b * p->k_s.b + t * p->k_s.t + c0;
        const float *vr = p->v + b * p->v_s.b + t * p->v_s.t + c0;
        float *yr = p->y + b * p->y_s.b + t * p->y_s.t + c0;
        for (int r = 0; r < RB; r++) {
            const vf k = vload(kr + r * DN_VW), v = vload(vr + r * DN_VW);
            vf uk = u[r] + k, mo = vmax(m[r], uk);
            vf e1 = vexp_neg(m[r] - mo), e2 = vexp_neg(uk - mo);
            vstore(yr + r * DN_VW, (e1 * num[r] + e2 * v) / (e1 * den[r] + e2));
            vf mw = m[r] + w[r], mn = vmax(mw, k);
            e1 = vexp_neg(mw - mn), e2 = vexp_neg(k - mn);
            num[r] = e1 * num[r] + e2 * v;
            den[r] = e1 * den[r] + e2;
            m[r] = mn;
        }
    }
    if (p->final_state) {
        float *s1 = p->final_state + b * 3 * C;
        for (int r = 0; r < RB; r++) {
            const int64_t c = c0 + r * DN_VW;
            vstore(s1 + c, num[r]), vstore(s1 + C + c, den[r]), vstore(s1 + 2 * C + c, m[r]);
        }
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
    const int64_t width = RB * DN_VW, nfull = p->C / width, ntail = p->C - nfull * width;
    const int64_t per_b = nfull + ntail, ntask = p->B * per_b;
    int nt = ntask < nthreads ? (int)ntask : nthreads;
    if (nt < 1) nt = 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
#endif
    for (int64_t task = 0; task < ntask; task++) {
        const int64_t b = task / per_b, i = task % per_b;
        if (i < nfull)
            rwkv_vectors(p, b, i * width);
        else
            rwkv_scalar(p, b, nfull * width + (i - nfull));
    }
}
