/*
 * test_cuda.c - the linear family's 16-bit inputs and its GPU kernels against the double
 * reference (DN_IMPL_REF, on the host, over the very inputs the kernel sees: 16-bit inputs are
 * rounded first). On a machine without a CUDA device (or a build without nvcc) the GPU cases check
 * that a device call says so (DN_ERR_DEVICE), print why they skip, and pass.
 *
 * Tolerances (relative RMS over all outputs, and over the final states):
 *   fp32 inputs: 1e-4. fp32 state and accumulation everywhere; the chunkwise fp32 path runs its
 *     products in fp32 on the CUDA cores, so only fp32 rounding over dots of <= 256 terms and a
 *     32-deep triangular solve remains (measured errors are printed, typically 1e-6 .. 1e-5).
 *   bf16 / fp16 inputs: 1e-2 for the chunkwise form (tensor cores) and 5e-3 for the recurrence.
 *     The output itself is rounded to bf16 (2^-9 relative: 1.1e-3 RMS on its own); the chunkwise
 *     products also take bf16 operands (normalised q and k, the state, U, (I+A)^-1 and the masked
 *     scores), half a dozen such roundings adding to about 3e-3, the figure flash-linear-attention
 *     shows against an fp32 recurrence (3.3e-3; FlashInfer 2.9e-3). The bounds keep a 3x margin
 *     over that while any real fault (a mask, a gate, a stride, a missed chunk) is O(1).
 */
#include "test.h"

#include "../src/half.h"

static int small_grid(void) { return getenv("DN_CUDA_TEST_SMALL") != NULL; }

typedef struct {
    dn_op op;
    int64_t B, T, H, HV, K, V;
    int varlen;  /* cu_seqlens with empty and one-token sequences (B = 1) */
    int strided; /* q, k, v, o as views into wider buffers */
    int gates;   /* 0: mild, 1: strong decay, 2: g = 0, 3: some g = -inf, 4: the raw gates
                  * (gate_a, A_log, dt_bias; gate_b for beta) computed inside the call */
    int betas;   /* 0: uniform [0, 1], 1: near 0, 2: near 2 */
    int l2norm;  /* in-op L2 norm (else keys drawn with norm about 1) */
    int init;    /* an initial state */
    int inplace; /* final_state == initial_state */
    int sbf16;   /* the states in bf16 (state_dtype) */
} la_case;

/* Rounds x to the dtype (what a 16-bit input holds), in place; writes the bits to h. */
static void round_to(dn_dtype t, float *x, uint16_t *h, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (t == DN_BF16) {
            h[i] = dn_f32_to_bf16(x[i]);
            x[i] = dn_bf16_to_f32(h[i]);
        } else if (t == DN_F16) {
            h[i] = dn_f32_to_f16(x[i]);
            x[i] = dn_f16_to_f32(h[i]);
        }
    }
}
static float elem(dn_dtype t, const void *p, int64_t i) {
    if (t == DN_F32) return ((const float *)p)[i];
    const uint16_t h = ((const uint16_t *)p)[i];
    return t == DN_BF16 ? dn_bf16_to_f32(h) : dn_f16_to_f32(h);
}

/* One tensor [n0,n1,n2,D] in a buffer of the dtype with strides s (pad elements between rows
 * when strided), host copy, and (for the GPU) a device copy. */
typedef struct {
    dn_strides s;
    int64_t elems; /* of the whole buffer */
    void *host;    /* dtype elements */
} tensor;

static tensor make_tensor(dn_dtype t, int64_t n0, int64_t n1, int64_t n2, int64_t D, int strided,
                          const float *vals /* contiguous, already rounded */) {
    tensor x;
    const int64_t pad = strided ? 8 : 0, hs = D + pad, ts = n2 * hs + pad, bs = n1 * ts + pad;
    x.s = (dn_strides){bs, ts, hs};
    x.elems = n0 * bs + 1;
    const size_t es = t == DN_F32 ? 4 : 2;
    x.host = malloc(es * (size_t)x.elems);
    memset(x.host, 0x7f, es * (size_t)x.elems);
    for (int64_t a = 0; a < n0; a++)
        for (int64_t b = 0; b < n1; b++)
            for (int64_t c = 0; c < n2; c++)
                for (int64_t d = 0; d < D; d++) {
                    const int64_t i = a * bs + b * ts + c * hs + d;
                    const float v = vals ? vals[((a * n1 + b) * n2 + c) * D + d] : NAN;
                    if (t == DN_F32)
                        ((float *)x.host)[i] = v;
                    else
                        ((uint16_t *)x.host)[i] =
                            t == DN_BF16 ? dn_f32_to_bf16(v) : dn_f32_to_f16(v);
                }
    return x;
}

static size_t tbytes(dn_dtype t, const tensor *x) {
    return (t == DN_F32 ? 4 : 2) * (size_t)x->elems;
}

/* Device copy of n bytes of host memory (NULL for NULL). */
static void *up(const void *host, size_t n) {
    if (!host) return NULL;
    void *d = NULL;
    if (dn_cuda_malloc(&d, n) != DN_OK || dn_cuda_memcpy(d, host, n) != DN_OK) {
        fprintf(stderr, "test_cuda: device allocation failed: %s\n", dn_last_error());
        exit(2);
    }
    return d;
}

/* cu_seqlens of a varlen case (lengths 0, 1, T/2 - 1, 0, the rest: B = 1), or none; returns
 * the number of sequences. */
static int64_t varlen_seqs(const la_case *c, int64_t *cu) {
    if (!c->varlen) return c->B;
    const int64_t h = c->T / 2, L[] = {0, 1, h - 1, 0, c->T - h};
    cu[0] = 0;
    for (int i = 0; i < 5; i++)
        cu[i + 1] = cu[i] + L[i];
    return 5;
}

/* g and beta [ng] as the case's gate and beta regimes ask */
static void fill_gates(rng *r, const la_case *c, float *g, float *bt, int64_t ng) {
    for (int64_t i = 0; i < ng; i++) {
        float x = rng_uniform(r, 0, 1);
        g[i] = c->gates == 0 ? -0.02f - 0.3f * x : c->gates == 1 ? -2.0f - 8.0f * x : 0.0f;
        if (c->gates == 3) g[i] = x < 0.1f ? -INFINITY : -0.05f * x;
        bt[i] = c->betas == 0 ? x : c->betas == 1 ? 1e-4f * x : 2.0f - 1e-3f * x;
    }
}

