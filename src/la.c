/*
 * la.c - public entry points of the linear-attention family: defaults, argument checks,
 * workspace queries and the dispatch to the reference or the fast CPU kernels.
 *
 * Every check happens here, before anything is written, so that a rejected call leaves all
 * outputs untouched.
 */
#include "internal.h"

#include <math.h>
#include <string.h>

static dn_strides contiguous(int64_t T, int64_t H, int64_t D) {
    dn_strides s = {T * H * D, H * D, D};
    return s;
}

dn_la_params dn_la_params_default(dn_op op, int64_t B, int64_t T, int64_t H, int64_t HV,
                                  int64_t K, int64_t V) {
    dn_la_params p;
    memset(&p, 0, sizeof p);
    p.op = op;
    p.B = B;
    p.T = T;
    p.H = H;
    p.HV = HV;
    p.K = K;
    p.V = V;
    p.q_s = contiguous(T, H, K);
    p.k_s = contiguous(T, H, K);
    p.v_s = contiguous(T, HV, V);
    p.o_s = contiguous(T, HV, V);
    p.g_s = contiguous(T, HV, 1);
    p.beta_s = contiguous(T, HV, 1);
    p.scale = K > 0 ? (float)(1.0 / sqrt((double)K)) : 1.0f;
    p.chunk_size = 64;
    p.impl = DN_IMPL_AUTO;
    return p;
}


static int mul_ok(int64_t a, int64_t b) { return a == 0 || b <= INT64_MAX / a; }

dn_status dn_la_check(const dn_la_params *p) {
    if (!p) return dn_fail(DN_ERR_NULL, "params is NULL");
    if (!dn_op_is_la(p->op))
        return dn_fail(DN_ERR_ARG, "op %d is not a linear-attention family op", (int)p->op);
    const char *name = dn_op_name(p->op);
    if (p->B < 1 || p->T < 0 || p->H < 1 || p->HV < 1 || p->K < 1 || p->V < 1)
        return dn_fail(DN_ERR_SHAPE,
                       "%s: dims must be positive (B=%lld T=%lld H=%lld HV=%lld K=%lld V=%lld)",
                       name, (long long)p->B, (long long)p->T, (long long)p->H, (long long)p->HV,
                       (long long)p->K, (long long)p->V);
    if (p->HV % p->H != 0)
        return dn_fail(DN_ERR_SHAPE, "%s: HV (%lld) is not a multiple of H (%lld)", name,
                       (long long)p->HV, (long long)p->H);
    if (p->K > 65536 || p->V > 65536)
        return dn_fail(DN_ERR_SHAPE, "%s: K (%lld) and V (%lld) must be at most 65536", name,
                       (long long)p->K, (long long)p->V);
    if (!mul_ok(p->B, p->T) || !mul_ok(p->B * p->T, p->HV) || !mul_ok(p->B * p->T * p->HV, p->V) ||
        !mul_ok(p->B * p->T * p->H, p->K) || !mul_ok(p->B * p->HV, p->K * p->V))
        return dn_fail(DN_ERR_SHAPE, "%s: tensor sizes overflow 64-bit indexing", name);
    if (!p->q || !p->k || !p->v || !p->o)
        return dn_fail(DN_ERR_NULL, "%s: q, k, v and o are required (q=%p k=%p v=%p o=%p)", name,
                       (const void *)p->q, (const void *)p->k, (const void *)p->v, (void *)p->o);
    if (dn_op_has_gate(p->op) && !p->g)
        return dn_fail(DN_ERR_NULL, "%s: g [B,T,HV] is required", name);
    if (!dn_op_has_gate(p->op) && p->g)
        return dn_fail(DN_ERR_ARG, "%s has no gate but g was given (use gla or gdn)", name);
    if (dn_op_has_delta(p->op) && !p->beta)
        return dn_fail(DN_ERR_NULL, "%s: beta [B,T,HV] is required", name);
    if (!dn_op_has_delta(p->op) && p->beta)
        return dn_fail(DN_ERR_ARG, "%s has no delta rule but beta was given (use deltanet or gdn)",
                       name);
    if (!dn_strides_ok(p->q_s) || !dn_strides_ok(p->k_s) || !dn_strides_ok(p->v_s) || !dn_strides_ok(p->o_s) ||
        !dn_strides_ok(p->g_s) || !dn_strides_ok(p->beta_s))
        return dn_fail(DN_ERR_STRIDE, "%s: strides must be non-negative", name);
    /* Output rows must not alias each other: each (b,t,h) row of o needs its own V elements. */
    if (!dn_rows_disjoint(p->o_s, p->B, p->T, p->HV, p->V))
        return dn_fail(DN_ERR_STRIDE, "%s: o strides (%lld, %lld, %lld) make output rows overlap",
                       name, (long long)p->o_s.b, (long long)p->o_s.t, (long long)p->o_s.h);
    if (!(isfinite(p->scale)))
        return dn_fail(DN_ERR_ARG, "%s: scale must be finite", name);
    if (p->chunk_size != 16 && p->chunk_size != 32 && p->chunk_size != 64 && p->chunk_size != 128)
        return dn_fail(DN_ERR_ARG, "%s: chunk_size %d is not one of 16, 32, 64, 128", name,
                       p->chunk_size);
    if ((unsigned)p->impl >= DN_IMPL_COUNT)
        return dn_fail(DN_ERR_ARG, "%s: impl %d is unknown", name, (int)p->impl);
    if (p->n_threads < 0)
        return dn_fail(DN_ERR_ARG, "%s: n_threads %d is negative", name, p->n_threads);
    if (p->cu_seqlens) {
        if (p->B != 1)
            return dn_fail(DN_ERR_SHAPE, "%s: cu_seqlens needs B = 1 (got B=%lld)", name,
                           (long long)p->B);
        if (p->n_seqs < 1)
            return dn_fail(DN_ERR_ARG, "%s: n_seqs (%lld) must be at least 1 with cu_seqlens", name,
                           (long long)p->n_seqs);
        if (p->cu_seqlens[0] != 0)
            return dn_fail(DN_ERR_ARG, "%s: cu_seqlens[0] is %lld, must be 0", name,
                           (long long)p->cu_seqlens[0]);
        for (int64_t i = 0; i < p->n_seqs; i++)
            if (p->cu_seqlens[i + 1] < p->cu_seqlens[i])
                return dn_fail(DN_ERR_ARG, "%s: cu_seqlens decreases at %lld (%lld -> %lld)", name,
                               (long long)i, (long long)p->cu_seqlens[i],
                               (long long)p->cu_seqlens[i + 1]);
        if (p->cu_seqlens[p->n_seqs] != p->T)
            return dn_fail(DN_ERR_ARG, "%s: cu_seqlens[%lld] is %lld, must equal T = %lld", name,
                           (long long)p->n_seqs, (long long)p->cu_seqlens[p->n_seqs],
                           (long long)p->T);
    }
    return DN_OK;
}

