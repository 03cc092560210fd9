"""Shared helpers of the Python tests: random inputs, the error measure, and plain float64 torch
implementations of every op written from docs/OPS.md (independent of the C library), which the
tests compare the bindings against, forward and (through autograd) backward."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

torch.set_num_threads(1)


def rel_rms(a, b):
    """Relative RMS error of a against the reference b (the C tests' measure), with a floor of
    1e-2 RMS under the reference (inputs are O(1); a gradient exactly 0 in double is ~1e-7 in fp32)."""
    a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).double()
    b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    if b.numel() == 0:
        return 0.0
    return float((a - b).norm() / max(float(b.norm()), 1e-2 * b.numel() ** 0.5))


def close(a, b, tol, what=""):
    err = rel_rms(a, b)
    if not err <= tol:
        d = (torch.as_tensor(np.asarray(a)).double() - torch.as_tensor(np.asarray(b)).double()).abs()
        i = np.unravel_index(int(d.argmax()), d.shape)
        pytest.fail(f"{what}: relative RMS error {err:.3g} > {tol:g}; worst element at {i}: "
                    f"{float(torch.as_tensor(np.asarray(a))[i])} vs {float(torch.as_tensor(np.asarray(b))[i])}")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def la_inputs(rng, op, B, T, H, HV, K, V, h0=False, N=None):
    """Random inputs in the contract's ranges: g in [-1, 0] (log decay), beta in [0, 1]."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    x = dict(q=f(B, T, H, K), k=f(B, T, H, K) / np.sqrt(K), v=f(B, T, HV, V))
    x["g"] = -rng.random((B, T, HV)).astype(np.float32) if op in ("gla", "gdn") else None
    x["beta"] = rng.random((B, T, HV)).astype(np.float32) if op in ("deltanet", "gdn") else None
    x["initial_state"] = f(N or B, HV, K, V) * 0.1 if h0 else None
    return x


def l2n(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def la_torch(op, q, k, v, g=None, beta=None, scale=None, initial_state=None, cu_seqlens=None,
             qk_l2norm=False):
    """The token recurrence of docs/OPS.md, one (sequence, value head) state [K,V] at a time
    (vectorised over batch and heads). Returns (o, final_state) in float64."""
    q, k, v = q.double(), k.double(), v.double()
    B, T, H, K = q.shape
    HV, V = v.shape[2:]
    if qk_l2norm:
        q, k = l2n(q), l2n(k)
    scale = K ** -0.5 if scale is None else scale
    q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
    g = g.double() if g is not None else torch.zeros(B, T, HV, dtype=torch.float64)
    beta = beta.double() if beta is not None else None
    bounds = [(b, 0, T) for b in range(B)] if cu_seqlens is None else \
        [(0, int(cu_seqlens[i]), int(cu_seqlens[i + 1])) for i in range(len(cu_seqlens) - 1)]
    outs = torch.zeros(B, T, HV, V, dtype=torch.float64)
    o_rows, finals = {}, []
    for n, (b, t0, t1) in enumerate(bounds):
        S = initial_state[n].double() if initial_state is not None else torch.zeros(HV, K, V, dtype=torch.float64)
        rows = []
        for t in range(t0, t1):
            S = S * g[b, t].exp()[:, None, None]
            kt, vt = k[b, t], v[b, t]
            if beta is not None:  # delta rule
                u = beta[b, t][:, None] * (vt - torch.einsum("hkv,hk->hv", S, kt))
            else:
                u = vt
            S = S + kt[:, :, None] * u[:, None, :]
            rows.append(torch.einsum("hkv,hk->hv", S, scale * q[b, t]))
        o_rows[(b, t0, t1)] = rows
        finals.append(S)
    # assemble without in-place writes so autograd sees a plain graph
    per_b = {}
    for (b, t0, t1), rows in o_rows.items():
        per_b.setdefault(b, []).extend(rows)
    o = torch.stack([torch.stack(per_b[b]) if per_b.get(b) else outs[b] for b in range(B)])
    return o, torch.stack(finals)


def attn_torch(q, k, v, scale=None, window=0):
    q, k, v = q.double(), k.double(), v.double()
    B, TQ, H, D = q.shape
    TK, HKV = k.shape[1:3]
    scale = D ** -0.5 if scale is None else scale
    k, v = k.repeat_interleave(H // HKV, dim=2), v.repeat_interleave(H // HKV, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    pos = torch.arange(TQ)[:, None] + TK - TQ
    j = torch.arange(TK)[None, :]
    mask = j <= pos
    if window > 0:
        mask = mask & (j > pos - window)
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.einsum("bhij,bjhd->bihd", p, v)


def mamba_torch(x, dt, A, Bm, Cm, Dskip=None, z=None, dt_bias=None, dt_softplus=False,
                initial_state=None):
    x, dt, A, Bm, Cm = (t.double() for t in (x, dt, A, Bm, Cm))
    B, T, D = x.shape
    N = A.shape[1]
    if Bm.dim() == 3:
        Bm, Cm = Bm[:, :, None], Cm[:, :, None]
    G = Bm.shape[2]
    Bm, Cm = Bm.repeat_interleave(D // G, dim=2), Cm.repeat_interleave(D // G, dim=2)  # [B,T,D,N]
    if dt_bias is not None:
        dt = dt + dt_bias.double()
    if dt_softplus:
        dt = F.softplus(dt)
    h = initial_state.double() if initial_state is not None else torch.zeros(B, D, N, dtype=torch.float64)
    ys = []
    for t in range(T):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[:, :, None] * Bm[:, t]
        y = (h * Cm[:, t]).sum(-1)
        if Dskip is not None:
            y = y + Dskip.double() * x[:, t]
        ys.append(y)
    y = torch.stack(ys, 1) if ys else torch.zeros(B, 0, D, dtype=torch.float64)
    if z is not None:
        y = y * F.silu(z.double())
    return y, h


def mamba2_torch(x, dt, A, Bm, Cm, Dskip=None, dt_bias=None, dt_softplus=False, initial_state=None):
    x, dt, A, Bm, Cm = (t.double() for t in (x, dt, A, Bm, Cm))
    B, T, H, P = x.shape
    if Bm.dim() == 3:
        Bm, Cm = Bm[:, :, None], Cm[:, :, None]
    G, N = Bm.shape[2:]
    Bm, Cm = Bm.repeat_interleave(H // G, dim=2), Cm.repeat_interleave(H // G, dim=2)  # [B,T,H,N]
    if dt_bias is not None:
        dt = dt + dt_bias.double()
    if dt_softplus:
        dt = F.softplus(dt)
    S = initial_state.double() if initial_state is not None else torch.zeros(B, H, N, P, dtype=torch.float64)
    ys = []
    for t in range(T):
        S = torch.exp(dt[:, t] * A)[:, :, None, None] * S + \
            Bm[:, t, :, :, None] * (dt[:, t, :, None] * x[:, t])[:, :, None, :]
        y = torch.einsum("bhnp,bhn->bhp", S, Cm[:, t])
        if Dskip is not None:
            y = y + Dskip.double()[:, None] * x[:, t]
        ys.append(y)
    return torch.stack(ys, 1), S


def rwkv4_torch(k, v, time_decay, time_first):
    """The WKV sums written directly (no running maximum): fine for moderate k."""
    k, v = k.double(), v.double()
    w, u = -torch.exp(time_decay.double()), time_first.double()
    B, T, C = k.shape
    num = torch.zeros(B, C, dtype=torch.float64)
    den = torch.zeros(B, C, dtype=torch.float64)
    ys = []
    for t in range(T):
        e = torch.exp(u + k[:, t])
        ys.append((num + e * v[:, t]) / (den + e))
        num = torch.exp(w) * num + torch.exp(k[:, t]) * v[:, t]
        den = torch.exp(w) * den + torch.exp(k[:, t])
    return torch.stack(ys, 1)


def conv_torch(x, weight, bias=None, silu=False, initial_state=None):
    x, weight = x.double(), weight.double()
    B, T, D = x.shape
    W = weight.shape[1]
    prev = initial_state.double().transpose(1, 2) if initial_state is not None else \
        torch.zeros(B, W - 1, D, dtype=torch.float64)
    xx = torch.cat([prev, x], 1)  # [B, W-1+T, D]
    y = sum(weight[:, j] * xx[:, j:j + T] for j in range(W))
    if bias is not None:
        y = y + bias.double()
    if silu:
        y = F.silu(y)
    return y, xx[:, T:].transpose(1, 2)