static const char *gate_names[] = {"mild", "strong", "g=0", "g=-inf", "raw-gates"};
static const char *beta_names[] = {"beta~U(0,1)", "beta~0", "beta~2"};

/* Runs one case on the device (device >= 0) or the CPU (16-bit inputs, device < 0) against the
 * reference; returns the number of failures. */
static int run_case(const la_case *c, dn_dtype dt, dn_impl impl, int device, uint64_t seed) {
    rng r = {seed};
    const int64_t B = c->B, T = c->T, H = c->H, HV = c->HV, K = c->K, V = c->V;
    const int gate = c->op == DN_OP_GLA || c->op == DN_OP_GDN;
    const int delta = c->op == DN_OP_DELTANET || c->op == DN_OP_GDN;
    int64_t cu[8];
    const int64_t ns = varlen_seqs(c, cu);
    const int64_t nqk = B * T * H * K, nv = B * T * HV * V, ng = B * T * HV, nst = ns * HV * K * V;
    float *q = falloc(nqk), *k = falloc(nqk), *v = falloc(nv), *g = falloc(ng), *bt = falloc(ng);
    float *h0 = falloc(nst), *o_ref = falloc(nv), *ht_ref = falloc(nst), *o_got = falloc(nv),
          *ht_got = falloc(nst);
    uint16_t *scratch = malloc(sizeof(uint16_t) * (size_t)(nqk > nv ? nqk : nv));
    const float ks = c->l2norm ? 1.0f : sqrtf(3.0f / (float)K); /* |k| about 1 without norm */
    fill_uniform(&r, q, nqk, -1, 1);
    fill_uniform(&r, k, nqk, -ks, ks);
    fill_uniform(&r, v, nv, -1, 1);
    fill_uniform(&r, h0, nst, -0.5f, 0.5f);
    fill_gates(&r, c, g, bt, ng);
    /* raw gates: g and beta as the call computes them (the reference takes these) */
    float *ga = falloc(ng), *gbr = falloc(ng), A_log[64], dt_bias[64];
    const int raw = c->gates == 4;
    for (int64_t h = 0; raw && h < HV; h++) {
        A_log[h] = rng_uniform(&r, -2, 1);
        dt_bias[h] = rng_uniform(&r, -4, -1);
    }
    for (int64_t i = 0; raw && i < ng; i++) {
        ga[i] = rng_uniform(&r, -8, 2); /* mostly moderate decays; 1 in 20 past softplus's 20 */
        if (rng_uniform(&r, 0, 1) < 0.05f) ga[i] = rng_uniform(&r, 24, 26);
        gbr[i] = rng_uniform(&r, -6, 6);
        const float x = ga[i] + dt_bias[i % HV];
        g[i] = -expf(A_log[i % HV]) * (x > 20.0f ? x : log1pf(expf(x)));
        bt[i] = 1.0f / (1.0f + expf(-gbr[i]));
    }
    round_to(dt, q, scratch, nqk);
    round_to(dt, k, scratch, nqk);
    round_to(dt, v, scratch, nv);
    free(scratch);
    /* the states as the call holds them: h0 rounded to bf16 for a bf16 state */
    const size_t ses = c->sbf16 ? 2 : 4, sbytes = ses * (size_t)nst;
    void *st0 = malloc(sbytes);
    for (int64_t i = 0; i < nst; i++) {
        if (c->sbf16) {
            ((uint16_t *)st0)[i] = dn_f32_to_bf16(h0[i]);
            h0[i] = dn_bf16_to_f32(((uint16_t *)st0)[i]);
        } else {
            ((float *)st0)[i] = h0[i];
        }
    }
    void *ht_buf = malloc(sbytes); /* the final state as the call writes it */

    /* reference over the rounded inputs */
    dn_la_params p = dn_la_params_default(c->op, B, T, H, HV, K, V);
    p.q = q, p.k = k, p.v = v, p.g = gate ? g : NULL, p.beta = delta ? bt : NULL;
    p.o = o_ref;
    p.qk_l2norm = c->l2norm;
    p.initial_state = c->init ? h0 : NULL;
    p.final_state = ht_ref;
    if (c->varlen) p.cu_seqlens = cu, p.n_seqs = ns;
    p.impl = DN_IMPL_REF;
    int fails = 0;
    dn_status st = dn_la_forward(&p);
    if (st != DN_OK) {
        printf("    FAIL reference: %s\n", dn_last_error());
        return 1;
    }

    /* the call under test */
    tensor tq = make_tensor(dt, B, T, H, K, c->strided, q),
           tk = make_tensor(dt, B, T, H, K, c->strided, k),
           tv = make_tensor(dt, B, T, HV, V, c->strided, v),
           to = make_tensor(dt, B, T, HV, V, c->strided, NULL);
    p.dtype = dt;
    p.impl = impl;
    p.q_s = tq.s, p.k_s = tk.s, p.v_s = tv.s, p.o_s = to.s;
    p.state_dtype = c->sbf16 ? DN_BF16 : DN_F32;
    const int raw_g = raw && gate, raw_b = raw && delta;
    p.gate_a_s = p.gate_b_s = (dn_strides){T * HV, HV, 1};
    if (device >= 0) {
        p.device = device;
        p.q = up(tq.host, tbytes(dt, &tq));
        p.k = up(tk.host, tbytes(dt, &tk));
        p.v = up(tv.host, tbytes(dt, &tv));
        p.o = up(to.host, tbytes(dt, &to)); /* poisoned: NaN everywhere */
        p.g = gate && !raw_g ? up(g, sizeof(float) * (size_t)ng) : NULL;
        p.beta = delta && !raw_b ? up(bt, sizeof(float) * (size_t)ng) : NULL;
        p.gate_a = raw_g ? up(ga, sizeof(float) * (size_t)ng) : NULL;
        p.A_log = raw_g ? up(A_log, sizeof(float) * (size_t)HV) : NULL;
        p.dt_bias = raw_g ? up(dt_bias, sizeof(float) * (size_t)HV) : NULL;
        p.gate_b = raw_b ? up(gbr, sizeof(float) * (size_t)ng) : NULL;
        float *dh0 = up(st0, sbytes), *dht = NULL;
        if (c->inplace)
            dht = dh0;
        else
            dht = up(st0, sbytes); /* junk: must be overwritten */
        p.initial_state = c->init ? dh0 : NULL;
        p.final_state = dht;
        st = dn_la_forward(&p);
        if (st == DN_OK) st = dn_cuda_synchronize();
        if (st == DN_OK) {
            dn_cuda_memcpy(to.host, p.o, tbytes(dt, &to));
            dn_cuda_memcpy(ht_buf, dht, sbytes);
        }
        dn_cuda_free((void *)p.q), dn_cuda_free((void *)p.k), dn_cuda_free((void *)p.v);
        dn_cuda_free(p.o), dn_cuda_free((void *)p.g), dn_cuda_free((void *)p.beta);
        dn_cuda_free((void *)p.gate_a), dn_cuda_free((void *)p.A_log);
        dn_cuda_free((void *)p.dt_bias), dn_cuda_free((void *)p.gate_b);
        dn_cuda_free(dh0);
        if (!c->inplace) dn_cuda_free(dht);
    } else {
        p.q = tq.host, p.k = tk.host, p.v = tv.host, p.o = to.host;
        if (raw_g) p.g = NULL, p.gate_a = ga, p.A_log = A_log, p.dt_bias = dt_bias;
        if (raw_b) p.beta = NULL, p.gate_b = gbr;
        p.initial_state = c->init ? st0 : NULL;
        p.final_state = c->inplace && c->init ? st0 : ht_buf;
        st = dn_la_forward(&p);
        if (c->inplace && c->init) memcpy(ht_buf, st0, sbytes);
    }
    for (int64_t i = 0; i < nst; i++)
        ht_got[i] = c->sbf16 ? dn_bf16_to_f32(((uint16_t *)ht_buf)[i]) : ((float *)ht_buf)[i];
    char what[256];
    snprintf(what, sizeof what, "%s %s %s B%lld T%lld H%lld HV%lld K%lld V%lld%s%s %s %s%s%s%s%s",
             dn_op_name(c->op), dn_dtype_name(dt), dn_impl_name(impl), (long long)B, (long long)T,
             (long long)H, (long long)HV, (long long)K, (long long)V, c->varlen ? " varlen" : "",
             c->strided ? " strided" : "", gate ? gate_names[c->gates] : "",
             delta ? beta_names[c->betas] : "", c->l2norm ? " l2norm" : "", c->init ? " h0" : "",
             c->inplace ? " inplace" : "", c->sbf16 ? " bf16-state" : "");
    if (st != DN_OK) {
        printf("    FAIL %s: %s (%s)\n", what, dn_status_str(st), dn_last_error());
        fails++;
    } else {
        for (int64_t a = 0; a < B; a++)
            for (int64_t t = 0; t < T; t++)
                for (int64_t hh = 0; hh < HV; hh++)
                    for (int64_t d = 0; d < V; d++)
                        o_got[((a * T + t) * HV + hh) * V + d] =
                            elem(dt, to.host, a * to.s.b + t * to.s.t + hh * to.s.h + d);
        /* the output is stored in the dtype: it cannot be closer to the reference than the
         * reference rounded to that dtype (fp16 outputs of strongly decayed heads fall below
         * 2^-14, where fp16 is subnormal and coarse) */
        float *rr = falloc(nv);
        memcpy(rr, o_ref, sizeof(float) * (size_t)nv);
        uint16_t *tmp = malloc(sizeof(uint16_t) * (size_t)nv);
        round_to(dt, rr, tmp, nv);
        const double floor_o = rel_rms(rr, o_ref, nv, NULL);
        free(rr), free(tmp);
        /* likewise a bf16 final state (2^-9 relative, 1.1e-3 RMS) */
        double floor_s = 0;
        if (c->sbf16) {
            float *sr = falloc(nst);
            uint16_t *stmp = malloc(sizeof(uint16_t) * (size_t)nst);
            memcpy(sr, ht_ref, sizeof(float) * (size_t)nst);
            round_to(DN_BF16, sr, stmp, nst);
            floor_s = rel_rms(sr, ht_ref, nst, NULL);
            free(sr), free(stmp);
        }
        const double base = dt == DN_F32 ? 1e-4 : impl == DN_IMPL_RECURRENT ? 5e-3 : 1e-2;
        const double tol = base + 2 * floor_o, tol_s = base + 2 * floor_s;
        int64_t w = 0;
        const double eo = rel_rms(o_got, o_ref, nv, &w);
        const double es = rel_rms(ht_got, ht_ref, nst, NULL);
        if (!(eo <= tol) || !(es <= tol_s)) {
            printf("    FAIL %s: o %.3g, state %.3g (tol %.0e / %.0e; worst o[%lld] got %.7g ref "
                   "%.7g)\n",
                   what, eo, es, tol, tol_s, (long long)w, o_got[w], o_ref[w]);
            fails++;
        } else if (getenv("DN_TEST_VERBOSE"))
            printf("    ok %s: o %.2e state %.2e\n", what, eo, es);
    }
    free(tq.host), free(tk.host), free(tv.host), free(to.host);
    free(q), free(k), free(v), free(g), free(bt), free(h0), free(o_ref), free(ht_ref), free(o_got),
        free(ht_got), free(st0), free(ht_buf), free(ga), free(gbr);
    return fails;
}

