#!/usr/bin/env bash
# bench/ggml_side_by_side.sh - deltanet against llama.cpp's ggml CPU ops, side by side, at the
# shapes docs/PERF.md quotes, same machine, same threads, same timing policy (bench/bench.h).
#
#   bench/ggml_side_by_side.sh GGML_DIR [--threads N] [--reps R] [--rounds K] [--isa native|avx2]
#                              [--out DIR]   (keep each run's JSON records in DIR)
#
# GGML_DIR is a ggml checkout you supply (e.g. git clone https://github.com/ggml-org/ggml); nothing
# of ggml enters this repository. The script
#   1. builds ggml there (cmake, Release, CPU backend only, static, into GGML_DIR/build-deltanet-<isa>;
#      --isa avx2 builds ggml with AVX2/FMA/F16C only and runs deltanet with --isa avx2),
#   2. builds deltanet (make) and bench/ggml_ops.c, our driver calling ggml's public API,
#   3. runs, K rounds interleaved (deltanet then ggml), at the same threads:
#        Gated DeltaNet, B=1, H=32, K=V=128: one decode token, prefill T=512 and 4096
#          (deltanet `bench`, impl auto; ggml GATED_DELTA_NET)
#        causal softmax attention prefill, 16 heads of 72, T=5776
#          (deltanet `bench attn`; ggml FLASH_ATTN_EXT, F32 precision, f16 causal mask, K/V f32 and f16)
#   4. prints each side's median over rounds and the ratio ggml time / deltanet time.
# Every time is a median under bench.h's policy: the same warm-up and number of timed calls on
# both sides, a kept workspace (ggml: the graph plan's work buffer and a persistent thread pool).
# Mamba-2 against SSM_SCAN (docs/PERF.md) is not scripted here.
set -euo pipefail

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage 0 ;; esac
GGML_DIR=$(cd "$1" && pwd) || { echo "no directory $1" >&2; exit 2; }
shift
THREADS=$(nproc)
REPS=7
ROUNDS=1
ISA=native
KEEP=
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) THREADS=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --isa) ISA=$2; shift 2 ;;
        --out) KEEP=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option $1" >&2; usage ;;
    esac
done
[ -f "$GGML_DIR/include/ggml.h" ] || { echo "$GGML_DIR does not look like a ggml checkout" >&2; exit 2; }
grep -q ggml_gated_delta_net "$GGML_DIR/include/ggml.h" || {
    echo "this ggml has no ggml_gated_delta_net: only attention will be compared" >&2; NO_GDN=1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
case "$ISA" in
    native) GGML_ISA=(-DGGML_NATIVE=ON); DN_ISA=() ;;
    avx2) GGML_ISA=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
                    -DGGML_AVX512=OFF); DN_ISA=(--isa avx2) ;;
    *) echo "--isa native or avx2" >&2; exit 2 ;;
esac
BUILD="$GGML_DIR/build-deltanet-$ISA"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

echo "== building ggml in $BUILD ($(git -C "$GGML_DIR" rev-parse --short HEAD 2>/dev/null || echo 'no git'), $ISA)"
cmake -S "$GGML_DIR" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENCL=OFF \
    -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF "${GGML_ISA[@]}" > "$OUT/cmake.log" ||
    { cat "$OUT/cmake.log"; exit 1; }
cmake --build "$BUILD" --target ggml -j "$(nproc)" > "$OUT/build.log" || { tail -40 "$OUT/build.log"; exit 1; }
LIBS=$(find "$BUILD" -name 'libggml.a' -o -name 'libggml-cpu.a' -o -name 'libggml-base.a' | sort -r)

