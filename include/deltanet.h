/*
 * deltanet.h - the one public header of libdeltanet.
 *
 * deltanet implements the linear-attention family (linear attention, scalar-gated linear attention
 * as in Mamba-2, DeltaNet, Gated DeltaNet) with an explicit recurrent state, in a token-by-token
 * recurrent form (decode) and a chunkwise-parallel form (prefill), and its comparison points:
 * causal softmax attention with a KV cache, the Mamba-1 and Mamba-2 scans, RWKV-4 and the short
 * convolution. Every op has a forward and a backward, each fast path checked against a plain-C
 * reference. The math every implementation follows is the contract in docs/OPS.md.
 *
 * Conventions
 *   - Layout (B,T,H,D), row-major, last dimension contiguous. Every tensor is passed as a pointer
 *     plus element strides of its first three dimensions (dn_strides), so views need no copy.
 *   - All index arithmetic is 64-bit.
 *   - States are fp32 [B,HV,K,V] (or [N,HV,K,V] for variable-length batches), contiguous.
 *   - Every public function returns a dn_status. On error nothing is written to any output, and
 *     dn_last_error() gives a sentence naming the offending argument. The library never exits,
 *     aborts or crashes on input: sizes whose products overflow 64 bits are DN_ERR_SHAPE, an
 *     output that overlaps any other argument is DN_ERR_ARG (the one exception: a state updated
 *     in place, final_state == initial_state, the very same buffer), and an allocation failure
 *     is DN_ERR_ALLOC from a call that has written nothing.
 *   - Values the contract bounds are checked in one cheap pass and rejected with DN_ERR_ARG:
 *     g > 0 (a log decay is <= 0; -inf is allowed and resets the state), beta outside [0, 2],
 *     Mamba's A > 0. Extreme valid values (g = -inf, |k| of 100 for RWKV-4, long sequences)
 *     give finite results.
 *   - NaN and Inf in the data are not errors: they propagate like any other value, and never
 *     beyond the (sequence, head) or (sequence, channel) they sit in: no other head, sequence or
 *     batch row is affected. Within it: a NaN or Inf in token t's inputs reaches token t's
 *     outputs and, in the recurrent ops (the linear family, Mamba, RWKV-4, the convolution), the
 *     outputs after t and the final state. On the linear family's chunkwise paths (DN_IMPL_CHUNK,
 *     and DN_IMPL_AUTO for sequences of 16 tokens or more) it also reaches the earlier tokens of
 *     t's chunk, and the backward spreads it at chunk granularity (0 x NaN inside the chunk's
 *     products); the reference and the recurrence stop at t. Softmax attention: a key or value
 *     a query cannot see (future, outside the window) contributes nothing to it, whatever it
 *     holds. A NaN in a visible value or in dout propagates as in the reference; the tiled fast
 *     path gives a NaN score (NaN in q_i or a visible k_j) weight 0 where the reference
 *     propagates it (o_i = 0 for a NaN q_i).
 *   - The caller owns memory. The linear family's forward and backward take an optional
 *     caller workspace (sized by dn_la_workspace_size / dn_la_backward_workspace_size) and a
 *     training buffer (dn_la_saved_size); every other op allocates its scratch itself, before it
 *     writes anything (dn_attn_workspace_size reports the attention forward's).
 *   - Backward rule: parameter gradients accumulate (+=), activation gradients are written.
 *   - Threads: process-wide settings (dn_set_num_threads, dn_set_isa) may be changed from any
 *     thread; calls on different threads are independent. Every op is bitwise reproducible run
 *     to run at a fixed thread count and ISA. Also identical across thread counts: the linear
 *     family (forward, training forward, backward), the attention forward, Mamba-1's forward,
 *     Mamba-2, RWKV-4, the convolution (forward and backward) and dn_matmul's built-in kernel
 *     (on a BLAS, dn_matmul is as reproducible as the BLAS). Not across thread counts: the
 *     attention backward (unless B x HKV is a multiple of both thread counts or at least 4x
 *     them), dn_kv_cache_attend (keys are split by thread), Mamba-1's backward (dBm, dCm).
 */
#ifndef DELTANET_H
#define DELTANET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DN_VERSION_MAJOR 0
#define DN_VERSION_MINOR 1
#define DN_VERSION_PATCH 0

#if defined(_WIN32)
#define DN_API
#else
#define DN_API __attribute__((visibility("default")))
#endif

/* ---------------------------------------------------------------------------------------------
 * Status codes
 * ------------------------------------------------------------------------------------------- */
typedef enum dn_status {
    DN_OK = 0,
    DN_ERR_NULL,        /* a required pointer is NULL */
    DN_ERR_SHAPE,       /* a dimension is out of range or inconsistent with another */
    DN_ERR_STRIDE,      /* a stride is negative or makes views overlap where they must not */
    DN_ERR_ARG,         /* an option is out of range (chunk size, cu_seqlens, op kind, ...) */
    DN_ERR_UNSUPPORTED, /* the requested implementation does not support this case */
    DN_ERR_ALLOC,       /* an internal allocation failed */
    DN_ERR_FULL,        /* a KV cache would grow past its capacity (and may not grow) */
    DN_ERR_FORMAT,      /* a file or text being read is malformed (JSON, safetensors, ...) */
    DN_ERR_IO,          /* the operating system refused a file operation (open, read, write, ...) */
    DN_ERR_DEVICE,      /* a GPU call was asked for and no CUDA device (or no CUDA build) serves it,
                           or the CUDA runtime reported an error (dn_last_error names it) */
    DN_STATUS_COUNT
} dn_status;

/* Short fixed text for a status code ("shape error", ...). Never NULL. */
DN_API const char *dn_status_str(dn_status s);
/* The detailed message of the last error on this thread ("HV (6) is not a multiple of H (4)"). */
DN_API const char *dn_last_error(void);

/* ---------------------------------------------------------------------------------------------
 * Ops, implementations and the machine
 * ------------------------------------------------------------------------------------------- */
typedef enum dn_op {
    DN_OP_LINEAR_ATTN = 0, /* S = S + k v^T */
    DN_OP_GLA,          /* S = exp(g) S + k v^T                      (Mamba-2 / SSD, scalar gate) */
    DN_OP_DELTANET,     /* u = beta (v - S^T k); S = S + k u^T */
    DN_OP_GDN,          /* S = exp(g) S; u = beta (v - S^T k); S = S + k u^T */
    DN_OP_SOFTMAX_ATTN, /* causal softmax attention, the Transformer baseline */
    DN_OP_MAMBA1,       /* Mamba-1 selective scan, per-channel state [D,N] */
    DN_OP_MAMBA2,       /* Mamba-2, through the scalar-gated linear attention (GLA) op */
    DN_OP_RWKV4,        /* RWKV-4 WKV, decayed weighted key-value average */
    DN_OP_SHORT_CONV,   /* short causal depthwise convolution before a mixer */
    DN_OP_COUNT
} dn_op;

/* "linear_attn", "gla", "deltanet", "gdn", "softmax_attn", "mamba1", "mamba2", "rwkv4",
 * "short_conv"; NULL for an unknown op. */
DN_API const char *dn_op_name(dn_op op);
/* Parses a name as printed by dn_op_name. Returns DN_ERR_ARG for an unknown name. */
DN_API dn_status dn_op_from_name(const char *name, dn_op *op);

typedef enum dn_impl {
    DN_IMPL_AUTO = 0,  /* the fastest fast path for the op and shape (each op's contract says
                          which it picks) */
    DN_IMPL_REF,       /* plain-C reference, double accumulation (slow; for tests) */
    DN_IMPL_RECURRENT, /* fast token-by-token recurrence (decode, and prefill) */
    DN_IMPL_CHUNK,     /* fast chunkwise-parallel form (prefill) */
    DN_IMPL_COUNT
} dn_impl;

DN_API const char *dn_impl_name(dn_impl impl);

/* SIMD level of the fast CPU kernels. dn_isa_active() is the one in use: the best the processor
 * supports, unless lowered by dn_set_isa() or the environment variable DN_ISA
 * (generic | avx2 | avx512). */
typedef enum dn_isa { DN_ISA_GENERIC = 0, DN_ISA_AVX2, DN_ISA_AVX512, DN_ISA_COUNT } dn_isa;

DN_API const char *dn_isa_name(dn_isa isa);
/* Parses a name as printed by dn_isa_name. DN_ERR_ARG for an unknown name. */
DN_API dn_status dn_isa_from_name(const char *name, dn_isa *isa);
DN_API dn_isa dn_isa_best(void);   /* best level this processor and this build support */
DN_API dn_isa dn_isa_active(void); /* level the kernels use now */
/* Selects a level; DN_ERR_UNSUPPORTED if the processor or the build lacks it. */
DN_API dn_status dn_set_isa(dn_isa isa);

/* Threads for the fast paths when a params struct leaves n_threads at 0. 0 means all cores
 * (OpenMP's default). Builds without OpenMP run single-threaded. */