/* Head dims (K, V) of the grids: the published fast kernels' 128, the models' 64 to 256, and
 * unequal and small pairs. */
static const int64_t dims[][2] = {{64, 64},  {96, 96},   {128, 128}, {192, 192}, {256, 256},
                                  {96, 192}, {128, 256}, {256, 64},  {32, 48},   {48, 16}};

/* Every op with one family of option variants each (the forward's and the backward's grids
 * start from these); returns the count. */
static int option_cases(la_case *cases, int small) {
    static const dn_op ops[] = {DN_OP_LINEAR_ATTN, DN_OP_GLA, DN_OP_DELTANET, DN_OP_GDN};
    int nc = 0;
    for (int o = 0; o < 4; o++) {
        cases[nc++] = (la_case){ops[o], 2, 37, 2, 2, 64, 64, 0, 0, 0, 0, 1, 1, 0, 0};
        cases[nc++] = (la_case){ops[o], 1, 70, 1, 2, 64, 64, 1, 0, 0, 0, 1, 1, 0, 0};
        if (small) continue;
        cases[nc++] = (la_case){ops[o], 2, 1, 2, 4, 128, 128, 0, 0, 0, 0, 1, 1, 1, 0};
        cases[nc++] = (la_case){ops[o], 2, 129, 2, 4, 64, 64, 0, 1, 1, 1, 1, 1, 1, 0};
        cases[nc++] = (la_case){ops[o], 1, 150, 1, 3, 128, 128, 1, 1, 3, 2, 1, 1, 0, 0};
        cases[nc++] = (la_case){ops[o], 2, 100, 2, 2, 64, 128, 0, 0, 2, 0, 0, 0, 0, 0};
        cases[nc++] = (la_case){ops[o], 1, 200, 1, 1, 128, 64, 0, 0, 3, 0, 1, 1, 0, 0};
    }
    return nc;
}

