/*
 * test_faults.c - allocation-failure injection over every public call that may allocate.
 *
 * For each call (fast and reference impls, forward and backward, the KV cache), n = 0, 1, 2, ...:
 * the n-th allocation through dn_alloc fails (src/mem.c's hook); the call must return DN_OK or
 * DN_ERR_ALLOC; on DN_ERR_ALLOC every output (and the KV cache's len, capacity and attend
 * results) is untouched; on DN_OK the result equals the uninjected run. The loop ends at the
 * first n the call does not reach. A call that allocates with malloc directly cannot be reached by
 * the hook: it shows here as "no allocation through dn_alloc" (printed, not failed).
 */
#include "test.h"

/* src/mem.c test hooks (internal.h is not the tests' header) */
void dn_fault_fail_alloc_after(long n);
long dn_fault_alloc_count(void);

#define MAXO 12
#define MAXN 256

typedef struct {
    float *p[MAXO], *init[MAXO], *base[MAXO];
    int64_t n[MAXO];
    const char *name[MAXO];
    int no;
} outs;

static const uint32_t CANARY = 0x7fc0beefu;

/* An output of n floats: written (canary before each call) or accumulated (random values). */
static float *out_add(outs *O, const char *name, int64_t n, int accumulate, rng *r) {
    int i = O->no++;
    O->p[i] = falloc(n), O->init[i] = falloc(n), O->base[i] = falloc(n);
    O->n[i] = n;
    O->name[i] = name;
    for (int64_t j = 0; j < n; j++) {
        if (accumulate)
            O->init[i][j] = rng_uniform(r, -1, 1);
        else
            memcpy(&O->init[i][j], &CANARY, 4);
    }
    return O->p[i];
}
static void outs_reset(outs *O) {
    for (int i = 0; i < O->no; i++)
        memcpy(O->p[i], O->init[i], sizeof(float) * (size_t)O->n[i]);
}
static void outs_free(outs *O) {
    for (int i = 0; i < O->no; i++)
        free(O->p[i]), free(O->init[i]), free(O->base[i]);
    O->no = 0;
}
static float *in_new(rng *r, int64_t n, float lo, float hi) {
    float *x = falloc(n);
    fill_uniform(r, x, n, lo, hi);
    return x;
}

typedef dn_status (*fault_fn)(void *ctx);

/* The injection loop for one call. Returns the number of failed checks. */
static int inject(const char *what, fault_fn fn, void *ctx, outs *O) {
    int fails = 0;
    outs_reset(O);
    dn_status st = fn(ctx);
    if (st != DN_OK) {
        printf("    FAIL %s: uninjected call returned %s (%s)\n", what, dn_status_str(st),
               dn_last_error());
        return 1;
    }
    for (int i = 0; i < O->no; i++)
        memcpy(O->base[i], O->p[i], sizeof(float) * (size_t)O->n[i]);
    long reached = 0;
    for (long n = 0; n < MAXN; n++) {
        outs_reset(O);
        long a0 = dn_fault_alloc_count();
        dn_fault_fail_alloc_after(n);
        st = fn(ctx);
        dn_fault_fail_alloc_after(-1);
        long used = dn_fault_alloc_count() - a0;
        if (st == DN_ERR_ALLOC) {
            for (int i = 0; i < O->no; i++)
                if (memcmp(O->p[i], O->init[i], sizeof(float) * (size_t)O->n[i])) {
                    int64_t j = 0;
                    while (!memcmp(&O->p[i][j], &O->init[i][j], 4))
                        j++;
                    printf(
                        "    FAIL %s: allocation %ld failed, DN_ERR_ALLOC, but output %s changed "
                        "(element %lld)\n",
                        what, n, O->name[i], (long long)j);
                    fails++;
                    break;
                }
        } else if (st == DN_OK) {
            for (int i = 0; i < O->no; i++)
                if (memcmp(O->p[i], O->base[i], sizeof(float) * (size_t)O->n[i])) {
                    int64_t w = 0;
                    double e = rel_rms(O->p[i], O->base[i], O->n[i], &w);
                    if (!(e <= 1e-6)) {
                        printf(
                            "    FAIL %s: allocation %ld failed, DN_OK, output %s differs from the "
                            "uninjected run (rel RMS %.3g)\n",
                            what, n, O->name[i], e);
                        fails++;
                        break;
                    }
                }
        } else {
            printf("    FAIL %s: allocation %ld failed, status %s (want OK or ALLOC): %s\n", what,
                   n, dn_status_str(st), dn_last_error());
            fails++;
        }
        if (used <= n) { /* the injected failure was not reached: the call ran unhindered */
            if (st != DN_OK) {
                printf("    FAIL %s: %ld allocations, none failed, yet status %s\n", what, used,
                       dn_status_str(st));
                fails++;
            }
            reached = n;
            break;
        }
        if (fails > 3) break;
    }
    if (reached == 0 && getenv("DN_FAULT_VERBOSE"))
        printf("    note %s: no allocation through dn_alloc\n", what);
    return fails;
}

