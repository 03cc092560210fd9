/*
 * test_contract.c - the library's promises on bad input, one test per reproduction of the
 * hardening review and a walk of every public entry point with overflowing, zero and negative
 * dimensions: a rejected call returns the right status and writes nothing, nothing crashes
 * (run under the sanitizers: a wrapped size would show as an out-of-bounds access).
 */
#include "test.h"

#include <stdint.h>

/* Every pointer argument of the walk comes from here: far smaller than any overflowing shape
 * would need, so a call that passes its checks by a wrapped product reads or writes out of
 * bounds (AddressSanitizer) or changes the canary. */
#define POOL 4096
static float pool_in[POOL], pool_out[POOL], canary[POOL];

static void pool_reset(void) {
    rng r = {7};
    fill_uniform(&r, pool_in, POOL, 0.0f, 0.5f); /* >= 0: any slice is a valid beta or dt */
    for (int i = 0; i < POOL; i++)
        canary[i] = pool_out[i] = (float)(i % 97) - 1000.0f;
}
static int pool_untouched(void) { return memcmp(canary, pool_out, sizeof canary) == 0; }

static const int64_t BIG = INT64_MAX;

/* ---- reproductions ------------------------------------------------------------------------ */

/* KV cache append: len + T used to overflow and pass the capacity check. */
static int test_kv_append_overflow(void) {
    int fails = 0;
    for (int grow = 0; grow < 2; grow++) {
        dn_kv_cache *c = NULL;
        CHECK(dn_kv_cache_create(&c, 1, 1, 16, 4, DN_F32, grow ? DN_KV_GROW : 0) == DN_OK,
              "create");
        if (!c) return fails + 1;
        float k[64], v[64];
        fill_uniform(&(rng){1}, k, 64, -1, 1), fill_uniform(&(rng){2}, v, 64, -1, 1);
        dn_strides s = {2 * 16, 16, 16};
        CHECK(dn_kv_cache_append(c, k, s, v, s, 2) == DN_OK, "append 2: %s", dn_last_error());
        /* contiguous strides: the view itself overflows */
        const int64_t Ts[2] = {INT64_MAX - 1, INT64_MAX};
        for (int i = 0; i < 2; i++) {
            dn_status st = dn_kv_cache_append(c, k, s, v, s, Ts[i]);
            CHECK(st == DN_ERR_SHAPE, "append T=%lld (grow %d): %s", (long long)Ts[i], grow,
                  dn_status_str(st));
            /* a zero time stride (one token repeated) is a valid view, but the tensor's size
             * still overflows, and so would the cache */
            dn_strides z = {0, 0, 16};
            st = dn_kv_cache_append(c, k, z, v, z, Ts[i]);
            CHECK(st == DN_ERR_SHAPE || st == DN_ERR_FULL,
                  "append T=%lld, zero stride (grow %d): %s", (long long)Ts[i], grow,
                  dn_status_str(st));
            CHECK(dn_kv_cache_len(c) == 2 && dn_kv_cache_capacity(c) == 4,
                  "a rejected append changed the cache (len %lld, capacity %lld)",
                  (long long)dn_kv_cache_len(c), (long long)dn_kv_cache_capacity(c));
        }
        dn_kv_cache_free(c);
    }
    return fails;
}

