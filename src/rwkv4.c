/*
 * rwkv4.c - public entry point of the RWKV-4 WKV: checks and dispatch.
 */
#include "internal.h"

#include <string.h>

dn_rwkv4_params dn_rwkv4_params_default(int64_t B, int64_t T, int64_t C) {
    dn_rwkv4_params p;
    memset(&p, 0, sizeof p);
    p.B = B, p.T = T, p.C = C;
    p.k_s = p.v_s = p.y_s = (dn_strides){T * C, C, 0};
    p.impl = DN_IMPL_AUTO;
    return p;
}

static dn_status rwkv4_check(const dn_rwkv4_params *p) {
    const char *op = "rwkv4";
    if (!p) return dn_fail(DN_ERR_NULL, "rwkv4 params is NULL");
    if (p->B < 1 || p->T < 0 || p->C < 1 || p->T > INT64_MAX / 16 / p->B / p->C)
        return dn_fail(DN_ERR_SHAPE, "rwkv4: need B, C >= 1 and T >= 0 (B=%lld T=%lld C=%lld)",
                       (long long)p->B, (long long)p->T, (long long)p->C);
    dn_status st;
    if ((st = dn_check_input(op, "k", p->k, p->k_s)) || (st = dn_check_input(op, "v", p->v, p->v_s)) ||
        (st = dn_check_output(op, "y", p->y, p->y_s, p->B, p->T, 1, p->C)))
        return st;
    if (!p->time_decay || !p->time_first)
        return dn_fail(DN_ERR_NULL, "rwkv4: time_decay and time_first [C] are required");
    if (p->impl != DN_IMPL_AUTO && p->impl != DN_IMPL_REF)
        return dn_fail((unsigned)p->impl < DN_IMPL_COUNT ? DN_ERR_UNSUPPORTED : DN_ERR_ARG,
                       "rwkv4: impl must be auto or ref");
    if (p->n_threads < 0) return dn_fail(DN_ERR_ARG, "rwkv4: n_threads is negative");
    return DN_OK;
}

dn_status dn_rwkv4_forward(const dn_rwkv4_params *p) {
    dn_status st = rwkv4_check(p);
    if (st != DN_OK) return st;
    if (p->impl == DN_IMPL_REF) return dn_ref_rwkv4_forward(p);
    const dn_cpu_kernels *kern = dn_cpu();
    const int nt = dn_threads_for(p->n_threads);
    void *owned;
    void *ws = dn_scratch(NULL, 0, kern->rwkv4_workspace(p, nt), &owned);
    if (!ws) return dn_fail(DN_ERR_ALLOC, "rwkv4: cannot allocate the states");
    kern->rwkv4_forward(p, nt, ws);
    dn_free(owned);
    return DN_OK;
}

dn_rwkv4_bwd_params dn_rwkv4_bwd_params_default(const dn_rwkv4_params *fwd) {
    dn_rwkv4_bwd_params b;
    memset(&b, 0, sizeof b);
    if (!fwd) return b;
    b.fwd = *fwd;
    b.dy_s = b.dk_s = b.dv_s = (dn_strides){fwd->T * fwd->C, fwd->C, 0};
    return b;
}

dn_status dn_rwkv4_backward(const dn_rwkv4_bwd_params *bp) {
    if (!bp) return dn_fail(DN_ERR_NULL, "rwkv4 backward params is NULL");
    const dn_rwkv4_params *p = &bp->fwd;
    const char *op = "rwkv4 backward";
    dn_rwkv4_params chk = *p;
    chk.y = bp->dk, chk.y_s = bp->dk_s;
    dn_status st = rwkv4_check(&chk);
    if (st != DN_OK) return st;
    if ((st = dn_check_input(op, "dy", bp->dy, bp->dy_s)) ||
        (st = dn_check_output(op, "dv", bp->dv, bp->dv_s, p->B, p->T, 1, p->C)))
        return st;
    if (!bp->dtime_decay || !bp->dtime_first)
        return dn_fail(DN_ERR_NULL, "%s: dtime_decay and dtime_first [C] are required", op);
    if (p->impl == DN_IMPL_REF) return dn_ref_rwkv4_backward(bp);
    const dn_cpu_kernels *kern = dn_cpu();
    const int nt = dn_threads_for(p->n_threads);
    void *owned;
    void *ws = dn_scratch(NULL, 0, kern->rwkv4_bwd_workspace(p, nt), &owned);
    if (!ws) return dn_fail(DN_ERR_ALLOC, "%s: cannot allocate the per-token states", op);
    kern->rwkv4_backward(bp, nt, ws);
    dn_free(owned);
    return DN_OK;
}