/* ---- linear-attention family ---- */
typedef struct {
    dn_la_params p;
    dn_la_bwd_params bp;
    void *saved;
    size_t saved_bytes;
} la_ctx;

static dn_status la_fwd(void *c) { return dn_la_forward(&((la_ctx *)c)->p); }
static dn_status la_train(void *c) {
    la_ctx *l = c;
    return dn_la_forward_train(&l->p, l->saved, l->saved_bytes);
}
static dn_status la_bwd(void *c) { return dn_la_backward(&((la_ctx *)c)->bp); }

static int faults_la(void) {
    int fails = 0;
    rng r = {101};
    const int64_t B = 2, T = 37, H = 2, HV = 4, K = 16, V = 8;
    const int64_t nq = B * T * H * K, nv = B * T * HV * V, ng = B * T * HV, ns = B * HV * K * V;
    float *q = in_new(&r, nq, -1, 1), *k = in_new(&r, nq, -1, 1), *v = in_new(&r, nv, -1, 1);
    float *g = in_new(&r, ng, -1, 0), *beta = in_new(&r, ng, 0, 1), *h0 = in_new(&r, ns, -1, 1);
    float *dout = in_new(&r, nv, -1, 1), *dht = in_new(&r, ns, -1, 1);
    const dn_op ops[2] = {DN_OP_GDN, DN_OP_GLA};
    const dn_impl impls[4] = {DN_IMPL_REF, DN_IMPL_RECURRENT, DN_IMPL_CHUNK, DN_IMPL_AUTO};
    for (int oi = 0; oi < 2; oi++)
        for (int ii = 0; ii < 4; ii++)
            for (int threads = 1; threads <= 2; threads++) {
                char what[128];
                la_ctx l;
                memset(&l, 0, sizeof l);
                dn_op op = ops[oi];
                l.p = dn_la_params_default(op, B, T, H, HV, K, V);
                l.p.q = q, l.p.k = k, l.p.v = v, l.p.g = g;
                l.p.beta = op == DN_OP_GDN ? beta : NULL;
                l.p.initial_state = h0;
                l.p.impl = impls[ii];
                l.p.n_threads = threads;
                l.p.qk_l2norm = 1;
                outs O = {0};
                l.p.o = out_add(&O, "o", nv, 0, &r);
                l.p.final_state = out_add(&O, "final_state", ns, 0, &r);
                snprintf(what, sizeof what, "dn_la_forward %s %s threads=%d", dn_op_name(op),
                         dn_impl_name(impls[ii]), threads);
                fails += inject(what, la_fwd, &l, &O);
                outs_free(&O);

                /* the training forward (chunkwise impls only) and the backward */
                la_ctx b = l;
                b.p.o = NULL, b.p.final_state = NULL;
                b.bp = dn_la_bwd_params_default(&b.p);
                b.bp.dout = dout, b.bp.dfinal_state = dht;
                b.bp.dq = out_add(&O, "dq", nq, 0, &r), b.bp.dk = out_add(&O, "dk", nq, 0, &r);
                b.bp.dv = out_add(&O, "dv", nv, 0, &r), b.bp.dg = out_add(&O, "dg", ng, 0, &r);
                if (b.p.beta) b.bp.dbeta = out_add(&O, "dbeta", ng, 0, &r);
                b.bp.dinitial_state = out_add(&O, "dinitial_state", ns, 0, &r);
                if (impls[ii] != DN_IMPL_RECURRENT) {
                    snprintf(what, sizeof what, "dn_la_backward %s %s threads=%d", dn_op_name(op),
                             dn_impl_name(impls[ii]), threads);
                    fails += inject(what, la_bwd, &b, &O);
                }
                outs_free(&O);
                if (impls[ii] == DN_IMPL_CHUNK || impls[ii] == DN_IMPL_AUTO) {
                    la_ctx t = l;
                    size_t sb = 0;
                    if (dn_la_saved_size(&t.p, &sb) != DN_OK) {
                        fails++;
                        continue;
                    }
                    t.saved = aligned_alloc(64, (sb + 63) & ~(size_t)63);
                    t.saved_bytes = sb;
                    t.p.o = out_add(&O, "o", nv, 0, &r);
                    t.p.final_state = out_add(&O, "final_state", ns, 0, &r);
                    snprintf(what, sizeof what, "dn_la_forward_train %s %s threads=%d",
                             dn_op_name(op), dn_impl_name(impls[ii]), threads);
                    fails += inject(what, la_train, &t, &O);
                    outs_free(&O);
                    /* backward from the saved buffer */
                    float *o_tr = falloc(nv);
                    t.p.o = o_tr, t.p.final_state = NULL;
                    if (dn_la_forward_train(&t.p, t.saved, t.saved_bytes) != DN_OK) fails++;
                    free(o_tr);
                    b.bp.saved = t.saved, b.bp.saved_bytes = sb;
                    b.bp.dq = out_add(&O, "dq", nq, 0, &r), b.bp.dk = out_add(&O, "dk", nq, 0, &r);
                    b.bp.dv = out_add(&O, "dv", nv, 0, &r), b.bp.dg = out_add(&O, "dg", ng, 0, &r);
                    b.bp.dbeta = b.p.beta ? out_add(&O, "dbeta", ng, 0, &r) : NULL;
                    b.bp.dinitial_state = out_add(&O, "dinitial_state", ns, 0, &r);
                    snprintf(what, sizeof what, "dn_la_backward(saved) %s %s threads=%d",
                             dn_op_name(op), dn_impl_name(impls[ii]), threads);
                    fails += inject(what, la_bwd, &b, &O);
                    outs_free(&O);
                    free(t.saved);
                }
            }
    free(q), free(k), free(v), free(g), free(beta), free(h0), free(dout), free(dht);
    return fails;
}

