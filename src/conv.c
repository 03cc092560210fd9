/*
 * conv.c - public entry point of the short causal depthwise convolution: checks and dispatch.
 */
#include "internal.h"

#include <string.h>

dn_conv_params dn_conv_params_default(int64_t B, int64_t T, int64_t D, int64_t W) {
    dn_conv_params p;
    memset(&p, 0, sizeof p);
    p.B = B, p.T = T, p.D = D, p.W = W;
    p.x_s = p.y_s = dn_contiguous(T, 1, D);
    p.impl = DN_IMPL_AUTO;
    return p;
}

static dn_status check_shape(const dn_conv_params *p, const char *op) {
    if (p->B < 1 || p->T < 0 || p->D < 1)
        return dn_fail(DN_ERR_SHAPE, "%s: need B, D >= 1 and T >= 0 (B=%lld T=%lld D=%lld)", op,
                       (long long)p->B, (long long)p->T, (long long)p->D);
    if (p->W < 2 || p->W > 4)
        return dn_fail(DN_ERR_SHAPE, "%s: kernel width W = %lld, must be 2, 3 or 4", op,
                       (long long)p->W);
    if (p->impl != DN_IMPL_AUTO && p->impl != DN_IMPL_REF)
        return dn_fail((unsigned)p->impl < DN_IMPL_COUNT ? DN_ERR_UNSUPPORTED : DN_ERR_ARG,
                       "%s: impl must be auto or ref", op);
    if (p->n_threads < 0) return dn_fail(DN_ERR_ARG, "%s: n_threads is negative", op);
    return DN_OK;
}

/* The forward's inputs (3-D tensors [B,T,D] take n2 = 1; states [B,D,W-1]). */
static int fwd_args(const dn_conv_params *p, dn_arg *a) {
    const int64_t B = p->B, T = p->T, D = p->D, W = p->W;
    int n = 0;
    a[n++] = (dn_arg){"x", p->x, p->x_s, B, T, 1, D, 0, 0, 0};
    a[n++] = dn_arg_flat("weight", p->weight, 1, 1, D, W, 0, 0, 0);
    a[n++] = dn_arg_flat("bias", p->bias, 1, 1, 1, D, 0, 1, 0);
    a[n++] = dn_arg_flat("initial_state", p->initial_state, B, 1, D, W - 1, 0, 1, 1);
    return n;
}

static dn_status conv_check(const dn_conv_params *p) {
    const char *op = "short_conv";
    if (!p) return dn_fail(DN_ERR_NULL, "short_conv params is NULL");
    dn_status st = check_shape(p, op);
    if (st != DN_OK) return st;
    dn_arg a[DN_MAX_ARGS];
    int n = fwd_args(p, a);
    a[n++] = (dn_arg){"y", p->y, p->y_s, p->B, p->T, 1, p->D, 1, 0, 0};
    a[n++] = dn_arg_flat("final_state", p->final_state, p->B, 1, p->D, p->W - 1, 1, 1, 1);
    return dn_check_args(op, a, n);
}

dn_status dn_conv_forward(const dn_conv_params *p) {
    dn_status st = conv_check(p);
    if (st != DN_OK) return st;
    /* no tokens and no final state: nothing to write (B x D may be huge when T = 0) */
    if (p->T == 0 && !p->final_state) return DN_OK;
    if (p->impl == DN_IMPL_REF) return dn_ref_conv_forward(p);
    dn_cpu()->conv_forward(p, dn_threads_for(p->n_threads));
    return DN_OK;
}

dn_conv_bwd_params dn_conv_bwd_params_default(const dn_conv_params *fwd) {
    dn_conv_bwd_params b;
    memset(&b, 0, sizeof b);
    if (!fwd) return b;
    b.fwd = *fwd;
    b.dy_s = b.dx_s = dn_contiguous(fwd->T, 1, fwd->D);
    return b;
}

dn_status dn_conv_backward(const dn_conv_bwd_params *bp) {
    if (!bp) return dn_fail(DN_ERR_NULL, "short_conv backward params is NULL");
    const dn_conv_params *p = &bp->fwd;
    const char *op = "short_conv backward";
    dn_status st = check_shape(p, op);
    if (st != DN_OK) return st;
    if ((p->bias != NULL) != (bp->dbias != NULL))
        return dn_fail(DN_ERR_ARG, "%s: dbias must be given exactly when bias is", op);
    const int64_t B = p->B, T = p->T, D = p->D, W = p->W;
    dn_arg a[DN_MAX_ARGS];
    int n = fwd_args(p, a);
    a[n++] = (dn_arg){"dy", bp->dy, bp->dy_s, B, T, 1, D, 0, 0, 0};
    a[n++] = dn_arg_flat("dfinal_state", bp->dfinal_state, B, 1, D, W - 1, 0, 1, 0);
    a[n++] = (dn_arg){"dx", bp->dx, bp->dx_s, B, T, 1, D, 1, 0, 0};
    a[n++] = dn_arg_flat("dweight", bp->dweight, 1, 1, D, W, 1, 0, 0);
    a[n++] = dn_arg_flat("dbias", bp->dbias, 1, 1, 1, D, 1, 1, 0);
    a[n++] = dn_arg_flat("dinitial_state", bp->dinitial_state, B, 1, D, W - 1, 1, 1, 0);
    if ((st = dn_check_args(op, a, n)) != DN_OK) return st;
    /* no tokens and no dinitial_state: dx is empty and dweight, dbias gain nothing; return at
     * once rather than walk B x D (B may be huge when T = 0) */
    if (T == 0 && !bp->dinitial_state) return DN_OK;
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
