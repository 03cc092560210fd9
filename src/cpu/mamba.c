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
    for (int64_t t = 0; t < p->T; t++) {
        const float *xr = p->x + b * p->x_s.b + t * p->x_s.t;
        const float *dtr = p->dt + b * p->dt_s.b + t * p->dt_s.t;
        float *yr = p->y + b * p->y_s.b + t * p->y_s.t;
        for (int64_t i = 0; i < nd; i++) {
            const int64_t d = d0 + i, g = d / per_group;
            const float *Bm = p->Bm + b * p->Bm_s.b + t * p->Bm_s.t + g * p->Bm_s.h;
            const float *Cm = p->Cm + b * p->Cm_s.b + t * p->Cm_s.t + g * p->Cm_s.h;
            const float *A = p->A + d * N;
            float *hd = h + i * N;
            const float x = xr[d];
            float dt = dtr[d] + (p->dt_bias ? p->dt_bias[d] : 0.0f);
            if (p->dt_softplus) dt = softplus1(dt);
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
            if (p->z) {
                const float z = p->z[b * p->z_s.b + t * p->z_s.t + d];
                y *= z / (1.0f + expf(-z));
            }
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