typedef struct {
    float *o, *state;
    const float *q, *k, *v, *g, *beta;
} step_ctx;
static dn_status la_step_call(void *c) {
    step_ctx *s = c;
    return dn_la_step(DN_OP_GDN, s->o, s->state, s->q, s->k, s->v, s->g, s->beta, 2, 2, 4, 16, 8,
                      0.f, 1);
}
static int faults_la_step(void) {
    rng r = {7};
    step_ctx s;
    outs O = {0};
    s.q = in_new(&r, 2 * 2 * 16, -1, 1), s.k = in_new(&r, 2 * 2 * 16, -1, 1);
    s.v = in_new(&r, 2 * 4 * 8, -1, 1), s.g = in_new(&r, 8, -1, 0), s.beta = in_new(&r, 8, 0, 1);
    s.o = out_add(&O, "o", 2 * 4 * 8, 0, &r);
    s.state = out_add(&O, "state", 2 * 4 * 16 * 8, 1, &r);
    int fails = inject("dn_la_step gdn", la_step_call, &s, &O);
    outs_free(&O);
    free((void *)s.q), free((void *)s.k), free((void *)s.v), free((void *)s.g),
        free((void *)s.beta);
    return fails;
}

/* ---- attention and the KV cache ---- */
typedef struct {
    dn_attn_params p;
    dn_attn_bwd_params bp;
} attn_ctx;
static dn_status attn_fwd(void *c) { return dn_attn_forward(&((attn_ctx *)c)->p); }
static dn_status attn_bwd(void *c) { return dn_attn_backward(&((attn_ctx *)c)->bp); }

