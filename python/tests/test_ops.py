"""Softmax attention, Mamba-1, Mamba-2, RWKV-4 and the short convolution through the numpy
functions and the torch custom operators: fast paths against the C reference (impl='ref'), the
C reference against the float64 torch implementations of conftest.py, and the C backward (through
autograd) against autograd through those implementations."""

import numpy as np
import pytest
import torch

import deltanet
import deltanet.ops as ops
from conftest import attn_torch, close, conv_torch, mamba2_torch, mamba_torch, rwkv4_torch

FWD_TOL, BWD_TOL = 2e-5, 1e-4


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def grads_match(run_ours, run_ref, inputs, what):
    """Backward through deltanet's op and through the float64 reference with the same random
    weighting of the outputs; every input's gradient compared."""
    a = {n: torch.tensor(v, requires_grad=True) for n, v in inputs.items() if v is not None}
    b = {n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in inputs.items()
         if v is not None}
    outs = run_ours(**a)
    refs = run_ref(**b)
    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(r.shape, generator=gen, dtype=torch.float64) for r in refs]
    sum((o.double() * w).sum() for o, w in zip(outs, ws)).backward()
    sum((r * w).sum() for r, w in zip(refs, ws)).backward()
    for n in a:  # an input the outputs do not depend on has no reference gradient: zeros
        want = b[n].grad if b[n].grad is not None else torch.zeros_like(b[n])
        close(a[n].grad, want, BWD_TOL, f"{what} d{n}")


# --- softmax attention ---------------------------------------------------------------------------


@pytest.mark.parametrize("B,TQ,TK,H,HKV,D,window", [
    (1, 1, 1, 1, 1, 16, 0), (2, 37, 37, 4, 2, 32, 0), (1, 5, 40, 2, 1, 64, 0),
    (2, 50, 50, 2, 2, 16, 8), (1, 70, 70, 3, 1, 100, 0)])
def test_attn(rng, B, TQ, TK, H, HKV, D, window):
    q, k, v = f32(rng, B, TQ, H, D), f32(rng, B, TK, HKV, D), f32(rng, B, TK, HKV, D)
    o_ref, lse_ref = deltanet.attn_forward(q, k, v, window=window, impl="ref")
    close(o_ref, attn_torch(torch.tensor(q), torch.tensor(k), torch.tensor(v), window=window),
          1e-6, "attn C ref vs torch")
    o, lse = deltanet.attn_forward(q, k, v, window=window)
    close(o, o_ref, FWD_TOL, "attn o")
    close(lse, lse_ref, FWD_TOL, "attn lse")
    do = f32(rng, B, TQ, H, D)
    g_ref = deltanet.attn_backward(q, k, v, o_ref, lse_ref, do, window=window, impl="ref")
    g = deltanet.attn_backward(q, k, v, o, lse, do, window=window)
    for n, x, r in zip(("dq", "dk", "dv"), g, g_ref):
        close(x, r, BWD_TOL, f"attn {n}")
    grads_match(lambda q, k, v: (ops.attn(q, k, v, window=window),),
                lambda q, k, v: (attn_torch(q, k, v, window=window),), dict(q=q, k=k, v=v), "attn")


# --- Mamba-1 -------------------------------------------------------------------------------------


def mamba_inputs(rng, B, T, D, N, G, grouped=True, full=True):
    x = dict(x=f32(rng, B, T, D), dt=f32(rng, B, T, D, scale=0.5),
             A=-np.exp(f32(rng, D, N, scale=0.5)).astype(np.float32),
             Bm=f32(rng, B, T, G, N) if grouped else f32(rng, B, T, N),
             Cm=f32(rng, B, T, G, N) if grouped else f32(rng, B, T, N))
    if full:
        x.update(Dskip=f32(rng, D), z=f32(rng, B, T, D), dt_bias=f32(rng, D, scale=0.5),
                 initial_state=f32(rng, B, D, N, scale=0.1))
    return x


@pytest.mark.parametrize("B,T,D,N,G,grouped,full", [
    (1, 1, 4, 4, 1, False, False), (2, 17, 8, 16, 2, True, True), (1, 40, 6, 8, 1, False, True)])
def test_mamba(rng, B, T, D, N, G, grouped, full):
    x = mamba_inputs(rng, B, T, D, N, G, grouped, full)
    y_ref, h_ref = deltanet.mamba_forward(**x, dt_softplus=True, output_final_state=True, impl="ref")
    want = mamba_torch(**{n: torch.tensor(v) for n, v in x.items()}, dt_softplus=True)
    close(y_ref, want[0], 1e-6, "mamba C ref y vs torch")
    close(h_ref, want[1], 1e-6, "mamba C ref state vs torch")
    y, h = deltanet.mamba_forward(**x, dt_softplus=True, output_final_state=True)
    close(y, y_ref, FWD_TOL, "mamba y")
    close(h, h_ref, FWD_TOL, "mamba state")
    dy = f32(rng, B, T, D)
    g_ref = deltanet.mamba_backward(**x, dy=dy, dt_softplus=True, impl="ref")
    g = deltanet.mamba_backward(**x, dy=dy, dt_softplus=True)
    for n, a, r in zip("dx ddt dA dBm dCm dDskip dz ddt_bias dinitial_state".split(), g, g_ref):
        assert (a is None) == (r is None) == (x.get(n[1:]) is None and n != "dinitial_state" or
                                              n == "dinitial_state" and "initial_state" not in x), n
        if r is not None:
            assert a.shape == r.shape
            close(a, r, BWD_TOL, f"mamba {n}")
    grads_match(lambda **a: ops.mamba(**a, dt_softplus=True, output_final_state=True),
                lambda **a: mamba_torch(**a, dt_softplus=True), x, "mamba")


