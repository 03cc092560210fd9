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
    p.x_s = p.dt_s = p.z_s = p.y_s = (dn_strides){T * D, D, 0};
    p.Bm_s = p.Cm_s = (dn_strides){T * G * N, G * N, N};
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

dn_status dn_mamba_forward_check(const dn_mamba_params *p) {
    const char *op = "mamba1";
    if (!p) return dn_fail(DN_ERR_NULL, "mamba1 params is NULL");
    if (p->B < 1 || p->T < 0 || p->D < 1 || p->N < 1 || p->G < 1 || p->D % p->G)
        return dn_fail(DN_ERR_SHAPE, "mamba1: need B, D, N, G >= 1, T >= 0, D %% G == 0 (B=%lld "
                                     "T=%lld D=%lld N=%lld G=%lld)",
                       (long long)p->B, (long long)p->T, (long long)p->D, (long long)p->N,
                       (long long)p->G);
    if (p->N > 4096 || p->T > INT64_MAX / 4096 / p->B / p->D)
        return dn_fail(DN_ERR_SHAPE, "mamba1: sizes out of range");
    dn_status st;
    if ((st = dn_check_input(op, "x", p->x, p->x_s)) || (st = dn_check_input(op, "dt", p->dt, p->dt_s)) ||
        (st = dn_check_input(op, "Bm", p->Bm, p->Bm_s)) ||
        (st = dn_check_input(op, "Cm", p->Cm, p->Cm_s)) ||
        (st = dn_check_output(op, "y", p->y, p->y_s, p->B, p->T, 1, p->D)))
        return st;
    if (!p->A) return dn_fail(DN_ERR_NULL, "mamba1: A [D,N] is required");
    if (p->z && (st = dn_check_input(op, "z", p->z, p->z_s))) return st;
    return check_impl(op, p->impl, p->n_threads);
}

dn_status dn_mamba_forward(const dn_mamba_params *p) {
    dn_status st = dn_mamba_forward_check(p);
    if (st != DN_OK) return st;
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
    b.dy_s = b.dx_s = b.ddt_s = b.dz_s = (dn_strides){T * D, D, 0};
    b.dBm_s = b.dCm_s = (dn_strides){T * G * N, G * N, N};
    return b;
}

dn_status dn_mamba_backward(const dn_mamba_bwd_params *bp) {
    if (!bp) return dn_fail(DN_ERR_NULL, "mamba1 backward params is NULL");
    const dn_mamba_params *p = &bp->fwd;
    const char *op = "mamba1 backward";
    dn_mamba_params chk = *p;
    chk.y = bp->dx, chk.y_s = bp->dx_s;
    dn_status st = dn_mamba_forward_check(&chk);
    if (st != DN_OK) return st;
    if ((st = dn_check_input(op, "dy", bp->dy, bp->dy_s)) ||
        (st = dn_check_output(op, "ddt", bp->ddt, bp->ddt_s, p->B, p->T, 1, p->D)) ||
        (st = dn_check_output(op, "dBm", bp->dBm, bp->dBm_s, p->B, p->T, p->G, p->N)) ||
        (st = dn_check_output(op, "dCm", bp->dCm, bp->dCm_s, p->B, p->T, p->G, p->N)))
        return st;
    if (!bp->dA) return dn_fail(DN_ERR_NULL, "%s: dA [D,N] is required", op);
    if ((p->z != NULL) != (bp->dz != NULL) || (p->Dskip != NULL) != (bp->dDskip != NULL) ||
        (p->dt_bias != NULL) != (bp->ddt_bias != NULL))
        return dn_fail(DN_ERR_ARG, "%s: dz, dDskip and ddt_bias must be given exactly when z, Dskip "
                                   "and dt_bias are", op);
    if (bp->dz && (st = dn_check_output(op, "dz", bp->dz, bp->dz_s, p->B, p->T, 1, p->D))) return st;
    if (p->impl == DN_IMPL_REF) return dn_ref_mamba_backward(bp);
    const dn_cpu_kernels *kern = dn_cpu();
    const int nt = dn_threads_for(p->n_threads);
    void *owned;
    void *ws = dn_scratch(NULL, 0, kern->mamba_bwd_workspace(p, nt), &owned);
    if (!ws) return dn_fail(DN_ERR_ALLOC, "%s: cannot allocate the checkpoints and accumulators", op);
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
    p.x_s = p.y_s = (dn_strides){T * H * P, H * P, P};
    p.dt_s = (dn_strides){T * H, H, 1};
    p.Bm_s = p.Cm_s = (dn_strides){T * G * N, G * N, N};
    p.impl = DN_IMPL_AUTO;
    p.chunk_size = 64;
    return p;
}