static int faults_attn(void) {
    int fails = 0;
    rng r = {11};
    const int64_t B = 2, T = 45, H = 4, HKV = 2, D = 24;
    const int64_t nq = B * T * H * D, nk = B * T * HKV * D, nl = B * H * T;
    float *q = in_new(&r, nq, -1, 1), *k = in_new(&r, nk, -1, 1), *v = in_new(&r, nk, -1, 1);
    float *dout = in_new(&r, nq, -1, 1), *o = falloc(nq), *lse = falloc(nl);
    const dn_impl impls[2] = {DN_IMPL_REF, DN_IMPL_AUTO};
    for (int ii = 0; ii < 2; ii++)
        for (int threads = 1; threads <= 2; threads++) {
            char what[128];
            attn_ctx a;
            outs O = {0};
            a.p = dn_attn_params_default(B, T, H, HKV, D);
            a.p.q = q, a.p.k = k, a.p.v = v, a.p.impl = impls[ii], a.p.n_threads = threads;
            a.p.window = threads == 2 ? 9 : 0;
            a.p.o = out_add(&O, "o", nq, 0, &r);
            a.p.lse = out_add(&O, "lse", nl, 0, &r);
            snprintf(what, sizeof what, "dn_attn_forward %s threads=%d", dn_impl_name(impls[ii]),
                     threads);
            fails += inject(what, attn_fwd, &a, &O);
            outs_free(&O);
            a.p.o = o, a.p.lse = lse;
            if (dn_attn_forward(&a.p) != DN_OK) fails++;
            a.bp = dn_attn_bwd_params_default(&a.p);
            a.bp.dout = dout;
            a.bp.dq = out_add(&O, "dq", nq, 0, &r);
            a.bp.dk = out_add(&O, "dk", nk, 0, &r);
            a.bp.dv = out_add(&O, "dv", nk, 0, &r);
            snprintf(what, sizeof what, "dn_attn_backward %s threads=%d", dn_impl_name(impls[ii]),
                     threads);
            fails += inject(what, attn_bwd, &a, &O);
            outs_free(&O);
        }
    free(q), free(k), free(v), free(dout), free(o), free(lse);
    return fails;
}

typedef struct {
    dn_kv_cache *c;
    const float *k, *v, *q;
    int64_t T;
    float *o, *lse;
} kv_ctx;
static dn_status kv_attend(void *p) {
    kv_ctx *c = p;
    dn_strides s = {6 * 4 * 16, 4 * 16, 16};
    return dn_kv_cache_attend(c->c, c->o, s, c->lse, c->q, s, 6, 4, 0.25f, 0, 2);
}