/* The grid: every op and form over odd lengths, T < chunk, varlen, grouped heads, every head dim,
 * strided views, the gate and beta extremes. */
static int run_grid(int device, const dn_dtype *dts, int ndt, const dn_impl *impls, int nimpl) {
    la_case cases[256];
    const int small = small_grid();
    int nc = option_cases(cases, small);
    /* the GPU's split chunkwise path (its state pass takes V / 16 warps a block, up to 8: every
     * count is in the grid above and below): many heads; many chunks on one (sequence, head);
     * varlen sequences of many chunks */
    cases[nc++] = (la_case){DN_OP_GDN, 1, 100, 4, 48, 64, 128, 0, 0, 0, 0, 1, 1, 0, 0};
    if (!small) {
        cases[nc++] = (la_case){DN_OP_GDN, 1, 700, 1, 2, 128, 128, 0, 0, 0, 0, 1, 1, 0, 0};
        cases[nc++] = (la_case){DN_OP_GDN, 1, 1000, 1, 2, 128, 128, 1, 1, 1, 2, 1, 1, 1, 0};
        cases[nc++] = (la_case){DN_OP_GLA, 1, 520, 2, 2, 64, 64, 1, 0, 3, 0, 1, 1, 0, 0};
        cases[nc++] = (la_case){DN_OP_GDN, 2, 130, 8, 40, 64, 128, 0, 0, 3, 1, 1, 1, 0, 0};
        cases[nc++] = (la_case){DN_OP_DELTANET, 1, 300, 1, 1, 256, 256, 0, 0, 0, 0, 1, 1, 0, 0};
    }
    if (!small)
        for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
            cases[nc++] =
                (la_case){DN_OP_GDN, 1, 77, 1, 2, dims[d][0], dims[d][1], 0, 0, 0, 0, 1, 1, 0, 0};
            cases[nc++] =
                (la_case){DN_OP_GLA, 1, 65, 2, 2, dims[d][0], dims[d][1], 0, 1, 1, 0, 0, 1, 0, 0};
        }
    /* decode steps (T = 1, in place) and a few tokens, every head dim, fp32 and bf16 states;
     * bf16 states under the chunkwise form too */
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
        for (int sb = 0; sb < (small ? 1 : 2); sb++) {
            if (small && d % 3) continue;
            cases[nc++] = (la_case){DN_OP_GDN,  3,          1, 2, 4, dims[d][0], dims[d][1], 0, 0,
                                    (int)d % 4, (int)d % 3, 1, 1, 1, sb};
            if (!small)
                cases[nc++] = (la_case){d % 2 ? DN_OP_DELTANET : DN_OP_GLA,
                                        2,
                                        5,
                                        1,
                                        2,
                                        dims[d][0],
                                        dims[d][1],
                                        0,
                                        0,
                                        1,
                                        0,
                                        1,
                                        1,
                                        0,
                                        sb};
        }
    /* the bulk-copy decode (sm_90+; it takes batches of at least one (sequence, value head) an
     * SM): fp32 and bf16 states, strided inputs, a few tokens, no initial state, V not a multiple
     * of a warp's columns, varlen with empty sequences and g = -inf, K = 256; and a bf16 state of
     * 128 KB, too large for it (the register form) */
    cases[nc++] = (la_case){DN_OP_GDN, 40, 1, 2, 8, 128, 128, 0, 1, 0, 0, 1, 1, 1, 0};
    cases[nc++] = (la_case){DN_OP_GDN, 40, 1, 2, 8, 128, 128, 0, 0, 1, 2, 1, 1, 1, 1};
    cases[nc++] = (la_case){DN_OP_DELTANET, 24, 3, 4, 16, 64, 96, 0, 0, 0, 0, 1, 0, 0, 0};
    cases[nc++] = (la_case){DN_OP_GDN, 1, 9, 4, 64, 128, 128, 1, 0, 3, 1, 1, 1, 0, 0};
    cases[nc++] = (la_case){DN_OP_GLA, 20, 1, 2, 8, 256, 64, 0, 0, 1, 0, 1, 1, 1, 0};
    cases[nc++] = (la_case){DN_OP_GDN, 20, 1, 2, 8, 256, 256, 0, 0, 0, 0, 1, 1, 1, 1};
    /* the raw gates (g and beta computed inside the call), decode and chunkwise */
    cases[nc++] = (la_case){DN_OP_GDN, 3, 1, 2, 4, 128, 128, 0, 0, 4, 0, 1, 1, 1, 0};
    cases[nc++] = (la_case){DN_OP_GDN, 1, 90, 1, 2, 64, 64, 1, 0, 4, 0, 1, 1, 0, 1};
    cases[nc++] = (la_case){DN_OP_GLA, 2, 65, 2, 2, 64, 128, 0, 1, 4, 0, 0, 1, 0, 0};
    cases[nc++] = (la_case){DN_OP_DELTANET, 2, 33, 1, 1, 64, 64, 0, 0, 4, 0, 1, 1, 0, 0};
    cases[nc++] = (la_case){DN_OP_GDN, 1, 90, 1, 2, 128, 128, 1, 0, 0, 0, 1, 1, 1, 1};
    cases[nc++] = (la_case){DN_OP_GDN, 2, 70, 2, 2, 64, 64, 0, 0, 0, 0, 1, 1, 0, 1};
    int fails = 0, runs = 0;
    /* 16-bit chunkwise runs on the GPU: the fused forward (K <= 128) and the split one, each */
    static const char *const fwd[] = {"fused", "split"};
    for (int i = 0; i < nc; i++)
        for (int d = 0; d < ndt; d++)
            for (int m = 0; m < nimpl; m++) {
                const int both = device >= 0 && dts[d] != DN_F32 && impls[m] == DN_IMPL_CHUNK &&
                                 cases[i].K <= 128;
                for (int f = 0; f < (both ? 2 : 1); f++) {
                    if (both) setenv("DN_CUDA_FWD", fwd[f], 1);
                    if (both && f == 0 && getenv("DN_TEST_VERBOSE")) printf("    (fused)\n");
                    fails += run_case(&cases[i], dts[d], impls[m], device,
                                      1000 + (uint64_t)(i * 7 + d * 3 + m));
                    runs++;
                }
                unsetenv("DN_CUDA_FWD");
            }
    /* value dims the 16-byte decode layout does not take (V % 4 in fp32 states, V % 8 in bf16):
     * the recurrence's other kernel */
    static const int64_t odd_v[] = {6, 20};
    for (int i = 0; i < 2; i++)
        for (int sb = 0; sb < 2; sb++) {
            la_case c = {DN_OP_GDN, 3, 1 + 3 * sb, 1, 2, 32, odd_v[i], 0, 0, 0, 0, 1, 1, 1, sb};
            fails += run_case(&c, dts[0], DN_IMPL_RECURRENT, device, 4000 + (uint64_t)(i + sb));
            runs++;
        }
    printf("     %d runs, %d failed\n", runs, fails);
    return fails;
}

