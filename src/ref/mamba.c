/*
 * ref/mamba.c - plain-C references of the Mamba selective scans, in double: Mamba-1 (a state
 * [N] per channel) and Mamba-2 written from its own recurrence (a state [N,P] per head), not
 * through the GLA op that the fast Mamba-2 path uses, so that the mapping itself is tested.
 */
#include "../internal.h"

#include <math.h>

static double softplus(double x) { return x > 20 ? x : log1p(exp(x)); }

dn_status dn_ref_mamba_forward(const dn_mamba_params *p) {
    const int64_t D = p->D, N = p->N, per_group = p->D / p->G;
    double *h = dn_alloc(sizeof(double) * (size_t)N);
    if (!h) return dn_fail(DN_ERR_ALLOC, "mamba1 reference: out of memory");
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t d = 0; d < D; d++) {
            const int64_t g = d / per_group, soff = (b * D + d) * N;
            for (int64_t n = 0; n < N; n++)
                h[n] = p->initial_state ? p->initial_state[soff + n] : 0;
            for (int64_t t = 0; t < p->T; t++) {
                const double x = p->x[b * p->x_s.b + t * p->x_s.t + d];
                double dt = p->dt[b * p->dt_s.b + t * p->dt_s.t + d];
                if (p->dt_bias) dt += p->dt_bias[d];
                if (p->dt_softplus) dt = softplus(dt);
                const float *Bm = p->Bm + b * p->Bm_s.b + t * p->Bm_s.t + g * p->Bm_s.h;
                const float *Cm = p->Cm + b * p->Cm_s.b + t * p->Cm_s.t + g * p->Cm_s.h;
                double y = 0;
                for (int64_t n = 0; n < N; n++) {
                    h[n] = exp(dt * p->A[d * N + n]) * h[n] + dt * Bm[n] * x;
                    y += Cm[n] * h[n];
                }
                if (p->Dskip) y += p->Dskip[d] * x;
                if (p->z) {
                    const double z = p->z[b * p->z_s.b + t * p->z_s.t + d];
                    y *= z / (1 + exp(-z));
                }
                p->y[b * p->y_s.b + t * p->y_s.t + d] = (float)y;
            }
            if (p->final_state)
                for (int64_t n = 0; n < N; n++)
                    p->final_state[soff + n] = (float)h[n];
        }
    dn_free(h);
    return DN_OK;
}

dn_status dn_ref_mamba2_forward(const dn_mamba2_params *p) {
    const int64_t H = p->H, P = p->P, N = p->N, per_group = p->H / p->G;
    double *S = dn_alloc(sizeof(double) * (size_t)(N * P));
    if (!S) return dn_fail(DN_ERR_ALLOC, "mamba2 reference: out of memory");
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t h = 0; h < H; h++) {
            const int64_t g = h / per_group, soff = (b * H + h) * N * P;
            for (int64_t i = 0; i < N * P; i++)
                S[i] = p->initial_state ? p->initial_state[soff + i] : 0;
            for (int64_t t = 0; t < p->T; t++) {
                double dt = p->dt[b * p->dt_s.b + t * p->dt_s.t + h * p->dt_s.h];
                if (p->dt_bias) dt += p->dt_bias[h];
                if (p->dt_softplus) dt = softplus(dt);
                const double decay = exp(dt * p->A[h]);
                const float *x = p->x + b * p->x_s.b + t * p->x_s.t + h * p->x_s.h;
                const float *Bm = p->Bm + b * p->Bm_s.b + t * p->Bm_s.t + g * p->Bm_s.h;
                const float *Cm = p->Cm + b * p->Cm_s.b + t * p->Cm_s.t + g * p->Cm_s.h;
                float *y = p->y + b * p->y_s.b + t * p->y_s.t + h * p->y_s.h;
                for (int64_t n = 0; n < N; n++)
                    for (int64_t c = 0; c < P; c++)
                        S[n * P + c] = decay * S[n * P + c] + (double)Bm[n] * dt * x[c];
                for (int64_t c = 0; c < P; c++) {
                    double acc = 0;
                    for (int64_t n = 0; n < N; n++)
                        acc += S[n * P + c] * Cm[n];
                    if (p->Dskip) acc += (double)p->Dskip[h] * x[c];
                    y[c] = (float)acc;
                }
            }
            if (p->final_state)
                for (int64_t i = 0; i < N * P; i++)
                    p->final_state[soff + i] = (float)S[i];
        }
    dn_free(S);
    return DN_OK;
}

