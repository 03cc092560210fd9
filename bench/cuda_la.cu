/*
 * cuda_la.cu - GPU benchmark of the linear family through the public API: the Gated DeltaNet
 * chunkwise forward (prefill) and the decode step, bf16 inputs, H = HV = 16, K = V = 128, each
 * call captured in a CUDA graph and timed over graph replays with CUDA events (median of 50).
 * bench/cuda_la_fla.py times flash-linear-attention on the same shapes in the same run
 * (make bench-cuda runs both when fla is importable).
 *
 * Counts (stated once, printed with every line):
 *   forward FLOPs  = B T HV (6 K V + 4 C (K + V)) with C = 64: the chunkwise algorithm's matrix
 *                    products per chunk (Q K^T, K K^T: 2 C^2 K each; K S, Q S, K^T U: 2 C K V
 *                    each; (I+A)^-1 R, P U: 2 C^2 V each), triangular ones counted in full, at
 *                    fla's chunk size for both implementations, so that TFLOP/s compare as times
 *                    do (deltanet's 32-token chunks do fewer: the count is a yardstick);
 *   forward bytes  = B T (2 H K + 2 HV V) x 2 (q, k, v, o in bf16) + B T HV x 8 (g, beta fp32);
 *   decode bytes   = 2 B HV K V x 4 (the fp32 state read and written; x 2 for a bf16 state) + the
 *                    step's q, k, v, o, g, beta; decode FLOPs = B HV (8 K V) (S^T k, S^T q, decay
 *                    and rank-1 update).
 *   training FLOPs = 3 x the forward's count (forward, and a backward of twice its products):
 *                    a yardstick again; times are what compare.
 * Decode lines give us (one call a graph replay: the replay's own start, about 2.5 us on an
 * H200, included) and us_step (a graph of 32 calls in a row, per call: the GPU time of one step
 * when steps follow each other, as in a model's layers); tbs and gflops are from us_step.
 * Output: one line per case, "name key=value ...", machine-readable. Arguments: "fwd" or "decode"
 * alone; "fwd I" / "decode I" the I-th case alone (for a profiler); "dims": head dims 64, 128 and
 * 256 (K = V), the forward at 4 x 4096 and decode at B = 64; "train" (or "train I"): forward +
 * backward at the forward's shapes, timed eagerly (median of 20 after 3 warm-ups), with the
 * backward alone.
 */
#include "deltanet.h"