/* Longest sequence in the call: the chunkwise form pays only once sequences span chunks. */
static int64_t longest_seq(const dn_la_params *p) {
    if (!p->cu_seqlens) return p->T;
    int64_t m = 0;
    for (int64_t n = 0; n < p->n_seqs; n++) {
        int64_t len = p->cu_seqlens[n + 1] - p->cu_seqlens[n];
        if (len > m) m = len;
    }
    return m;
}

/* The params the kernels run with: DN_IMPL_AUTO resolved to a form and, for the chunkwise form,
 * a chunk size. Measured by `deltanet bench` on Zen 3-5 class CPUs (docs/PERF.md): the
 * recurrence wins below 16 tokens per sequence; above, the chunkwise form with 16-token chunks
 * (on CPU the triangular per-chunk work grows with C while the state products do not shrink,
 * so small chunks win; C = 64 suits tensor-core GPUs). */
static dn_la_params resolved(const dn_la_params *p) {
    dn_la_params r = *p;
    if (p->impl != DN_IMPL_AUTO) return r;
    if (longest_seq(p) < 16) {
        r.impl = DN_IMPL_RECURRENT;
    } else {
        r.impl = DN_IMPL_CHUNK;
        r.chunk_size = 16;
    }
    return r;
}

dn_status dn_la_workspace_size(const dn_la_params *p, size_t *bytes) {
    dn_status st = dn_la_check(p);
    if (st != DN_OK) return st;
    if (!bytes) return dn_fail(DN_ERR_NULL, "dn_la_workspace_size: bytes is NULL");
    dn_la_params r = resolved(p);
    if (r.impl == DN_IMPL_REF) {
        *bytes = 0;
        return DN_OK;
    }
    *bytes = dn_cpu()->la_workspace(&r, r.impl, dn_threads_for(r.n_threads));
    return DN_OK;
}

