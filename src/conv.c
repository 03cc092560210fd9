/*
 * conv.c - public entry point of the short causal depthwise convolution: checks and dispatch.
 */
#include "internal.h"

#include <string.h>

dn_conv_params dn_conv_params_default(int64_t B, int64_t T, int64_t D, int64_t W) {
    dn_conv_params p;
    memset(&p, 0, sizeof p);
    p.B = B, p.T = T, p.D = D, p.W = W;
    p.x_s = p.y_s = (dn_strides){T * D, D, 0};
    p.impl = DN_IMPL_AUTO;
    return p;
}

dn_status dn_conv_forward_check(const dn_conv_params *p) {
    const char *op = "short_conv";
    if (!p) return dn_fail(DN_ERR_NULL, "short_conv params is NULL");
    if (p->B < 1 || p->T < 0 || p->D < 1 || p->T > INT64_MAX / 16 / p->B / p->D)
        return dn_fail(DN_ERR_SHAPE, "short_conv: need B, D >= 1 and T >= 0 (B=%lld T=%lld D=%lld)",
                       (long long)p->B, (long long)p->T, (long long)p->D);
    if (p->W < 2 || p->W > 4)
        return dn_fail(DN_ERR_SHAPE, "short_conv: kernel width W = %lld, must be 2, 3 or 4",
                       (long long)p->W);
    dn_status st;
    if ((st = dn_check_input(op, "x", p->x, p->x_s)) ||
        (st = dn_check_output(op, "y", p->y, p->y_s, p->B, p->T, 1, p->D)))
        return st;
    if (!p->weight) return dn_fail(DN_ERR_NULL, "short_conv: weight [D,W] is required");
    if (p->impl != DN_IMPL_AUTO && p->impl != DN_IMPL_REF)
        return dn_fail((unsigned)p->impl < DN_IMPL_COUNT ? DN_ERR_UNSUPPORTED : DN_ERR_ARG,
                       "short_conv: impl must be auto or ref");
    if (p->n_threads < 0) return dn_fail(DN_ERR_ARG, "short_conv: n_threads is negative");
    return DN_OK;
}

dn_status dn_conv_forward(const dn_conv_params *p) {
    dn_status st = dn_conv_forward_check(p);
    if (st != DN_OK) return st;
    if (p->impl == DN_IMPL_REF) return dn_ref_conv_forward(p);
    dn_cpu()->conv_forward(p, dn_threads_for(p->n_threads));
    return DN_OK;
}

dn_conv_bwd_params dn_conv_bwd_params_default(const dn_conv_params *fwd) {
    dn_conv_bwd_params b;
    memset(&b, 0, sizeof b);
    if (!fwd) return b;
    b.fwd = *fwd;
    b.dy_s = b.dx_s = (dn_strides){fwd->T * fwd->D, fwd->D, 0};
    return b;
}

dn_status dn_conv_backward(const dn_conv_bwd_params *bp) {
    if (!bp) return dn_fail(DN_ERR_NULL, "short_conv backward params is NULL");
    const dn_conv_params *p = &bp->fwd;
    const char *op = "short_conv backward";
    dn_conv_params chk = *p;
    chk.y = bp->dx, chk.y_s = bp->dx_s; /* y is not used: check the rest with dx in its place */
    dn_status st = dn_conv_forward_check(&chk);
    if (st != DN_OK) return st;
    if ((st = dn_check_input(op, "dy", bp->dy, bp->dy_s))) return st;
    if (!bp->dweight) return dn_fail(DN_ERR_NULL, "%s: dweight [D,W] is required", op);
    if ((p->bias != NULL) != (bp->dbias != NULL))
        return dn_fail(DN_ERR_ARG, "%s: dbias must be given exactly when bias is", op);
    if (p->impl == DN_IMPL_REF) return dn_ref_conv_backward(bp);
    const dn_cpu_kernels *kern = dn_cpu();
    const int nt = dn_threads_for(p->n_threads);
    void *owned;
    void *ws = dn_scratch(NULL, 0, kern->conv_bwd_workspace(p, nt), &owned);
    if (!ws) return dn_fail(DN_ERR_ALLOC, "%s: cannot allocate its scratch", op);
    kern->conv_backward(bp, nt, ws);
    dn_free(owned);
    return DN_OK;
}