/* Products of dimensions that wrap: SIGFPE or undefined behaviour before. */
static int test_overflowing_products(void) {
    int fails = 0;
    pool_reset();
    dn_kv_cache *c = NULL;
    dn_status st = dn_kv_cache_create(&c, (int64_t)1 << 32, (int64_t)1 << 32, 1, 8, DN_F32, 0);
    CHECK(st == DN_ERR_SHAPE && !c, "kv create 2^32 x 2^32: %s", dn_status_str(st));

    dn_la_params p = dn_la_params_default(DN_OP_GDN, (int64_t)1 << 62, 0, 4, 4, 8, 8);
    p.q = p.k = p.v = p.g = p.beta = pool_in, p.o = pool_out;
    st = dn_la_forward(&p);
    CHECK(st == DN_ERR_SHAPE, "la T=0 B=2^62: %s", dn_status_str(st));

    p = dn_la_params_default(DN_OP_GDN, 1, (int64_t)1 << 61, 1, 1, 8, 8); /* no UB in defaults */
    p.q = p.k = p.v = p.g = p.beta = pool_in, p.o = pool_out;
    st = dn_la_forward(&p);
    CHECK(st == DN_ERR_SHAPE, "la T=2^61: %s", dn_status_str(st));

    dn_attn_params a = dn_attn_params_default(1, (int64_t)1 << 58, 64, 64, 256);
    a.q = a.k = a.v = pool_in, a.o = pool_out;
    st = dn_attn_forward(&a);
    CHECK(st == DN_ERR_SHAPE, "attention T=2^58 H=64 D=256: %s", dn_status_str(st));
    a = dn_attn_params_default(1, (int64_t)1 << 52, 64, 64, 256);
    a.q = a.k = a.v = pool_in, a.o = pool_out;
    st = dn_attn_forward(&a);
    CHECK(st == DN_ERR_SHAPE, "attention T=2^52 H=64 D=256: %s", dn_status_str(st));

    /* strides near INT64_MAX: the extent of the view overflows */
    p = dn_la_params_default(DN_OP_GDN, 2, 4, 1, 1, 8, 8);
    p.q = p.k = p.v = p.g = p.beta = pool_in, p.o = pool_out;
    p.q_s.b = BIG - 3;
    st = dn_la_forward(&p);
    CHECK(st == DN_ERR_SHAPE, "q stride near INT64_MAX: %s", dn_status_str(st));
    p.q_s = p.k_s, p.o_s.t = BIG / 2;
    st = dn_la_forward(&p);
    CHECK(st != DN_OK, "o stride near INT64_MAX/2 accepted");
    CHECK(pool_untouched(), "a rejected call wrote its output");
    return fails;
}

