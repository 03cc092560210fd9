/*
 * mamba.c - public entry points of the Mamba selective scans: argument checks, Mamba-1 dispatch,
 * and Mamba-2 expressed through the scalar-gated linear attention op.
 */
#include "internal.h"

#include <math.h>
#include <string.h>

dn_mamba_params dn_mamba_params_default(int64_t B, int64_t T, int64_t D, int64_t N, int64_t G) {
    dn_mamba_params p;
    memset(&p, 0, sizeof p);
    p.B = B, p.T = T, p.D = D, p.N = N, p.G = G;
    p.x_s = p.dt_s = p.z_s = p.y_s = dn_contiguous(T, 1, D);
    p.Bm_s = p.Cm_s = dn_contiguous(T, G, N);
    p.impl = DN_IMPL_AUTO;
    return p;
}

static dn_status check_impl(const char *op, dn_impl impl, int n_threads) {
    if (impl != DN_IMPL_AUTO && impl != DN_IMPL_REF)
        return dn_fail((unsigned)impl < DN_IMPL_COUNT ? DN_ERR_UNSUPPORTED : DN_ERR_ARG,
                       "%s: impl must be auto or ref, not %d", op, (int)impl);
    if (n_threads < 0) return dn_fail(DN_ERR_ARG, "%s: n_threads is negative", op);
    return DN_OK;
}

/* A is a decay rate: A <= 0 (NaN passes through as data). A cheap pass over [n] values. */
static dn_status check_A(const char *op, const float *A, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (A[i] > 0)
            return dn_fail(DN_ERR_ARG, "%s: A[%lld] = %g is positive (A must be <= 0)", op,
                           (long long)i, (double)A[i]);
    return DN_OK;
}

static dn_status mamba1_shape(const dn_mamba_params *p, const char *op) {
    if (p->B < 1 || p->T < 0 || p->D < 1 || p->N < 1 || p->G < 1 || p->D % p->G)
        return dn_fail(DN_ERR_SHAPE,
                       "%s: need B, D, N, G >= 1, T >= 0, D %% G == 0 (B=%lld "
                       "T=%lld D=%lld N=%lld G=%lld)",
                       op, (long long)p->B, (long long)p->T, (long long)p->D, (long long)p->N,
                       (long long)p->G);
    if (p->N > 4096)
        return dn_fail(DN_ERR_SHAPE, "%s: N = %lld is above 4096", op, (long long)p->N);
    /* the backward keeps B T D N floats of checkpoints at most */
    int64_t n;
    if (p->T == INT64_MAX || !DN_PROD(&n, p->B, p->T + 1, p->D, p->N, (int64_t)(4 * sizeof(float))))
        return dn_fail(DN_ERR_SHAPE, "%s: sizes overflow 64-bit indexing", op);
    return check_impl(op, p->impl, p->n_threads);
}

static int mamba1_args(const dn_mamba_params *p, dn_arg *a) {
    const int64_t B = p->B, T = p->T, D = p->D, N = p->N, G = p->G;
    const dn_strides vec = dn_contiguous(1, 1, D), st = dn_contiguous(1, D, N);
    int n = 0;
    a[n++] = (dn_arg){"x", p->x, p->x_s, B, T, 1, D, 0, 0, 0};
    a[n++] = (dn_arg){"dt", p->dt, p->dt_s, B, T, 1, D, 0, 0, 0};
    a[n++] = (dn_arg){"A", p->A, st, 1, 1, D, N, 0, 0, 0};
    a[n++] = (dn_arg){"Bm", p->Bm, p->Bm_s, B, T, G, N, 0, 0, 0};
    a[n++] = (dn_arg){"Cm", p->Cm, p->Cm_s, B, T, G, N, 0, 0, 0};
    a[n++] = (dn_arg){"Dskip", p->Dskip, vec, 1, 1, 1, D, 0, 1, 0};
    a[n++] = (dn_arg){"dt_bias", p->dt_bias, vec, 1, 1, 1, D, 0, 1, 0};
    a[n++] = (dn_arg){"z", p->z, p->z_s, B, T, 1, D, 0, 1, 0};
    a[n++] = (dn_arg){"initial_state", p->initial_state, st, B, 1, D, N, 0, 1, 1};
    return n;
}

