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
                p->y[b * p->y_s.b + t * p->y_s.t + c] = (float)((e1 * num + e2 * v) / (e1 * den + e2));
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