DN_API void dn_set_num_threads(int n);
DN_API int dn_get_num_threads(void);
/* One line describing the build: version, compiler, SIMD levels, OpenMP, the level in use. The
 * string belongs to the calling thread and stays valid until its next call. */
DN_API const char *dn_build_info(void);

/* Element types of tensors: fp32, IEEE fp16, bfloat16 (16-bit values are passed as uint16_t bit
 * patterns through the float pointers of the params structs; see dn_la_params' dtype). */
typedef enum dn_dtype { DN_F32 = 0, DN_F16, DN_BF16, DN_DTYPE_COUNT } dn_dtype;
DN_API const char *dn_dtype_name(dn_dtype t);

/* ---------------------------------------------------------------------------------------------
 * CUDA devices (src/cuda/). A build with nvcc has the GPU kernels; every build has these calls.
 * Without a CUDA build or without a device they report it: dn_cuda_device_count() is 0 and the
 * others return DN_ERR_DEVICE with the reason in dn_last_error(). Memory helpers exist so that C
 * callers (the tests, bindings through a C FFI) need not link the CUDA runtime themselves.
 * ------------------------------------------------------------------------------------------- */
#define DN_DEVICE_CPU (-1) /* the device field of a params struct: the CPU (the default) */
DN_API int dn_cuda_device_count(void);
DN_API dn_status dn_cuda_malloc(void **ptr, size_t bytes); /* on the current device */
DN_API void dn_cuda_free(void *ptr);                       /* NULL is a no-op */
/* Copies bytes between any host or device buffers (the runtime tells which is which),
 * synchronously on the default stream. */
DN_API dn_status dn_cuda_memcpy(void *dst, const void *src, size_t bytes);
DN_API dn_status dn_cuda_synchronize(void); /* waits for all work on the current device */
/* The GPU kernels take their scratch (workspaces of the chunkwise forward and the backward, up to
 * gigabytes at long contexts) stream-ordered from a memory pool of the library's own per device,
 * which keeps the memory between calls so that the next call need not map it again. This hands
 * back to the driver whatever of it no call in flight holds. */
DN_API dn_status dn_cuda_release_scratch(void);

/* ---------------------------------------------------------------------------------------------
 * Linear-attention family: linear attention, GLA (scalar gate), DeltaNet, Gated DeltaNet
 * ------------------------------------------------------------------------------------------- */

/* Largest key and value head dimension the linear family accepts (K, V <= 65536). */
#define DN_LA_MAX_DIM 65536

/* Element strides of the first three dimensions of a (B,T,H,D) tensor. The last dimension is
 * contiguous (stride 1). For a 3-D tensor (B,T,H) such as g or beta, h is the head stride. */
typedef struct dn_strides {
    int64_t b, t, h;
} dn_strides;

/*
 * Shape contract (per the op table in docs/OPS.md):
 *   q, k          [B,T,H,K]     strides q_s, k_s
 *   v             [B,T,HV,V]    strides v_s           HV % H == 0; value head j reads key head
 *                                                     j / (HV/H)
 *   g             [B,T,HV]      strides g_s           log decay (<= 0); GLA and GDN only, else NULL
 *   beta          [B,T,HV]      strides beta_s        DeltaNet and GDN only, else NULL; 0..1, or
 *                                                     up to 2 for negative eigenvalues
 *   o             [B,T,HV,V]    strides o_s           written, every element
 *   initial_state [NS,HV,K,V]   contiguous, may be NULL (zeros); NS = B, or N with cu_seqlens
 *   final_state   [NS,HV,K,V]   contiguous, may be NULL; may equal initial_state (in place)
 *   cu_seqlens    [N+1] int64   optional: B must be 1, cu_seqlens[0] = 0, non-decreasing,
 *                               cu_seqlens[N] = T; each sequence has its own states.
 *   K, V <= DN_LA_MAX_DIM. g in [-inf, 0]; beta in [0, 2] (checked; see the conventions above).
 * Options, each stated here once:
 *   scale       multiplies q; dn_la_params_default sets 1/sqrt(K). Must be finite.
 *   qk_l2norm   q and k scaled by 1/sqrt(sum x^2 + 1e-6) inside the op.
 *   impl        DN_IMPL_REF: the double reference. DN_IMPL_RECURRENT: the token recurrence.
 *               DN_IMPL_CHUNK: the chunkwise form in chunks of chunk_size. DN_IMPL_AUTO: for the
 *               forward, the recurrence when the longest sequence is shorter than 16 tokens, else
 *               the chunkwise form in chunks of 16; for the training forward and the backward,
 *               the chunkwise form in chunks of 32 (each measured fastest on CPU, bench/).
 *   chunk_size  16, 32, 64 or 128 (default 64); read only under DN_IMPL_CHUNK.
 *   n_threads   0: dn_get_num_threads().
 *   dtype       element type of q, k, v and o: DN_F32 (default), DN_BF16 or DN_F16. 16-bit tensors
 *               are passed through the same (float *) fields, cast, holding uint16_t bit patterns;
 *               strides stay in elements. g and beta are fp32 whatever the dtype (the gates'
 *               cumulative sums need fp32, and they are a small part of the traffic); the states
 *               too unless state_dtype says otherwise. o is written in the dtype, as
 *               flash-linear-attention and FlashInfer do (rounded to nearest even from the fp32
 *               accumulators). On the CPU the 16-bit inputs are converted to fp32 copies inside
 *               the call (extra memory: B T (2 H K + 2 HV V) floats) and the fp32 kernels run; on
 *               the GPU the kernels read them as is.
 *   state_dtype element type of initial_state and final_state: DN_F32 (default) or DN_BF16
 *               (passed through the same (float *) fields, cast, as for dtype). A bf16 state
 *               halves what a decode step moves (it reads and writes the whole state); the state
 *               is widened to fp32 when read, carried in fp32 through the call's tokens and
 *               rounded to nearest even once, when final_state is written. The forward only (the
 *               training forward and the backward take DN_F32 states); on the CPU, and for the
 *               chunkwise form on the GPU, through fp32 copies made inside the call.
 *   gate_a, A_log, dt_bias
 *               the gated ops' log decay computed inside the call from the raw projection, as
 *               Qwen3.5, Qwen3-Next and Mamba-2 compute it: g = -exp(A_log[h]) softplus(gate_a +
 *               dt_bias[h]), gate_a [B,T,HV] (strides gate_a_s), A_log and dt_bias [HV]
 *               (contiguous); all three or none, and g NULL when they are given. fp32, softplus(x)
 *               = x above 20, else log1p(exp(x)).
 *   gate_b      the delta ops' beta computed inside the call: beta = sigmoid(gate_b), gate_b
 *               [B,T,HV] (strides gate_b_s); beta NULL when it is given. The raw gates are for the
 *               forward (the training forward and the backward take g and beta); the GPU
 *               recurrence computes them in the kernel, the chunkwise forms and the CPU in a pass
 *               over B T HV values before the op.
 *   device      DN_DEVICE_CPU (default): every pointer is host memory. A CUDA device ordinal
 *               (0, 1, ...): the call runs on that GPU, and q, k, v, g, beta, o, initial_state,
 *               final_state and the raw gates are device pointers (readable by that device);
 *               cu_seqlens stays a host array (it is checked and its sequences scheduled on the
 *               host; the call copies it to the device), as does the params struct itself.
 *               workspace is not used.
 *               K <= 256. The GPU runs DN_IMPL_RECURRENT (the fused recurrence, any K and V; T = 1
 *               with initial_state == final_state is the batched decode step) and DN_IMPL_CHUNK
 *               (K and V multiples of 16; whatever chunk_size says, the function being the same:
 *               for 16-bit inputs, chunks of 64 tokens on the tensor cores, split as
 *               flash-linear-attention does into kernels parallel over all chunks and a state
 *               pass, with stream-ordered scratch (from the library's memory pool, see
 *               dn_cuda_release_scratch) of (2 K + V) * 64 + K V elements of the dtype per
 *               chunk and value head;
 *               for fp32 inputs, chunks of 32 tokens in one kernel, fp32 products on the CUDA
 *               cores, which so keep fp32 accuracy). DN_IMPL_AUTO picks the recurrence below 16
 *               tokens per sequence or for other head sizes, else the chunkwise form. DN_IMPL_REF
 *               is DN_ERR_UNSUPPORTED there. The shape, stride and overlap checks are the
 *               same as on the CPU; the values of g and beta are not read on the host, so
 *               out-of-contract values are not rejected on the GPU (g is clamped below at
 *               -1024 as on the CPU). Without a device: DN_ERR_DEVICE. The backward runs on
 *               the GPU too (see dn_la_backward); the training forward is CPU only
 *               (DN_ERR_UNSUPPORTED with a device): on a GPU, dn_la_forward then
 *               dn_la_backward, which recomputes what it needs.
 *   stream      the cudaStream_t to run on (NULL: the default stream). The call returns once the
 *               work is queued; synchronize the stream before reading the outputs. A call
 *               without cu_seqlens can be captured in a CUDA graph (bench/cuda_la.cu does); one
 *               with cu_seqlens copies it from host memory and allocates stream-ordered device
 *               memory for it (the library's pool), which a capture may refuse.
 * Outputs must not overlap any other argument, except initial_state == final_state (in place).
 */