/* Overlapping outputs, out-of-contract values, a NaN scale. */
static int test_overlaps_and_ranges(void) {
    int fails = 0;
    const int64_t B = 1, T = 8, H = 1, K = 8, V = 8;
    pool_reset();
    dn_la_params p = dn_la_params_default(DN_OP_GDN, B, T, H, H, K, V);
    float g[8], beta[8], state[2 * 64];
    for (int i = 0; i < 8; i++)
        g[i] = -0.1f, beta[i] = 0.5f;
    p.q = pool_in, p.k = pool_in + 64, p.v = pool_in + 128, p.g = g, p.beta = beta;
    p.o = pool_out;
    CHECK(dn_la_forward(&p) == DN_OK, "baseline: %s", dn_last_error());
    pool_reset();

    p.final_state = pool_out + 32; /* inside o */
    dn_status st = dn_la_forward(&p);
    CHECK(st == DN_ERR_ARG, "final_state overlapping o: %s", dn_status_str(st));
    p.final_state = state + 8, p.initial_state = state; /* partial overlap */
    st = dn_la_forward(&p);
    CHECK(st == DN_ERR_ARG, "partially overlapping states: %s", dn_status_str(st));
    p.final_state = state, p.initial_state = state; /* in place: allowed */
    memset(state, 0, sizeof state);
    CHECK(dn_la_forward(&p) == DN_OK, "in-place state: %s", dn_last_error());
    pool_reset();
    p.o = (float *)pool_in + 128; /* o over v */
    st = dn_la_forward(&p);
    CHECK(st == DN_ERR_ARG, "o overlapping v: %s", dn_status_str(st));
    p.o = pool_out;

    beta[3] = 5;
    st = dn_la_forward(&p);
    CHECK(st == DN_ERR_ARG, "beta = 5: %s", dn_status_str(st));
    beta[3] = 0.5f, g[5] = 0.5f;
    st = dn_la_forward(&p);
    CHECK(st == DN_ERR_ARG, "g = +0.5: %s", dn_status_str(st));
    g[5] = INFINITY;
    st = dn_la_forward(&p);
    CHECK(st == DN_ERR_ARG, "g = +inf: %s", dn_status_str(st));
    g[5] = -INFINITY; /* a full reset: valid */
    CHECK(dn_la_forward(&p) == DN_OK, "g = -inf rejected: %s", dn_last_error());
    g[5] = -0.1f;
    CHECK(pool_untouched() == 0, "the accepted calls wrote o"); /* sanity: o was written */
    pool_reset();

    float q1[8], k1[8], v1[8], o1[8], s1[64] = {0}, g1 = -0.1f, b1 = 0.5f;
    fill_uniform(&(rng){3}, q1, 8, -1, 1), fill_uniform(&(rng){4}, k1, 8, -1, 1);
    fill_uniform(&(rng){5}, v1, 8, -1, 1);
    const float bad_scales[2] = {NAN, INFINITY};
    for (int i = 0; i < 2; i++) {
        memcpy(o1, canary, sizeof o1);
        st = dn_la_step(DN_OP_GDN, o1, s1, q1, k1, v1, &g1, &b1, 1, 1, 1, 8, 8, bad_scales[i], 0);
        CHECK(st == DN_ERR_ARG && memcmp(o1, canary, sizeof o1) == 0, "step scale %g: %s",
              (double)bad_scales[i], dn_status_str(st));
    }
    CHECK(dn_la_step(DN_OP_GDN, o1, s1, q1, k1, v1, &g1, &b1, 1, 1, 1, 8, 8, 0, 0) == DN_OK,
          "step with the default scale: %s", dn_last_error());
    st = dn_la_step(DN_OP_GDN, o1, s1, q1, k1, v1, &g1, &b1, 1, 1, 1, 8, 8, 0, 0);
    CHECK(st == DN_OK, "second step: %s", dn_last_error());
    st = dn_la_step(DN_OP_GDN, s1 + 4, s1, q1, k1, v1, &g1, &b1, 1, 1, 1, 8, 8, 0, 0);
    CHECK(st == DN_ERR_ARG, "step with o inside the state: %s", dn_status_str(st));

    /* K, V above the documented limit */
    dn_la_params w = dn_la_params_default(DN_OP_LINEAR_ATTN, 1, 1, 1, 1, DN_LA_MAX_DIM + 1, 1);
    w.q = w.k = w.v = pool_in, w.o = pool_out;
    CHECK(dn_la_forward(&w) == DN_ERR_SHAPE, "K above DN_LA_MAX_DIM accepted");

    /* Mamba's A must be a decay */
    float A[4] = {-1, -1, 0.5f, -1}, x[8] = {0}, dt[8] = {0}, y[8];
    dn_mamba2_params m = dn_mamba2_params_default(1, 2, 4, 1, 1, 1);
    m.x = x, m.dt = dt, m.A = A, m.Bm = pool_in, m.Cm = pool_in + 8, m.y = y;
    st = dn_mamba2_forward(&m);
    CHECK(st == DN_ERR_ARG, "mamba2 A > 0: %s", dn_status_str(st));
    return fails;
}

/* ---- every entry point, walked over bad dimensions ---------------------------------------- */

/* One call of an entry point with B, T and one head/channel dim from the walk, everything else
 * small and valid, every pointer from the pools. Returns the status. */
typedef dn_status (*walk_fn)(int64_t B, int64_t T, int64_t X);