# --- Mamba-2 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("B,T,H,P,N,G,full", [(1, 1, 2, 4, 4, 1, False), (2, 45, 4, 8, 16, 2, True),
                                              (1, 70, 2, 16, 8, 1, True)])
def test_mamba2(rng, B, T, H, P, N, G, full):
    x = dict(x=f32(rng, B, T, H, P), dt=f32(rng, B, T, H, scale=0.5),
             A=-np.exp(f32(rng, H, scale=0.5)).astype(np.float32),
             Bm=f32(rng, B, T, G, N), Cm=f32(rng, B, T, G, N))
    if full:
        x.update(Dskip=f32(rng, H), dt_bias=f32(rng, H, scale=0.5),
                 initial_state=f32(rng, B, H, N, P, scale=0.1))
    y_ref, h_ref = deltanet.mamba2_forward(**x, dt_softplus=True, output_final_state=True, impl="ref")
    want = mamba2_torch(**{n: torch.tensor(v) for n, v in x.items()}, dt_softplus=True)
    close(y_ref, want[0], 1e-6, "mamba2 C ref y vs torch")
    close(h_ref, want[1], 1e-6, "mamba2 C ref state vs torch")
    for impl, cs in [("auto", 64), ("chunk", 16), ("recurrent", 64)]:
        y, h = deltanet.mamba2_forward(**x, dt_softplus=True, output_final_state=True, impl=impl,
                                       chunk_size=cs)
        close(y, y_ref, FWD_TOL, f"mamba2 {impl} y")
        close(h, h_ref, FWD_TOL, f"mamba2 {impl} state")
    grads_match(lambda **a: ops.mamba2(**a, dt_softplus=True, output_final_state=True),
                lambda **a: mamba2_torch(**a, dt_softplus=True), x, "mamba2")


# --- RWKV-4 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("B,T,C", [(1, 1, 4), (2, 33, 16), (1, 90, 40)])
def test_rwkv4(rng, B, T, C):
    x = dict(k=f32(rng, B, T, C), v=f32(rng, B, T, C), time_decay=f32(rng, C, scale=0.5),
             time_first=f32(rng, C, scale=0.5))
    y_ref, h_ref = deltanet.rwkv4_forward(**x, output_final_state=True, impl="ref")
    close(y_ref, rwkv4_torch(**{n: torch.tensor(v) for n, v in x.items()}), 1e-6, "rwkv4 ref vs torch")
    y, h = deltanet.rwkv4_forward(**x, output_final_state=True)
    close(y, y_ref, FWD_TOL, "rwkv4 y")
    close(h, h_ref, FWD_TOL, "rwkv4 state")
    # a split sequence carries the (num, den, max) state exactly
    y1, h1 = deltanet.rwkv4_forward(**{n: v[:, : T // 2] if v.ndim == 3 else v for n, v in x.items()},
                                    output_final_state=True)
    y2, _ = deltanet.rwkv4_forward(**{n: v[:, T // 2:] if v.ndim == 3 else v for n, v in x.items()},
                                   initial_state=h1)
    close(np.concatenate([y1, y2], 1), y, FWD_TOL, "rwkv4 split")
    grads_match(lambda **a: (ops.rwkv4(**a)[0],), lambda **a: (rwkv4_torch(**a),), x, "rwkv4")


def test_rwkv4_backward_fast_vs_ref(rng):
    x = dict(k=f32(rng, 2, 30, 8), v=f32(rng, 2, 30, 8), time_decay=f32(rng, 8),
             time_first=f32(rng, 8))
    _, h = deltanet.rwkv4_forward(**x, output_final_state=True)
    dy, dh = f32(rng, 2, 30, 8), f32(rng, 2, 3, 8)
    g = deltanet.rwkv4_backward(**x, dy=dy, initial_state=h, dfinal_state=dh)
    r = deltanet.rwkv4_backward(**x, dy=dy, initial_state=h, dfinal_state=dh, impl="ref")
    for n, a, b in zip(("dk", "dv", "dtime_decay", "dtime_first", "dinitial_state"), g, r):
        close(a, b, BWD_TOL, f"rwkv4 {n}")


# --- short convolution ---------------------------------------------------------------------------


@pytest.mark.parametrize("B,T,D,W,bias,silu,h0", [(1, 1, 4, 2, False, False, False),
                                                  (2, 19, 16, 4, True, True, True),
                                                  (1, 50, 8, 3, True, False, True)])
def test_conv(rng, B, T, D, W, bias, silu, h0):
    x = dict(x=f32(rng, B, T, D), weight=f32(rng, D, W), bias=f32(rng, D) if bias else None,
             initial_state=f32(rng, B, D, W - 1) if h0 else None)
    y_ref, h_ref = deltanet.conv_forward(**x, silu=silu, output_final_state=True, impl="ref")
    want = conv_torch(**{n: torch.tensor(v) for n, v in x.items() if v is not None}, silu=silu)
    close(y_ref, want[0], 1e-6, "conv ref vs torch")
    close(h_ref, want[1], 1e-6, "conv state ref vs torch")
    y, h = deltanet.conv_forward(**x, silu=silu, output_final_state=True)
    close(y, y_ref, FWD_TOL, "conv y")
    close(h, h_ref, 0, "conv state")
    dy = f32(rng, B, T, D)
    for a, r in zip(deltanet.conv_backward(**x, dy=dy, silu=silu),
                    deltanet.conv_backward(**x, dy=dy, silu=silu, impl="ref")):
        assert (a is None) == (r is None)
        if r is not None:
            close(a, r, BWD_TOL, "conv grads")
    grads_match(lambda **a: ops.short_conv(**a, silu=silu, output_final_state=True),
                lambda **a: conv_torch(**a, silu=silu), x, "conv")