typedef struct dn_la_params {
    dn_op op;
    int64_t B, T, H, HV, K, V;

    const float *q;
    dn_strides q_s;
    const float *k;
    dn_strides k_s;
    const float *v;
    dn_strides v_s;
    const float *g;
    dn_strides g_s;
    const float *beta;
    dn_strides beta_s;
    float *o;
    dn_strides o_s;

    const float *initial_state;
    float *final_state;

    const int64_t *cu_seqlens;
    int64_t n_seqs; /* N, the number of sequences in cu_seqlens (which has N+1 entries) */

    float scale;
    int qk_l2norm;
    int chunk_size;
    dn_impl impl;
    int n_threads; /* 0: dn_get_num_threads() */

    void
        *workspace; /* optional scratch of at least dn_la_workspace_size() bytes, 64-byte aligned */
    size_t workspace_bytes;

    dn_dtype dtype;       /* DN_F32 (default), DN_BF16, DN_F16: q, k, v and o (see the options) */
    int device;           /* DN_DEVICE_CPU (default) or a CUDA device ordinal */
    void *stream;         /* cudaStream_t for a device call; NULL: the default stream */
    dn_dtype state_dtype; /* DN_F32 (default) or DN_BF16: initial_state and final_state */

    /* the gates from raw projections, computed inside the call (see the options); NULL: not */
    const float *gate_a; /* [B,T,HV]: g = -exp(A_log) softplus(gate_a + dt_bias) */
    dn_strides gate_a_s;
    const float *gate_b; /* [B,T,HV]: beta = sigmoid(gate_b) */
    dn_strides gate_b_s;
    const float *A_log;   /* [HV] */
    const float *dt_bias; /* [HV] */
} dn_la_params;

/* Params for contiguous tensors of the given shape with the defaults above; pointers NULL. */
DN_API dn_la_params dn_la_params_default(dn_op op, int64_t B, int64_t T, int64_t H, int64_t HV,
                                         int64_t K, int64_t V);

/* Checks a params struct without running it; the same checks dn_la_forward makes. */
DN_API dn_status dn_la_check(const dn_la_params *p);

/* Scratch bytes dn_la_forward needs for these params (0 if none). */
DN_API dn_status dn_la_workspace_size(const dn_la_params *p, size_t *bytes);

/* Forward pass: o (and final_state when given) from the inputs, per p->impl. */
DN_API dn_status dn_la_forward(const dn_la_params *p);

/*
 * One decode step for B independent sequences, the call a model makes per generated token.
 *   o [B,HV,V] written; state [B,HV,K,V] read and updated in place;
 *   q, k [B,H,K]; v [B,HV,V]; g [B,HV] (NULL unless GLA/GDN); beta [B,HV] (NULL unless
 *   DeltaNet/GDN); all contiguous. scale: 0 (or negative) selects the default of the options
 *   above; NaN and Inf are DN_ERR_ARG. fp32 host tensors; for a GPU (or 16-bit) decode step,
 *   call dn_la_forward with T = 1, impl DN_IMPL_RECURRENT and initial_state == final_state,
 *   which is what this function does.
 */
DN_API dn_status dn_la_step(dn_op op, float *o, float *state, const float *q, const float *k,
                            const float *v, const float *g, const float *beta, int64_t B, int64_t H,
                            int64_t HV, int64_t K, int64_t V, float scale, int qk_l2norm);

/* ---------------------------------------------------------------------------------------------
 * Backward of the linear-attention family
 * ------------------------------------------------------------------------------------------- */

/*
 * Gradients of every input of dn_la_forward(fwd) given the gradients of its outputs. All the
 * op's inputs are activations, so every gradient is written (not accumulated); the gradients of
 * q and k sum over the value heads that share a key head.
 *   dout            [B,T,HV,V]   strides dout_s        gradient of o (required)
 *   dfinal_state    [NS,HV,K,V]  optional              gradient of final_state
 *   dq, dk          [B,T,H,K]    strides dq_s, dk_s    written (required)
 *   dv              [B,T,HV,V]   strides dv_s          written (required)
 *   dg              [B,T,HV]     strides dg_s          written; gated ops only, else NULL
 *   dbeta           [B,T,HV]     strides dbeta_s       written; delta ops only, else NULL
 *   dinitial_state  [NS,HV,K,V]  optional              written
 * fwd.o and fwd.final_state are not used. fwd.impl as in the forward's options (RECURRENT is
 * not available for the backward): the fast chunkwise backward recomputes the states at chunk
 * boundaries (or reads them from a training forward's buffer) and keeps O(T V + (T/C) K V)
 * floats per thread, never O(T K V). Gradients of the backward itself are not provided.
 * fwd.dtype: dout, dq, dk and dv are in it, like q, k, v (the CPU converts 16-bit tensors to fp32
 * copies inside the call); g, beta, their gradients and the states' are fp32 (fwd.state_dtype
 * DN_F32). With fwd.device a GPU, every tensor is a device pointer and K and V are multiples of
 * 16, K <= 256: chunks of 32 tokens; fp32 and fp16 inputs in fp32 arithmetic on the CUDA cores
 * (1e-4 of the double reference), bf16 inputs on the tensor cores (bf16 operands, the computed
 * ones as hi + lo pairs, fp32 accumulation: about 2.5e-3, flash-linear-attention's level);
 * stream-ordered scratch of about (2 K V / 32 + 3 V + 2 K) floats per token and value head (the
 * states entering and leaving every chunk, U, R, dY, the key-side gradients per value head), for
 * bf16 plus (3 K + 96) bf16; workspace and saved are not taken (saved: DN_ERR_UNSUPPORTED).
 */
typedef struct dn_la_bwd_params {
    dn_la_params fwd;
    const float *dout;
    dn_strides dout_s;
    const float *dfinal_state;
    float *dq;
    dn_strides dq_s;
    float *dk;
    dn_strides dk_s;
    float *dv;
    dn_strides dv_s;
    float *dg;
    dn_strides dg_s;
    float *dbeta;
    dn_strides dbeta_s;
    float *dinitial_state;
    void *workspace; /* optional, dn_la_backward_workspace_size() bytes, 64-byte aligned */
    size_t workspace_bytes;
    const void *saved; /* optional: the buffer a dn_la_forward_train() call filled for fwd */
    size_t saved_bytes;
} dn_la_bwd_params;

/* Backward params matching fwd's shapes, gradients contiguous; pointers NULL. */
DN_API dn_la_bwd_params dn_la_bwd_params_default(const dn_la_params *fwd);
DN_API dn_status dn_la_backward(const dn_la_bwd_params *p);
/* Scratch bytes the fast backward allocates for these params (all threads). */
DN_API dn_status dn_la_backward_workspace_size(const dn_la_bwd_params *p, size_t *bytes);

/* Training forward: the outputs of dn_la_forward (chunkwise; chunks as the backward resolves
 * them, see the options above) and, in `saved`, what the backward would otherwise recompute: the
 * state entering every chunk, the chunk's masked products, and the corrected values and residuals
 * of every token; O(T (K+V) + (T/C) K V) floats per head (dn_la_saved_size). Hand the same buffer
 * to the backward as bwd.saved, with the same params, and it skips its forward sweep. Its
 * scratch is the backward's: p->workspace, when given, holds dn_la_backward_workspace_size()
 * bytes of dn_la_bwd_params_default(p), 64-byte aligned (else DN_ERR_ARG); NULL allocates. */
DN_API dn_status dn_la_saved_size(const dn_la_params *p, size_t *bytes);
DN_API dn_status dn_la_forward_train(const dn_la_params *p, void *saved, size_t saved_bytes);

/* ---------------------------------------------------------------------------------------------
 * Causal softmax attention (the Transformer baseline)
 * ------------------------------------------------------------------------------------------- */

/*
 * Shape contract:
 *   q     [B,TQ,H,D]    strides q_s
 *   k, v  [B,TK,HKV,D]  strides k_s, v_s      H % HKV == 0 (grouped-query: query head h reads
 *                                             key/value head h / (H/HKV)); D <= 256
 *   o     [B,TQ,H,D]    strides o_s           written, every element
 *   lse   [B,H,TQ]      contiguous, optional  natural-log sum of exp of the scaled scores per
 *                                             row (-inf for a row that sees no key)
 * Query i sits at position TK - TQ + i (aligned to the end of the keys, so a chunk of new
 * queries can attend over earlier keys; TQ = TK is the plain causal prefill) and attends to keys
 * j <= that position, and with window W > 0 only to the last W of them (j > position - W).
 * A row that sees no key returns zeros. scale defaults to 1/sqrt(D). Never allocates [TQ,TK]:
 * extra memory is O(block * D) per thread.
 */
