/*
 * rwkv4.c - public entry point of the RWKV-4 WKV: checks and dispatch.
 */
#include "internal.h"

#include <string.h>

dn_rwkv4_params dn_rwkv4_params_default(int64_t B, int64_t T, int64_t C) {
    dn_rwkv4_params p;
    memset(&p, 0, sizeof p);
    p.B = B, p.T = T, p.C = C;
    p.k_s = p.v_s = p.y_s = dn_contiguous(T, 1, C);
    p.impl = DN_IMPL_AUTO;
    return p;
}

static dn_status check_shape(const dn_rwkv4_params *p, const char *op) {
    if (p->B < 1 || p->T < 0 || p->C < 1)
        return dn_fail(DN_ERR_SHAPE, "%s: need B, C >= 1 and T >= 0 (B=%lld T=%lld C=%lld)", op,
                       (long long)p->B, (long long)p->T, (long long)p->C);
    if (p->impl != DN_IMPL_AUTO && p->impl != DN_IMPL_REF)
        return dn_fail((unsigned)p->impl < DN_IMPL_COUNT ? DN_ERR_UNSUPPORTED : DN_ERR_ARG,
                       "%s: impl must be auto or ref", op);
    if (p->n_threads < 0) return dn_fail(DN_ERR_ARG, "%s: n_threads is negative", op);
    return DN_OK;
}

/* The forward's inputs (3-D tensors [B,T,C] take n2 = 1). */
static int fwd_args(const dn_rwkv4_params *p, dn_arg *a) {
    const int64_t B = p->B, T = p->T, C = p->C;
    const dn_strides vec = dn_contiguous(1, 1, C), st = dn_contiguous(1, 3, C);
    int n = 0;
    a[n++] = (dn_arg){"k", p->k, p->k_s, B, T, 1, C, 0, 0, 0};
    a[n++] = (dn_arg){"v", p->v, p->v_s, B, T, 1, C, 0, 0, 0};
    a[n++] = (dn_arg){"time_decay", p->time_decay, vec, 1, 1, 1, C, 0, 0, 0};
    a[n++] = (dn_arg){"time_first", p->time_first, vec, 1, 1, 1, C, 0, 0, 0};
    a[n++] = (dn_arg){"initial_state", p->initial_state, st, B, 1, 3, C, 0, 1, 1};
    return n;
}

static dn_status rwkv4_check(const dn_rwkv4_params *p) {
    const char *op = "rwkv4";
    if (!p) return dn_fail(DN_ERR_NULL, "rwkv4 params is NULL");
    dn_status st = check_shape(p, op);
    if (st != DN_OK) return st;
    dn_arg a[DN_MAX_ARGS];
    int n = fwd_args(p, a);
    a[n++] = (dn_arg){"y", p->y, p->y_s, p->B, p->T, 1, p->C, 1, 0, 0};
    a[n++] = dn_arg_flat("final_state", p->final_state, p->B, 1, 3, p->C, 1, 1, 1);
    return dn_check_args(op, a, n);
}

dn_status dn_rwkv4_forward(const dn_rwkv4_params *p) {
    dn_status st = rwkv4_check(p);
    if (st != DN_OK) return st;
    if (p->T == 0) { /* the empty state is num = den = 0, m = -1e38 */
        dn_pass_state(p->final_state, p->initial_state, p->B * 3 * p->C);
        if (p->final_state && !p->initial_state)
            for (int64_t b = 0; b < p->B; b++)
                for (int64_t c = 0; c < p->C; c++)
                    p->final_state[(b * 3 + 2) * p->C + c] = -1e38f;
        return DN_OK;
    }
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
    b.dy_s = b.dk_s = b.dv_s = dn_contiguous(fwd->T, 1, fwd->C);
    return b;
}

dn_status dn_rwkv4_backward(const dn_rwkv4_bwd_params *bp) {
    if (!bp) return dn_fail(DN_ERR_NULL, "rwkv4 backward params is NULL");
    const dn_rwkv4_params *p = &bp->fwd;
    const char *op = "rwkv4 backward";
    dn_status st = check_shape(p, op);
    if (st != DN_OK) return st;
    const int64_t B = p->B, T = p->T, C = p->C;
    const dn_strides vec = dn_contiguous(1, 1, C), sst = dn_contiguous(1, 3, C);
    dn_arg a[DN_MAX_ARGS];
    int n = fwd_args(p, a);
    a[n++] = (dn_arg){"dy", bp->dy, bp->dy_s, B, T, 1, C, 0, 0, 0};
    a[n++] = (dn_arg){"dfinal_state", bp->dfinal_state, sst, B, 1, 3, C, 0, 1, 0};
    a[n++] = (dn_arg){"dk", bp->dk, bp->dk_s, B, T, 1, C, 1, 0, 0};
    a[n++] = (dn_arg){"dv", bp->dv, bp->dv_s, B, T, 1, C, 1, 0, 0};
    a[n++] = (dn_arg){"dtime_decay", bp->dtime_decay, vec, 1, 1, 1, C, 1, 0, 0};
    a[n++] = (dn_arg){"dtime_first", bp->dtime_first, vec, 1, 1, 1, C, 1, 0, 0};
    a[n++] = (dn_arg){"dinitial_state", bp->dinitial_state, sst, B, 1, 3, C, 1, 1, 0};
    if ((st = dn_check_args(op, a, n)) != DN_OK) return st;
    if (T == 0) {
        dn_pass_state(bp->dinitial_state, bp->dfinal_state, B * 3 * C);
        return DN_OK;
    }
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
