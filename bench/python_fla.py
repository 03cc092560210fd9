#!/usr/bin/env python3
"""bench/python_fla.py - deltanet from Python against transformers' torch fallback, side by side.

  1. op: deltanet.fla.chunk_gated_delta_rule against transformers' torch_chunk_gated_delta_rule
     (what Qwen3.5 runs on CPU without fla), Qwen3.5's smallest linear-attention shape (B=1, 16
     heads of 128 for q, k and v, L2-normalised q and k), forward and forward + backward.
  2. model: prefill and decode of a random Qwen3.5 (tiny, and 0.8B-shaped) with and without
     deltanet.transformers.patch_qwen3_5.
  3. overhead: the Python cost of one decode call, fused_recurrent_gated_delta_rule at T=1 on a
     tiny shape, minus the C call alone (the same packed params, called through ctypes).

Every measurement: the same warm-up, then the median of --reps timed runs, the two sides
interleaved run by run (a change in the machine's load falls on both alike). GFLOP/s counts the
recurrence's work, 7 K V per token and value head for the forward (bench/la.c's convention), and
3x that for forward + backward, the same count for both implementations. Prints a table and, with
--json FILE, one JSON record per measurement.

  python bench/python_fla.py                         # everything, default sizes
  python bench/python_fla.py --lengths 128 --skip-08b --reps 3   # a quick check
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

import deltanet
from deltanet import _lib, fla
from deltanet._arrays import torch_arrays

RECORDS = []


def median_time(fn, warmup, reps, clock=time.perf_counter):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def median_times(fns, warmup, reps):
    """Medians of several functions run interleaved (one call of each per round), so that a
    change in the machine's load during the measurement falls on all of them alike."""
    for f in fns:
        for _ in range(warmup):
            f()
    times = [[] for _ in fns]
    for _ in range(reps):
        for f, ts in zip(fns, times):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def loop_times(fn, reps, clock):
    fn()
    out = []
    for _ in range(reps):
        t = clock()
        fn()
        out.append(clock() - t)
    return out


def record(**kw):
    RECORDS.append(kw)
    return kw


def gdn_inputs(T, H=16, K=128, V=128, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    x = dict(q=torch.randn(1, T, H, K, generator=g), k=torch.randn(1, T, H, K, generator=g),
             v=torch.randn(1, T, H, V, generator=g),
             g=-torch.rand(1, T, H, generator=g) * 0.1, beta=torch.rand(1, T, H, generator=g))
    return {n: t.requires_grad_(grad) for n, t in x.items()}


def bench_op(args):
    from transformers.models.qwen3_5 import modeling_qwen3_5 as mod

    fallback = getattr(mod.torch_chunk_gated_delta_rule, "__wrapped__", mod.torch_chunk_gated_delta_rule)
    impls = {"deltanet": fla.chunk_gated_delta_rule, "transformers_torch": fallback}
    print(f"\n== op: chunk_gated_delta_rule, B=1, H=HV=16, K=V=128, fp32 "
          f"(torch threads {torch.get_num_threads()}, deltanet threads {deltanet.get_num_threads()}) ==")
    print(f"{'T':>6} {'pass':<9} {'impl':<20} {'ms':>10} {'GFLOP/s':>9} {'deltanet speed-up':>18}")
    for T in args.lengths:
        flops_fwd = 7.0 * 128 * 128 * 16 * T
        for phase in ("fwd", "fwd+bwd"):
            runs = []
            for name, f in impls.items():
                x = gdn_inputs(T, grad=phase != "fwd")
                w = torch.randn(1, T, 16, 128)

                def run(f=f, x=x, w=w):
                    if phase == "fwd":
                        with torch.no_grad():
                            f(x["q"], x["k"], x["v"], g=x["g"], beta=x["beta"], use_qk_l2norm_in_kernel=True)
                    else:
                        o, _ = f(x["q"], x["k"], x["v"], g=x["g"], beta=x["beta"], use_qk_l2norm_in_kernel=True)
                        (o * w).sum().backward()

                runs.append(run)
            reps = args.reps if T <= 1024 else max(3, args.reps // 3)
            flops = flops_fwd * (1 if phase == "fwd" else 3)
            res = dict(zip(impls, median_times(runs, args.warmup, reps)))
            for name, sec in res.items():
                record(section="op", T=T, phase=phase, impl=name, seconds=sec, gflops=flops / sec * 1e-9)
            ratio = res["transformers_torch"] / res["deltanet"]
            for name, sec in res.items():
                flops = flops_fwd * (1 if phase == "fwd" else 3)
                extra = f"{ratio:17.2f}x" if name == "deltanet" else ""
                print(f"{T:>6} {phase:<9} {name:<20} {sec * 1e3:10.2f} {flops / sec * 1e-9:9.2f} {extra}")
            record(section="op", T=T, phase=phase, speedup=ratio)


def qwen(config_kwargs, seed=0):
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**config_kwargs))
    return model.eval()


TINY = dict(vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, linear_num_key_heads=4,
            linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=32)
# Qwen3.5-0.8B's text model shape (config.json of Qwen/Qwen3.5-0.8B); random weights
QWEN35_08B = dict(vocab_size=248320, hidden_size=1024, intermediate_size=3584, num_hidden_layers=24,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=256, linear_num_key_heads=16,
                  linear_num_value_heads=16, linear_key_head_dim=128, linear_value_head_dim=128,
                  linear_conv_kernel_dim=4, tie_word_embeddings=True)