typedef struct dn_attn_params {
    int64_t B, TQ, TK, H, HKV, D;
    const float *q;
    dn_strides q_s;
    const float *k;
    dn_strides k_s;
    const float *v;
    dn_strides v_s;
    float *o;
    dn_strides o_s;
    float *lse; /* optional */
    float scale;
    int64_t window; /* 0: no window */
    dn_impl impl;   /* DN_IMPL_AUTO (tiled fast path) or DN_IMPL_REF */
    int n_threads;
} dn_attn_params;

DN_API dn_attn_params dn_attn_params_default(int64_t B, int64_t T, int64_t H, int64_t HKV,
                                             int64_t D);
DN_API dn_status dn_attn_check(const dn_attn_params *p);
/* Scratch the tiled path allocates for these params (all threads): independent of TQ and TK. */
DN_API dn_status dn_attn_workspace_size(const dn_attn_params *p, size_t *bytes);
DN_API dn_status dn_attn_forward(const dn_attn_params *p);

/*
 * Backward of causal softmax attention: dq, dk, dv from dout and the forward's o and lse, the
 * scores recomputed block by block (no [TQ,TK] matrix). All three are activation gradients:
 * written; dk and dv sum over the query heads that share a key/value head.
 *   fwd     the forward's params, with fwd.o and fwd.lse holding its outputs (both required)
 *   dout    [B,TQ,H,D]    strides dout_s
 *   dq      [B,TQ,H,D]    strides dq_s, written
 *   dk, dv  [B,TK,HKV,D]  strides dk_s, dv_s, written
 * fwd.impl: DN_IMPL_AUTO (tiled) or DN_IMPL_REF (double reference).
 */
typedef struct dn_attn_bwd_params {
    dn_attn_params fwd;
    const float *dout;
    dn_strides dout_s;
    float *dq;
    dn_strides dq_s;
    float *dk;
    dn_strides dk_s;
    float *dv;
    dn_strides dv_s;
} dn_attn_bwd_params;

DN_API dn_attn_bwd_params dn_attn_bwd_params_default(const dn_attn_params *fwd);
DN_API dn_status dn_attn_backward(const dn_attn_bwd_params *p);

/* KV cache for decode: [B,HKV,capacity,D] keys and values, stored as fp32, fp16 or bf16 (dn_dtype,
 * above; converted on append, round to nearest even; attention math is fp32). */

typedef struct dn_kv_cache dn_kv_cache;

enum { DN_KV_GROW = 1 }; /* flags: let append double the capacity instead of failing */

DN_API dn_status dn_kv_cache_create(dn_kv_cache **out, int64_t B, int64_t HKV, int64_t D,
                                    int64_t capacity, dn_dtype dtype, int flags);
DN_API void dn_kv_cache_free(dn_kv_cache *c); /* NULL is a no-op */
DN_API dn_status dn_kv_cache_reset(dn_kv_cache *c);
DN_API int64_t dn_kv_cache_len(const dn_kv_cache *c);
DN_API int64_t dn_kv_cache_capacity(const dn_kv_cache *c);
/* Bytes held for keys and values at the current capacity (what the cache costs in memory). */
DN_API size_t dn_kv_cache_bytes(const dn_kv_cache *c);
/* Bytes of keys and values in use (len tokens): what one decode step reads. */
DN_API size_t dn_kv_cache_used_bytes(const dn_kv_cache *c);
/* Appends T tokens: k, v [B,T,HKV,D] with strides. DN_ERR_FULL past capacity unless DN_KV_GROW;
 * on any error the cache is unchanged. */
DN_API dn_status dn_kv_cache_append(dn_kv_cache *c, const float *k, dn_strides k_s, const float *v,
                                    dn_strides v_s, int64_t T);
/* q [B,TQ,H,D] attends over the cached keys; query i at position len - TQ + i, causal, optional
 * window, exactly as dn_attn_forward with TK = len. o [B,TQ,H,D]; lse [B,H,TQ] optional. */
DN_API dn_status dn_kv_cache_attend(const dn_kv_cache *c, float *o, dn_strides o_s, float *lse,
                                    const float *q, dn_strides q_s, int64_t TQ, int64_t H,
                                    float scale, int64_t window, int n_threads);

/* ---------------------------------------------------------------------------------------------
 * Mamba-1 selective scan
 * ------------------------------------------------------------------------------------------- */

/*
 * Per channel d with state h[d][0..N):
 *   dt' = softplus(dt + dt_bias) if dt_softplus, else dt + dt_bias (dt_bias optional)
 *   h[d][n] = exp(dt' A[d][n]) h[d][n] + dt' Bm[g][n] x[d]      (g = d / (D/G), the group of d)
 *   y[d] = sum_n Cm[g][n] h[d][n] + Dskip[d] x[d],  then y *= silu(z[d]) when z is given
 * Shape contract (3-D tensors [B,T,D] take strides b and t; their h stride is ignored):
 *   x, dt        [B,T,D]     strides x_s, dt_s
 *   A            [D,N]       contiguous
 *   Bm, Cm       [B,T,G,N]   strides Bm_s, Cm_s (G = 1: shared by all channels)  D % G == 0
 *   Dskip        [D]         optional;  dt_bias [D] optional
 *   z            [B,T,D]     optional output gate, strides z_s
 *   y            [B,T,D]     strides y_s, written
 *   initial_state, final_state  [B,D,N] contiguous, optional; may be the same buffer (in place)
 * T = 1 with initial_state == final_state is the decode step.
 */
typedef struct dn_mamba_params {
    int64_t B, T, D, N, G;
    const float *x;
    dn_strides x_s;
    const float *dt;
    dn_strides dt_s;
    const float *A;
    const float *Bm;
    dn_strides Bm_s;
    const float *Cm;
    dn_strides Cm_s;
    const float *Dskip;
    const float *dt_bias;
    int dt_softplus;
    const float *z;
    dn_strides z_s;
    float *y;
    dn_strides y_s;
    const float *initial_state;
    float *final_state;
    dn_impl impl; /* DN_IMPL_AUTO (fast) or DN_IMPL_REF */
    int n_threads;
} dn_mamba_params;

DN_API dn_mamba_params dn_mamba_params_default(int64_t B, int64_t T, int64_t D, int64_t N,
                                               int64_t G);
DN_API dn_status dn_mamba_forward(const dn_mamba_params *p);

/*
 * Backward of the Mamba-1 scan. Activation gradients are written: dx, ddt, dz [B,T,D],
 * dBm, dCm [B,T,G,N] (summed over the channels of a group), dinitial_state [B,D,N]. Parameter
 * gradients accumulate (+=): dA [D,N], dDskip [D], ddt_bias [D]. dz exactly when fwd.z, dDskip
 * exactly when fwd.Dskip, ddt_bias exactly when fwd.dt_bias; dinitial_state and dfinal_state
 * optional. fwd.y and fwd.final_state are not used. fwd.impl: DN_IMPL_AUTO or DN_IMPL_REF.
 */
typedef struct dn_mamba_bwd_params {
    dn_mamba_params fwd;
    const float *dy;
    dn_strides dy_s;
    const float *dfinal_state;
    float *dx;
    dn_strides dx_s;
    float *ddt;
    dn_strides ddt_s;
    float *dBm;
    dn_strides dBm_s;
    float *dCm;
    dn_strides dCm_s;
    float *dz;
    dn_strides dz_s;
    float *dA, *dDskip, *ddt_bias, *dinitial_state;
} dn_mamba_bwd_params;

DN_API dn_mamba_bwd_params dn_mamba_bwd_params_default(const dn_mamba_params *fwd);
DN_API dn_status dn_mamba_backward(const dn_mamba_bwd_params *p);

/* ---------------------------------------------------------------------------------------------
 * Mamba-2 (SSD), computed by the scalar-gated linear attention op
 * ------------------------------------------------------------------------------------------- */

/*
 * Per head h (P channels, state [N,P]), with dt' = softplus(dt + dt_bias) (or dt + dt_bias):
 *   S = exp(dt' A[h]) S + Bm (dt' x)^T,   y = S^T Cm + Dskip[h] x
 * which is GLA with g = dt' A[h], k = Bm, q = Cm, v = dt' x, scale = 1 (docs/OPS.md).
 *   x   [B,T,H,P]  strides x_s        dt [B,T,H] strides dt_s      A [H]   Dskip, dt_bias [H] opt.
 *   Bm, Cm [B,T,G,N] strides          H % G == 0 (head h reads group h / (H/G))
 *   y   [B,T,H,P]  strides y_s        states [B,H,N,P] optional, in place allowed
 * impl: DN_IMPL_AUTO, _RECURRENT, _CHUNK (as GLA) or DN_IMPL_REF (the Mamba-2 recurrence written
 * directly, in double; not through GLA). Allocates O(B T H (P + 1)) floats for v and g.
 */