static dn_status w_la(int64_t B, int64_t T, int64_t X) {
    dn_la_params p = dn_la_params_default(DN_OP_GDN, B, T, 1, 1, X, 4);
    p.q = p.k = p.v = p.g = p.beta = pool_in, p.o = pool_out;
    p.g = NULL, p.op = DN_OP_DELTANET, p.beta = pool_in + 2048; /* beta in [0, 2]: any slice */
    return dn_la_forward(&p);
}
static dn_status w_la_bwd(int64_t B, int64_t T, int64_t X) {
    dn_la_params p = dn_la_params_default(DN_OP_LINEAR_ATTN, B, T, 1, 1, 4, X);
    p.q = p.k = p.v = pool_in, p.o = pool_out;
    dn_la_bwd_params b = dn_la_bwd_params_default(&p);
    b.dout = pool_in, b.dq = pool_out, b.dk = pool_out + 1024, b.dv = pool_out + 2048;
    return dn_la_backward(&b);
}
static dn_status w_step(int64_t B, int64_t T, int64_t X) { /* T stands for the heads */
    return dn_la_step(DN_OP_LINEAR_ATTN, pool_out, pool_out + 2048, pool_in, pool_in, pool_in, NULL,
                      NULL, B, T, T, X, 4, 0, 0);
}
static dn_status w_attn(int64_t B, int64_t T, int64_t X) {
    dn_attn_params p = dn_attn_params_default(B, T, X, 1, 8);
    p.q = p.k = p.v = pool_in, p.o = pool_out;
    return dn_attn_forward(&p);
}
static dn_status w_attn_bwd(int64_t B, int64_t T, int64_t X) {
    dn_attn_params p = dn_attn_params_default(B, T, 1, 1, X);
    p.q = p.k = p.v = p.o = pool_in, p.lse = pool_in + 2048;
    dn_attn_bwd_params b = dn_attn_bwd_params_default(&p);
    b.dout = pool_in, b.dq = pool_out, b.dk = pool_out + 1024, b.dv = pool_out + 2048;
    return dn_attn_backward(&b);
}
static dn_status w_kv(int64_t B, int64_t T, int64_t X) {
    dn_kv_cache *c = NULL;
    dn_status st = dn_kv_cache_create(&c, B, 1, 8, X, DN_BF16, 0);
    if (st != DN_OK) return st;
    int64_t bs;
    if (__builtin_mul_overflow(T, 8, &bs)) bs = -1; /* a stride the call must reject */
    dn_strides s = {bs, 8, 8};
    st = dn_kv_cache_append(c, pool_in, s, pool_in, s, T);
    if (st == DN_OK) st = dn_kv_cache_attend(c, pool_out, s, NULL, pool_in, s, T, 1, 0, 0, 0);
    dn_kv_cache_free(c);
    return st;
}
static dn_status w_mamba(int64_t B, int64_t T, int64_t X) {
    dn_mamba_params p = dn_mamba_params_default(B, T, X, 4, 1);
    p.x = p.dt = p.Bm = p.Cm = pool_in, p.A = canary, p.y = pool_out; /* canary < 0: a decay */
    return dn_mamba_forward(&p);
}
static dn_status w_mamba_bwd(int64_t B, int64_t T, int64_t X) {
    dn_mamba_params p = dn_mamba_params_default(B, T, 4, X, 1);
    p.x = p.dt = p.Bm = p.Cm = pool_in, p.A = canary;
    dn_mamba_bwd_params b = dn_mamba_bwd_params_default(&p);
    b.dy = pool_in, b.dx = pool_out, b.ddt = pool_out + 512, b.dBm = pool_out + 1024;
    b.dCm = pool_out + 2048, b.dA = pool_out + 3072;
    return dn_mamba_backward(&b);
}
static dn_status w_mamba2(int64_t B, int64_t T, int64_t X) {
    dn_mamba2_params p = dn_mamba2_params_default(B, T, X, 4, 4, 1);
    p.x = p.dt = p.Bm = p.Cm = pool_in, p.A = canary, p.y = pool_out;
    return dn_mamba2_forward(&p);
}
static dn_status w_mamba2_bwd(int64_t B, int64_t T, int64_t X) {
    dn_mamba2_params p = dn_mamba2_params_default(B, T, 1, X, 4, 1);
    p.x = p.dt = p.Bm = p.Cm = pool_in, p.A = canary;
    dn_mamba2_bwd_params b = dn_mamba2_bwd_params_default(&p);
    b.dy = pool_in, b.dx = pool_out, b.ddt = pool_out + 512, b.dBm = pool_out + 1024;
    b.dCm = pool_out + 2048, b.dA = pool_out + 3072;
    return dn_mamba2_backward(&b);
}
static dn_status w_rwkv4(int64_t B, int64_t T, int64_t X) {
    dn_rwkv4_params p = dn_rwkv4_params_default(B, T, X);
    p.k = p.v = p.time_decay = p.time_first = pool_in, p.y = pool_out;
    return dn_rwkv4_forward(&p);
}
static dn_status w_rwkv4_bwd(int64_t B, int64_t T, int64_t X) {
    dn_rwkv4_params p = dn_rwkv4_params_default(B, T, X);
    p.k = p.v = p.time_decay = p.time_first = pool_in;
    dn_rwkv4_bwd_params b = dn_rwkv4_bwd_params_default(&p);
    b.dy = pool_in, b.dk = pool_out, b.dv = pool_out + 1024, b.dtime_decay = pool_out + 2048;
    b.dtime_first = pool_out + 3072;
    return dn_rwkv4_backward(&b);
}
static dn_status w_conv(int64_t B, int64_t T, int64_t X) {
    dn_conv_params p = dn_conv_params_default(B, T, X, 4);
    p.x = p.weight = pool_in, p.y = pool_out;
    return dn_conv_forward(&p);
}
static dn_status w_conv_bwd(int64_t B, int64_t T, int64_t X) {
    dn_conv_params p = dn_conv_params_default(B, T, X, 4);
    p.x = p.weight = pool_in;
    dn_conv_bwd_params b = dn_conv_bwd_params_default(&p);
    b.dy = pool_in, b.dx = pool_out, b.dweight = pool_out + 3072;
    return dn_conv_backward(&b);
}