static dn_status mamba1_check(const dn_mamba_params *p) {
    const char *op = "mamba1";
    if (!p) return dn_fail(DN_ERR_NULL, "mamba1 params is NULL");
    dn_status st = mamba1_shape(p, op);
    if (st != DN_OK) return st;
    dn_arg a[DN_MAX_ARGS];
    int n = mamba1_args(p, a);
    a[n++] = (dn_arg){"y", p->y, p->y_s, p->B, p->T, 1, p->D, 1, 0, 0};
    a[n++] = dn_arg_flat("final_state", p->final_state, p->B, 1, p->D, p->N, 1, 1, 1);
    if ((st = dn_check_args(op, a, n)) != DN_OK) return st;
    return check_A(op, p->A, p->D * p->N);
}

dn_status dn_mamba_forward(const dn_mamba_params *p) {
    dn_status st = mamba1_check(p);
    if (st != DN_OK) return st;
    if (p->T == 0) {
        dn_pass_state(p->final_state, p->initial_state, p->B * p->D * p->N);
        return DN_OK;
    }
    if (p->impl == DN_IMPL_REF) return dn_ref_mamba_forward(p);
    const dn_cpu_kernels *kern = dn_cpu();
    const int nt = dn_threads_for(p->n_threads);
    void *owned;
    void *ws = dn_scratch(NULL, 0, kern->mamba_workspace(p, nt), &owned);
    if (!ws) return dn_fail(DN_ERR_ALLOC, "mamba1: cannot allocate the states");
    kern->mamba_forward(p, nt, ws);
    dn_free(owned);
    return DN_OK;
}

dn_mamba_bwd_params dn_mamba_bwd_params_default(const dn_mamba_params *fwd) {
    dn_mamba_bwd_params b;
    memset(&b, 0, sizeof b);
    if (!fwd) return b;
    b.fwd = *fwd;
    const int64_t T = fwd->T, D = fwd->D, G = fwd->G, N = fwd->N;
    b.dy_s = b.dx_s = b.ddt_s = b.dz_s = dn_contiguous(T, 1, D);
    b.dBm_s = b.dCm_s = dn_contiguous(T, G, N);
    return b;
}