typedef struct dn_mamba2_params {
    int64_t B, T, H, P, N, G;
    const float *x;
    dn_strides x_s;
    const float *dt;
    dn_strides dt_s;
    const float *A;
    const float *Bm;
    dn_strides Bm_s;
    const float *Cm;
    dn_strides Cm_s;
    const float *Dskip;
    const float *dt_bias;
    int dt_softplus;
    float *y;
    dn_strides y_s;
    const float *initial_state;
    float *final_state;
    dn_impl impl;
    int chunk_size;
    int n_threads;
} dn_mamba2_params;

DN_API dn_mamba2_params dn_mamba2_params_default(int64_t B, int64_t T, int64_t H, int64_t P,
                                                 int64_t N, int64_t G);
DN_API dn_status dn_mamba2_forward(const dn_mamba2_params *p);

/*
 * Backward of Mamba-2, through the GLA backward and the chain rule of the mapping above.
 * Written: dx [B,T,H,P], ddt [B,T,H], dBm, dCm [B,T,G,N], dinitial_state [B,H,N,P] (optional).
 * Accumulated: dA [H], dDskip [H] (exactly when fwd.Dskip), ddt_bias [H] (exactly when
 * fwd.dt_bias). dfinal_state optional. fwd.impl: DN_IMPL_AUTO / DN_IMPL_CHUNK or DN_IMPL_REF
 * (both through GLA; the reference uses GLA's double reference backward).
 */
typedef struct dn_mamba2_bwd_params {
    dn_mamba2_params fwd;
    const float *dy;
    dn_strides dy_s;
    const float *dfinal_state;
    float *dx;
    dn_strides dx_s;
    float *ddt;
    dn_strides ddt_s;
    float *dBm;
    dn_strides dBm_s;
    float *dCm;
    dn_strides dCm_s;
    float *dA, *dDskip, *ddt_bias, *dinitial_state;
} dn_mamba2_bwd_params;

DN_API dn_mamba2_bwd_params dn_mamba2_bwd_params_default(const dn_mamba2_params *fwd);
DN_API dn_status dn_mamba2_backward(const dn_mamba2_bwd_params *p);

/* ---------------------------------------------------------------------------------------------
 * RWKV-4 WKV
 * ------------------------------------------------------------------------------------------- */

/*
 * Per channel c, with w = -exp(time_decay[c]), u = time_first[c], in the running-maximum form
 * (num and den kept scaled by exp(-m)):
 *   wkv_t = (num + e^{u+k_t} v_t) / (den + e^{u+k_t});  num = e^w num + e^{k_t} v_t;
 *   den = e^w den + e^{k_t}
 *   k, v   [B,T,C]  strides k_s, v_s (b and t)          time_decay, time_first [C]
 *   y      [B,T,C]  strides y_s, written
 *   state  [B,3,C]  optional in and out: rows num, den, m; NULL initial state means num = den =
 *                   0, m = -1e38. In place allowed. Finite for |k| of 100 and beyond.
 */
typedef struct dn_rwkv4_params {
    int64_t B, T, C;
    const float *k;
    dn_strides k_s;
    const float *v;
    dn_strides v_s;
    const float *time_decay, *time_first;
    float *y;
    dn_strides y_s;
    const float *initial_state;
    float *final_state;
    dn_impl impl; /* DN_IMPL_AUTO or DN_IMPL_REF */
    int n_threads;
} dn_rwkv4_params;

DN_API dn_rwkv4_params dn_rwkv4_params_default(int64_t B, int64_t T, int64_t C);
DN_API dn_status dn_rwkv4_forward(const dn_rwkv4_params *p);

/*
 * Backward of the RWKV-4 WKV: dk, dv [B,T,C] written; dtime_decay, dtime_first [C] accumulated;
 * dinitial_state [B,3,C] written (optional), dfinal_state optional. The state is differentiated
 * in its own (num, den, m) form, piecewise through the running maximum, so that a sequence split
 * in two calls gives the gradients of one call. fwd.impl: DN_IMPL_AUTO or DN_IMPL_REF.
 */
typedef struct dn_rwkv4_bwd_params {
    dn_rwkv4_params fwd;
    const float *dy;
    dn_strides dy_s;
    const float *dfinal_state;
    float *dk;
    dn_strides dk_s;
    float *dv;
    dn_strides dv_s;
    float *dtime_decay, *dtime_first, *dinitial_state;
} dn_rwkv4_bwd_params;

DN_API dn_rwkv4_bwd_params dn_rwkv4_bwd_params_default(const dn_rwkv4_params *fwd);
DN_API dn_status dn_rwkv4_backward(const dn_rwkv4_bwd_params *p);

/* ---------------------------------------------------------------------------------------------
 * Short causal depthwise convolution (before Mamba and Gated DeltaNet mixers)
 * ------------------------------------------------------------------------------------------- */

/*
 *   y[t][d] = bias[d] + sum_{j<W} weight[d][j] x[t - W + 1 + j][d],  then SiLU if silu
 * inputs before the sequence start come from the state (the W-1 previous inputs, oldest first).
 *   x, y    [B,T,D]   strides x_s, y_s (b and t)   weight [D,W] contiguous (W = 2, 3 or 4)
 *   bias    [D] optional
 *   initial_state, final_state  [B,D,W-1] optional (zeros when absent), in place allowed
 */
typedef struct dn_conv_params {
    int64_t B, T, D, W;
    const float *x;
    dn_strides x_s;
    const float *weight, *bias;
    int silu;
    float *y;
    dn_strides y_s;
    const float *initial_state;
    float *final_state;
    dn_impl impl; /* DN_IMPL_AUTO or DN_IMPL_REF */
    int n_threads;
} dn_conv_params;

DN_API dn_conv_params dn_conv_params_default(int64_t B, int64_t T, int64_t D, int64_t W);
DN_API dn_status dn_conv_forward(const dn_conv_params *p);

/*
 * Backward of the short convolution: dx [B,T,D] and dinitial_state [B,D,W-1] (optional) written;
 * dweight [D,W] and dbias [D] (exactly when fwd.bias) accumulated. dfinal_state optional.
 * fwd.impl: DN_IMPL_AUTO or DN_IMPL_REF.
 */
typedef struct dn_conv_bwd_params {
    dn_conv_params fwd;
    const float *dy;
    dn_strides dy_s;
    const float *dfinal_state;
    float *dx;
    dn_strides dx_s;
    float *dweight, *dbias, *dinitial_state;
} dn_conv_bwd_params;

DN_API dn_conv_bwd_params dn_conv_bwd_params_default(const dn_conv_params *fwd);
DN_API dn_status dn_conv_backward(const dn_conv_bwd_params *p);

/* ---------------------------------------------------------------------------------------------
 * Dense matrix product (the projections and MLPs of the models built on the ops)
 * ------------------------------------------------------------------------------------------- */

/*
 *   C = alpha * op(A) * op(B) + beta * C,  row-major, op(X) = X or X^T
 *   op(A) [M,K], op(B) [K,N], C [M,N]; lda, ldb, ldc are row strides in elements (at least the
 *   stored row length, and >= 1). beta = 0: C is not read (NaN in it is overwritten).
 * M, N or K = 0 is valid: M or N = 0 does nothing (A, B, C may be NULL); K = 0 or alpha = 0 gives
 * C = beta * C without reading A or B (the BLAS convention). C must not overlap A or B.
 * Runs on the BLAS the library was built with or on the built-in kernel (dn_matmul_backend says
 * which); the BLAS takes int dimensions, so a call with a dimension or leading dimension past
 * INT_MAX runs on the built-in kernel, and so does a product of fewer than 16 rows (M < 16: a
 * decode step's projections, faster there unpacked). Threads: dn_get_num_threads() (the BLAS's pool
 * is set to match). The built-in kernel is bitwise reproducible run to run and across thread counts
 * at one SIMD level; the BLAS as far as the BLAS is (OpenBLAS: run to run at a fixed thread count,
 * as the tests check).
 */
typedef enum dn_trans { DN_NO_TRANS = 0, DN_TRANS = 1 } dn_trans;
DN_API dn_status dn_matmul(dn_trans ta, dn_trans tb, int64_t M, int64_t N, int64_t K, float alpha,
                           const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                           float *C, int64_t ldc);
/* The same with B stored in DN_F32, DN_BF16 or DN_F16 (btype; ldb in elements of that type):
 * 16-bit elements are widened exactly to fp32 as they are read, the products accumulate in fp32,
 * so a model's bf16 weights need no fp32 copy. 16-bit B always runs on the built-in kernel
 * (the BLAS has no such product). */
DN_API dn_status dn_matmul_ex(dn_trans ta, dn_trans tb, int64_t M, int64_t N, int64_t K,
                              float alpha, const float *A, int64_t lda, const void *B,
                              dn_dtype btype, int64_t ldb, float beta, float *C, int64_t ldc);
/* Which implementation dn_matmul uses now: the BLAS's name ("openblas", "blis", "cblas") or
 * "built-in". */