static int test_walk_bad_dims(void) {
    int fails = 0;
    static const struct {
        const char *name;
        walk_fn fn;
    } eps[] = {
        {"dn_la_forward", w_la},          {"dn_la_backward", w_la_bwd},
        {"dn_la_step", w_step},           {"dn_attn_forward", w_attn},
        {"dn_attn_backward", w_attn_bwd}, {"dn_kv_cache", w_kv},
        {"dn_mamba_forward", w_mamba},    {"dn_mamba_backward", w_mamba_bwd},
        {"dn_mamba2_forward", w_mamba2},  {"dn_mamba2_backward", w_mamba2_bwd},
        {"dn_rwkv4_forward", w_rwkv4},    {"dn_rwkv4_backward", w_rwkv4_bwd},
        {"dn_conv_forward", w_conv},      {"dn_conv_backward", w_conv_bwd},
    };
    /* each triple has at least one dimension that is zero where it must be positive, negative,
     * or large enough that some product wraps or no memory could hold it (the pools hold 4096
     * floats, so an accepted call with any of these would also be caught by the sanitizers).
     * Any rejection will do (an overlap or a failed allocation is a fine reason too); products
     * that wrap are checked for DN_ERR_SHAPE by the tests above. */
    static const int64_t bad[][3] = {
        {0, 4, 4},
        {-1, 4, 4},
        {2, -1, 4},
        {2, 4, 0},
        {2, 4, -3},
        {INT64_MAX, 4, 4},
        {2, INT64_MAX, 4},
        {2, 4, INT64_MAX},
        {(int64_t)1 << 62, 0, 4},
        {(int64_t)1 << 32, (int64_t)1 << 32, 4},
        {(int64_t)1 << 31, 4, (int64_t)1 << 31},
        {INT64_MIN, 4, 4},
        {2, INT64_MIN, 4},
        {(int64_t)1 << 40, (int64_t)1 << 40, 1},
    };
    for (size_t e = 0; e < sizeof eps / sizeof eps[0]; e++)
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            pool_reset();
            dn_status st = eps[e].fn(bad[i][0], bad[i][1], bad[i][2]);
            /* an empty call (T = 0) may succeed, having nothing to write, where the op keeps no
             * per-sequence state whose size the batch sets */
            const int empty = bad[i][1] == 0;
            CHECK(st != DN_OK || empty, "%s(B=%lld, T=%lld, X=%lld): status '%s' (%s)", eps[e].name,
                  (long long)bad[i][0], (long long)bad[i][1], (long long)bad[i][2],
                  dn_status_str(st), dn_last_error());
            CHECK(pool_untouched(), "%s(B=%lld, T=%lld, X=%lld): a rejected call wrote output",
                  eps[e].name, (long long)bad[i][0], (long long)bad[i][1], (long long)bad[i][2]);
        }
    /* and the same calls with small valid dims succeed (the walk's setup is sound) */
    for (size_t e = 0; e < sizeof eps / sizeof eps[0]; e++) {
        pool_reset();
        dn_status st = eps[e].fn(1, 3, 4);
        CHECK(st == DN_OK, "%s(1, 3, 4): %s", eps[e].name, dn_last_error());
    }
    return fails;
}

