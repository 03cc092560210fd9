"""deltanet against transformers on one Qwen3.5 checkpoint, on this CPU, in one run.

A random model with the text shape of Qwen3.5-0.8B (width 1024, 24 layers in the 3:1 pattern,
Gated DeltaNet heads 16 x 128, attention 8 x 256 with 2 KV heads, MLP 3584, tied 248,320-token
vocabulary) is built with transformers in bf16 and saved as a checkpoint directory. Then, one
after the other on the same threads:

  deltanet      `deltanet bench qwen --model DIR` (the C loader and runtime, bf16 weights kept)
  transformers  the same weights through Qwen3_5ForCausalLM (its torch path for the Gated
                DeltaNet layers, since flash-linear-attention runs only on GPUs): in bf16, as the
                checkpoint is stored, and in fp32 (on a CPU without bf16 arithmetic torch's fp32
                products may be the faster of the two, at twice the bytes)

Both sides get the same treatment: one warm-up prefill of 16 tokens and one decode step first;
then at each context one timed prefill of that many tokens (the same token ids), then 2 warm-up
decode steps and the median of --reps timed ones. Reported: tokens/s of each and their ratio.

  python bench/qwen_transformers.py                      # contexts 512 and 4096, 2 threads
  python bench/qwen_transformers.py --layers 4 --contexts 128 --reps 3   # a quick check
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QWEN35_08B = dict(vocab_size=248320, hidden_size=1024, intermediate_size=3584, num_hidden_layers=24,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=256, linear_num_key_heads=16,
                  linear_num_value_heads=16, linear_key_head_dim=128, linear_value_head_dim=128,
                  linear_conv_kernel_dim=4, tie_word_embeddings=True, partial_rotary_factor=0.25,
                  rope_theta=1e7, rms_norm_eps=1e-6, max_position_embeddings=32768)


def tokens(n, vocab):
    """The token ids `deltanet bench qwen` feeds: (i * 7919 + 13) mod vocab."""
    return torch.tensor([[(i * 7919 + 13) % vocab for i in range(n)]], dtype=torch.long)


def build(dirname, cfg):
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    torch.manual_seed(0)
    config = Qwen3_5TextConfig(**cfg)
    with torch.device("cpu"):
        model = Qwen3_5ForCausalLM(config).to(torch.bfloat16).eval()
    model.save_pretrained(dirname, safe_serialization=True)
    return model


def run_deltanet(exe, dirname, contexts, reps, threads):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [exe, "bench", "qwen", "--model", dirname, "--contexts", ",".join(map(str, contexts)),
           "--reps", str(reps), "--threads", str(threads), "--json", out]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with open(out) as f:
        rec = json.load(f)
    os.unlink(out)
    return rec


def run_transformers(model, contexts, reps, vocab, label):
    def step(ids, cache):
        with torch.no_grad():
            out = model(ids, cache=cache, use_cache=True, logits_to_keep=1)
        return out.cache, out.logits[:, -1:].argmax(-1)

    cache, tok = step(tokens(16, vocab), None)  # warm-up: a short prefill and one decode step
    step(tok, cache)
    res = []
    for T in contexts:
        t0 = time.perf_counter()
        cache, tok = step(tokens(T, vocab), None)
        pre = time.perf_counter() - t0
        times = []
        for i in range(2 + reps):
            t = time.perf_counter()
            cache, tok = step(tok, cache)
            if i >= 2:
                times.append(time.perf_counter() - t)
        res.append(dict(context=T, prefill_s=pre, decode_s=statistics.median(times)))
        print(f"  transformers {label} T={T}: prefill {T / pre:.1f} tok/s, decode "
              f"{1 / res[-1]['decode_s']:.2f} tok/s", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--reps", type=int, default=5, help="timed decode steps (the median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=24, help="fewer layers for a quick check")
    ap.add_argument("--hf-dtypes", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"],
                    help="the types transformers runs the model in")
    ap.add_argument("--exe", default=os.path.join(ROOT, "build", "deltanet"))
    ap.add_argument("--dir", help="keep the checkpoint here (default: a temporary directory)")
    ap.add_argument("--json", help="write the records here")
    args = ap.parse_args()
    if not os.path.exists(args.exe):
        sys.exit(f"{args.exe} not found: run make first")
    torch.set_num_threads(args.threads)
    cfg = dict(QWEN35_08B, num_hidden_layers=args.layers)
    tmp = None if args.dir else tempfile.TemporaryDirectory()
    dirname = args.dir or tmp.name
    t0 = time.perf_counter()
    model = build(dirname, cfg)
    import transformers
    nparams = sum(p.numel() for p in model.parameters())
    print(f"random Qwen3.5-0.8B-shaped model, {args.layers} layers, {nparams / 1e9:.3f} B parameters "
          f"in bf16, saved to {dirname} in {time.perf_counter() - t0:.0f} s; transformers "
          f"{transformers.__version__}, torch {torch.__version__}, {args.threads} threads",
          flush=True)
    dn = run_deltanet(args.exe, dirname, args.contexts, args.reps, args.threads)
    hf = {}
    for name in [n for n in ("bf16", "fp32") if n in args.hf_dtypes]:  # bf16 first: .float()
        if name == "fp32":                                               # converts in place
            model.float()
        hf[name] = run_transformers(model, args.contexts, args.reps, cfg["vocab_size"], name)
    names = list(hf)
    head = "".join(f" {'transformers ' + n:>18}" for n in names)
    print(f"\n{'context':>8} {'phase':<8} {'deltanet':>9}{head}   deltanet / each (tok/s ratio)")
    rows = []
    for i, d in enumerate(dn["points"]):
        for phase in ("prefill", "decode"):
            n = d["context"] if phase == "prefill" else 1
            b = n / d[f"{phase}_s"]
            a = {k: n / hf[k][i][f"{phase}_s"] for k in names}
            cells = "".join(f" {a[k]:18.2f}" for k in names)
            ratios = ", ".join(f"{b / a[k]:.2f}x ({k})" for k in names)
            print(f"{d['context']:>8} {phase:<8} {b:9.2f}{cells}   {ratios}")
            rows.append(dict(context=d["context"], phase=phase, deltanet_tok_s=b,
                             **{f"transformers_{k}_tok_s": a[k] for k in names},
                             **{f"ratio_{k}": b / a[k] for k in names}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(deltanet=dn, transformers=hf, rows=rows, threads=args.threads,
                           layers=args.layers, transformers_version=transformers.__version__,
                           torch_version=torch.__version__), f, indent=1)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