DN_API const char *dn_matmul_backend(void);
/* Selects dn_matmul's implementation for the process: "builtin" (also "built-in") or "blas" (also
 * the BLAS's name). DN_ERR_UNSUPPORTED for "blas" in a build without one; DN_ERR_ARG for another
 * name. The default is the BLAS when there is one, unless the environment variable DN_MATMUL is
 * "builtin" (read once, at the first call). */
DN_API dn_status dn_matmul_set_backend(const char *name);

/* ---------------------------------------------------------------------------------------------
 * Language models built on the ops (src/model/)
 * ------------------------------------------------------------------------------------------- */

/*
 * A decoder-only LM: token embedding, L pre-norm residual blocks (RMSNorm, mixer, RMSNorm,
 * SwiGLU MLP), a final RMSNorm and the LM head (tied to the embedding or its own matrix). The
 * mixer of block i is layer_pattern[i % strlen(layer_pattern)]:
 *   'G'  Gated DeltaNet, shaped as Qwen3.5's linear-attention layer: one projection to q, k, v,
 *        z, b, a; causal depthwise convolution (width conv_kernel) with SiLU over q, k, v;
 *        L2-normalised q and k; beta = sigmoid(b); g = -exp(A_log) softplus(a + dt_bias);
 *        HV value heads over H key heads; output RMSNorm (plain weight) gated by SiLU(z);
 *        output projection.
 *   'D'  DeltaNet: the same layer without the gate (no a, A_log, dt_bias).
 *   'L'  linear attention: the same layer without the gate and the delta rule (no b either);
 *        q and k still L2-normalised. G, D and L differ only in the op, so that a comparison
 *        isolates what the delta rule and the gate buy.
 *   'M'  Mamba-2's block: one projection to x, B, C, z, dt; causal depthwise convolution (with
 *        bias) and SiLU over x, B, C; the SSD recurrence (dn_mamba2_forward) with
 *        A = -exp(A_log), dt softplus(dt + dt_bias) and the D skip; RMSNorm over groups of
 *        y * SiLU(z); output projection. Sizes from the linear_* fields: linear_num_value_heads
 *        heads of linear_value_head_dim, state size linear_key_head_dim, linear_num_key_heads
 *        groups, so its state is as large as a Gated DeltaNet layer's.
 *   'R'  RWKV-4 time mixing: token shift (mixes of the input and the previous token's), key,
 *        value and receptance projections, the WKV op (dn_rwkv4_forward), sigmoid(r) * wkv,
 *        output projection; d channels.
 *   'S'  Mamba-1's block (the selective scan): one projection to x and z; causal depthwise
 *        convolution (with bias) and SiLU over x; x_proj to dt (rank R), B and C; dt_proj;
 *        the scan (dn_mamba_forward) with A = -exp(A_log) [E,N], softplus(dt + dt_bias), the D
 *        skip and the SiLU(z) gate; output projection.
 *   'A'  softmax attention, shaped as Qwen3.5's gated attention: q, k, v projections, per-head
 *        q/k RMSNorm (attn_qk_norm), RoPE on the first rotary_dim dimensions of each head
 *        (rotate-half pairing), grouped-query heads, output gate sigmoid(gate) from the q
 *        projection (attn_output_gate), output projection. attn_conv_kernel_dim = W > 0 (not
 *        in Qwen3.5: an experiment's option, 0 by default) adds a causal depthwise convolution
 *        of width W, without bias or activation, over the q, k and v projections before the
 *        norms, as the linear family has (so a head sees the W - 1 previous tokens' keys and
 *        values at its position); its decode state is the last W - 1 inputs.
 * Norm weights of the blocks, the final norm and the q/k norms are zero-centred (the scale is
 * 1 + w, Qwen3.5's convention), so they start at 0; the gated output norm's weight is plain.
 * Names of the fields follow Hugging Face's config.json keys where one exists.
 */
#define DN_MODEL_MAX_LAYERS 256
typedef struct dn_model_config {
    int64_t vocab_size, hidden_size, num_hidden_layers, intermediate_size;
    char layer_pattern[DN_MODEL_MAX_LAYERS + 1]; /* e.g. "GGGA"; repeated over the layers */
    double rms_norm_eps;
    int tie_word_embeddings;
    /* softmax attention ('A') */
    int64_t num_attention_heads, num_key_value_heads, head_dim;
    double rope_theta, partial_rotary_factor; /* rotary_dim = head_dim * factor (even) */
    int attn_qk_norm, attn_output_gate;
    int64_t attn_conv_kernel_dim; /* 0: none; else 2, 3 or 4 (see 'A' above) */
    /* Gated DeltaNet ('G') */
    int64_t linear_num_key_heads, linear_num_value_heads, linear_key_head_dim,
        linear_value_head_dim, linear_conv_kernel_dim;
    /* Mamba-1 ('S'): expand * hidden_size channels, state_size per channel, dt rank (0:
     * ceil(hidden_size / 16)); its convolution is linear_conv_kernel_dim wide */
    int64_t mamba_expand, mamba_state_size, mamba_dt_rank;
    double initializer_range; /* std of the normal init of projections and embeddings */
    /* Mixture-of-experts MLPs (Qwen3-Next, Qwen3.5-MoE), on the layers whose letter in
     * mlp_pattern (repeated like layer_pattern; empty: every layer dense) is 'E' ('D' dense).
     * Router softmax over num_experts, the top num_experts_per_tok (weights renormalised to sum
     * 1 when norm_topk_prob), each expert a SwiGLU MLP of moe_intermediate_size, plus a shared
     * expert of shared_expert_intermediate_size (0: none) scaled by sigmoid(x w_gate). Forward
     * and generation only: dn_model_forward_backward refuses a model with MoE layers. */
    char mlp_pattern[DN_MODEL_MAX_LAYERS + 1];
    int64_t num_experts, num_experts_per_tok, moe_intermediate_size,
        shared_expert_intermediate_size;
    int norm_topk_prob;
} dn_model_config;

/* A small Gated DeltaNet model's settings (byte vocabulary); edit the fields, then create. */
DN_API dn_model_config dn_model_config_default(void);
/* DN_ERR_ARG / DN_ERR_SHAPE with a message naming the field when a setting is out of range. */
DN_API dn_status dn_model_config_check(const dn_model_config *c);

typedef struct dn_model dn_model;

/* Parameters laid out in one buffer (dn_model_params), tensor by tensor, initialised from seed
 * (same seed, same weights, on every machine). */
DN_API dn_status dn_model_create(dn_model **out, const dn_model_config *c, uint64_t seed);
DN_API void dn_model_free(dn_model *m); /* NULL is a no-op */
DN_API const dn_model_config *dn_model_get_config(const dn_model *m);

/* One parameter tensor: name (Hugging Face style, e.g. "model.layers.0.mlp.up_proj.weight"),
 * shape, offset in the parameter buffer, and whether weight decay applies (not to norms,
 * biases, A_log and dt_bias). */
typedef struct dn_param_info {
    const char *name;
    int ndim;
    int64_t shape[3];
    int64_t offset, numel;
    int decay;
} dn_param_info;
DN_API int64_t dn_model_num_tensors(const dn_model *m);
DN_API dn_status dn_model_param_info(const dn_model *m, int64_t i, dn_param_info *out);
DN_API int64_t dn_model_num_params(const dn_model *m);
/* The parameter and gradient buffers (dn_model_num_params floats each). */
DN_API float *dn_model_params(dn_model *m);
DN_API float *dn_model_grads(dn_model *m);
DN_API void dn_model_zero_grad(dn_model *m);
/* Re-initialises the gates of every Gated DeltaNet ('G') and Mamba-2 ('M') layer so that the
 * initial decay per token, exp(g) with g = -exp(A_log) softplus(dt_bias) at a zero input, lies
 * in [lo, hi] (0 < lo <= hi < 1; A_log = 0, -g log-uniform between -log(hi) and -log(lo), one
 * draw per head from seed). The default init (A in [1, 16], dt in [1e-3, 1e-1], as Mamba-2 and
 * flash-linear-attention) spans decays of 0.2 to 0.999: a head that starts near 0.2 forgets a
 * token within a few steps, and on recall tasks such a model can sit at chance for thousands
 * of steps. [0.99, 0.999] keeps every head's memory at 100 to 1000 tokens from the start. */
DN_API dn_status dn_model_init_decay(dn_model *m, double lo, double hi, uint64_t seed);

/*
 * Training step half: forward over tokens [B,T] (values in [0, vocab_size)) and, when grad_scale
 * is not 0, the backward, which ADDS grad_scale * d(loss_sum)/d(params) to the gradients.
 * targets [B,T]: the token each position should predict, or -1 to leave it out of the loss.
 * loss_sum: the summed cross-entropy (natural log) over the counted targets; n_targets: their
 * number (both optional). Activations for (B,T) are allocated on first use and kept.
 */