static int faults_kv(void) {
    int fails = 0;
    rng r = {13};
    const int64_t B = 2, HKV = 2, H = 4, D = 16, T0 = 3, T1 = 9;
    float *k = in_new(&r, B * 16 * HKV * D, -1, 1), *v = in_new(&r, B * 16 * HKV * D, -1, 1);
    float *q = in_new(&r, B * 6 * H * D, -1, 1);
    dn_strides s0 = {T0 * HKV * D, HKV * D, D}, s1 = {T1 * HKV * D, HKV * D, D};
    for (int dt = 0; dt < 3; dt++) {
        /* create */
        long reachable = 0;
        for (long n = 0; n < MAXN; n++) {
            dn_kv_cache *c = (dn_kv_cache *)(uintptr_t)0x77;
            long a0 = dn_fault_alloc_count();
            dn_fault_fail_alloc_after(n);
            dn_status st = dn_kv_cache_create(&c, B, HKV, D, 4, (dn_dtype)dt, DN_KV_GROW);
            dn_fault_fail_alloc_after(-1);
            long used = dn_fault_alloc_count() - a0;
            if (st == DN_ERR_ALLOC && c != (dn_kv_cache *)(uintptr_t)0x77) {
                printf("    FAIL kv create: DN_ERR_ALLOC but *out written\n");
                fails++;
            }
            if (st != DN_OK && st != DN_ERR_ALLOC) fails++;
            if (st == DN_OK) dn_kv_cache_free(c);
            if (used <= n) {
                reachable = n;
                break;
            }
        }
        if (reachable == 0 && getenv("DN_FAULT_VERBOSE"))
            printf("    note dn_kv_cache_create: no allocation through dn_alloc\n");
        /* append past the capacity (grows) */
        dn_kv_cache *ref = NULL;
        if (dn_kv_cache_create(&ref, B, HKV, D, 4, (dn_dtype)dt, DN_KV_GROW) != DN_OK)
            return fails + 1;
        dn_kv_cache_append(ref, k, s0, v, s0, T0);
        dn_kv_cache_append(ref, k, s1, v, s1, T1);
        float *o_ref = falloc(B * 6 * H * D), *lse_ref = falloc(B * H * 6);
        kv_ctx kc = {ref, k, v, q, 0, o_ref, lse_ref};
        if (kv_attend(&kc) != DN_OK) fails++;
        for (long n = 0; n < MAXN; n++) {
            dn_kv_cache *c = NULL;
            dn_kv_cache_create(&c, B, HKV, D, 4, (dn_dtype)dt, DN_KV_GROW);
            dn_kv_cache_append(c, k, s0, v, s0, T0);
            int64_t len0 = dn_kv_cache_len(c), cap0 = dn_kv_cache_capacity(c);
            float *o0 = falloc(B * 6 * H * D), *l0 = falloc(B * H * 6);
            kv_ctx k0 = {c, k, v, q, 0, o0, l0};
            dn_status st0 = kv_attend(&k0); /* attend before (len 3 < TQ 6 is fine) */
            long a0 = dn_fault_alloc_count();
            dn_fault_fail_alloc_after(n);
            dn_status st = dn_kv_cache_append(c, k, s1, v, s1, T1);
            dn_fault_fail_alloc_after(-1);
            long used = dn_fault_alloc_count() - a0;
            if (st == DN_ERR_ALLOC) {
                float *o1 = falloc(B * 6 * H * D), *l1 = falloc(B * H * 6);
                kv_ctx k1 = {c, k, v, q, 0, o1, l1};
                dn_status st1 = kv_attend(&k1);
                if (dn_kv_cache_len(c) != len0 || dn_kv_cache_capacity(c) != cap0 || st1 != st0 ||
                    memcmp(o1, o0, sizeof(float) * (size_t)(B * 6 * H * D))) {
                    printf("    FAIL kv append %s: DN_ERR_ALLOC but the cache changed\n",
                           dn_dtype_name((dn_dtype)dt));
                    fails++;
                }
                free(o1), free(l1);
            } else if (st == DN_OK) {
                kv_ctx k1 = {c, k, v, q, 0, o0, l0};
                kv_attend(&k1);
                if (memcmp(o0, o_ref, sizeof(float) * (size_t)(B * 6 * H * D))) {
                    printf("    FAIL kv append %s: DN_OK after injection but attend differs\n",
                           dn_dtype_name((dn_dtype)dt));
                    fails++;
                }
            } else {
                printf("    FAIL kv append: status %s\n", dn_status_str(st));
                fails++;
            }
            free(o0), free(l0);
            dn_kv_cache_free(c);
            if (used <= n) {
                if (n == 0 && getenv("DN_FAULT_VERBOSE"))
                    printf("    note dn_kv_cache_append (grow): no allocation through dn_alloc\n");
                break;
            }
        }
        /* attend */
        outs O = {0};
        kv_ctx ka = {ref, k, v, q, 0, NULL, NULL};
        ka.o = out_add(&O, "o", B * 6 * H * D, 0, &r);
        ka.lse = out_add(&O, "lse", B * H * 6, 0, &r);
        char what[64];
        snprintf(what, sizeof what, "dn_kv_cache_attend %s", dn_dtype_name((dn_dtype)dt));
        fails += inject(what, kv_attend, &ka, &O);
        outs_free(&O);
        free(o_ref), free(lse_ref);
        dn_kv_cache_free(ref);
    }
    free(k), free(v), free(q);
    return fails;
}