/*
 * No tokens, a huge batch: B = 2^33 + 1 sequences of T = 0 tokens is a valid call with nothing
 * to compute, and must return at once on every path (the fuzzer found the Mamba-1 reference
 * backward looping over B x D for 22 minutes; the linear family's value check and training-
 * buffer size, the attention reference and the scans did the same). A regression here shows as
 * a hang, not a wrong number. State outputs receive the state input, or the empty state.
 */
static int test_empty_huge_batch(void) {
    int fails = 0;
    const int64_t B = ((int64_t)1 << 33) + 1;
    float buf[64], A[2] = {-1.0f, -1.0f};
    static float saved[1024] __attribute__((aligned(64)));
    for (int i = 0; i < 64; i++)
        buf[i] = 0.5f;
#define EXPECT_OK(what, call)                                                                      \
    do {                                                                                           \
        dn_status st_ = (call);                                                                    \
        if (st_ != DN_OK) {                                                                        \
            printf("    FAIL %s (%s): %s\n", what, dn_impl_name(im), dn_last_error());             \
            fails++;                                                                               \
        }                                                                                          \
    } while (0)
    for (int r = 0; r < 2; r++) {
        const dn_impl im = r ? DN_IMPL_REF : DN_IMPL_AUTO;
        dn_la_params p = dn_la_params_default(DN_OP_GDN, B, 0, 1, 1, 1, 1);
        p.q = p.k = p.v = p.g = p.beta = buf, p.o = buf + 8, p.impl = im;
        EXPECT_OK("la forward", dn_la_forward(&p));
        size_t sb = 1;
        if (dn_la_saved_size(&p, &sb) != DN_OK || sb != 0) fails++;
        if (!r) EXPECT_OK("la training forward", dn_la_forward_train(&p, saved, sizeof saved));
        dn_la_bwd_params lb = dn_la_bwd_params_default(&p);
        lb.dout = buf, lb.dq = buf + 16, lb.dk = buf + 20, lb.dv = buf + 24;
        lb.dg = buf + 28, lb.dbeta = buf + 32;
        EXPECT_OK("la backward", dn_la_backward(&lb));
        dn_mamba_params mp = dn_mamba_params_default(B, 0, 2, 1, 1);
        mp.x = mp.dt = mp.Bm = mp.Cm = buf, mp.A = A, mp.y = buf + 8, mp.impl = im;
        EXPECT_OK("mamba forward", dn_mamba_forward(&mp));
        dn_mamba_bwd_params mb = dn_mamba_bwd_params_default(&mp);
        mb.dy = buf, mb.dx = buf + 16, mb.ddt = buf + 20, mb.dBm = buf + 24, mb.dCm = buf + 28;
        mb.dA = buf + 32;
        EXPECT_OK("mamba backward", dn_mamba_backward(&mb));
        dn_mamba2_params m2 = dn_mamba2_params_default(B, 0, 1, 1, 1, 1);
        m2.x = m2.dt = m2.Bm = m2.Cm = buf, m2.A = A, m2.y = buf + 8, m2.impl = im;
        EXPECT_OK("mamba2 forward", dn_mamba2_forward(&m2));
        dn_mamba2_bwd_params m2b = dn_mamba2_bwd_params_default(&m2);
        m2b.dy = buf, m2b.dx = buf + 16, m2b.ddt = buf + 20, m2b.dBm = buf + 24;
        m2b.dCm = buf + 28, m2b.dA = buf + 32;
        EXPECT_OK("mamba2 backward", dn_mamba2_backward(&m2b));
        dn_rwkv4_params rp = dn_rwkv4_params_default(B, 0, 1);
        rp.k = rp.v = rp.time_decay = rp.time_first = buf, rp.y = buf + 8, rp.impl = im;
        EXPECT_OK("rwkv4 forward", dn_rwkv4_forward(&rp));
        dn_rwkv4_bwd_params rb = dn_rwkv4_bwd_params_default(&rp);
        rb.dy = buf, rb.dk = buf + 16, rb.dv = buf + 20, rb.dtime_decay = buf + 24;
        rb.dtime_first = buf + 28;
        EXPECT_OK("rwkv4 backward", dn_rwkv4_backward(&rb));
        dn_conv_params cp = dn_conv_params_default(B, 0, 1, 2);
        cp.x = cp.weight = buf, cp.y = buf + 8, cp.impl = im;
        EXPECT_OK("conv forward", dn_conv_forward(&cp));
        dn_conv_bwd_params cb = dn_conv_bwd_params_default(&cp);
        cb.dy = buf, cb.dx = buf + 16, cb.dweight = buf + 24;
        EXPECT_OK("conv backward", dn_conv_backward(&cb));
        dn_attn_params ap = dn_attn_params_default(B, 0, 1, 1, 1);
        ap.q = ap.k = ap.v = buf, ap.o = buf + 8, ap.lse = buf + 12, ap.impl = im;
        EXPECT_OK("attention forward", dn_attn_forward(&ap));
        dn_attn_bwd_params ab = dn_attn_bwd_params_default(&ap);
        ab.dout = buf, ab.dq = buf + 16, ab.dk = buf + 20, ab.dv = buf + 24;
        EXPECT_OK("attention backward", dn_attn_backward(&ab));
    }
#undef EXPECT_OK
    /* T = 0 passes the state through: final = initial, dinitial = dfinal; RWKV-4's empty state */
    float init[4] = {1, 2, 3, 4}, fin[4] = {0}, rw[3] = {9, 9, 9};
    dn_la_params p = dn_la_params_default(DN_OP_GDN, 1, 0, 1, 1, 2, 2);
    p.q = p.k = p.v = p.g = p.beta = buf, p.o = buf + 8;
    p.initial_state = init, p.final_state = fin;
    if (dn_la_forward(&p) != DN_OK || memcmp(init, fin, sizeof init)) fails++;
    dn_rwkv4_params rp = dn_rwkv4_params_default(1, 0, 1);
    rp.k = rp.v = rp.time_decay = rp.time_first = buf, rp.y = buf + 8, rp.final_state = rw;
    if (dn_rwkv4_forward(&rp) != DN_OK || rw[0] != 0 || rw[1] != 0 || rw[2] != -1e38f) fails++;
    return fails;
}

const test_case dn_tests_contract[] = {
    {"contract_kv_append_overflow", test_kv_append_overflow},
    {"contract_overflowing_products", test_overflowing_products},
    {"contract_overlaps_and_ranges", test_overlaps_and_ranges},
    {"contract_walk_bad_dims", test_walk_bad_dims},
    {"contract_empty_huge_batch", test_empty_huge_batch},
    {NULL, NULL},
};