/* Backward of Mamba-1, per channel in double, every state kept. */
dn_status dn_ref_mamba_backward(const dn_mamba_bwd_params *bp) {
    const dn_mamba_params *p = &bp->fwd;
    const int64_t D = p->D, N = p->N, T = p->T, per_group = p->D / p->G;
    double *h = dn_alloc(sizeof(double) * (size_t)((T + 1) * N + 2 * N + 1));
    if (!h) return dn_fail(DN_ERR_ALLOC, "mamba1 reference backward: out of memory");
    double *dh = h + (T + 1) * N, *dA = dh + N;
    /* dBm, dCm are sums over the channels of a group: zero them first */
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t g = 0; g < p->G; g++)
                for (int64_t n = 0; n < N; n++) {
                    bp->dBm[b * bp->dBm_s.b + t * bp->dBm_s.t + g * bp->dBm_s.h + n] = 0;
                    bp->dCm[b * bp->dCm_s.b + t * bp->dCm_s.t + g * bp->dCm_s.h + n] = 0;
                }
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t d = 0; d < D; d++) {
            const int64_t g = d / per_group, soff = (b * D + d) * N;
            for (int64_t n = 0; n < N; n++)
                h[n] = p->initial_state ? p->initial_state[soff + n] : 0;
            for (int64_t t = 0; t < T; t++) {
                double dt =
                    p->dt[b * p->dt_s.b + t * p->dt_s.t + d] + (p->dt_bias ? p->dt_bias[d] : 0.0);
                if (p->dt_softplus) dt = softplus(dt);
                const double x = p->x[b * p->x_s.b + t * p->x_s.t + d];
                const float *Bm = p->Bm + b * p->Bm_s.b + t * p->Bm_s.t + g * p->Bm_s.h;
                for (int64_t n = 0; n < N; n++)
                    h[(t + 1) * N + n] = exp(dt * p->A[d * N + n]) * h[t * N + n] + dt * Bm[n] * x;
            }
            for (int64_t n = 0; n < N; n++)
                dh[n] = bp->dfinal_state ? bp->dfinal_state[soff + n] : 0;
            double dD = 0, dbias = 0;
            for (int64_t n = 0; n < N; n++)
                dA[n] = 0;
            for (int64_t t = T - 1; t >= 0; t--) {
                const double raw =
                    p->dt[b * p->dt_s.b + t * p->dt_s.t + d] + (p->dt_bias ? p->dt_bias[d] : 0.0);
                const double dt = p->dt_softplus ? softplus(raw) : raw;
                const double x = p->x[b * p->x_s.b + t * p->x_s.t + d];
                const float *Bm = p->Bm + b * p->Bm_s.b + t * p->Bm_s.t + g * p->Bm_s.h;
                const float *Cm = p->Cm + b * p->Cm_s.b + t * p->Cm_s.t + g * p->Cm_s.h;
                float *dBm = bp->dBm + b * bp->dBm_s.b + t * bp->dBm_s.t + g * bp->dBm_s.h;
                float *dCm = bp->dCm + b * bp->dCm_s.b + t * bp->dCm_s.t + g * bp->dCm_s.h;
                const double *ht = h + (t + 1) * N, *hp = h + t * N;
                /* output: y = C.h + D x, then y * silu(z) */
                double y = 0;
                for (int64_t n = 0; n < N; n++)
                    y += (double)Cm[n] * ht[n];
                if (p->Dskip) y += (double)p->Dskip[d] * x;
                double dy = bp->dy[b * bp->dy_s.b + t * bp->dy_s.t + d];
                if (p->z) {
                    const double z = p->z[b * p->z_s.b + t * p->z_s.t + d], sg = 1 / (1 + exp(-z));
                    bp->dz[b * bp->dz_s.b + t * bp->dz_s.t + d] =
                        (float)(dy * y * sg * (1 + z * (1 - sg)));
                    dy *= z * sg;
                }
                double dx = p->Dskip ? dy * p->Dskip[d] : 0, ddt = 0;
                dD += dy * x;
                for (int64_t n = 0; n < N; n++) {
                    dCm[n] += (float)(dy * ht[n]);
                    dh[n] += dy * Cm[n];
                    /* h = exp(dt A) h_prev + dt B x */
                    const double a = p->A[d * N + n], e = exp(dt * a);
                    ddt += dh[n] * (e * a * hp[n] + (double)Bm[n] * x);
                    dA[n] += dh[n] * e * dt * hp[n];
                    dBm[n] += (float)(dh[n] * dt * x);
                    dx += dh[n] * dt * Bm[n];
                    dh[n] *= e;
                }
                if (p->dt_softplus) ddt *= 1 / (1 + exp(-raw));
                dbias += ddt;
                bp->dx[b * bp->dx_s.b + t * bp->dx_s.t + d] = (float)dx;
                bp->ddt[b * bp->ddt_s.b + t * bp->ddt_s.t + d] = (float)ddt;
            }
            for (int64_t n = 0; n < N; n++)
                bp->dA[d * N + n] += (float)dA[n];
            if (bp->dDskip) bp->dDskip[d] += (float)dD;
            if (bp->ddt_bias) bp->ddt_bias[d] += (float)dbias;
            if (bp->dinitial_state)
                for (int64_t n = 0; n < N; n++)
                    bp->dinitial_state[soff + n] = (float)dh[n];
        }
    dn_free(h);
    return DN_OK;
}