#include <algorithm>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));            \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
#define DK(x)                                                                                      \
    do {                                                                                           \
        dn_status s_ = (x);                                                                        \
        if (s_ != DN_OK) {                                                                         \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, dn_last_error());                   \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#ifdef DN_CUDA_PROF
extern "C" void dn_cuda_prof_dump(void); /* src/cuda/la.cu's lab instrument */
#endif

static uint64_t rng_state = 0x1234567;
static float urand(void) { /* [0, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) * (1.0 / 16777216.0));
}

static void *dev_bf16(size_t n, float lo, float hi) {
    std::vector<__nv_bfloat16> h(n);
    for (size_t i = 0; i < n; i++)
        h[i] = __float2bfloat16(lo + (hi - lo) * urand());
    void *d;
    CK(cudaMalloc(&d, n * 2));
    CK(cudaMemcpy(d, h.data(), n * 2, cudaMemcpyHostToDevice));
    return d;
}
static float *dev_f32(size_t n, float lo, float hi) {
    std::vector<float> h(n);
    for (size_t i = 0; i < n; i++)
        h[i] = lo + (hi - lo) * urand();
    float *d;
    CK(cudaMalloc(&d, n * 4));
    CK(cudaMemcpy(d, h.data(), n * 4, cudaMemcpyHostToDevice));
    return d;
}

/* Median over reps of the time in ms of launch() on stream s, by CUDA events around each. */
template <typename F> static double median_ms(F launch, cudaStream_t s, int reps) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    std::vector<double> t;
    for (int i = 0; i < reps; i++) {
        CK(cudaEventRecord(a, s));
        launch();
        CK(cudaEventRecord(b, s));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return t[t.size() / 2];
}

/* Median time in ms of `calls` calls in a row, captured in one graph and replayed. */
static double time_graph(const dn_la_params *p, cudaStream_t s, int reps, int calls = 1) {
    DK(dn_la_forward(p)); /* warm-up outside the capture (module load, attributes) */
    CK(cudaStreamSynchronize(s));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < calls; i++)
        DK(dn_la_forward(p));
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    for (int i = 0; i < 5; i++)
        CK(cudaGraphLaunch(ge, s));
    const double ms = median_ms([&] { CK(cudaGraphLaunch(ge, s)); }, s, reps);
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    return ms;
}

/* Median time in ms of fn() on stream s, eager (no graph: the backward allocates its scratch on
 * the stream), after three warm-up calls; fla's fwd + bwd anchors are eager too. */
template <typename F> static double time_eager(F fn, cudaStream_t s, int reps) {
    for (int i = 0; i < 3; i++)
        fn();
    CK(cudaStreamSynchronize(s));
    return median_ms(fn, s, reps);
}

static const int64_t H = 16, C = 64;

/* The chunkwise forward of B x T tokens, bf16, heads of K x V. */
static void run_fwd(int64_t B, int64_t T, int64_t K, int64_t V, cudaStream_t s) {
    const int64_t n = B * T * H;
    void *q = dev_bf16(n * K, -1, 1), *k = dev_bf16(n * K, -1, 1), *v = dev_bf16(n * V, -1, 1);
    void *o;
    CK(cudaMalloc(&o, n * V * 2));
    float *g = dev_f32(n, -0.2f, -0.001f), *beta = dev_f32(n, 0.05f, 0.95f);
    dn_la_params p = dn_la_params_default(DN_OP_GDN, B, T, H, H, K, V);
    p.q = (const float *)q, p.k = (const float *)k, p.v = (const float *)v;
    p.g = g, p.beta = beta, p.o = (float *)o;
    p.qk_l2norm = 1;
    p.dtype = DN_BF16;
    p.device = 0;
    p.stream = s;
    p.impl = DN_IMPL_CHUNK;
#ifdef DN_CUDA_PROF
    {
        dn_cuda_prof_dump();
        DK(dn_la_forward(&p));
        dn_cuda_prof_dump();
    }
#endif
    const double ms = time_graph(&p, s, 50);
    const double flops = (double)n * (6.0 * K * V + 4.0 * C * (K + V));
    const double bytes = (double)B * T * (2 * H * K + 2 * H * V) * 2 + (double)n * 8;
    printf("fwd impl=deltanet B=%lld T=%lld H=%lld K=%lld V=%lld ms=%.4f tflops=%.1f tbs=%.2f\n",
           (long long)B, (long long)T, (long long)H, (long long)K, (long long)V, ms,
           flops / ms * 1e-9, bytes / ms * 1e-9);
    fflush(stdout);
    cudaFree(q), cudaFree(k), cudaFree(v), cudaFree(o), cudaFree(g), cudaFree(beta);
}

/* Training: the chunkwise forward then the backward (every gradient: q, k, v, g, beta), bf16
 * inputs and gradients; the backward alone too. */
static void run_train(int64_t B, int64_t T, int64_t K, int64_t V, cudaStream_t s) {
    const int64_t n = B * T * H;
    void *q = dev_bf16(n * K, -1, 1), *k = dev_bf16(n * K, -1, 1), *v = dev_bf16(n * V, -1, 1);
    void *dout = dev_bf16(n * V, -1, 1), *o, *dq, *dk, *dv;
    CK(cudaMalloc(&o, n * V * 2));
    CK(cudaMalloc(&dq, n * K * 2));
    CK(cudaMalloc(&dk, n * K * 2));
    CK(cudaMalloc(&dv, n * V * 2));
    float *g = dev_f32(n, -0.2f, -0.001f), *beta = dev_f32(n, 0.05f, 0.95f), *dg, *db;
    CK(cudaMalloc(&dg, n * 4));
    CK(cudaMalloc(&db, n * 4));
    dn_la_params p = dn_la_params_default(DN_OP_GDN, B, T, H, H, K, V);
    p.q = (const float *)q, p.k = (const float *)k, p.v = (const float *)v;
    p.g = g, p.beta = beta, p.o = (float *)o;
    p.qk_l2norm = 1;
    p.dtype = DN_BF16;
    p.device = 0;
    p.stream = s;
    p.impl = DN_IMPL_CHUNK;
    dn_la_bwd_params bp = dn_la_bwd_params_default(&p);
    bp.dout = (const float *)dout, bp.dq = (float *)dq, bp.dk = (float *)dk, bp.dv = (float *)dv;
    bp.dg = dg, bp.dbeta = db;
    const double ms = time_eager(
        [&] {
            DK(dn_la_forward(&p));
            DK(dn_la_backward(&bp));
        },
        s, 20);
    const double ms_b = time_eager([&] { DK(dn_la_backward(&bp)); }, s, 20);
    const double flops = 3.0 * (double)n * (6.0 * K * V + 4.0 * C * (K + V));
    printf("train impl=deltanet B=%lld T=%lld H=%lld K=%lld V=%lld ms=%.4f bwd_ms=%.4f "
           "tflops=%.1f\n",
           (long long)B, (long long)T, (long long)H, (long long)K, (long long)V, ms, ms_b,
           flops / ms * 1e-9);
    fflush(stdout);
    cudaFree(q), cudaFree(k), cudaFree(v), cudaFree(dout), cudaFree(o), cudaFree(dq), cudaFree(dk),
        cudaFree(dv), cudaFree(g), cudaFree(beta), cudaFree(dg), cudaFree(db);
}

/* One decode step of B sequences in place, bf16 q/k/v/o, the state in fp32 or bf16 (sbf16), g
 * and beta given or computed in the kernel from the raw gates (raw). */
static void run_decode(int64_t B, int64_t K, int64_t V, int sbf16, int raw, cudaStream_t s) {
    const int64_t n = B * H;
    void *q = dev_bf16(n * K, -1, 1), *k = dev_bf16(n * K, -1, 1), *v = dev_bf16(n * V, -1, 1);
    void *o;
    CK(cudaMalloc(&o, n * V * 2));
    float *g = dev_f32(n, -0.2f, -0.001f), *beta = dev_f32(n, 0.05f, 0.95f);
    void *state = sbf16 ? dev_bf16((size_t)n * K * V, -0.1f, 0.1f)
                        : (void *)dev_f32((size_t)n * K * V, -0.1f, 0.1f);
    float *ga = dev_f32(n, -8.0f, 2.0f), *gbr = dev_f32(n, -4.0f, 4.0f),
          *A_log = dev_f32(H, -2.0f, 1.0f), *dt_bias = dev_f32(H, -4.0f, -1.0f);
    dn_la_params p = dn_la_params_default(DN_OP_GDN, B, 1, H, H, K, V);
    p.q = (const float *)q, p.k = (const float *)k, p.v = (const float *)v;
    p.g = g, p.beta = beta, p.o = (float *)o;
    p.initial_state = (const float *)state, p.final_state = (float *)state;
    p.state_dtype = sbf16 ? DN_BF16 : DN_F32;
    if (raw) {
        p.g = p.beta = NULL;
        p.gate_a = ga, p.gate_b = gbr, p.A_log = A_log, p.dt_bias = dt_bias;
        p.gate_a_s = p.gate_b_s = (dn_strides){H, H, 1};
    }
    p.qk_l2norm = 1;
    p.dtype = DN_BF16;
    p.device = 0;
    p.stream = s;
    p.impl = DN_IMPL_RECURRENT;
    const double ms = time_graph(&p, s, 200), ms_step = time_graph(&p, s, 50, 32) / 32;
    const double bytes =
        2.0 * n * K * V * (sbf16 ? 2 : 4) + (double)n * (2 * K + 2 * V) * 2 + n * 8.0;
    printf("decode impl=deltanet B=%lld H=%lld K=%lld V=%lld state=%s%s us=%.2f us_step=%.2f "
           "tbs=%.2f gflops=%.1f\n",
           (long long)B, (long long)H, (long long)K, (long long)V, sbf16 ? "bf16" : "fp32",
           raw ? " gates=raw" : "", ms * 1e3, ms_step * 1e3, bytes / ms_step * 1e-9,
           8.0 * n * K * V / ms_step * 1e-6);
    fflush(stdout);
    cudaFree(q), cudaFree(k), cudaFree(v), cudaFree(o), cudaFree(g), cudaFree(beta),
        cudaFree(state), cudaFree(ga), cudaFree(gbr), cudaFree(A_log), cudaFree(dt_bias);
}

int main(int argc, char **argv) {
    if (dn_cuda_device_count() == 0) {
        printf("cuda_la: skipped (no CUDA device)\n");
        return 0;
    }
    const char *mode = argc > 1 ? argv[1] : "all";
    const int only_decode = !strcmp(mode, "decode"), only_fwd = !strcmp(mode, "fwd");
    const int dims = !strcmp(mode, "dims"), train = !strcmp(mode, "train");
    const int only_shape = argc > 2 ? atoi(argv[2]) : -1; /* "fwd I": the I-th case alone */
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device name=\"%s\" sms=%d\n", prop.name, prop.multiProcessorCount);
    if (dims) { /* head dims 64, 128, 256: the forward at 4 x 4096 and decode at B = 64 */
        for (int64_t d = 64; d <= 256; d *= 2)
            run_fwd(4, 4096, d, d, s);
        for (int64_t d = 64; d <= 256; d *= 2)
            run_decode(64, d, d, 0, 0, s);
        return 0;
    }
    /* the issue's four shapes (16k tokens each), then a batch of 64 prompts of 256 */
    static const int64_t shapes[][2] = {{16, 1024}, {4, 4096}, {2, 8192}, {1, 32768}, {64, 256}};
    if (train) { /* forward + backward at the forward's shapes */
        for (int i = 0; i < 4; i++)
            if (only_shape < 0 || i == only_shape)
                run_train(shapes[i][0], shapes[i][1], 128, 128, s);
        return 0;
    }
    for (int i = 0; i < 5 && !only_decode; i++)
        if (only_shape < 0 || i == only_shape) run_fwd(shapes[i][0], shapes[i][1], 128, 128, s);
    /* decode: fp32 states at B = 1, 64, 128; bf16 states at the same; raw gates at 64, 128 */
    static const int64_t batches[] = {1, 64, 128, 1, 64, 128, 64, 128};
    for (int i = 0; i < 8 && !only_fwd; i++)
        if (only_shape < 0 || i == only_shape)
            run_decode(batches[i], 128, 128, i >= 3 && i < 6, i >= 6, s);
    /* the copy ceiling: a device-to-device copy of 2 GiB, bytes read + written */
    if (!only_fwd) {
        const size_t n = (size_t)1 << 31;
        void *a, *b;
        CK(cudaMalloc(&a, n));
        CK(cudaMalloc(&b, n));
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0));
        CK(cudaEventCreate(&e1));
        std::vector<double> t;
        for (int i = 0; i < 10; i++) {
            CK(cudaEventRecord(e0, s));
            CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, s));
            CK(cudaEventRecord(e1, s));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            t.push_back(ms);
        }
        std::sort(t.begin(), t.end());
        printf("ceiling copy_tbs=%.2f\n", 2.0 * n / t[5] * 1e-9);
        cudaFree(a), cudaFree(b);
    }
    return 0;
}