echo "== building deltanet and the driver"
make -C "$ROOT" -j "$(nproc)" build/deltanet > "$OUT/make.log" || { tail -40 "$OUT/make.log"; exit 1; }
DN="$ROOT/build/deltanet"
DRIVER="$BUILD/ggml_ops"
# libggml.a first: it needs the CPU backend and the base library after it
cc -std=c11 -O2 -D_POSIX_C_SOURCE=200809L -I"$ROOT/include" -I"$ROOT/bench" -I"$GGML_DIR/include" \
    "$ROOT/bench/ggml_ops.c" -o "$DRIVER" \
    $(echo "$LIBS" | grep '/libggml.a$') $(echo "$LIBS" | grep 'libggml-cpu.a$') \
    $(echo "$LIBS" | grep 'libggml-base.a$') -lstdc++ -fopenmp -lpthread -lm

echo "== running: $THREADS threads, --reps $REPS, $ROUNDS round(s)"
for r in $(seq "$ROUNDS"); do
    if [ -z "${NO_GDN:-}" ]; then
        "$DN" bench "${DN_ISA[@]}" --json --threads "$THREADS" --reps "$REPS" --T 512,4096 > "$OUT/dn_gdn_$r.json"
        "$DRIVER" gdn --threads "$THREADS" --reps "$REPS" --T 512,4096 > "$OUT/ggml_gdn_$r.jsonl"
    fi
    "$DN" bench attn "${DN_ISA[@]}" --json --threads "$THREADS" --reps "$REPS" --T 5776 --heads 16 --d 72 \
        --ctx none > "$OUT/dn_attn_$r.json"
    "$DRIVER" attn --threads "$THREADS" --reps "$REPS" --T 5776 --heads 16 --d 72 --kv f32 > "$OUT/ggml_attn_$r.jsonl"
    "$DRIVER" attn --threads "$THREADS" --reps "$REPS" --T 5776 --heads 16 --d 72 --kv f16 >> "$OUT/ggml_attn_$r.jsonl"
    echo "   round $r done"
done

python3 - "$OUT" "$ROUNDS" "$ISA" "$THREADS" <<'PY'
import json, statistics, sys, os
out, rounds, isa, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def dn(kind, r):
    p = os.path.join(out, f"dn_{kind}_{r}.json")
    return json.load(open(p))["records"] if os.path.exists(p) else []
def gg(kind, r):
    p = os.path.join(out, f"ggml_{kind}_{r}.jsonl")
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
rows = []  # (case, deltanet seconds per round, ggml seconds per round)
def med(xs): return statistics.median(xs) if xs else float("nan")
cases = [("gdn decode, 1 token, 32x128x128 state", "gdn", lambda d: d["phase"] == "decode",
          lambda g: g["phase"] == "decode")]
for T in (512, 4096):
    cases.append((f"gdn prefill T={T} (deltanet auto)", "gdn",
                  lambda d, T=T: d["phase"] == "prefill" and d["impl"] == "auto" and d["T"] == T,
                  lambda g, T=T: g["phase"] == "prefill" and g["T"] == T))
for kv in ("f32", "f16"):
    cases.append((f"attention prefill T=5776, 16x72 (ggml K/V {kv})", "attn",
                  lambda d: d["phase"] == "prefill", lambda g, kv=kv: g["kv"] == kv))
print(f"\n{'case':52s} {'deltanet':>12s} {'ggml':>12s} {'ggml/deltanet':>14s}")
for name, kind, fd, fg in cases:
    a = [x["seconds"] for r in range(1, rounds + 1) for x in dn(kind, r) if fd(x)]
    b = [x["seconds"] for r in range(1, rounds + 1) for x in gg(kind, r) if fg(x)]
    if not a or not b: continue
    ma, mb = med(a), med(b)
    fmt = lambda s: f"{s*1e6:9.1f} us" if s < 1e-3 else f"{s*1e3:9.2f} ms"
    print(f"{name:52s} {fmt(ma):>12s} {fmt(mb):>12s} {mb/ma:13.2f}x")
print(f"\n({isa} ISA, {threads} threads; medians over {rounds} round(s) of per-call medians)")
PY
if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp "$OUT"/*.json* "$KEEP"/ && echo "records in $KEEP"; fi