dn_status dn_la_forward(const dn_la_params *p) {
    dn_status st = dn_la_check(p);
    if (st != DN_OK) return st;
    const dn_la_params r = resolved(p);
    if (r.impl == DN_IMPL_REF) return dn_ref_la_forward(&r);

    const dn_cpu_kernels *kern = dn_cpu();
    int nt = dn_threads_for(r.n_threads);
    size_t need = kern->la_workspace(&r, r.impl, nt);
    void *ws = r.workspace, *owned = NULL;
    if (need > 0) {
        if (ws && r.workspace_bytes < need)
            return dn_fail(DN_ERR_ARG, "%s: workspace has %zu bytes, needs %zu",
                           dn_op_name(r.op), r.workspace_bytes, need);
        if (ws && ((uintptr_t)ws & 63))
            return dn_fail(DN_ERR_ARG, "%s: workspace must be 64-byte aligned", dn_op_name(r.op));
        if (!ws) {
            owned = dn_alloc(need);
            if (!owned)
                return dn_fail(DN_ERR_ALLOC, "%s: cannot allocate %zu bytes of workspace",
                               dn_op_name(r.op), need);
            ws = owned;
        }
    }
    kern->la_forward(&r, r.impl, nt, ws);
    dn_free(owned);
    return DN_OK;
}

dn_status dn_la_step(dn_op op, float *o, float *state, const float *q, const float *k,
                     const float *v, const float *g, const float *beta, int64_t B, int64_t H,
                     int64_t HV, int64_t K, int64_t V, float scale, int qk_l2norm) {
    dn_la_params p = dn_la_params_default(op, B, 1, H, HV, K, V);
    if (!state) return dn_fail(DN_ERR_NULL, "dn_la_step: state is NULL");
    p.q = q;
    p.k = k;
    p.v = v;
    p.g = g;
    p.beta = beta;
    p.o = o;
    p.initial_state = state;
    p.final_state = state;
    if (scale > 0) p.scale = scale;
    p.qk_l2norm = qk_l2norm;
    p.impl = DN_IMPL_RECURRENT;
    return dn_la_forward(&p);
}

/* ---------------------------------------------------------------------------------------------
 * Backward
 * ------------------------------------------------------------------------------------------- */

/* The params the training forward and the backward run with: DN_IMPL_AUTO takes 32-token
 * chunks, which measured fastest for the backward on CPU (bench/bwd.c; 16 and 64 were 10-30%
 * slower); DN_IMPL_CHUNK keeps chunk_size. Both calls resolve alike, so a saved buffer matches. */
static dn_la_params train_resolved(const dn_la_params *p) {
    dn_la_params r = *p;
    if (p->impl == DN_IMPL_AUTO) r.chunk_size = 32;
    return r;
}
dn_la_bwd_params dn_la_bwd_params_default(const dn_la_params *fwd) {
    dn_la_bwd_params b;
    memset(&b, 0, sizeof b);
    if (!fwd) return b;
    b.fwd = *fwd;
    const int64_t T = fwd->T, H = fwd->H, HV = fwd->HV, K = fwd->K, V = fwd->V;
    b.dq_s = b.dk_s = (dn_strides){T * H * K, H * K, K};
    b.dv_s = b.dout_s = (dn_strides){T * HV * V, HV * V, V};
    b.dg_s = b.dbeta_s = (dn_strides){T * HV, HV, 1};
    return b;
}

/* Scratch of the fast backward (all threads): checkpoints (T/C + 1) K V, U and R 2 T V, and one
 * chunk's matrices, per thread. */
dn_status dn_la_backward_workspace_size(const dn_la_bwd_params *bp, size_t *bytes) {
    if (!bp || !bytes) return dn_fail(DN_ERR_NULL, "dn_la_backward_workspace_size: NULL argument");
    dn_la_params chk = bp->fwd;
    chk.o = (float *)1;
    chk.o_s = bp->dv_s;
    dn_status st = dn_la_check(&chk);
    if (st != DN_OK) return st;
    const dn_la_params r = train_resolved(&bp->fwd);
    *bytes = r.impl == DN_IMPL_REF ? 0 : dn_cpu()->la_bwd_workspace(&r, dn_threads_for(r.n_threads));
    return DN_OK;
}