/* ---- Mamba-1, Mamba-2, RWKV-4, short convolution ---- */
typedef struct {
    dn_mamba_params m;
    dn_mamba_bwd_params mb;
    dn_mamba2_params m2;
    dn_mamba2_bwd_params m2b;
    dn_rwkv4_params r;
    dn_rwkv4_bwd_params rb;
    dn_conv_params c;
    dn_conv_bwd_params cb;
} ssm_ctx;
static dn_status mamba_fwd(void *c) { return dn_mamba_forward(&((ssm_ctx *)c)->m); }
static dn_status mamba_bwd(void *c) { return dn_mamba_backward(&((ssm_ctx *)c)->mb); }
static dn_status mamba2_fwd(void *c) { return dn_mamba2_forward(&((ssm_ctx *)c)->m2); }
static dn_status mamba2_bwd(void *c) { return dn_mamba2_backward(&((ssm_ctx *)c)->m2b); }
static dn_status rwkv_fwd(void *c) { return dn_rwkv4_forward(&((ssm_ctx *)c)->r); }
static dn_status rwkv_bwd(void *c) { return dn_rwkv4_backward(&((ssm_ctx *)c)->rb); }
static dn_status conv_fwd(void *c) { return dn_conv_forward(&((ssm_ctx *)c)->c); }
static dn_status conv_bwd(void *c) { return dn_conv_backward(&((ssm_ctx *)c)->cb); }

