/*
 * ref/rwkv4.c - plain-C reference of the RWKV-4 WKV in double, in the running-maximum form:
 * num and den are carried scaled by exp(-m), and every exponent is taken after subtracting the
 * largest one in play, so nothing overflows whatever the keys.
 */
#include "../internal.h"

#include <math.h>

dn_status dn_ref_rwkv4_forward(const dn_rwkv4_params *p) {
    const int64_t C = p->C;
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t c = 0; c < C; c++) {
            const double w = -exp((double)p->time_decay[c]), u = p->time_first[c];
            const float *s0 = p->initial_state ? p->initial_state + b * 3 * C : NULL;
            double num = s0 ? s0[c] : 0, den = s0 ? s0[C + c] : 0, m = s0 ? s0[2 * C + c] : -1e38;
            for (int64_t t = 0; t < p->T; t++) {
                const double k = p->k[b * p->k_s.b + t * p->k_s.t + c];
                const double v = p->v[b * p->v_s.b + t * p->v_s.t + c];
                /* output: the state plus the current token with the bonus u */
                double mo = fmax(m, u + k), e1 = exp(m - mo), e2 = exp(u + k - mo);
                p->y[b * p->y_s.b + t * p->y_s.t + c] =
                    (float)((e1 * num + e2 * v) / (e1 * den + e2));
                /* state: decay by w, add the current token */
                double mn = fmax(m + w, k);
                e1 = exp(m + w - mn), e2 = exp(k - mn);
                num = e1 * num + e2 * v;
                den = e1 * den + e2;
                m = mn;
            }
            if (p->final_state) {
                float *s1 = p->final_state + b * 3 * C;
                s1[c] = (float)num, s1[C + c] = (float)den, s1[2 * C + c] = (float)m;
            }
        }
    return DN_OK;
}

/* Backward through the running-maximum form, per channel in double, every state kept. With the
 * state (a, b, p) = (num, den, m): the output y = (e1 a + e2 v) / (e1 b + e2), e1 = e^{p-q},
 * e2 = e^{u+k-q}, does not depend on the shift q; the update a' = f1 a + f2 v, b' = f1 b + f2,
 * p' = max(w + p, k) is differentiated on the branch the maximum took. */
dn_status dn_ref_rwkv4_backward(const dn_rwkv4_bwd_params *bp) {
    const dn_rwkv4_params *p = &bp->fwd;
    const int64_t C = p->C, T = p->T;
    double *st = dn_alloc(sizeof(double) * (size_t)(3 * (T + 1)));
    if (!st) return dn_fail(DN_ERR_ALLOC, "rwkv4 reference backward: out of memory");
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t c = 0; c < C; c++) {
            const double w = -exp((double)p->time_decay[c]), u = p->time_first[c];
            const float *s0 = p->initial_state ? p->initial_state + b * 3 * C : NULL;
            st[0] = s0 ? s0[c] : 0, st[1] = s0 ? s0[C + c] : 0, st[2] = s0 ? s0[2 * C + c] : -1e38;
            for (int64_t t = 0; t < T; t++) {
                const double k = p->k[b * p->k_s.b + t * p->k_s.t + c],
                             v = p->v[b * p->v_s.b + t * p->v_s.t + c];
                const double a = st[3 * t], bb = st[3 * t + 1], pp = st[3 * t + 2];
                const double q2 = fmax(w + pp, k), f1 = exp(w + pp - q2), f2 = exp(k - q2);
                st[3 * t + 3] = f1 * a + f2 * v, st[3 * t + 4] = f1 * bb + f2, st[3 * t + 5] = q2;
            }
            const float *sT = bp->dfinal_state ? bp->dfinal_state + b * 3 * C : NULL;
            double ga = sT ? sT[c] : 0, gb = sT ? sT[C + c] : 0, gp = sT ? sT[2 * C + c] : 0;
            double gw = 0, gu = 0;
            for (int64_t t = T - 1; t >= 0; t--) {
                const double k = p->k[b * p->k_s.b + t * p->k_s.t + c],
                             v = p->v[b * p->v_s.b + t * p->v_s.t + c];
                const double a = st[3 * t], bb = st[3 * t + 1], pp = st[3 * t + 2];
                const double gy = bp->dy[b * bp->dy_s.b + t * bp->dy_s.t + c];
                /* update */
                const double q2 = fmax(w + pp, k), f1 = exp(w + pp - q2), f2 = exp(k - q2);
                double dap, dbp, dpp, dak, dbk, dpk; /* d(a',b',p') / dp (= d/dw), / dk */
                if (w + pp >= k) {
                    dap = -f2 * v, dbp = -f2, dpp = 1, dak = f2 * v, dbk = f2, dpk = 0;
                } else {
                    dap = f1 * a, dbp = f1 * bb, dpp = 0, dak = -f1 * a, dbk = -f1 * bb, dpk = 1;
                }
                double gk = ga * dak + gb * dbk + gp * dpk, gv = ga * f2;
                double gpp = ga * dap + gb * dbp + gp * dpp;
                gw += gpp;
                double gaa = ga * f1, gbb = gb * f1;
                /* output */
                const double q = fmax(pp, u + k), e1 = exp(pp - q), e2 = exp(u + k - q);
                const double Dn = e1 * bb + e2, y = (e1 * a + e2 * v) / Dn;
                gaa += gy * e1 / Dn;
                gbb += -gy * e1 * y / Dn;
                gpp += gy * e1 * (a - y * bb) / Dn;
                const double gku = gy * e2 * (v - y) / Dn;
                gk += gku, gu += gku, gv += gy * e2 / Dn;
                bp->dk[b * bp->dk_s.b + t * bp->dk_s.t + c] = (float)gk;
                bp->dv[b * bp->dv_s.b + t * bp->dv_s.t + c] = (float)gv;
                ga = gaa, gb = gbb, gp = gpp;
            }
            bp->dtime_decay[c] += (float)(gw * w);
            bp->dtime_first[c] += (float)gu;
            if (bp->dinitial_state) {
                float *d0 = bp->dinitial_state + b * 3 * C;
                d0[c] = (float)ga, d0[C + c] = (float)gb, d0[2 * C + c] = (float)gp;
            }
        }
    dn_free(st);
    return DN_OK;
}