/* ---------------------------------------------------------------------------------------------
 * The backward: every gradient (dq, dk, dv, dg, dbeta, dinitial_state) against the double
 * reference backward over the same rounded inputs and the same rounded dout and dfinal_state.
 * For fp32 and fp16 inputs the GPU backward computes in fp32 (fp32 copies of the inputs, fp32
 * products on the CUDA cores), so the bound is fp32's: 1e-4 relative RMS (measured errors,
 * printed under DN_TEST_VERBOSE, are 1e-7 .. 1e-5), plus, for dq, dk and dv written in a 16-bit
 * dtype, twice the error of the reference itself rounded to that dtype (1.1e-3 RMS in bf16). On
 * the CPU (device < 0) the 16-bit path converts and runs the fp32 backward: the same bound.
 * bf16 inputs on the GPU take the tensor-core state sweeps: their products have bf16 operands
 * (the normalised keys, e^gamma-scaled queries, M, (I+A)^-1, dO, and the state and its gradient
 * rounded where they enter a product), a handful of 2^-9 roundings like the chunkwise forward's,
 * so the forward's bound applies: 1e-2 (flash-linear-attention's gradients are 1.5e-3 .. 3.3e-3
 * from an fp32 reference; a real fault is O(1)).
 * ------------------------------------------------------------------------------------------- */
static int check_grad(const char *what, const char *name, const float *got, const float *ref,
                      int64_t n, dn_dtype rounded, double base) {
    double floor = 0;
    if (rounded != DN_F32) {
        float *rr = falloc(n);
        uint16_t *tmp = malloc(sizeof(uint16_t) * (size_t)(n > 0 ? n : 1));
        memcpy(rr, ref, sizeof(float) * (size_t)n);
        round_to(rounded, rr, tmp, n);
        floor = rel_rms(rr, ref, n, NULL);
        free(rr), free(tmp);
    }
    const double tol = base + 2 * floor;
    int64_t w = 0;
    const double e = rel_rms(got, ref, n, &w);
    if (!(e <= tol)) {
        printf("    FAIL %s: %s %.3g (tol %.1e; worst [%lld] got %.7g ref %.7g)\n", what, name, e,
               tol, (long long)w, got[w], ref[w]);
        return 1;
    }
    if (getenv("DN_TEST_VERBOSE")) printf("    ok %s: %s %.2e\n", what, name, e);
    return 0;
}

/* a strided tensor of the dtype back to contiguous fp32 */
static void gather(float *dst, dn_dtype t, const tensor *x, int64_t n0, int64_t n1, int64_t n2,
                   int64_t D) {
    for (int64_t a = 0; a < n0; a++)
        for (int64_t b = 0; b < n1; b++)
            for (int64_t c = 0; c < n2; c++)
                for (int64_t d = 0; d < D; d++)
                    dst[((a * n1 + b) * n2 + c) * D + d] =
                        elem(t, x->host, a * x->s.b + b * x->s.t + c * x->s.h + d);
}