DN_API dn_status dn_model_forward_backward(dn_model *m, const int32_t *tokens,
                                           const int32_t *targets, int64_t B, int64_t T,
                                           float grad_scale, double *loss_sum, int64_t *n_targets);
/* Logits [B,T,vocab_size] of a forward over tokens [B,T]. */
DN_API dn_status dn_model_logits(dn_model *m, float *logits, const int32_t *tokens, int64_t B,
                                 int64_t T);
/* Stores the model's matrices (every 2-D weight) in t: DN_BF16 or DN_F16 (rounded to nearest
 * even; the model is then for forward and generation only, with half the bytes to read per
 * token), or DN_F32 (back to fp32 for training: the 16-bit values widened). */
DN_API dn_status dn_model_set_weight_dtype(dn_model *m, dn_dtype t);
DN_API dn_dtype dn_model_weight_dtype(const dn_model *m); /* DN_F32 for NULL */
/* Bytes the model holds now: parameters + gradients (a loaded checkpoint with 16-bit weights: its
 * weights only, matrices at 2 bytes), and activations. */
DN_API dn_status dn_model_memory(const dn_model *m, size_t *param_bytes, size_t *act_bytes);

/* The config as a JSON object with Hugging Face key names ("hidden_size", "num_hidden_layers",
 * "linear_num_value_heads", ...; "layer_pattern" for the mixers). to_json: *out is a new
 * NUL-terminated string (release it with free()). from_json: keys absent take the defaults of
 * dn_model_config_default; an unknown key, a wrong type or an out-of-range value is an error
 * naming it, and *out is unchanged. */
DN_API dn_status dn_model_config_to_json(const dn_model_config *c, char **out);
DN_API dn_status dn_model_config_from_json(dn_model_config *out, const char *text, size_t n);

/*
 * Generation: B sequences advance together through a state that holds, per Gated DeltaNet
 * layer, the convolution's last inputs and the delta-rule state (fixed size), and per attention
 * layer a KV cache (grows with the context, up to max_len tokens).
 * dn_model_step feeds T more tokens of every sequence, tokens [B,T]: a prefill (the chunkwise
 * form) when T > 1, a decode step (the recurrence) when T = 1. logits: [B,T,vocab] when
 * all_positions, else [B,vocab] for the last position. The results equal one forward over the
 * whole sequence (up to fp32 rounding). Bad input changes nothing; a failure while the state
 * is being advanced (an allocation) leaves it unusable until dn_model_state_reset.
 * The KV caches hold keys and values in fp32; state_create_ex takes DN_BF16 or DN_F16 instead
 * (half the bytes a decode step reads at long context, as a bf16 checkpoint runs in transformers;
 * keys and values rounded to nearest even on append, the attention math still fp32).
 */
typedef struct dn_model_state dn_model_state;
DN_API dn_status dn_model_state_create(dn_model_state **out, const dn_model *m, int64_t B,
                                       int64_t max_len);
DN_API dn_status dn_model_state_create_ex(dn_model_state **out, const dn_model *m, int64_t B,
                                          int64_t max_len, dn_dtype kv_dtype);
DN_API void dn_model_state_free(dn_model_state *s); /* NULL is a no-op */
DN_API dn_status dn_model_state_reset(dn_model_state *s);
DN_API int64_t dn_model_state_len(const dn_model_state *s); /* tokens fed so far */
/* Bytes of the fixed-size states (all Gated DeltaNet layers) and of the KV caches in use. */
DN_API dn_status dn_model_state_bytes(const dn_model_state *s, size_t *fixed, size_t *kv);
DN_API dn_status dn_model_step(dn_model *m, dn_model_state *s, float *logits, const int32_t *tokens,
                               int64_t T, int all_positions);

/* Where a forward's time goes: with profiling on, every forward (dn_model_step, dn_model_logits,
 * the forward of dn_model_forward_backward) adds its wall time per layer, split into the mixer
 * part (norm, mixer, residual) and the MLP part (norm, MLP or experts), and the rest (embedding,
 * final norm, LM head of dn_model_step) into other_s. Two clock reads per part; off by default.
 * set_profiling(m, 1) starts from zero (again on each call), 0 turns it off. profile: mixer_s and
 * mlp_s [num_hidden_layers] (either NULL to skip); DN_ERR_ARG while profiling is off. */
DN_API dn_status dn_model_set_profiling(dn_model *m, int on);
DN_API dn_status dn_model_profile(const dn_model *m, double *mixer_s, double *mlp_s,
                                  double *other_s);

/* Next-token sampling: temperature 0 (or top_k 1) is greedy; else softmax(logits / temperature)
 * restricted to the top_k most likely tokens (0: all) and then to the smallest set holding top_p
 * of their probability. rng_state: the caller's 64-bit generator state, advanced by the call (a
 * seed reproduces a generation). NaN logits are never drawn. */
typedef struct dn_sample_params {
    double temperature;
    int64_t top_k;
    double top_p;
} dn_sample_params;
DN_API dn_sample_params dn_sample_params_default(void); /* 0.8, 0 (all), 0.95 */
DN_API dn_status dn_sample(int32_t *out, const float *logits, int64_t V, const dn_sample_params *p,
                           uint64_t *rng_state);

/* ---------------------------------------------------------------------------------------------
 * Training: AdamW, the learning-rate schedule, data
 * ------------------------------------------------------------------------------------------- */

/*
 * AdamW with decoupled weight decay (Loshchilov & Hutter): for every parameter p with gradient
 * g (after clipping), at step t = 1, 2, ...:
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + lr wd p   (wd only where decay)
 * grad_clip > 0 scales the gradients by min(1, grad_clip / ||g||_2) first (global norm).
 */
typedef struct dn_adamw_config {
    double beta1, beta2, eps, weight_decay, grad_clip;
} dn_adamw_config;
DN_API dn_adamw_config dn_adamw_config_default(void); /* 0.9, 0.95, 1e-8, 0.1, 1.0 */

typedef struct dn_adamw dn_adamw;
DN_API dn_status dn_adamw_create(dn_adamw **out, const dn_model *m, const dn_adamw_config *c);
DN_API void dn_adamw_free(dn_adamw *o);
/* One update of m's parameters from m's gradients at learning rate lr (the gradients are left
 * as they are, clipped). grad_norm: the global L2 norm before clipping (optional).
 * A non-finite gradient norm is DN_ERR_ARG and changes nothing. */
DN_API dn_status dn_adamw_step(dn_adamw *o, dn_model *m, double lr, double *grad_norm);
/* The optimizer's state for checkpoints: step count, then the first and second moments, each
 * dn_model_num_params floats. */
DN_API int64_t dn_adamw_get_step(const dn_adamw *o);
DN_API dn_status dn_adamw_state(dn_adamw *o, int64_t *step, float **m1, float **m2);
DN_API dn_status dn_adamw_set_step(dn_adamw *o, int64_t step);

/*
 * Checkpoints: a safetensors file with every parameter under its name (fp32), the AdamW moments
 * when opt is given ("optimizer.exp_avg.<name>", "optimizer.exp_avg_sq.<name>"), and metadata:
 * the format, the config (JSON), the optimizer's step and extra_json (any JSON the caller wants
 * back, e.g. a trainer's options; may be NULL). Written atomically: a temporary file beside
 * path, fsync, rename, directory fsync; on failure path is unchanged.
 * dn_checkpoint_load validates before it trusts anything (header size, offsets inside the file
 * and covering it exactly, dtypes, shape products, the config, every tensor's name, dtype and
 * shape, no tensor missing or left over) and creates the model (and, when opt is not NULL, an
 * optimizer with config oc holding the saved moments and step; the file must have them).
 * extra_json (may be NULL): a new string to free(), or NULL when none was saved. On error
 * nothing is created. dn_checkpoint_parse reads a whole file already in memory.
 */
DN_API dn_status dn_checkpoint_save(const char *path, const dn_model *m, dn_adamw *opt,
                                    const char *extra_json);
DN_API dn_status dn_checkpoint_load(const char *path, dn_model **model, dn_adamw **opt,
                                    const dn_adamw_config *oc, char **extra_json);
DN_API dn_status dn_checkpoint_parse(const uint8_t *buf, size_t n, dn_model **model, dn_adamw **opt,
                                     const dn_adamw_config *oc, char **extra_json);

/*
 * The text model of a Hugging Face checkpoint directory of the Gated DeltaNet hybrids: model_type
 * "qwen3_5" / "qwen3_5_moe" (the vision-language layout; the vision tower is skipped),
 * "qwen3_5_text" / "qwen3_5_moe_text" (causal LM) or "qwen3_next"; the weights in
 * model.safetensors or in the shards of model.safetensors.index.json, F32, F16 or BF16. The
 * config becomes a dn_model_config (layer_types -> layer_pattern G / A, experts -> mlp_pattern)
 * and every tensor is checked by name and shape before any is read: a missing, extra or
 * mis-shaped tensor, or a malformed file, is an error naming it, and nothing is created. When
 * every matrix of the checkpoint is stored in one 16-bit type (bf16 or fp16), the matrices stay
 * in it (no fp32 copy: products widen them as they read them, dn_matmul_ex) and the model is for
 * forward and generation only (dn_model_forward_backward: DN_ERR_UNSUPPORTED); otherwise every
 * weight is widened to fp32. The conventions it relies on are listed in src/model/hf.c.
 */
