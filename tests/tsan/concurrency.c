/*
 * concurrency.c - two threads calling the library at once, for ThreadSanitizer (make tsan).
 *
 * Thread A runs the Gated DeltaNet forward (with OpenMP threads inside when the build has
 * OpenMP) and reads dn_isa_active / dn_build_info / dn_last_error; thread B runs causal softmax
 * attention, sets the default thread count and provokes errors (so dn_last_error is written on
 * both threads). Every result is checked against a single-threaded run made first, so a race that
 * corrupts numbers shows even without TSan. TSan reports races itself; the exit status is that
 * of the checks.
 */
#include "deltanet.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ITERS 40

static float frand(unsigned *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.f - 1.f;
}
static float *fill(int64_t n, unsigned seed, float lo) {
    float *x = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        x[i] = lo < 0 ? frand(&seed) : -0.5f * (frand(&seed) + 1.f);
    return x;
}

enum { B = 2, T = 40, H = 2, K = 16, V = 16, D = 32 };
static float *q, *k, *v, *g, *beta, *o_ref, *aq, *ak, *av, *ao_ref;
static int failures;
static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;

static void fail(const char *what) {
    pthread_mutex_lock(&fail_lock);
    failures++;
    fprintf(stderr, "concurrency: %s\n", what);
    pthread_mutex_unlock(&fail_lock);
}

static dn_status la_run(float *o, int n_threads) {
    dn_la_params p = dn_la_params_default(DN_OP_GDN, B, T, H, H, K, V);
    p.q = q, p.k = k, p.v = v, p.g = g, p.beta = beta, p.o = o, p.qk_l2norm = 1;
    p.n_threads = n_threads;
    return dn_la_forward(&p);
}
static dn_status attn_run(float *o, int n_threads) {
    dn_attn_params p = dn_attn_params_default(B, T, H, H, D);
    p.q = aq, p.k = ak, p.v = av, p.o = o, p.n_threads = n_threads;
    return dn_attn_forward(&p);
}

static void *thread_a(void *arg) {
    (void)arg;
    float *o = malloc(sizeof(float) * B * T * H * V);
    for (int i = 0; i < ITERS; i++) {
        if (la_run(o, i & 1 ? 2 : 0) != DN_OK) fail("la forward failed");
        if (memcmp(o, o_ref, sizeof(float) * B * T * H * V)) fail("la forward differs");
        if ((unsigned)dn_isa_active() >= DN_ISA_COUNT) fail("isa out of range");
        const char *info = dn_build_info();
        if (!info || strncmp(info, "deltanet", 8)) fail("build info garbled");
        dn_la_params bad = dn_la_params_default(DN_OP_GDN, 0, T, H, H, K, V);
        if (dn_la_forward(&bad) == DN_OK) fail("bad la params accepted");
        if (!strstr(dn_last_error(), "gdn")) fail("dn_last_error of thread A garbled");
    }
    free(o);
    return NULL;
}

static void *thread_b(void *arg) {
    (void)arg;
    float *o = malloc(sizeof(float) * B * T * H * D);
    for (int i = 0; i < ITERS; i++) {
        dn_set_num_threads(i & 1 ? 2 : 1);
        if (attn_run(o, 0) != DN_OK) fail("attention failed");
        if (memcmp(o, ao_ref, sizeof(float) * B * T * H * D)) fail("attention differs");
        (void)dn_get_num_threads();
        (void)dn_isa_active();
        (void)dn_build_info();
        dn_attn_params bad = dn_attn_params_default(B, T, 3, 2, D);
        if (dn_attn_forward(&bad) == DN_OK) fail("bad attention params accepted");
        if (strstr(dn_last_error(), "gdn"))
            fail("dn_last_error of thread B shows thread A's error");
    }
    free(o);
    return NULL;
}

int main(void) {
    q = fill(B * T * H * K, 1, -1), k = fill(B * T * H * K, 2, -1), v = fill(B * T * H * V, 3, -1);
    g = fill(B * T * H, 4, 0), beta = fill(B * T * H, 5, 0);
    for (int i = 0; i < B * T * H; i++)
        beta[i] = -beta[i];
    aq = fill(B * T * H * D, 6, -1), ak = fill(B * T * H * D, 7, -1),
    av = fill(B * T * H * D, 8, -1);
    o_ref = malloc(sizeof(float) * B * T * H * V);
    ao_ref = malloc(sizeof(float) * B * T * H * D);
    /* references before any thread starts; the same thread counts give the same bits */
    if (la_run(o_ref, 2) != DN_OK || attn_run(ao_ref, 1) != DN_OK) {
        fprintf(stderr, "concurrency: setup failed: %s\n", dn_last_error());
        return 2;
    }
    float *tmp = malloc(sizeof(float) * B * T * H * V);
    la_run(tmp, 0);
    if (memcmp(tmp, o_ref, sizeof(float) * B * T * H * V))
        fprintf(stderr, "concurrency: note: la forward differs between 0 and 2 threads; "
                        "comparison may flag it\n");
    free(tmp);
    pthread_t a, b;
    pthread_create(&a, NULL, thread_a, NULL);
    pthread_create(&b, NULL, thread_b, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    printf("concurrency: %d iterations per thread, %d failed checks (%s)\n", ITERS, failures,
           dn_build_info());
    return failures ? 1 : 0;
}