def bench_model(args, name, cfg):
    from deltanet.transformers import patch_qwen3_5, unpatch

    t0 = time.perf_counter()
    model = qwen(cfg)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"\n== model: random Qwen3.5 '{name}', {nparams / 1e6:.1f} M parameters (built in "
          f"{time.perf_counter() - t0:.1f} s), fp32, batch 1 ==")
    print(f"{'T':>6} {'phase':<8} {'transformers (ms)':>18} {'with deltanet (ms)':>19} {'speed-up':>9}")
    ids_all = torch.randint(0, cfg["vocab_size"], (1, max(args.model_lengths)))
    for T in args.model_lengths:
        ids = ids_all[:, :T]

        def mode(patched):
            (patch_qwen3_5 if patched else unpatch)(model)

        def prefill(patched):
            mode(patched)
            with torch.no_grad():
                return model(ids, use_cache=True, logits_to_keep=1)

        # prefill: the two modes interleaved, one run of each per round
        pre = median_times([lambda: prefill(False), lambda: prefill(True)], 1, args.model_reps)
        # decode: one cache per mode, steps interleaved
        state = {}
        for patched in (False, True):
            out = prefill(patched)
            state[patched] = (out.cache, out.logits[:, -1:].argmax(-1))
        steps = {False: [], True: []}
        with torch.no_grad():
            for i in range(args.decode_steps + 2):
                for patched in (False, True):
                    mode(patched)
                    cache, tok = state[patched]
                    t = time.perf_counter()
                    out = model(tok, cache=cache, use_cache=True)
                    steps[patched].append(time.perf_counter() - t)
                    state[patched] = (out.cache, out.logits[:, -1:].argmax(-1))
        res = {p: (pre[int(p)], statistics.median(steps[p][2:])) for p in (False, True)}
        unpatch(model)
        for i, phase in enumerate(("prefill", "decode")):
            a, b = res[False][i], res[True][i]
            what = f"{phase}" if phase == "prefill" else "decode/tok"
            print(f"{T:>6} {what:<8} {a * 1e3:18.2f} {b * 1e3:19.2f} {a / b:8.2f}x")
            record(section="model", model=name, T=T, phase=phase, transformers_s=a, deltanet_s=b,
                   speedup=a / b)
    del model


def bench_overhead(args):
    """Python overhead of one decode call: the fla function at T=1 minus the C call alone."""
    B, H, K = 1, 2, 16
    x = gdn_inputs(1, H=H, K=K, V=K, seed=3)
    h0 = torch.randn(B, H, K, K) * 0.1
    threads = deltanet.get_num_threads()
    deltanet.set_num_threads(1)  # the C call's own cost, not an OpenMP region's, for a tiny shape
    n = args.overhead_iters

    def loop_fla():
        for _ in range(n):
            fla.fused_recurrent_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], beta=x["beta"],
                                                 initial_state=h0, output_final_state=True,
                                                 use_qk_l2norm_in_kernel=True)

    A = torch_arrays()
    o, ht = torch.empty(B, 1, H, K), torch.empty(B, H, K, K)
    buf = _lib.LA_PACK.pack(3, B, 1, H, H, K, K, *A.view(x["q"]), *A.view(x["k"]), *A.view(x["v"]),
                            *A.view(x["g"]), *A.view(x["beta"]), *A.view(o), h0.data_ptr(),
                            ht.data_ptr(), 0, 0, K ** -0.5, 1, 64, _lib.IMPLS["recurrent"], 0, 0, 0,
                            0, -1, 0, 0, *[0] * 10)  # dtype .. raw gates: the defaults
    call = _lib.dn_la_forward_packed

    def loop_c():
        for _ in range(n):
            call(buf)

    print(f"\n== overhead: fused_recurrent_gated_delta_rule, T=1, B=1, H=HV=2, K=V=16 "
          f"(median of {args.reps} loops of {n} calls) ==")
    # wall time, and this process's CPU time (what the call costs when other processes share
    # the cores: on a loaded machine the wall time also counts the waits for a core); median and
    # best of the loops (the best is the least disturbed by other processes)
    for clock_name, clock in (("wall", time.perf_counter), ("cpu", time.process_time)):
        with torch.no_grad():
            fla_times = loop_times(loop_fla, args.reps, clock)
        c_times = loop_times(loop_c, args.reps, clock)
        for stat in ("median", "best"):
            pick = statistics.median if stat == "median" else min
            total, c_only = pick(fla_times) / n, pick(c_times) / n
            print(f"  {clock_name:>4} time, {stat:>6}: per call {total * 1e6:6.2f} us, of which the C "
                  f"call {c_only * 1e6:5.2f} us: Python overhead {(total - c_only) * 1e6:6.2f} us "
                  "(target < 20 us)")
            record(section="overhead", clock=clock_name, stat=stat, per_call_s=total, c_call_s=c_only,
                   python_overhead_s=total - c_only)
    deltanet.set_num_threads(threads)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 4096], help="op bench T")
    ap.add_argument("--model-lengths", type=int, nargs="+", default=[512], help="prefill T")
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--model-reps", type=int, default=3)
    ap.add_argument("--overhead-iters", type=int, default=20000)
    ap.add_argument("--skip-op", action="store_true")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--skip-08b", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for torch and deltanet alike (0: their defaults)")
    ap.add_argument("--json", help="write the records here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        deltanet.set_num_threads(args.threads)
    print(f"deltanet {deltanet.__version__}: {deltanet.build_info()}")
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if not args.skip_overhead:
        bench_overhead(args)
    if not args.skip_op:
        bench_op(args)
    if not args.skip_tiny:
        bench_model(args, "tiny", TINY)
    if not args.skip_08b:
        bench_model(args, "0.8B-shaped", QWEN35_08B)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"build": deltanet.build_info(), "torch": torch.__version__,
                       "records": RECORDS}, f, indent=1)


if __name__ == "__main__":
    main()