dn_status dn_la_backward(const dn_la_bwd_params *bp_in) {
    if (!bp_in) return dn_fail(DN_ERR_NULL, "backward params is NULL");
    dn_la_bwd_params resolved = *bp_in;
    resolved.fwd = train_resolved(&bp_in->fwd);
    const dn_la_bwd_params *bp = &resolved;
    const dn_la_params *p = &bp->fwd;
    dn_la_params chk = *p;
    chk.o = bp->dv ? bp->dv : (float *)1; /* o is not used: check the rest of the forward */
    chk.o_s = bp->dv_s;
    dn_status st = dn_la_check(&chk);
    if (st != DN_OK) return st;
    const char *op = dn_op_name(p->op);
    if ((st = dn_check_input(op, "dout", bp->dout, bp->dout_s)) ||
        (st = dn_check_output(op, "dq", bp->dq, bp->dq_s, p->B, p->T, p->H, p->K)) ||
        (st = dn_check_output(op, "dk", bp->dk, bp->dk_s, p->B, p->T, p->H, p->K)) ||
        (st = dn_check_output(op, "dv", bp->dv, bp->dv_s, p->B, p->T, p->HV, p->V)))
        return st;
    if (dn_op_has_gate(p->op) != (bp->dg != NULL))
        return dn_fail(DN_ERR_ARG, "%s: dg must be given exactly for gated ops", op);
    if (dn_op_has_delta(p->op) != (bp->dbeta != NULL))
        return dn_fail(DN_ERR_ARG, "%s: dbeta must be given exactly for delta-rule ops", op);
    if (bp->dg && (st = dn_check_output(op, "dg", bp->dg, bp->dg_s, p->B, p->T, p->HV, 1))) return st;
    if (bp->dbeta && (st = dn_check_output(op, "dbeta", bp->dbeta, bp->dbeta_s, p->B, p->T, p->HV, 1)))
        return st;
    if (bp->saved) {
        if (p->impl == DN_IMPL_REF)
            return dn_fail(DN_ERR_ARG, "%s backward: saved is for the fast backward", op);
        const size_t need_saved = sizeof(float) * dn_cpu()->la_saved_floats(p);
        if (bp->saved_bytes < need_saved || ((uintptr_t)bp->saved & 63))
            return dn_fail(DN_ERR_ARG, "%s backward: saved has %zu bytes, needs %zu, 64-byte aligned",
                           op, bp->saved_bytes, need_saved);
    }
    if (p->impl == DN_IMPL_REF) return dn_ref_la_backward(bp);
    if (p->impl == DN_IMPL_RECURRENT)
        return dn_fail(DN_ERR_UNSUPPORTED, "%s backward: the fast backward is chunkwise; use "
                                           "DN_IMPL_AUTO or DN_IMPL_CHUNK (or DN_IMPL_REF)", op);
    const dn_cpu_kernels *kern = dn_cpu();
    const int nt = dn_threads_for(p->n_threads);
    const size_t need = kern->la_bwd_workspace(p, nt);
    if (bp->workspace && (bp->workspace_bytes < need || ((uintptr_t)bp->workspace & 63)))
        return dn_fail(DN_ERR_ARG, "%s backward: workspace of %zu bytes (alignment %d) is not %zu "
                                   "bytes 64-byte aligned",
                       op, bp->workspace_bytes, (int)((uintptr_t)bp->workspace & 63), need);
    void *owned;
    void *ws = dn_scratch(bp->workspace, bp->workspace_bytes, need, &owned);
    if (!ws) return dn_fail(DN_ERR_ALLOC, "%s backward: cannot allocate the workspace", op);
    kern->la_backward(bp, nt, ws);
    dn_free(owned);
    return DN_OK;
}

dn_status dn_la_saved_size(const dn_la_params *p_in, size_t *bytes) {
    if (!p_in) return dn_fail(DN_ERR_NULL, "params is NULL");
    const dn_la_params r = train_resolved(p_in), *p = &r;
    dn_status st = dn_la_check(p);
    if (st != DN_OK) return st;
    if (!bytes) return dn_fail(DN_ERR_NULL, "dn_la_saved_size: bytes is NULL");
    *bytes = sizeof(float) * dn_cpu()->la_saved_floats(p);
    return DN_OK;
}

dn_status dn_la_forward_train(const dn_la_params *p_in, void *saved, size_t saved_bytes) {
    if (!p_in) return dn_fail(DN_ERR_NULL, "params is NULL");
    const dn_la_params r = train_resolved(p_in), *p = &r;
    dn_status st = dn_la_check(p);
    if (st != DN_OK) return st;
    const char *op = dn_op_name(p->op);
    if (p->impl != DN_IMPL_AUTO && p->impl != DN_IMPL_CHUNK)
        return dn_fail(DN_ERR_UNSUPPORTED, "%s training forward: chunkwise only (impl auto or chunk)", op);
    const dn_cpu_kernels *kern = dn_cpu();
    const size_t need_saved = sizeof(float) * kern->la_saved_floats(p);
    if (!saved) return dn_fail(DN_ERR_NULL, "%s training forward: saved is NULL", op);
    if (saved_bytes < need_saved || ((uintptr_t)saved & 63))
        return dn_fail(DN_ERR_ARG, "%s training forward: saved has %zu bytes, needs %zu, 64-byte aligned",
                       op, saved_bytes, need_saved);
    const int nt = dn_threads_for(p->n_threads);
    void *owned;
    void *ws = dn_scratch(NULL, 0, kern->la_bwd_workspace(p, nt), &owned);
    if (!ws) return dn_fail(DN_ERR_ALLOC, "%s training forward: cannot allocate the workspace", op);
    kern->la_forward_train(p, nt, ws, saved);
    dn_free(owned);
    return DN_OK;
}
