"""cuda_la_fla.py - flash-linear-attention's Gated DeltaNet kernels timed like bench/cuda_la.cu
(same shapes, bf16, H = HV = 16, K = V = 128, q/k L2 norm in the kernel, one call captured in a
CUDA graph and replayed, median of CUDA-event times; decode also as a graph of 32 steps, us_step),
so the two print comparable lines. Needs
torch and fla (pip install flash-linear-attention); prints a note and exits 0 without them."""
import sys

try:
    import torch
    import torch.nn.functional as F
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    import fla
except Exception as e:  # noqa: BLE001
    print(f"fla: skipped ({e})")
    sys.exit(0)

H, C = 16, 64


def time_graph(fn, reps, calls=1):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # autotuning and compilation outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    for _ in range(5):
        g.replay()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def main():
    print(f"fla version={getattr(fla, '__version__', '?')} torch={torch.__version__}")
    mode = sys.argv[1] if len(sys.argv) > 1 else "all"
    if mode == "train":  # forward + backward, eager: as bench/cuda_la.cu's "train"
        for B, T in [(16, 1024), (4, 4096), (2, 8192), (1, 32768)]:
            run_train(B, T, 128, 128)
        return
    if mode == "dims":  # head dims 64, 128, 256: as bench/cuda_la.cu's "dims"
        for d in (64, 128, 256):
            run_fwd(4, 4096, d, d)
        for d in (64, 128, 256):
            run_decode(64, d, d)
        return
    shapes = [(16, 1024), (4, 4096), (2, 8192), (1, 32768), (64, 256)]
    for B, T in [] if mode == "decode" else shapes:
        run_fwd(B, T, 128, 128)
    for B in (1, 64, 128):
        run_decode(B, 128, 128)


def run_fwd(B, T, K, V):
    dev = "cuda"
    q = torch.empty(B, T, H, K, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
    k = torch.empty(B, T, H, K, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
    v = torch.empty(B, T, H, V, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
    g = torch.empty(B, T, H, device=dev, dtype=torch.float32).uniform_(-0.2, -0.001)
    beta = torch.empty(B, T, H, device=dev, dtype=torch.float32).uniform_(0.05, 0.95)
    fn = lambda: chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)  # noqa: E731
    ms = time_graph(fn, 50)
    n = B * T * H
    flops = n * (6.0 * K * V + 4.0 * C * (K + V))
    byts = B * T * (2 * H * K + 2 * H * V) * 2 + n * 8
    print(f"fwd impl=fla B={B} T={T} H={H} K={K} V={V} ms={ms:.4f} tflops={flops / ms * 1e-9:.1f} "
          f"tbs={byts / ms * 1e-9:.2f}", flush=True)


def time_eager(fn, reps):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def run_train(B, T, K, V):
    # fla 0.6.0 refuses its gated backward on Hopper under Triton 3.4 .. 3.7.0 (fla issue #640:
    # that Triton miscompiles chunk_bwd_dqkwg). This bench times it anyway, by lifting the guard:
    # the time is what is compared here, not fla's gradients.
    import fla.ops.common.chunk_o as chunk_o
    chunk_o.TRITON_ABOVE_3_7_1 = True
    dev = "cuda"
    mk = lambda *s, lo=-1.0, hi=1.0, dt=torch.bfloat16: torch.empty(  # noqa: E731
        *s, device=dev, dtype=dt).uniform_(lo, hi).requires_grad_()
    q, k, v = mk(B, T, H, K), mk(B, T, H, K), mk(B, T, H, V)
    g = mk(B, T, H, lo=-0.2, hi=-0.001, dt=torch.float32)
    beta = mk(B, T, H, lo=0.05, hi=0.95, dt=torch.float32)
    do = torch.empty(B, T, H, V, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)

    def fn():
        o, _ = chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)
        o.backward(do)

    ms = time_eager(fn, 20)
    n = B * T * H
    flops = 3.0 * n * (6.0 * K * V + 4.0 * C * (K + V))
    print(f"train impl=fla B={B} T={T} H={H} K={K} V={V} ms={ms:.4f} "
          f"tflops={flops / ms * 1e-9:.1f}", flush=True)


def run_decode(B, K, V):
    dev = "cuda"
    q = torch.empty(B, 1, H, K, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
    k = torch.empty(B, 1, H, K, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
    v = torch.empty(B, 1, H, V, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
    g = torch.empty(B, 1, H, device=dev, dtype=torch.float32).uniform_(-0.2, -0.001)
    beta = torch.empty(B, 1, H, device=dev, dtype=torch.float32).uniform_(0.05, 0.95)
    h0 = torch.empty(B, H, K, V, device=dev, dtype=torch.float32).uniform_(-0.1, 0.1)
    fn = lambda: fused_recurrent_gated_delta_rule(  # noqa: E731
        q, k, v, g=g, beta=beta, initial_state=h0, output_final_state=True,
        use_qk_l2norm_in_kernel=True)
    ms = time_graph(fn, 200)
    ms_step = time_graph(fn, 50, 32) / 32
    n = B * H
    byts = 2.0 * n * K * V * 4 + n * (2 * K + 2 * V) * 2 + n * 8
    print(f"decode impl=fla B={B} H={H} K={K} V={V} state=fp32 us={ms * 1e3:.2f} "
          f"us_step={ms_step * 1e3:.2f} tbs={byts / ms_step * 1e-9:.2f} "
          f"gflops={8.0 * n * K * V / ms_step * 1e-6:.1f}", flush=True)


if __name__ == "__main__":
    main()