static dn_status mamba2_check(const dn_mamba2_params *p) {
    const char *op = "mamba2";
    if (!p) return dn_fail(DN_ERR_NULL, "mamba2 params is NULL");
    if (p->B < 1 || p->T < 0 || p->H < 1 || p->P < 1 || p->N < 1 || p->G < 1 || p->H % p->G)
        return dn_fail(DN_ERR_SHAPE, "mamba2: need B, H, P, N, G >= 1, T >= 0, H %% G == 0 (B=%lld "
                                     "T=%lld H=%lld P=%lld N=%lld G=%lld)",
                       (long long)p->B, (long long)p->T, (long long)p->H, (long long)p->P,
                       (long long)p->N, (long long)p->G);
    if (p->N > 65536 || p->P > 65536 || p->T > INT64_MAX / 65536 / p->B / p->H / p->P)
        return dn_fail(DN_ERR_SHAPE, "mamba2: sizes out of range");
    dn_status st;
    if ((st = dn_check_input(op, "x", p->x, p->x_s)) || (st = dn_check_input(op, "dt", p->dt, p->dt_s)) ||
        (st = dn_check_input(op, "Bm", p->Bm, p->Bm_s)) ||
        (st = dn_check_input(op, "Cm", p->Cm, p->Cm_s)) ||
        (st = dn_check_output(op, "y", p->y, p->y_s, p->B, p->T, p->H, p->P)))
        return st;
    if (!p->A) return dn_fail(DN_ERR_NULL, "mamba2: A [H] is required");
    if ((unsigned)p->impl >= DN_IMPL_COUNT)
        return dn_fail(DN_ERR_ARG, "mamba2: impl %d is unknown", (int)p->impl);
    if (p->n_threads < 0) return dn_fail(DN_ERR_ARG, "mamba2: n_threads is negative");
    if (p->chunk_size != 16 && p->chunk_size != 32 && p->chunk_size != 64 && p->chunk_size != 128)
        return dn_fail(DN_ERR_ARG, "mamba2: chunk_size %d is not one of 16, 32, 64, 128",
                       p->chunk_size);
    return DN_OK;
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
    b.dy_s = b.dx_s = (dn_strides){T * H * P, H * P, P};
    b.ddt_s = (dn_strides){T * H, H, 1};
    b.dBm_s = b.dCm_s = (dn_strides){T * G * N, G * N, N};
    return b;
}

/* GLA on (q, k, v, g) = (Cm, Bm, dt' x, dt' A): its gradients dq, dk, dv, dg give
 * dCm = dq, dBm = dk, dx = dt' dv + Dskip dy, ddt' = dv . x + A dg, dA += sum dt' dg,
 * dDskip += sum dy . x, then ddt = ddt' sigmoid(dt + dt_bias) under the softplus. */
dn_status dn_mamba2_backward(const dn_mamba2_bwd_params *bp) {
    if (!bp) return dn_fail(DN_ERR_NULL, "mamba2 backward params is NULL");
    const dn_mamba2_params *p = &bp->fwd;
    const char *op = "mamba2 backward";
    dn_mamba2_params chk = *p;
    chk.y = bp->dx, chk.y_s = bp->dx_s;
    dn_status st = mamba2_check(&chk);
    if (st != DN_OK) return st;
    if ((st = dn_check_input(op, "dy", bp->dy, bp->dy_s)) ||
        (st = dn_check_output(op, "ddt", bp->ddt, bp->ddt_s, p->B, p->T, p->H, 1)) ||
        (st = dn_check_output(op, "dBm", bp->dBm, bp->dBm_s, p->B, p->T, p->G, p->N)) ||
        (st = dn_check_output(op, "dCm", bp->dCm, bp->dCm_s, p->B, p->T, p->G, p->N)))
        return st;
    if (!bp->dA) return dn_fail(DN_ERR_NULL, "%s: dA [H] is required", op);
    if ((p->Dskip != NULL) != (bp->dDskip != NULL) || (p->dt_bias != NULL) != (bp->ddt_bias != NULL))
        return dn_fail(DN_ERR_ARG, "%s: dDskip and ddt_bias must be given exactly when Dskip and "
                                   "dt_bias are", op);
    if (p->impl == DN_IMPL_RECURRENT)
        return dn_fail(DN_ERR_UNSUPPORTED, "%s: the backward is chunkwise (or DN_IMPL_REF)", op);
    const int64_t B = p->B, T = p->T, H = p->H, P = p->P, rows = B * T * H;
    float *g = dn_alloc(sizeof(float) * (size_t)(rows + 1)), *v = dn_alloc(sizeof(float) * (size_t)(rows * P + 1));
    float *dtp = dn_alloc(sizeof(float) * (size_t)(rows + 1)), *dg = dn_alloc(sizeof(float) * (size_t)(rows + 1));
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