static int faults_ssm(void) {
    int fails = 0;
    rng r = {17};
    const int64_t B = 2, T = 33, D = 12, N = 8, G = 2, H = 4, P = 6, C = 20, W = 4;
    float *x = in_new(&r, B * T * H * P, -1, 1), *dt = in_new(&r, B * T * H * P, -1, 1);
    float *A = in_new(&r, D * N, -2, -0.1f), *Bm = in_new(&r, B * T * G * N, -1, 1);
    float *Cm = in_new(&r, B * T * G * N, -1, 1), *Dk = in_new(&r, 64, -1, 1),
          *z = in_new(&r, B * T * D, -1, 1);
    float *h0 = in_new(&r, B * H * N * P + B * D * N, -1, 1),
          *dy = in_new(&r, B * T * H * P, -1, 1);
    float *w = in_new(&r, D * W + C * 2, -1, 1), *td = in_new(&r, C, -1, 1),
          *tf = in_new(&r, C, -1, 1);
    float *rs = falloc(B * 3 * C);
    for (int64_t i = 0; i < B * 3 * C; i++)
        rs[i] = (i / C) % 3 == 1 ? 1.f : 0.5f;
    const dn_impl impls[3] = {DN_IMPL_REF, DN_IMPL_AUTO, DN_IMPL_CHUNK};
    for (int ii = 0; ii < 3; ii++)
        for (int threads = 1; threads <= 2; threads++) {
            char what[128];
            const char *in = dn_impl_name(impls[ii]);
            ssm_ctx s;
            memset(&s, 0, sizeof s);
            outs O = {0};
            if (ii < 2) {
                /* Mamba-1 */
                s.m = dn_mamba_params_default(B, T, D, N, G);
                s.m.x = x, s.m.dt = dt, s.m.A = A, s.m.Bm = Bm, s.m.Cm = Cm, s.m.Dskip = Dk;
                s.m.dt_bias = Dk + 16, s.m.dt_softplus = 1, s.m.z = z, s.m.initial_state = h0;
                s.m.impl = impls[ii], s.m.n_threads = threads;
                s.m.y = out_add(&O, "y", B * T * D, 0, &r);
                s.m.final_state = out_add(&O, "final_state", B * D * N, 0, &r);
                snprintf(what, sizeof what, "dn_mamba_forward %s threads=%d", in, threads);
                fails += inject(what, mamba_fwd, &s, &O);
                outs_free(&O);
                dn_mamba_params f = s.m;
                f.y = NULL, f.final_state = NULL;
                s.mb = dn_mamba_bwd_params_default(&f);
                s.mb.dy = dy, s.mb.dfinal_state = h0 + 7;
                s.mb.dx = out_add(&O, "dx", B * T * D, 0, &r);
                s.mb.ddt = out_add(&O, "ddt", B * T * D, 0, &r);
                s.mb.dBm = out_add(&O, "dBm", B * T * G * N, 0, &r);
                s.mb.dCm = out_add(&O, "dCm", B * T * G * N, 0, &r);
                s.mb.dz = out_add(&O, "dz", B * T * D, 0, &r);
                s.mb.dA = out_add(&O, "dA", D * N, 1, &r);
                s.mb.dDskip = out_add(&O, "dDskip", D, 1, &r);
                s.mb.ddt_bias = out_add(&O, "ddt_bias", D, 1, &r);
                s.mb.dinitial_state = out_add(&O, "dinitial_state", B * D * N, 0, &r);
                snprintf(what, sizeof what, "dn_mamba_backward %s threads=%d", in, threads);
                fails += inject(what, mamba_bwd, &s, &O);
                outs_free(&O);
            }
            /* Mamba-2 */
            s.m2 = dn_mamba2_params_default(B, T, H, P, N, G);
            s.m2.x = x, s.m2.dt = dt, s.m2.A = A, s.m2.Bm = Bm, s.m2.Cm = Cm, s.m2.Dskip = Dk;
            s.m2.dt_bias = Dk + 8, s.m2.dt_softplus = 1, s.m2.initial_state = h0;
            s.m2.impl = impls[ii], s.m2.n_threads = threads, s.m2.chunk_size = 16;
            s.m2.y = out_add(&O, "y", B * T * H * P, 0, &r);
            s.m2.final_state = out_add(&O, "final_state", B * H * N * P, 0, &r);
            snprintf(what, sizeof what, "dn_mamba2_forward %s threads=%d", in, threads);
            fails += inject(what, mamba2_fwd, &s, &O);
            outs_free(&O);
            dn_mamba2_params f2 = s.m2;
            f2.y = NULL, f2.final_state = NULL;
            s.m2b = dn_mamba2_bwd_params_default(&f2);
            s.m2b.dy = dy, s.m2b.dfinal_state = h0 + 5;
            s.m2b.dx = out_add(&O, "dx", B * T * H * P, 0, &r);
            s.m2b.ddt = out_add(&O, "ddt", B * T * H, 0, &r);
            s.m2b.dBm = out_add(&O, "dBm", B * T * G * N, 0, &r);
            s.m2b.dCm = out_add(&O, "dCm", B * T * G * N, 0, &r);
            s.m2b.dA = out_add(&O, "dA", H, 1, &r);
            s.m2b.dDskip = out_add(&O, "dDskip", H, 1, &r);
            s.m2b.ddt_bias = out_add(&O, "ddt_bias", H, 1, &r);
            s.m2b.dinitial_state = out_add(&O, "dinitial_state", B * H * N * P, 0, &r);
            snprintf(what, sizeof what, "dn_mamba2_backward %s threads=%d", in, threads);
            fails += inject(what, mamba2_bwd, &s, &O);
            outs_free(&O);
            if (ii == 2) continue;
            /* RWKV-4 */
            s.r = dn_rwkv4_params_default(B, T, C);
            s.r.k = x, s.r.v = dt, s.r.time_decay = td, s.r.time_first = tf, s.r.initial_state = rs;
            s.r.impl = impls[ii], s.r.n_threads = threads;
            s.r.y = out_add(&O, "y", B * T * C, 0, &r);
            s.r.final_state = out_add(&O, "final_state", B * 3 * C, 0, &r);
            snprintf(what, sizeof what, "dn_rwkv4_forward %s threads=%d", in, threads);
            fails += inject(what, rwkv_fwd, &s, &O);
            outs_free(&O);
            dn_rwkv4_params fr = s.r;
            fr.y = NULL, fr.final_state = NULL;
            s.rb = dn_rwkv4_bwd_params_default(&fr);
            s.rb.dy = dy, s.rb.dfinal_state = rs;
            s.rb.dk = out_add(&O, "dk", B * T * C, 0, &r);
            s.rb.dv = out_add(&O, "dv", B * T * C, 0, &r);
            s.rb.dtime_decay = out_add(&O, "dtime_decay", C, 1, &r);
            s.rb.dtime_first = out_add(&O, "dtime_first", C, 1, &r);
            s.rb.dinitial_state = out_add(&O, "dinitial_state", B * 3 * C, 0, &r);
            snprintf(what, sizeof what, "dn_rwkv4_backward %s threads=%d", in, threads);
            fails += inject(what, rwkv_bwd, &s, &O);
            outs_free(&O);
            /* short convolution */
            s.c = dn_conv_params_default(B, T, D, W);
            s.c.x = x, s.c.weight = w, s.c.bias = Dk, s.c.silu = 1, s.c.initial_state = h0;
            s.c.impl = impls[ii], s.c.n_threads = threads;
            s.c.y = out_add(&O, "y", B * T * D, 0, &r);
            s.c.final_state = out_add(&O, "final_state", B * D * (W - 1), 0, &r);
            snprintf(what, sizeof what, "dn_conv_forward %s threads=%d", in, threads);
            fails += inject(what, conv_fwd, &s, &O);
            outs_free(&O);
            dn_conv_params fc = s.c;
            fc.y = NULL, fc.final_state = NULL;
            s.cb = dn_conv_bwd_params_default(&fc);
            s.cb.dy = dy, s.cb.dfinal_state = h0 + 3;
            s.cb.dx = out_add(&O, "dx", B * T * D, 0, &r);
            s.cb.dweight = out_add(&O, "dweight", D * W, 1, &r);
            s.cb.dbias = out_add(&O, "dbias", D, 1, &r);
            s.cb.dinitial_state = out_add(&O, "dinitial_state", B * D * (W - 1), 0, &r);
            snprintf(what, sizeof what, "dn_conv_backward %s threads=%d", in, threads);
            fails += inject(what, conv_bwd, &s, &O);
            outs_free(&O);
        }
    free(x), free(dt), free(A), free(Bm), free(Cm), free(Dk), free(z), free(h0), free(dy), free(w);
    free(td), free(tf), free(rs);
    return fails;
}

const test_case dn_tests_faults[] = {
    {"faults_la", faults_la}, {"faults_la_step", faults_la_step}, {"faults_attn", faults_attn},
    {"faults_kv", faults_kv}, {"faults_ssm", faults_ssm},         {NULL, NULL},
};
