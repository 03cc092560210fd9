/*
 * sample.c - drawing the next token from logits: greedy, temperature, top-k and top-p (nucleus)
 * sampling, with the caller's RNG state so that a seed reproduces a generation.
 */
#include "nn.h"

#include <string.h>

typedef struct {
    float p;
    int32_t i;
} cand;

/* descending probability, then ascending index: a total order, so the result is the same with
 * any sort */
static int by_prob(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

dn_sample_params dn_sample_params_default(void) {
    return (dn_sample_params){.temperature = 0.8, .top_k = 0, .top_p = 0.95};
}

dn_status dn_sample(int32_t *out, const float *logits, int64_t V, const dn_sample_params *p,
                    uint64_t *rng_state) {
    if (!out || !logits || !p || !rng_state) return dn_fail(DN_ERR_NULL, "sample: NULL argument");
    if (V < 1 || V > ((int64_t)1 << 31) - 1)
        return dn_fail(DN_ERR_SHAPE, "sample: vocabulary %lld", (long long)V);
    if (!(p->temperature >= 0 && p->temperature < 1e6) || p->top_k < 0 ||
        !(p->top_p > 0 && p->top_p <= 1))
        return dn_fail(DN_ERR_ARG, "sample: need temperature >= 0, top_k >= 0, 0 < top_p <= 1");
    int64_t best = -1;
    for (int64_t j = 0; j < V; j++)
        if (!isnan(logits[j]) && (best < 0 || logits[j] > logits[best])) best = j;
    if (best < 0) return dn_fail(DN_ERR_ARG, "sample: every logit is NaN");
    if (p->temperature == 0 || p->top_k == 1) {
        *out = (int32_t)best;
        return DN_OK;
    }
    cand *c = dn_alloc((size_t)V * sizeof *c);
    if (!c) return dn_fail(DN_ERR_ALLOC, "sample: cannot allocate %lld candidates", (long long)V);
    double sum = 0;
    for (int64_t j = 0; j < V; j++) {
        const double z = isnan(logits[j]) ? -INFINITY : (logits[j] - logits[best]) / p->temperature;
        c[j].p = (float)exp(z), c[j].i = (int32_t)j;
        sum += c[j].p;
    }
    qsort(c, (size_t)V, sizeof *c, by_prob);
    int64_t n = p->top_k > 0 && p->top_k < V ? p->top_k : V;
    double kept = 0; /* the smallest prefix holding top_p of the mass (at least one token) */
    for (int64_t j = 0; j < n; j++) {
        kept += c[j].p;
        if (kept >= p->top_p * sum) {
            n = j + 1;
            break;
        }
    }
    double mass = 0;
    for (int64_t j = 0; j < n; j++)
        mass += c[j].p;
    dn_rng r = {*rng_state};
    const double u = dn_rng_uniform(&r) * mass;
    *rng_state = r.s;
    double acc = 0;
    int32_t pick = c[n - 1].i;
    for (int64_t j = 0; j < n; j++) {
        acc += c[j].p;
        if (u < acc) {
            pick = c[j].i;
            break;
        }
    }
    dn_free(c);
    *out = pick;
    return DN_OK;
}