DN_API dn_status dn_model_load_hf(dn_model **out, const char *dir);

/* Linear warmup over warmup steps to peak, then cosine decay to peak * min_ratio at total. */
DN_API double dn_lr_at(int64_t step, int64_t warmup, int64_t total, double peak, double min_ratio);

/* Byte-level text data (vocabulary 256): a corpus split into a training part (the first
 * 1 - val_fraction of the bytes) and a validation part. Batches are windows of T + 1 bytes at
 * positions drawn from (seed, batch index): the same index gives the same batch on every run, so
 * training resumes exactly. */
typedef struct dn_text_data dn_text_data;
DN_API dn_status dn_text_data_load(dn_text_data **out, const char *path, double val_fraction);
DN_API dn_status dn_text_data_from_memory(dn_text_data **out, const uint8_t *bytes, size_t n,
                                          double val_fraction);
DN_API void dn_text_data_free(dn_text_data *d);
DN_API size_t dn_text_data_size(const dn_text_data *d, int validation);
/* tokens, targets [B,T]: targets are the next bytes. */
DN_API dn_status dn_text_data_batch(const dn_text_data *d, int validation, uint64_t seed,
                                    uint64_t index, int32_t *tokens, int32_t *targets, int64_t B,
                                    int64_t T);

/*
 * Multi-query associative recall (MQAR, the Zoology benchmark's task): each sequence starts with
 * n_pairs key-value pairs (keys drawn without repetition from [1, vocab/2), values from
 * [vocab/2, vocab)), written k1 v1 k2 v2 ...; the rest holds the n_pairs keys again as queries
 * in random order at random distinct even offsets, 0 elsewhere. The target after a query key is
 * its value; every other target is -1 (not counted). Needs T >= 4 n_pairs and vocab/2 > n_pairs.
 * The same (seed, index) gives the same batch.
 */
DN_API dn_status dn_mqar_batch(int32_t *tokens, int32_t *targets, int64_t B, int64_t T,
                               int64_t vocab, int64_t n_pairs, uint64_t seed, uint64_t index);

/* ---------------------------------------------------------------------------------------------
 * Tokenizer: byte-level BPE read from a Hugging Face tokenizer.json (Qwen2 / Qwen3 / Qwen3.5
 * and tokenizers built like them)
 * ------------------------------------------------------------------------------------------- */

/*
 * What is read (anything else is DN_ERR_FORMAT naming the field, never a different tokenization):
 *   model: BPE with vocab (token -> id) and merges ("a b" strings or [a, b] pairs), ignore_merges,
 *     byte_fallback false, no continuing_subword_prefix / end_of_word_suffix; every one of the 256
 *     byte-level characters (GPT-2's bytes_to_unicode) must be in the vocabulary, so no input
 *     needs an unknown token.
 *   normalizer: null or NFC (tables generated from Python's unicodedata, less the few recent
 *     marks and compositions that Hugging Face's tokenizers leaves alone; docs/TOKENIZER.md).
 *   pre_tokenizer: Sequence [Split (Isolated, not inverted) with one of the split patterns of
 *     Qwen2/Qwen3, GPT-4 (\p{N}{1,3}) or Qwen3.5 (letters and marks), then ByteLevel with
 *     add_prefix_space and use_regex false]; the split runs on a hand-written matcher, not a regex
 *     engine. post_processor null or ByteLevel (adds no token); decoder ByteLevel.
 *   added_tokens: special or not, normalized or not (lstrip, rstrip, single_word must be false);
 *     they are found in the text before anything else, leftmost and then longest first.
 *   tokenizer_config.json beside it (optional): eos_token, bos_token, chat_template.
 * Every id, token and merge is validated; a malformed file is an error, never a crash.
 * A loaded tokenizer is read-only: any number of threads may encode and decode with it at once.
 */
typedef struct dn_tokenizer dn_tokenizer;

/* path: a directory holding tokenizer.json (and optionally tokenizer_config.json), or the
 * tokenizer.json file itself (tokenizer_config.json is then looked for beside it). */
DN_API dn_status dn_tokenizer_load(dn_tokenizer **out, const char *path);
/* The same from memory: json[0..n) is tokenizer.json, config[0..config_n) tokenizer_config.json
 * (config may be NULL). */
DN_API dn_status dn_tokenizer_parse(dn_tokenizer **out, const char *json, size_t n,
                                    const char *config, size_t config_n);
DN_API void dn_tokenizer_free(dn_tokenizer *t);

/* Ids run over [0, vocab_size); an id that no token has (a gap) is rejected by decode. */
DN_API int64_t dn_tokenizer_vocab_size(const dn_tokenizer *t);
/* The id of a token as written in tokenizer.json (byte-level form, e.g. "\u0120the", or an added
 * token's content), or -1. */
DN_API int32_t dn_tokenizer_token_id(const dn_tokenizer *t, const char *token);
/* The token of id as written in tokenizer.json (NUL-terminated, owned by t), or NULL. */
DN_API const char *dn_tokenizer_token_str(const dn_tokenizer *t, int32_t id);
/* The bytes id stands for in decoded text (owned by t; not NUL-terminated, may split a UTF-8
 * character: a streaming decoder joins them), DN_ERR_ARG for an unknown id. */
DN_API dn_status dn_tokenizer_token_bytes(const dn_tokenizer *t, int32_t id, const char **bytes,
                                          size_t *n);
/* 1 for an added token marked special, else 0. */
DN_API int dn_tokenizer_is_special(const dn_tokenizer *t, int32_t id);
/* eos_token / bos_token of tokenizer_config.json as ids, -1 when absent. */
DN_API int32_t dn_tokenizer_eos_id(const dn_tokenizer *t);
DN_API int32_t dn_tokenizer_bos_id(const dn_tokenizer *t);

/* Encoding flags: DN_TOK_NO_SPECIAL treats the text of special added tokens as plain text (for
 * untrusted text that must not inject control tokens); non-special added tokens still match. */
#define DN_TOK_NO_SPECIAL 1u
/* Decoding flags: DN_TOK_SKIP_SPECIAL leaves special added tokens out. */
#define DN_TOK_SKIP_SPECIAL 1u

/* Encodes the UTF-8 text[0..n) into a new buffer *ids of *n_ids ids (free with free(); an empty
 * text gives *n_ids = 0 and a valid buffer). Invalid UTF-8 is DN_ERR_ARG naming the byte offset
 * (Hugging Face's tokenizers only ever sees valid text). Nothing is added around the text (no
 * BOS/EOS: Qwen's tokenizers add none). */
DN_API dn_status dn_tokenizer_encode(const dn_tokenizer *t, const char *text, size_t n,
                                     unsigned flags, int32_t **ids, int64_t *n_ids);
/* Decodes ids[0..n) into a new NUL-terminated UTF-8 string *text of *len bytes (free with
 * free()). Bytes that do not form valid UTF-8 become U+FFFD, one per maximal invalid
 * subsequence (as Hugging Face's ByteLevel decoder does); an unknown id is DN_ERR_ARG. */
DN_API dn_status dn_tokenizer_decode(const dn_tokenizer *t, const int32_t *ids, int64_t n,
                                     unsigned flags, char **text, size_t *len);

/*
 * Chat prompts in ChatML, the format of Qwen's chat templates:
 *   <|im_start|>role\ncontent<|im_end|>\n ... and, with add_generation_prompt,
 *   <|im_start|>assistant\n
 * dn_chat_format writes that text (a new string to free()). dn_tokenizer_chat encodes it with the
 * markers as their special tokens and the roles and contents as plain text (a special token's
 * text inside a message stays text; otherwise the ids are those of encoding the formatted text).
 * DN_ERR_UNSUPPORTED when the tokenizer lacks <|im_start|> / <|im_end|> as special tokens or
 * its tokenizer_config.json has a chat_template that is not ChatML. Only the messages given are
 * written: no default system message (Qwen2.5's template adds one when there is none) and no
 * thinking block (<think>\n\n</think>\n\n, Qwen3's switch): add them as messages or text.
 */
typedef struct dn_chat_message {
    const char *role;    /* "system", "user", "assistant", ... */
    const char *content; /* UTF-8 */
} dn_chat_message;
DN_API dn_status dn_chat_format(const dn_chat_message *msgs, int64_t n, int add_generation_prompt,
                                char **text, size_t *len);
DN_API dn_status dn_tokenizer_chat(const dn_tokenizer *t, const dn_chat_message *msgs, int64_t n,
                                   int add_generation_prompt, int32_t **ids, int64_t *n_ids);

#ifdef __cplusplus
}
#endif
#endif /* DELTANET_H */