static int run_bwd_case(const la_case *c, dn_dtype dt, int device, uint64_t seed) {
    rng r = {seed};
    const int64_t B = c->B, T = c->T, H = c->H, HV = c->HV, K = c->K, V = c->V;
    const int gate = c->op == DN_OP_GLA || c->op == DN_OP_GDN;
    const int delta = c->op == DN_OP_DELTANET || c->op == DN_OP_GDN;
    int64_t cu[8];
    const int64_t ns = varlen_seqs(c, cu);
    const int64_t nqk = B * T * H * K, nv = B * T * HV * V, ng = B * T * HV, nst = ns * HV * K * V;
    float *q = falloc(nqk), *k = falloc(nqk), *v = falloc(nv), *g = falloc(ng), *bt = falloc(ng);
    float *h0 = falloc(nst), *dht = falloc(nst), *dout = falloc(nv);
    float *rq = falloc(nqk), *rk = falloc(nqk), *rv = falloc(nv), *rg = falloc(ng),
          *rb = falloc(ng), *rh0 = falloc(nst);
    float *gq = falloc(nqk), *gk = falloc(nqk), *gv = falloc(nv), *gg = falloc(ng),
          *gb = falloc(ng), *gh0 = falloc(nst);
    uint16_t *scratch = malloc(sizeof(uint16_t) * (size_t)(nqk > nv ? nqk : nv) + 2);
    const float ks = c->l2norm ? 1.0f : sqrtf(3.0f / (float)K);
    fill_uniform(&r, q, nqk, -1, 1);
    fill_uniform(&r, k, nqk, -ks, ks);
    fill_uniform(&r, v, nv, -1, 1);
    fill_uniform(&r, h0, nst, -0.5f, 0.5f);
    fill_uniform(&r, dht, nst, -0.5f, 0.5f);
    fill_uniform(&r, dout, nv, -1, 1);
    fill_gates(&r, c, g, bt, ng);
    round_to(dt, q, scratch, nqk);
    round_to(dt, k, scratch, nqk);
    round_to(dt, v, scratch, nv);
    round_to(dt, dout, scratch, nv);
    free(scratch);

    dn_la_params p = dn_la_params_default(c->op, B, T, H, HV, K, V);
    p.q = q, p.k = k, p.v = v, p.g = gate ? g : NULL, p.beta = delta ? bt : NULL;
    p.qk_l2norm = c->l2norm;
    p.initial_state = c->init ? h0 : NULL;
    if (c->varlen) p.cu_seqlens = cu, p.n_seqs = ns;
    p.impl = DN_IMPL_REF;
    dn_la_bwd_params bp = dn_la_bwd_params_default(&p);
    bp.dout = dout, bp.dfinal_state = c->init ? dht : NULL;
    bp.dq = rq, bp.dk = rk, bp.dv = rv, bp.dg = gate ? rg : NULL, bp.dbeta = delta ? rb : NULL;
    bp.dinitial_state = rh0;
    int fails = 0;
    if (dn_la_backward(&bp) != DN_OK) {
        printf("    FAIL reference backward: %s\n", dn_last_error());
        return 1;
    }

    /* the call under test: q, k, v, dout and dq, dk, dv in the dtype (strided when asked) */
    tensor tq = make_tensor(dt, B, T, H, K, c->strided, q),
           tk = make_tensor(dt, B, T, H, K, c->strided, k),
           tv = make_tensor(dt, B, T, HV, V, c->strided, v),
           tdo = make_tensor(dt, B, T, HV, V, c->strided, dout),
           tdq = make_tensor(dt, B, T, H, K, c->strided, NULL),
           tdk = make_tensor(dt, B, T, H, K, c->strided, NULL),
           tdv = make_tensor(dt, B, T, HV, V, c->strided, NULL);
    bp.fwd.dtype = dt;
    bp.fwd.impl = DN_IMPL_CHUNK;
    bp.fwd.q_s = tq.s, bp.fwd.k_s = tk.s, bp.fwd.v_s = tv.s, bp.dout_s = tdo.s;
    bp.dq_s = tdq.s, bp.dk_s = tdk.s, bp.dv_s = tdv.s;
    memset(gg, 0x7f, sizeof(float) * (size_t)ng), memset(gb, 0x7f, sizeof(float) * (size_t)ng);
    memset(gh0, 0x7f, sizeof(float) * (size_t)nst);
    dn_status st;
    if (device >= 0) {
        bp.fwd.device = device;
        bp.fwd.q = up(tq.host, tbytes(dt, &tq));
        bp.fwd.k = up(tk.host, tbytes(dt, &tk));
        bp.fwd.v = up(tv.host, tbytes(dt, &tv));
        bp.fwd.g = gate ? up(g, sizeof(float) * (size_t)ng) : NULL;
        bp.fwd.beta = delta ? up(bt, sizeof(float) * (size_t)ng) : NULL;
        bp.fwd.initial_state = c->init ? up(h0, sizeof(float) * (size_t)nst) : NULL;
        bp.dout = up(tdo.host, tbytes(dt, &tdo));
        bp.dfinal_state = c->init ? up(dht, sizeof(float) * (size_t)nst) : NULL;
        bp.dq = up(tdq.host, tbytes(dt, &tdq)); /* poisoned */
        bp.dk = up(tdk.host, tbytes(dt, &tdk));
        bp.dv = up(tdv.host, tbytes(dt, &tdv));
        bp.dg = gate ? up(gg, sizeof(float) * (size_t)ng) : NULL;
        bp.dbeta = delta ? up(gb, sizeof(float) * (size_t)ng) : NULL;
        bp.dinitial_state = up(gh0, sizeof(float) * (size_t)nst);
        st = dn_la_backward(&bp);
        if (st == DN_OK) st = dn_cuda_synchronize();
        if (st == DN_OK) {
            dn_cuda_memcpy(tdq.host, bp.dq, tbytes(dt, &tdq));
            dn_cuda_memcpy(tdk.host, bp.dk, tbytes(dt, &tdk));
            dn_cuda_memcpy(tdv.host, bp.dv, tbytes(dt, &tdv));
            if (gate) dn_cuda_memcpy(gg, bp.dg, sizeof(float) * (size_t)ng);
            if (delta) dn_cuda_memcpy(gb, bp.dbeta, sizeof(float) * (size_t)ng);
            dn_cuda_memcpy(gh0, bp.dinitial_state, sizeof(float) * (size_t)nst);
        }
        dn_cuda_free((void *)bp.fwd.q), dn_cuda_free((void *)bp.fwd.k);
        dn_cuda_free((void *)bp.fwd.v), dn_cuda_free((void *)bp.fwd.g);
        dn_cuda_free((void *)bp.fwd.beta), dn_cuda_free((void *)bp.fwd.initial_state);
        dn_cuda_free((void *)bp.dout), dn_cuda_free((void *)bp.dfinal_state);
        dn_cuda_free(bp.dq), dn_cuda_free(bp.dk), dn_cuda_free(bp.dv), dn_cuda_free(bp.dg);
        dn_cuda_free(bp.dbeta), dn_cuda_free(bp.dinitial_state);
    } else {
        bp.fwd.q = tq.host, bp.fwd.k = tk.host, bp.fwd.v = tv.host, bp.dout = tdo.host;
        bp.dq = tdq.host, bp.dk = tdk.host, bp.dv = tdv.host;
        bp.dg = gate ? gg : NULL, bp.dbeta = delta ? gb : NULL, bp.dinitial_state = gh0;
        st = dn_la_backward(&bp);
    }
    char what[256];
    snprintf(what, sizeof what, "backward %s %s B%lld T%lld H%lld HV%lld K%lld V%lld%s%s %s %s%s%s",
             dn_op_name(c->op), dn_dtype_name(dt), (long long)B, (long long)T, (long long)H,
             (long long)HV, (long long)K, (long long)V, c->varlen ? " varlen" : "",
             c->strided ? " strided" : "", gate ? gate_names[c->gates] : "",
             delta ? beta_names[c->betas] : "", c->l2norm ? " l2norm" : "",
             c->init ? " h0 dht" : "");
    if (st != DN_OK) {
        printf("    FAIL %s: %s (%s)\n", what, dn_status_str(st), dn_last_error());
        fails++;
    } else {
        const double base = device >= 0 && dt == DN_BF16 ? 1e-2 : 1e-4;
        float *x = falloc(nqk > nv ? nqk : nv);
        gather(x, dt, &tdq, B, T, H, K);
        fails += check_grad(what, "dq", x, rq, nqk, dt, base);
        gather(x, dt, &tdk, B, T, H, K);
        fails += check_grad(what, "dk", x, rk, nqk, dt, base);
        gather(x, dt, &tdv, B, T, HV, V);
        fails += check_grad(what, "dv", x, rv, nv, dt, base);
        free(x);
        if (gate) fails += check_grad(what, "dg", gg, rg, ng, DN_F32, base);
        if (delta) fails += check_grad(what, "dbeta", gb, rb, ng, DN_F32, base);
        fails += check_grad(what, "dh0", gh0, rh0, nst, DN_F32, base);
    }
    free(tq.host), free(tk.host), free(tv.host), free(tdo.host), free(tdq.host), free(tdk.host),
        free(tdv.host);
    free(q), free(k), free(v), free(g), free(bt), free(h0), free(dht), free(dout);
    free(rq), free(rk), free(rv), free(rg), free(rb), free(rh0);
    free(gq), free(gk), free(gv), free(gg), free(gb), free(gh0);
    return fails;
}

