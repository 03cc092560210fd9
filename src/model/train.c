/*
 * train.c - AdamW with decoupled weight decay and global-norm clipping, and the warmup + cosine
 * learning-rate schedule (see the training section of include/deltanet.h).
 *
 * The update is elementwise and the gradient norm is summed in fixed blocks in a fixed order, so
 * a training run gives the same parameters at every thread count.
 */
#include "model.h"

#include <string.h>

struct dn_adamw {
    dn_adamw_config c;
    int64_t n, step;
    float *m1, *m2;
    uint8_t *decay; /* per parameter: 1 where weight decay applies */
};

dn_adamw_config dn_adamw_config_default(void) {
    return (dn_adamw_config){
        .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1, .grad_clip = 1.0};
}

dn_status dn_adamw_create(dn_adamw **out, const dn_model *m, const dn_adamw_config *c) {
    if (!out || !m || !c) return dn_fail(DN_ERR_NULL, "adamw_create: NULL argument");
    if (!(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1) ||
        !(c->eps > 0 && c->eps < 1) || !(c->weight_decay >= 0 && c->weight_decay < 1e3) ||
        !(c->grad_clip >= 0 && c->grad_clip < INFINITY))
        return dn_fail(DN_ERR_ARG,
                       "adamw_create: need 0 <= beta1, beta2 < 1, 0 < eps < 1, weight_decay >= 0 "
                       "and a finite grad_clip >= 0 (0: no clipping)");
    const int64_t n = dn_model_num_params(m);
    dn_adamw *o = dn_calloc(sizeof *o);
    if (o) {
        o->m1 = dn_calloc((size_t)n * sizeof(float));
        o->m2 = dn_calloc((size_t)n * sizeof(float));
        o->decay = dn_calloc((size_t)n);
    }
    if (!o || !o->m1 || !o->m2 || !o->decay) {
        dn_adamw_free(o);
        return dn_fail(DN_ERR_ALLOC, "adamw_create: cannot allocate the moments");
    }
    o->c = *c, o->n = n;
    for (int64_t t = 0; t < dn_model_num_tensors(m); t++) {
        dn_param_info ti;
        dn_model_param_info(m, t, &ti);
        if (ti.decay) memset(o->decay + ti.offset, 1, (size_t)ti.numel);
    }
    *out = o;
    return DN_OK;
}

void dn_adamw_free(dn_adamw *o) {
    if (!o) return;
    dn_free(o->m1);
    dn_free(o->m2);
    dn_free(o->decay);
    dn_free(o);
}

int64_t dn_adamw_get_step(const dn_adamw *o) { return o ? o->step : 0; }

dn_status dn_adamw_state(dn_adamw *o, int64_t *step, float **m1, float **m2) {
    if (!o) return dn_fail(DN_ERR_NULL, "adamw_state: optimizer is NULL");
    if (step) *step = o->step;
    if (m1) *m1 = o->m1;
    if (m2) *m2 = o->m2;
    return DN_OK;
}

dn_status dn_adamw_set_step(dn_adamw *o, int64_t step) {
    if (!o) return dn_fail(DN_ERR_NULL, "adamw_set_step: optimizer is NULL");
    if (step < 0) return dn_fail(DN_ERR_ARG, "adamw_set_step: negative step");
    o->step = step;
    return DN_OK;
}

/* sum of g^2 in blocks of 4096 summed in order: the same at every thread count */
static double grad_norm(const float *g, int64_t n) {
    const int64_t bs = 4096, nb = (n + bs - 1) / bs;
    double *part = dn_alloc((size_t)(nb > 0 ? nb : 1) * sizeof(double));
    double s = 0;
    if (!part) { /* fall back to one thread, same blocks */
        for (int64_t b = 0; b < nb; b++) {
            double p = 0;
            for (int64_t i = b * bs; i < n && i < (b + 1) * bs; i++)
                p += (double)g[i] * g[i];
            s += p;
        }
        return sqrt(s);
    }
    DN_PARALLEL_FOR(n)
    for (int64_t b = 0; b < nb; b++) {
        double p = 0;
        for (int64_t i = b * bs; i < n && i < (b + 1) * bs; i++)
            p += (double)g[i] * g[i];
        part[b] = p;
    }
    for (int64_t b = 0; b < nb; b++)
        s += part[b];
    dn_free(part);
    return sqrt(s);
}

dn_status dn_adamw_step(dn_adamw *o, dn_model *m, double lr, double *norm_out) {
    if (!o || !m) return dn_fail(DN_ERR_NULL, "adamw_step: NULL optimizer or model");
    if (o->n != dn_model_num_params(m))
        return dn_fail(DN_ERR_ARG, "adamw_step: optimizer made for another model");
    if (!(lr >= 0 && lr < INFINITY)) return dn_fail(DN_ERR_ARG, "adamw_step: lr %g", lr);
    float *p = dn_model_params(m), *g = dn_model_grads(m);
    const double norm = grad_norm(g, o->n);
    if (norm_out) *norm_out = norm;
    if (!isfinite(norm))
        return dn_fail(DN_ERR_ARG, "adamw_step: the gradient norm is not finite (%g)", norm);
    const double clip = o->c.grad_clip > 0 && norm > o->c.grad_clip ? o->c.grad_clip / norm : 1.0;
    const int64_t t = o->step + 1;
    const double b1 = o->c.beta1, b2 = o->c.beta2, eps = o->c.eps, wd = o->c.weight_decay;
    const double c1 = 1.0 / (1.0 - pow(b1, (double)t)), c2 = 1.0 / (1.0 - pow(b2, (double)t));
    const float fclip = (float)clip;
    DN_PARALLEL_FOR(o->n)
    for (int64_t i = 0; i < o->n; i++) {
        const float gi = g[i] * fclip;
        g[i] = gi;
        const float m1 = (float)(b1 * o->m1[i] + (1 - b1) * gi);
        const float m2 = (float)(b2 * o->m2[i] + (1 - b2) * (double)gi * gi);
        o->m1[i] = m1, o->m2[i] = m2;
        double upd = (m1 * c1) / (sqrt(m2 * c2) + eps);
        if (o->decay[i]) upd += wd * p[i];
        p[i] = (float)(p[i] - lr * upd);
    }
    o->step = t;
    return DN_OK;
}

double dn_lr_at(int64_t step, int64_t warmup, int64_t total, double peak, double min_ratio) {
    if (step < warmup) return peak * (double)(step + 1) / (double)warmup;
    if (total <= warmup) return peak;
    double f = (double)(step - warmup) / (double)(total - warmup);
    if (f > 1) f = 1;
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(3.141592653589793 * f)));
}