dn_status dn_mamba_backward(const dn_mamba_bwd_params *bp) {
    if (!bp) return dn_fail(DN_ERR_NULL, "mamba1 backward params is NULL");
    const dn_mamba_params *p = &bp->fwd;
    const char *op = "mamba1 backward";
    dn_status st = mamba1_shape(p, op);
    if (st != DN_OK) return st;
    if ((p->z != NULL) != (bp->dz != NULL) || (p->Dskip != NULL) != (bp->dDskip != NULL) ||
        (p->dt_bias != NULL) != (bp->ddt_bias != NULL))
        return dn_fail(DN_ERR_ARG,
                       "%s: dz, dDskip and ddt_bias must be given exactly when z, Dskip "
                       "and dt_bias are",
                       op);
    const int64_t B = p->B, T = p->T, D = p->D, N = p->N, G = p->G;
    const dn_strides vec = dn_contiguous(1, 1, D), sst = dn_contiguous(1, D, N);
    dn_arg a[DN_MAX_ARGS];
    int n = mamba1_args(p, a);
    a[n++] = (dn_arg){"dy", bp->dy, bp->dy_s, B, T, 1, D, 0, 0, 0};
    a[n++] = (dn_arg){"dfinal_state", bp->dfinal_state, sst, B, 1, D, N, 0, 1, 0};
    a[n++] = (dn_arg){"dx", bp->dx, bp->dx_s, B, T, 1, D, 1, 0, 0};
    a[n++] = (dn_arg){"ddt", bp->ddt, bp->ddt_s, B, T, 1, D, 1, 0, 0};
    a[n++] = (dn_arg){"dBm", bp->dBm, bp->dBm_s, B, T, G, N, 1, 0, 0};
    a[n++] = (dn_arg){"dCm", bp->dCm, bp->dCm_s, B, T, G, N, 1, 0, 0};
    a[n++] = (dn_arg){"dz", bp->dz, bp->dz_s, B, T, 1, D, 1, 1, 0};
    a[n++] = (dn_arg){"dA", bp->dA, sst, 1, 1, D, N, 1, 0, 0};
    a[n++] = (dn_arg){"dDskip", bp->dDskip, vec, 1, 1, 1, D, 1, 1, 0};
    a[n++] = (dn_arg){"ddt_bias", bp->ddt_bias, vec, 1, 1, 1, D, 1, 1, 0};
    a[n++] = (dn_arg){"dinitial_state", bp->dinitial_state, sst, B, 1, D, N, 1, 1, 0};
    if ((st = dn_check_args(op, a, n)) != DN_OK) return st;
    if ((st = check_A(op, p->A, D * N)) != DN_OK) return st;
    if (T == 0) {
        dn_pass_state(bp->dinitial_state, bp->dfinal_state, B * D * N);
        return DN_OK;
    }
    if (p->impl == DN_IMPL_REF) return dn_ref_mamba_backward(bp);
    const dn_cpu_kernels *kern = dn_cpu();
    const int nt = dn_threads_for(p->n_threads);
    void *owned;
    void *ws = dn_scratch(NULL, 0, kern->mamba_bwd_workspace(p, nt), &owned);
    if (!ws)
        return dn_fail(DN_ERR_ALLOC, "%s: cannot allocate the checkpoints and accumulators", op);
    kern->mamba_backward(bp, nt, ws);
    dn_free(owned);
    return DN_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Mamba-2
 * ------------------------------------------------------------------------------------------- */
dn_mamba2_params dn_mamba2_params_default(int64_t B, int64_t T, int64_t H, int64_t P, int64_t N,
                                          int64_t G) {
    dn_mamba2_params p;
    memset(&p, 0, sizeof p);
    p.B = B, p.T = T, p.H = H, p.P = P, p.N = N, p.G = G;
    p.x_s = p.y_s = dn_contiguous(T, H, P);
    p.dt_s = dn_contiguous(T, H, 1);
    p.Bm_s = p.Cm_s = dn_contiguous(T, G, N);
    p.impl = DN_IMPL_AUTO;
    p.chunk_size = 64;
    return p;
}

static dn_status mamba2_shape(const dn_mamba2_params *p, const char *op) {
    if (p->B < 1 || p->T < 0 || p->H < 1 || p->P < 1 || p->N < 1 || p->G < 1 || p->H % p->G)
        return dn_fail(DN_ERR_SHAPE,
                       "%s: need B, H, P, N, G >= 1, T >= 0, H %% G == 0 (B=%lld "
                       "T=%lld H=%lld P=%lld N=%lld G=%lld)",
                       op, (long long)p->B, (long long)p->T, (long long)p->H, (long long)p->P,
                       (long long)p->N, (long long)p->G);
    if (p->N > DN_LA_MAX_DIM || p->P > DN_LA_MAX_DIM)
        return dn_fail(DN_ERR_SHAPE, "%s: N (%lld) and P (%lld) must be at most %d", op,
                       (long long)p->N, (long long)p->P, DN_LA_MAX_DIM);
    if ((unsigned)p->impl >= DN_IMPL_COUNT)
        return dn_fail(DN_ERR_ARG, "%s: impl %d is unknown", op, (int)p->impl);
    if (p->n_threads < 0) return dn_fail(DN_ERR_ARG, "%s: n_threads is negative", op);
    if (p->chunk_size != 16 && p->chunk_size != 32 && p->chunk_size != 64 && p->chunk_size != 128)
        return dn_fail(DN_ERR_ARG, "%s: chunk_size %d is not one of 16, 32, 64, 128", op,
                       p->chunk_size);
    return DN_OK;
}

static int mamba2_args(const dn_mamba2_params *p, dn_arg *a) {
    const int64_t B = p->B, T = p->T, H = p->H, P = p->P, N = p->N, G = p->G;
    const dn_strides vec = dn_contiguous(1, 1, H), st = dn_contiguous(H, N, P);
    int n = 0;
    a[n++] = (dn_arg){"x", p->x, p->x_s, B, T, H, P, 0, 0, 0};
    a[n++] = (dn_arg){"dt", p->dt, p->dt_s, B, T, H, 1, 0, 0, 0};
    a[n++] = (dn_arg){"A", p->A, vec, 1, 1, 1, H, 0, 0, 0};
    a[n++] = (dn_arg){"Bm", p->Bm, p->Bm_s, B, T, G, N, 0, 0, 0};
    a[n++] = (dn_arg){"Cm", p->Cm, p->Cm_s, B, T, G, N, 0, 0, 0};
    a[n++] = (dn_arg){"Dskip", p->Dskip, vec, 1, 1, 1, H, 0, 1, 0};
    a[n++] = (dn_arg){"dt_bias", p->dt_bias, vec, 1, 1, 1, H, 0, 1, 0};
    a[n++] = (dn_arg){"initial_state", p->initial_state, st, B, H, N, P, 0, 1, 1};
    return n;
}

static dn_status mamba2_check(const dn_mamba2_params *p) {
    const char *op = "mamba2";
    if (!p) return dn_fail(DN_ERR_NULL, "mamba2 params is NULL");
    dn_status st = mamba2_shape(p, op);
    if (st != DN_OK) return st;
    dn_arg a[DN_MAX_ARGS];
    int n = mamba2_args(p, a);
    a[n++] = (dn_arg){"y", p->y, p->y_s, p->B, p->T, p->H, p->P, 1, 0, 0};
    a[n++] = dn_arg_flat("final_state", p->final_state, p->B, p->H, p->N, p->P, 1, 1, 1);
    if ((st = dn_check_args(op, a, n)) != DN_OK) return st;
    return check_A(op, p->A, p->H);
}

/*
 * The Mamba-2 -> GLA parameter mapping (docs/OPS.md): with dt' = softplus(dt + dt_bias),
 *   g = dt' A[h]   (log decay per head and token)     k = Bm (one key head per group)
 *   q = Cm                                            v = dt' x (the input, scaled per token)
 *   scale = 1                                         state [B,H,N,P] = GLA's [B,HV,K,V]
 * and the skip term Dskip[h] x is added to GLA's output.
 */
dn_status dn_mamba2_forward(const dn_mamba2_params *p) {
    dn_status st = mamba2_check(p);
    if (st != DN_OK) return st;
    if (p->T == 0) {
        dn_pass_state(p->final_state, p->initial_state, p->B * p->H * p->N * p->P);
        return DN_OK;
    }
    if (p->impl == DN_IMPL_REF) return dn_ref_mamba2_forward(p);

    const int64_t B = p->B, T = p->T, H = p->H, P = p->P;
    float *g = dn_alloc(sizeof(float) * (size_t)(B * T * H + 1));
    float *v = dn_alloc(sizeof(float) * (size_t)(B * T * H * P + 1));
    if (!g || !v) {
        dn_free(g), dn_free(v);
        return dn_fail(DN_ERR_ALLOC, "mamba2: cannot allocate v and g for %lld tokens",
                       (long long)(B * T));
    }
    const dn_cpu_kernels *kern = dn_cpu();
    const int nt = dn_threads_for(p->n_threads);
    kern->mamba2_prepare(p, g, v, NULL, nt);
    dn_la_params la = dn_la_params_default(DN_OP_GLA, B, T, p->G, H, p->N, P);
    la.q = p->Cm, la.q_s = p->Cm_s;
    la.k = p->Bm, la.k_s = p->Bm_s;
    la.v = v;
    la.g = g;
    la.o = p->y, la.o_s = p->y_s;
    la.initial_state = p->initial_state;
    la.final_state = p->final_state;
    la.scale = 1.0f;
    la.chunk_size = p->chunk_size;
    la.impl = p->impl;
    la.n_threads = p->n_threads;
    st = dn_la_forward(&la);
    if (st == DN_OK) kern->mamba2_finish(p, nt);
    dn_free(g), dn_free(v);
    return st;
}

dn_mamba2_bwd_params dn_mamba2_bwd_params_default(const dn_mamba2_params *fwd) {
    dn_mamba2_bwd_params b;
    memset(&b, 0, sizeof b);
    if (!fwd) return b;
    b.fwd = *fwd;
    const int64_t T = fwd->T, H = fwd->H, P = fwd->P, G = fwd->G, N = fwd->N;
    b.dy_s = b.dx_s = dn_contiguous(T, H, P);
    b.ddt_s = dn_contiguous(T, H, 1);
    b.dBm_s = b.dCm_s = dn_contiguous(T, G, N);
    return b;
}

/* GLA on (q, k, v, g) = (Cm, Bm, dt' x, dt' A): its gradients dq, dk, dv, dg give
 * dCm = dq, dBm = dk, dx = dt' dv + Dskip dy, ddt' = dv . x + A dg, dA += sum dt' dg,
 * dDskip += sum dy . x, then ddt = ddt' sigmoid(dt + dt_bias) under the softplus. */
dn_status dn_mamba2_backward(const dn_mamba2_bwd_params *bp) {
    if (!bp) return dn_fail(DN_ERR_NULL, "mamba2 backward params is NULL");
    const dn_mamba2_params *p = &bp->fwd;
    const char *op = "mamba2 backward";
    dn_status st = mamba2_shape(p, op);
    if (st != DN_OK) return st;
    if ((p->Dskip != NULL) != (bp->dDskip != NULL) ||
        (p->dt_bias != NULL) != (bp->ddt_bias != NULL))
        return dn_fail(DN_ERR_ARG,
                       "%s: dDskip and ddt_bias must be given exactly when Dskip and "
                       "dt_bias are",
                       op);
    {
        const int64_t B = p->B, T = p->T, H = p->H, P = p->P, N = p->N, G = p->G;
        const dn_strides vec = dn_contiguous(1, 1, H), sst = dn_contiguous(H, N, P);
        dn_arg a[DN_MAX_ARGS];
        int n = mamba2_args(p, a);
        a[n++] = (dn_arg){"dy", bp->dy, bp->dy_s, B, T, H, P, 0, 0, 0};
        a[n++] = (dn_arg){"dfinal_state", bp->dfinal_state, sst, B, H, N, P, 0, 1, 0};
        a[n++] = (dn_arg){"dx", bp->dx, bp->dx_s, B, T, H, P, 1, 0, 0};
        a[n++] = (dn_arg){"ddt", bp->ddt, bp->ddt_s, B, T, H, 1, 1, 0, 0};
        a[n++] = (dn_arg){"dBm", bp->dBm, bp->dBm_s, B, T, G, N, 1, 0, 0};
        a[n++] = (dn_arg){"dCm", bp->dCm, bp->dCm_s, B, T, G, N, 1, 0, 0};
        a[n++] = (dn_arg){"dA", bp->dA, vec, 1, 1, 1, H, 1, 0, 0};
        a[n++] = (dn_arg){"dDskip", bp->dDskip, vec, 1, 1, 1, H, 1, 1, 0};
        a[n++] = (dn_arg){"ddt_bias", bp->ddt_bias, vec, 1, 1, 1, H, 1, 1, 0};
        a[n++] = (dn_arg){"dinitial_state", bp->dinitial_state, sst, B, H, N, P, 1, 1, 0};
        if ((st = dn_check_args(op, a, n)) != DN_OK) return st;
        if ((st = check_A(op, p->A, H)) != DN_OK) return st;
    }
    if (p->impl == DN_IMPL_RECURRENT)
        return dn_fail(DN_ERR_UNSUPPORTED, "%s: the backward is chunkwise (or DN_IMPL_REF)", op);
    if (p->T == 0) {
        dn_pass_state(bp->dinitial_state, bp->dfinal_state, p->B * p->H * p->N * p->P);
        return DN_OK;
    }
    const int64_t B = p->B, T = p->T, H = p->H, P = p->P, rows = B * T * H;
    float *g = dn_alloc(sizeof(float) * (size_t)(rows + 1)),
          *v = dn_alloc(sizeof(float) * (size_t)(rows * P + 1));
    float *dtp = dn_alloc(sizeof(float) * (size_t)(rows + 1)),
          *dg = dn_alloc(sizeof(float) * (size_t)(rows + 1));
    float *dv = dn_alloc(sizeof(float) * (size_t)(rows * P + 1));
    if (!g || !v || !dtp || !dg || !dv) {
        dn_free(g), dn_free(v), dn_free(dtp), dn_free(dg), dn_free(dv);
        return dn_fail(DN_ERR_ALLOC, "%s: cannot allocate the mapped inputs", op);
    }
    dn_cpu()->mamba2_prepare(p, g, v, dtp, dn_threads_for(p->n_threads));
    dn_la_params la = dn_la_params_default(DN_OP_GLA, B, T, p->G, H, p->N, P);
    la.q = p->Cm, la.q_s = p->Cm_s, la.k = p->Bm, la.k_s = p->Bm_s, la.v = v, la.g = g;
    la.o = bp->dx, la.o_s = bp->dx_s; /* not written by the backward */
    la.initial_state = p->initial_state, la.scale = 1.0f, la.chunk_size = p->chunk_size;
    la.impl = p->impl == DN_IMPL_REF ? DN_IMPL_REF : DN_IMPL_CHUNK, la.n_threads = p->n_threads;
    dn_la_bwd_params lb = dn_la_bwd_params_default(&la);
    lb.dout = bp->dy, lb.dout_s = bp->dy_s, lb.dfinal_state = bp->dfinal_state;
    lb.dq = bp->dCm, lb.dq_s = bp->dCm_s, lb.dk = bp->dBm, lb.dk_s = bp->dBm_s;
    lb.dv = dv, lb.dg = dg, lb.dinitial_state = bp->dinitial_state;
    st = dn_la_backward(&lb);
    if (st == DN_OK)
        for (int64_t row = 0; row < rows; row++) {
            const int64_t b = row / (T * H), t = row / H % T, h = row % H;
            const float *x = p->x + b * p->x_s.b + t * p->x_s.t + h * p->x_s.h;
            const float *dy = bp->dy + b * bp->dy_s.b + t * bp->dy_s.t + h * bp->dy_s.h;
            float *dx = bp->dx + b * bp->dx_s.b + t * bp->dx_s.t + h * bp->dx_s.h;
            float ddt = p->A[h] * dg[row], dD = 0;
            for (int64_t c = 0; c < P; c++) {
                ddt += dv[row * P + c] * x[c];
                dx[c] = dtp[row] * dv[row * P + c] + (p->Dskip ? p->Dskip[h] * dy[c] : 0.0f);
                dD += dy[c] * x[c];
            }
            bp->dA[h] += dtp[row] * dg[row];
            if (bp->dDskip) bp->dDskip[h] += dD;
            if (p->dt_softplus) {
                const float raw = p->dt[b * p->dt_s.b + t * p->dt_s.t + h * p->dt_s.h] +
                                  (p->dt_bias ? p->dt_bias[h] : 0.0f);
                ddt *= 1.0f / (1.0f + expf(-raw));
            }
            if (bp->ddt_bias) bp->ddt_bias[h] += ddt;
            bp->ddt[b * bp->ddt_s.b + t * bp->ddt_s.t + h * bp->ddt_s.h] = ddt;
        }
    dn_free(g), dn_free(v), dn_free(dtp), dn_free(dg), dn_free(dv);
    return st;
}