/* The backward's grid: every op over odd lengths, T < chunk and T = 1, varlen with empty and
 * one-token sequences, grouped heads, strided views, every head dim, the gate and beta extremes,
 * with and without states and the in-op norm. */
static int run_bwd_grid(int device, const dn_dtype *dts, int ndt) {
    la_case cases[64];
    const int small = small_grid();
    int nc = option_cases(cases, small); /* in place is the forward's alone: read as plain here */
    if (!small)
        for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
            cases[nc++] = (la_case){d % 2 ? DN_OP_GDN : DN_OP_DELTANET,
                                    1,
                                    77,
                                    1,
                                    2,
                                    dims[d][0],
                                    dims[d][1],
                                    0,
                                    (int)d % 3 == 0,
                                    (int)d % 4,
                                    (int)d % 3,
                                    (int)d % 5 != 4,
                                    1,
                                    0,
                                    0};
    /* many chunks on one (sequence, head), and many heads */
    cases[nc++] = (la_case){DN_OP_GDN, 1, 300, 1, 2, 128, 128, 0, 0, 0, 0, 1, 1, 0, 0};
    /* the sweeps take 8, 16 or 32 value columns a block by the number of (sequence, head)
     * blocks (on a 132-SM H200: 8 above, 16 here, 32 next) */
    if (!small) cases[nc++] = (la_case){DN_OP_GDN, 1, 100, 4, 48, 64, 64, 0, 0, 0, 0, 1, 1, 0, 0};
    if (!small) cases[nc++] = (la_case){DN_OP_GDN, 1, 100, 4, 48, 64, 128, 0, 0, 0, 0, 1, 1, 0, 0};
    int fails = 0, runs = 0;
    /* bf16 on the GPU: every shape of the tensor-core sweeps' blocks (value columns x the warps
     * the keys split over), not only the one the heuristic picks for these few heads */
    static const char *const sweeps[] = {"64x1", "64x2", "32", "16"};
    for (int i = 0; i < nc; i++)
        for (int d = 0; d < ndt; d++) {
            const int nsw = device >= 0 && dts[d] == DN_BF16 ? 4 : 1;
            for (int v = 0; v < nsw; v++) {
                if (nsw > 1) {
                    if (cases[i].V % atoi(sweeps[v])) continue;
                    setenv("DN_CUDA_BWD_SWEEP", sweeps[v], 1);
                }
                fails += run_bwd_case(&cases[i], dts[d], device, 7000 + (uint64_t)(i * 5 + d));
                runs++;
            }
            unsetenv("DN_CUDA_BWD_SWEEP");
        }
    printf("     backward: %d runs, %d failed\n", runs, fails);
    return fails;
}

/* 16-bit inputs on the CPU (converted inside the call) against the reference. */
static int test_la_dtype_cpu(void) {
    const dn_dtype dts[] = {DN_BF16, DN_F16};
    const dn_impl impls[] = {DN_IMPL_RECURRENT, DN_IMPL_CHUNK};
    int fails = 0;
    for (int i = 0; i < 2; i++)
        for (int m = 0; m < 2; m++) {
            la_case c = {i ? DN_OP_GDN : DN_OP_GLA, 2, 45, 2, 4, 32, 48, 0, 1, 0, 0, 1, 1, 0, 0};
            fails += run_case(&c, dts[i], impls[m], -1, 77 + (uint64_t)(i + m));
            c.varlen = 1, c.B = 1, c.strided = 0, c.inplace = 1;
            fails += run_case(&c, dts[i], impls[m], -1, 99 + (uint64_t)(i + m));
            c.gates = 4; /* the raw gates */
            fails += run_case(&c, dts[i], impls[m], -1, 105 + (uint64_t)(i + m));
            c.gates = 0;
            c.sbf16 = 1; /* a bf16 state: through fp32 copies on the CPU */
            fails += run_case(&c, dts[i], impls[m], -1, 111 + (uint64_t)(i + m));
            c.varlen = 0, c.B = 2, c.inplace = 0;
            fails += run_case(&c, DN_F32, impls[m], -1, 123 + (uint64_t)(i + m));
        }
    /* the backward of 16-bit inputs on the CPU (converted), fp32 too */
    {
        la_case c = {DN_OP_GDN, 2, 45, 2, 4, 32, 48, 0, 1, 0, 0, 1, 1, 1, 0};
        fails += run_bwd_case(&c, DN_BF16, -1, 131);
        c.varlen = 1, c.B = 1, c.strided = 0, c.op = DN_OP_GLA;
        fails += run_bwd_case(&c, DN_F16, -1, 132);
        c.op = DN_OP_DELTANET;
        fails += run_bwd_case(&c, DN_F32, -1, 133);
    }
    /* a bad dtype or device is an argument error, before anything runs */
    dn_la_params p = dn_la_params_default(DN_OP_LINEAR_ATTN, 1, 1, 1, 1, 4, 4);
    float x[4] = {0}, y[4];
    p.q = p.k = p.v = x, p.o = y;
    p.dtype = (dn_dtype)7;
    if (dn_la_forward(&p) != DN_ERR_ARG) fails++, printf("    FAIL dtype 7 accepted\n");
    p.dtype = DN_F32, p.device = -2;
    if (dn_la_forward(&p) != DN_ERR_ARG) fails++, printf("    FAIL device -2 accepted\n");
    p.device = DN_DEVICE_CPU, p.state_dtype = DN_F16;
    if (dn_la_forward(&p) != DN_ERR_ARG) fails++, printf("    FAIL state_dtype fp16 accepted\n");
    /* a bf16 state is for the forward: the training forward and the backward refuse it */
    p.state_dtype = DN_BF16;
    size_t sb = 0;
    dn_la_saved_size(&p, &sb);
    void *saved = malloc(sb + 64);
    if (dn_la_forward_train(&p, saved, sb) != DN_ERR_UNSUPPORTED)
        fails++, printf("    FAIL training forward with a bf16 state accepted\n");
    free(saved);
    /* the raw gates: all three of gate_a, A_log, dt_bias or none, never beside g (or gate_b
     * beside beta), only for ops with a gate (a delta rule); forward only */
    {
        dn_la_params r = dn_la_params_default(DN_OP_GDN, 1, 1, 1, 1, 4, 4);
        float ga[1] = {0.5f}, al[1] = {0}, dt[1] = {0}, gg[1] = {-0.1f}, bb[1] = {0.5f};
        r.q = r.k = r.v = x, r.o = y, r.beta = bb;
        r.gate_a = ga, r.A_log = al;
        CHECK(dn_la_forward(&r) == DN_ERR_NULL, "gate_a without dt_bias accepted");
        r.dt_bias = dt, r.g = gg;
        CHECK(dn_la_forward(&r) == DN_ERR_ARG, "gate_a beside g accepted");
        r.g = NULL, r.gate_b = bb;
        CHECK(dn_la_forward(&r) == DN_ERR_ARG, "gate_b beside beta accepted");
        r.beta = NULL;
        CHECK(dn_la_forward(&r) == DN_OK, "raw gates refused: %s", dn_last_error());
        r.op = DN_OP_DELTANET;
        CHECK(dn_la_forward(&r) == DN_ERR_ARG, "gate_a for deltanet accepted");
        r.op = DN_OP_GDN;
        float dq[4], dk[4], dv[4], dg[1], db[1];
        dn_la_bwd_params bp = dn_la_bwd_params_default(&r);
        bp.dout = x, bp.dq = dq, bp.dk = dk, bp.dv = dv, bp.dg = dg, bp.dbeta = db;
        CHECK(dn_la_backward(&bp) == DN_ERR_UNSUPPORTED, "backward with raw gates accepted");
    }
    return fails;
}

static int test_la_cuda(void) {
    const int n = dn_cuda_device_count();
    if (n == 0) {
        /* a device call must say why it cannot run, and write nothing */
        dn_la_params p = dn_la_params_default(DN_OP_GDN, 1, 2, 1, 1, 4, 4);
        float x[8] = {0}, gb[2] = {-0.1f, -0.1f}, bb[2] = {0.5f, 0.5f}, o[8];
        p.q = p.k = p.v = x, p.g = gb, p.beta = bb, p.o = o;
        p.device = 0;
        memset(o, 0x55, sizeof o);
        dn_status st = dn_la_forward(&p);
        int fails = st != DN_ERR_DEVICE;
        for (int i = 0; i < 8; i++)
            fails += ((unsigned char *)o)[i] != 0x55;
        printf("     skipped: the CUDA kernels (%s)\n", dn_last_error());
        if (dn_cuda_release_scratch() != DN_ERR_DEVICE)
            fails++, printf("    FAIL dn_cuda_release_scratch without a device succeeded\n");
        if (fails)
            printf("    FAIL a device call without a device returned %s\n", dn_status_str(st));
        return fails;
    }
    const dn_dtype dts[] = {DN_F32, DN_BF16, DN_F16};
    const dn_impl impls[] = {DN_IMPL_RECURRENT, DN_IMPL_CHUNK};
    int fails = run_grid(0, dts, small_grid() ? 2 : 3, impls, 2);
    /* the scratch pool handed back between the grids: the backward's calls map it again */
    if (dn_cuda_release_scratch() != DN_OK)
        fails++, printf("    FAIL dn_cuda_release_scratch: %s\n", dn_last_error());
    return fails + run_bwd_grid(0, dts, small_grid() ? 2 : 3);
}

const test_case dn_tests_cuda[] = {
    {"la_dtype_cpu", test_la_dtype_cpu},
    {"la_cuda", test_la_cuda},
    {NULL, NULL},
};
