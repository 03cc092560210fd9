"""Each op's argument handling, written once for numpy and torch (the `xp` argument, _arrays.py).

xp body checks every tensor's shape against the dimensions it reads off the main inputs (the C
library gets pointers and strides, so a tensor of the wrong size would be read past its end: that
check belongs here), allocates the outputs, fills the params struct and calls the library, which
checks the rest (dimensions, options, values) and says what is wrong. No math happens here.
"""

import ctypes
import math

from . import _lib
from ._arrays import _shape_error

byref = ctypes.byref
LA_OPS = ("linear_attn", "gla", "deltanet", "gdn")
IMPL_AUTO, IMPL_REF, IMPL_RECURRENT, IMPL_CHUNK = 0, 1, 2, 3
_GATED = {1, 3}
_DELTA = {2, 3}


def la_op(op):
    """'gdn' / 'deltanet' / 'gla' / 'linear_attn' (or the dn_op number) to the dn_op number."""
    if type(op) is int:
        return op  # the library checks the number
    if isinstance(op, str):
        if op not in LA_OPS:
            raise ValueError(f"op must be one of {', '.join(LA_OPS)}, got {op!r}")
        return _lib.OPS[op]
    if isinstance(op, int) and not isinstance(op, bool):
        return op  # the library checks the number
    raise TypeError(f"op must be a string such as 'gdn', got {type(op).__name__}")


def impl_code(impl):
    if type(impl) is int:
        return impl
    if isinstance(impl, str):
        if impl not in _lib.IMPLS:
            raise ValueError(f"impl must be one of {', '.join(_lib.IMPLS)}, got {impl!r}")
        return _lib.IMPLS[impl]
    if isinstance(impl, int) and not isinstance(impl, bool):
        return impl
    raise TypeError(f"impl must be a string such as 'auto', got {type(impl).__name__}")


def _int(x, name):
    if type(x) is int:
        return x
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    return x


def _scale(scale):
    if scale is None or type(scale) is float:
        return scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    return float(scale)


def _ndim(xp, x, name, n, layout):
    if len(xp.shape(x)) != n:
        raise _shape_error(f"{name} must be {n}-D {layout}, got shape {xp.shape(x)}")


def _expect(xp, x, name, shape, layout):
    if xp.shape(x) != tuple(shape):
        raise _shape_error(f"{name} has shape {xp.shape(x)}, expected {layout} = {tuple(shape)}")


def _opt(xp, x, name, shape, layout, contiguous=False):
    if x is None:
        return None
    x = xp.prep(x, name, contiguous)
    _expect(xp, x, name, shape, layout)
    return x


def _set(p, field, xp, x):
    """Pointer and the strides of the first three dimensions (the ABI's dn_strides)."""
    if x is None:
        setattr(p, field, None)
        return
    setattr(p, field, xp.ptr(x))
    s = xp.strides(x)
    st = getattr(p, field + "_s")
    st.b = s[0]
    st.t = s[1] if len(s) > 1 else 0
    st.h = s[2] if len(s) > 2 else 0


def _ptr(xp, x):
    return None if x is None else xp.ptr(x)


def _seqs(xp, cu_seqlens, B):
    """(number of states, int64 offsets or None)."""
    if cu_seqlens is None:
        return B, None
    cu = xp.prep_index(cu_seqlens, "cu_seqlens")
    if xp.shape(cu)[0] < 1:
        raise _shape_error("cu_seqlens must hold at least one offset (N+1 entries for N sequences)")
    return xp.shape(cu)[0] - 1, cu


# --- linear-attention family -------------------------------------------------------------------


def la_inputs(xp, op, q, k, v, g, beta, initial_state, cu_seqlens):
    """The checked inputs, and the (pointer, strides) view of each activation for the packed
    params. Written flat: this runs on every decode step, where each helper call costs."""
    opi = la_op(op)
    pin, shape = xp.pin, xp.shape
    (q, qv), (k, kv), (v, vv) = pin(q, "q"), pin(k, "k"), pin(v, "v")
    qs, vs = shape(q), shape(v)
    if len(qs) != 4 or len(vs) != 4 or shape(k) != qs or vs[0] != qs[0] or vs[1] != qs[1]:
        _ndim(xp, q, "q", 4, "[B,T,H,K]")
        _ndim(xp, v, "v", 4, "[B,T,HV,V]")
        _expect(xp, k, "k", qs, "[B,T,H,K]")
        _expect(xp, v, "v", qs[:2] + vs[2:], "[B,T,HV,V]")
    B, T, H, K = qs
    HV, V = vs[2], vs[3]
    gv = bv = _NO_VIEW
    if g is not None:
        g, gv = pin(g, "g")
        if shape(g) != (B, T, HV):
            _expect(xp, g, "g", (B, T, HV), "[B,T,HV]")
    if beta is not None:
        beta, bv = pin(beta, "beta")
        if shape(beta) != (B, T, HV):
            _expect(xp, beta, "beta", (B, T, HV), "[B,T,HV]")
    NS, cu = _seqs(xp, cu_seqlens, B) if cu_seqlens is not None else (B, None)
    h0 = None
    if initial_state is not None:
        h0 = _opt(xp, initial_state, "initial_state", (NS, HV, K, V), "[N,HV,K,V]", contiguous=True)
    return opi, (B, T, H, HV, K, V, NS), q, k, v, g, beta, h0, cu, (qv, kv, vv, gv, bv)


_NO_VIEW = (0, 0, 0, 0)


def _numel(xp, x):
    n = 1
    for d in xp.shape(x):
        n *= d
    return n


def la_params(xp, opi, dims, q, k, v, g, beta, h0, cu, scale, qk_l2norm, impl, chunk_size, n_threads):
    B, T, H, HV, K, V, NS = dims
    p = _lib.dn_la_params_default(opi, B, T, H, HV, K, V)
    _set(p, "q", xp, q)
    _set(p, "k", xp, k)
    _set(p, "v", xp, v)
    _set(p, "g", xp, g)
    _set(p, "beta", xp, beta)
    p.initial_state = _ptr(xp, h0)
    if cu is not None:
        p.cu_seqlens = xp.ptr(cu)
        p.n_seqs = NS
    scale = _scale(scale)
    if scale is not None:
        p.scale = scale
    p.qk_l2norm = 1 if qk_l2norm else 0
    p.impl = impl_code(impl)
    p.chunk_size = _int(chunk_size, "chunk_size")
    p.n_threads = _int(n_threads, "n_threads")
    return p


_SCALES = {}


def default_scale(K):
    """The library's default scale for key dimension K (dn_la_params_default: 1/sqrt(K))."""
    s = _SCALES.get(K)
    if s is None:
        s = _SCALES[K] = _lib.dn_la_params_default(3, 1, 1, 1, 1, K, 1).scale
    return s


def la_forward(xp, op, q, k, v, g=None, beta=None, scale=None, initial_state=None,
               output_final_state=False, cu_seqlens=None, qk_l2norm=False, impl="auto",
               chunk_size=64, n_threads=0):
    opi, dims, q, k, v, g, beta, h0, cu, views = la_inputs(xp, op, q, k, v, g, beta, initial_state,
                                                           cu_seqlens)
    B, T, H, HV, K, V, NS = dims
    scale = _scale(scale)
    o = xp.empty((B, T, HV, V))
    ht = xp.empty((NS, HV, K, V)) if output_final_state else None
    qv, kv, vv, gv, bv = views
    buf = _lib.LA_PACK.pack(
        opi, B, T, H, HV, K, V, *qv, *kv, *vv, *gv, *bv, xp.ptr(o), T * HV * V, HV * V, V,
        xp.ptr(h0) if h0 is not None else 0, xp.ptr(ht) if ht is not None else 0,
        xp.ptr(cu) if cu is not None else 0, NS if cu is not None else 0,
        default_scale(K) if scale is None else scale, 1 if qk_l2norm else 0,
        _int(chunk_size, "chunk_size"), impl_code(impl), _int(n_threads, "n_threads"), 0, 0,
        0, -1, 0, 0, *[0] * 10)  # workspace, its bytes; dtype DN_F32, device DN_DEVICE_CPU,
        # stream, state dtype DN_F32; no raw gates (gate_a and gate_b with their strides, A_log,
        # dt_bias)
    status = _lib.dn_la_forward_packed(buf)
    if status:
        _lib.raise_status(status, "dn_la_forward")
    return o, ht


def la_forward_train(xp, op, q, k, v, g=None, beta=None, scale=None, initial_state=None,
                     output_final_state=False, cu_seqlens=None, qk_l2norm=False, impl="auto",
                     chunk_size=64, n_threads=0):
    """The forward for training: (o, final_state or None, saved), where saved holds what the
    backward would otherwise recompute (dn_la_forward_train; pass it to la_backward). The
    chunkwise form: impl 'auto' or 'chunk'."""
    opi, dims, q, k, v, g, beta, h0, cu, _ = la_inputs(xp, op, q, k, v, g, beta, initial_state,
                                                       cu_seqlens)
    p = la_params(xp, opi, dims, q, k, v, g, beta, h0, cu, scale, qk_l2norm, impl, chunk_size, n_threads)
    B, T, H, HV, K, V, NS = dims
    o = xp.empty((B, T, HV, V))
    _set(p, "o", xp, o)
    ht = xp.empty((NS, HV, K, V)) if output_final_state else None
    p.final_state = _ptr(xp, ht)
    n = ctypes.c_size_t()
    _lib.check(_lib.dn_la_saved_size(byref(p), byref(n)), "dn_la_saved_size")
    saved = xp.aligned((n.value + 3) // 4)
    _lib.check(_lib.dn_la_forward_train(byref(p), xp.ptr(saved), n.value), "dn_la_forward_train")
    return o, ht, saved


def la_backward(xp, op, q, k, v, g, beta, do, dht=None, scale=None, initial_state=None,
                cu_seqlens=None, qk_l2norm=False, impl="auto", chunk_size=64, n_threads=0,
                saved=None):
    """(dq, dk, dv, dg, dbeta, dinitial_state), None where the op has no such input. saved: the
    buffer of la_forward_train for the same call (the backward then skips its forward sweep)."""
    opi, dims, q, k, v, g, beta, h0, cu, _ = la_inputs(xp, op, q, k, v, g, beta, initial_state,
                                                       cu_seqlens)
    p = la_params(xp, opi, dims, q, k, v, g, beta, h0, cu, scale, qk_l2norm, impl, chunk_size, n_threads)
    B, T, H, HV, K, V, NS = dims
    do = xp.prep(do, "do")
    _expect(xp, do, "do", (B, T, HV, V), "[B,T,HV,V]")
    dht = _opt(xp, dht, "dfinal_state", (NS, HV, K, V), "[N,HV,K,V]", contiguous=True)
    bp = _lib.dn_la_bwd_params_default(byref(p))
    _set(bp, "dout", xp, do)
    bp.dfinal_state = _ptr(xp, dht)
    dq, dk, dv = xp.empty((B, T, H, K)), xp.empty((B, T, H, K)), xp.empty((B, T, HV, V))
    dg = xp.empty((B, T, HV)) if g is not None else None
    dbeta = xp.empty((B, T, HV)) if beta is not None else None
    dh0 = xp.empty((NS, HV, K, V)) if h0 is not None else None
    for name, x in (("dq", dq), ("dk", dk), ("dv", dv), ("dg", dg), ("dbeta", dbeta)):
        _set(bp, name, xp, x)
    bp.dinitial_state = _ptr(xp, dh0)
    if saved is not None:
        saved = xp.prep(saved, "saved", True)
        bp.saved, bp.saved_bytes = xp.ptr(saved), 4 * _numel(xp, saved)
    _lib.check(_lib.dn_la_backward(byref(bp)), "dn_la_backward")
    return dq, dk, dv, dg, dbeta, dh0


def la_step(xp, op, state, q, k, v, g=None, beta=None, scale=None, qk_l2norm=False):
    """One decode step: o [B,HV,V]; state [B,HV,K,V] (fp32, contiguous) updated in place."""
    opi = la_op(op)
    q, k, v = xp.prep(q, "q", True), xp.prep(k, "k", True), xp.prep(v, "v", True)
    _ndim(xp, q, "q", 3, "[B,H,K]")
    _ndim(xp, v, "v", 3, "[B,HV,V]")
    B, H, K = xp.shape(q)
    HV, V = xp.shape(v)[1:]
    _expect(xp, k, "k", (B, H, K), "[B,H,K]")
    _expect(xp, v, "v", (B, HV, V), "[B,HV,V]")
    g = _opt(xp, g, "g", (B, HV), "[B,HV]", True)
    beta = _opt(xp, beta, "beta", (B, HV), "[B,HV]", True)
    st = xp.prep(state, "state", True)
    if st is not state:
        raise TypeError("state must be a contiguous fp32 array: it is updated in place")
    _expect(xp, st, "state", (B, HV, K, V), "[B,HV,K,V]")
    o = xp.empty((B, HV, V))
    scale = _scale(scale)
    _lib.check(_lib.dn_la_step(opi, xp.ptr(o), xp.ptr(st), xp.ptr(q), xp.ptr(k), xp.ptr(v), _ptr(xp, g),
                               _ptr(xp, beta), B, H, HV, K, V, 0.0 if scale is None else scale,
                               1 if qk_l2norm else 0), "dn_la_step")
    return o


# --- causal softmax attention --------------------------------------------------------------------


def _attn_params(xp, q, k, v, scale, window, impl, n_threads):
    q, k, v = xp.prep(q, "q"), xp.prep(k, "k"), xp.prep(v, "v")
    _ndim(xp, q, "q", 4, "[B,TQ,H,D]")
    _ndim(xp, k, "k", 4, "[B,TK,HKV,D]")
    B, TQ, H, D = xp.shape(q)
    TK, HKV = xp.shape(k)[1:3]
    _expect(xp, k, "k", (B, TK, HKV, D), "[B,TK,HKV,D]")
    _expect(xp, v, "v", (B, TK, HKV, D), "[B,TK,HKV,D]")
    p = _lib.dn_attn_params_default(B, TK, H, HKV, D)
    p.TQ = TQ
    _set(p, "q", xp, q)
    _set(p, "k", xp, k)
    _set(p, "v", xp, v)
    scale = _scale(scale)
    if scale is not None:
        p.scale = scale
    p.window = _int(window, "window")
    p.impl = impl_code(impl)
    p.n_threads = _int(n_threads, "n_threads")
    return p, (B, TQ, TK, H, HKV, D), (q, k, v)


def attn_forward(xp, q, k, v, scale=None, window=0, impl="auto", n_threads=0):
    """(o [B,TQ,H,D], lse [B,H,TQ])."""
    p, (B, TQ, TK, H, HKV, D), keep = _attn_params(xp, q, k, v, scale, window, impl, n_threads)
    o, lse = xp.empty((B, TQ, H, D)), xp.empty((B, H, TQ))
    _set(p, "o", xp, o)
    p.lse = xp.ptr(lse)
    _lib.check(_lib.dn_attn_forward(byref(p)), "dn_attn_forward")
    return o, lse


def attn_backward(xp, q, k, v, o, lse, do, scale=None, window=0, impl="auto", n_threads=0):
    """(dq, dk, dv) from the forward's o and lse."""
    p, (B, TQ, TK, H, HKV, D), keep = _attn_params(xp, q, k, v, scale, window, impl, n_threads)
    o = xp.prep(o, "o")
    _expect(xp, o, "o", (B, TQ, H, D), "[B,TQ,H,D]")
    lse = xp.prep(lse, "lse", True)
    _expect(xp, lse, "lse", (B, H, TQ), "[B,H,TQ]")
    do = xp.prep(do, "do")
    _expect(xp, do, "do", (B, TQ, H, D), "[B,TQ,H,D]")
    _set(p, "o", xp, o)
    p.lse = xp.ptr(lse)
    bp = _lib.dn_attn_bwd_params_default(byref(p))
    _set(bp, "dout", xp, do)
    dq, dk, dv = xp.empty((B, TQ, H, D)), xp.empty((B, TK, HKV, D)), xp.empty((B, TK, HKV, D))
    _set(bp, "dq", xp, dq)
    _set(bp, "dk", xp, dk)
    _set(bp, "dv", xp, dv)
    _lib.check(_lib.dn_attn_backward(byref(bp)), "dn_attn_backward")
    return dq, dk, dv


# --- Mamba-1 selective scan ----------------------------------------------------------------------


def _groups(xp, x, name, B, T):
    """Bm / Cm as [B,T,G,N] (a [B,T,N] tensor is G = 1)."""
    x = xp.prep(x, name)
    s = xp.shape(x)
    if len(s) == 3:
        x = x[:, :, None, :]
    elif len(s) != 4:
        raise _shape_error(f"{name} must be [B,T,G,N] or [B,T,N], got shape {s}")
    s = xp.shape(x)
    if s[:2] != (B, T):
        raise _shape_error(f"{name} has shape {s}, expected [B,T,G,N] with B, T = {B}, {T}")
    return x


def _mamba_params(xp, x, dt, A, Bm, Cm, Dskip, z, dt_bias, dt_softplus, initial_state, impl,
                  n_threads):
    x, dt = xp.prep(x, "x"), xp.prep(dt, "dt")
    _ndim(xp, x, "x", 3, "[B,T,D]")
    B, T, D = xp.shape(x)
    _expect(xp, dt, "dt", (B, T, D), "[B,T,D]")
    A = xp.prep(A, "A", True)
    _ndim(xp, A, "A", 2, "[D,N]")
    N = xp.shape(A)[1]
    _expect(xp, A, "A", (D, N), "[D,N]")
    Bm, Cm = _groups(xp, Bm, "Bm", B, T), _groups(xp, Cm, "Cm", B, T)
    G = xp.shape(Bm)[2]
    _expect(xp, Bm, "Bm", (B, T, G, N), "[B,T,G,N]")
    _expect(xp, Cm, "Cm", (B, T, G, N), "[B,T,G,N]")
    Dskip = _opt(xp, Dskip, "Dskip", (D,), "[D]", True)
    dt_bias = _opt(xp, dt_bias, "dt_bias", (D,), "[D]", True)
    z = _opt(xp, z, "z", (B, T, D), "[B,T,D]")
    h0 = _opt(xp, initial_state, "initial_state", (B, D, N), "[B,D,N]", True)
    p = _lib.dn_mamba_params_default(B, T, D, N, G)
    _set(p, "x", xp, x)
    _set(p, "dt", xp, dt)
    p.A = xp.ptr(A)
    _set(p, "Bm", xp, Bm)
    _set(p, "Cm", xp, Cm)
    p.Dskip, p.dt_bias = _ptr(xp, Dskip), _ptr(xp, dt_bias)
    p.dt_softplus = 1 if dt_softplus else 0
    _set(p, "z", xp, z)
    p.initial_state = _ptr(xp, h0)
    p.impl = impl_code(impl)
    p.n_threads = _int(n_threads, "n_threads")
    keep = (x, dt, A, Bm, Cm, Dskip, dt_bias, z, h0)
    return p, (B, T, D, N, G), keep


def mamba_forward(xp, x, dt, A, Bm, Cm, Dskip=None, z=None, dt_bias=None, dt_softplus=False,
                  initial_state=None, output_final_state=False, impl="auto", n_threads=0):
    """(y [B,T,D], final_state [B,D,N] or None)."""
    p, (B, T, D, N, G), keep = _mamba_params(xp, x, dt, A, Bm, Cm, Dskip, z, dt_bias, dt_softplus,
                                             initial_state, impl, n_threads)
    y = xp.empty((B, T, D))
    _set(p, "y", xp, y)
    ht = xp.empty((B, D, N)) if output_final_state else None
    p.final_state = _ptr(xp, ht)
    _lib.check(_lib.dn_mamba_forward(byref(p)), "dn_mamba_forward")
    return y, ht


def mamba_backward(xp, x, dt, A, Bm, Cm, dy, Dskip=None, z=None, dt_bias=None, dt_softplus=False,
                   initial_state=None, dfinal_state=None, impl="auto", n_threads=0):
    """(dx, ddt, dA, dBm, dCm, dDskip, dz, ddt_bias, dinitial_state); None where not given.
    dBm, dCm have the layout Bm, Cm were given in ([B,T,N] or [B,T,G,N])."""
    p, (B, T, D, N, G), keep = _mamba_params(xp, x, dt, A, Bm, Cm, Dskip, z, dt_bias, dt_softplus,
                                             initial_state, impl, n_threads)
    dy = xp.prep(dy, "dy")
    _expect(xp, dy, "dy", (B, T, D), "[B,T,D]")
    dht = _opt(xp, dfinal_state, "dfinal_state", (B, D, N), "[B,D,N]", True)
    bp = _lib.dn_mamba_bwd_params_default(byref(p))
    _set(bp, "dy", xp, dy)
    bp.dfinal_state = _ptr(xp, dht)
    dx, ddt = xp.empty((B, T, D)), xp.empty((B, T, D))
    dBm, dCm = xp.empty((B, T, G, N)), xp.empty((B, T, G, N))
    dz = xp.empty((B, T, D)) if z is not None else None
    dA = xp.zeros((D, N))  # parameter gradients accumulate in the library
    dDskip = xp.zeros((D,)) if Dskip is not None else None
    ddt_bias = xp.zeros((D,)) if dt_bias is not None else None
    dh0 = xp.empty((B, D, N)) if initial_state is not None else None
    for name, t in (("dx", dx), ("ddt", ddt), ("dBm", dBm), ("dCm", dCm), ("dz", dz)):
        _set(bp, name, xp, t)
    bp.dA, bp.dDskip, bp.ddt_bias = xp.ptr(dA), _ptr(xp, dDskip), _ptr(xp, ddt_bias)
    bp.dinitial_state = _ptr(xp, dh0)
    _lib.check(_lib.dn_mamba_backward(byref(bp)), "dn_mamba_backward")
    if len(xp.shape(Bm)) == 3:
        dBm, dCm = dBm[:, :, 0, :], dCm[:, :, 0, :]
    return dx, ddt, dA, dBm, dCm, dDskip, dz, ddt_bias, dh0


# --- Mamba-2 (SSD) -------------------------------------------------------------------------------


def _mamba2_params(xp, x, dt, A, Bm, Cm, Dskip, dt_bias, dt_softplus, initial_state, impl,
                   chunk_size, n_threads):
    x, dt = xp.prep(x, "x"), xp.prep(dt, "dt")
    _ndim(xp, x, "x", 4, "[B,T,H,P]")
    B, T, H, P = xp.shape(x)
    _expect(xp, dt, "dt", (B, T, H), "[B,T,H]")
    A = xp.prep(A, "A", True)
    _expect(xp, A, "A", (H,), "[H]")
    Bm, Cm = _groups(xp, Bm, "Bm", B, T), _groups(xp, Cm, "Cm", B, T)
    G, N = xp.shape(Bm)[2:]
    _expect(xp, Cm, "Cm", (B, T, G, N), "[B,T,G,N]")
    Dskip = _opt(xp, Dskip, "Dskip", (H,), "[H]", True)
    dt_bias = _opt(xp, dt_bias, "dt_bias", (H,), "[H]", True)
    h0 = _opt(xp, initial_state, "initial_state", (B, H, N, P), "[B,H,N,P]", True)
    p = _lib.dn_mamba2_params_default(B, T, H, P, N, G)
    _set(p, "x", xp, x)
    _set(p, "dt", xp, dt)
    p.A = xp.ptr(A)
    _set(p, "Bm", xp, Bm)
    _set(p, "Cm", xp, Cm)
    p.Dskip, p.dt_bias = _ptr(xp, Dskip), _ptr(xp, dt_bias)
    p.dt_softplus = 1 if dt_softplus else 0
    p.initial_state = _ptr(xp, h0)
    p.impl = impl_code(impl)
    p.chunk_size = _int(chunk_size, "chunk_size")
    p.n_threads = _int(n_threads, "n_threads")
    keep = (x, dt, A, Bm, Cm, Dskip, dt_bias, h0)
    return p, (B, T, H, P, N, G), keep


def mamba2_forward(xp, x, dt, A, Bm, Cm, Dskip=None, dt_bias=None, dt_softplus=False,
                   initial_state=None, output_final_state=False, impl="auto", chunk_size=64,
                   n_threads=0):
    """(y [B,T,H,P], final_state [B,H,N,P] or None)."""
    p, (B, T, H, P, N, G), keep = _mamba2_params(xp, x, dt, A, Bm, Cm, Dskip, dt_bias, dt_softplus,
                                                 initial_state, impl, chunk_size, n_threads)
    y = xp.empty((B, T, H, P))
    _set(p, "y", xp, y)
    ht = xp.empty((B, H, N, P)) if output_final_state else None
    p.final_state = _ptr(xp, ht)
    _lib.check(_lib.dn_mamba2_forward(byref(p)), "dn_mamba2_forward")
    return y, ht


def mamba2_backward(xp, x, dt, A, Bm, Cm, dy, Dskip=None, dt_bias=None, dt_softplus=False,
                    initial_state=None, dfinal_state=None, impl="auto", chunk_size=64, n_threads=0):
    """(dx, ddt, dA, dBm, dCm, dDskip, ddt_bias, dinitial_state); None where not given."""
    p, (B, T, H, P, N, G), keep = _mamba2_params(xp, x, dt, A, Bm, Cm, Dskip, dt_bias, dt_softplus,
                                                 initial_state, impl, chunk_size, n_threads)
    dy = xp.prep(dy, "dy")
    _expect(xp, dy, "dy", (B, T, H, P), "[B,T,H,P]")
    dht = _opt(xp, dfinal_state, "dfinal_state", (B, H, N, P), "[B,H,N,P]", True)
    bp = _lib.dn_mamba2_bwd_params_default(byref(p))
    _set(bp, "dy", xp, dy)
    bp.dfinal_state = _ptr(xp, dht)
    dx, ddt = xp.empty((B, T, H, P)), xp.empty((B, T, H))
    dBm, dCm = xp.empty((B, T, G, N)), xp.empty((B, T, G, N))
    dA = xp.zeros((H,))
    dDskip = xp.zeros((H,)) if Dskip is not None else None
    ddt_bias = xp.zeros((H,)) if dt_bias is not None else None
    dh0 = xp.empty((B, H, N, P)) if initial_state is not None else None
    for name, t in (("dx", dx), ("ddt", ddt), ("dBm", dBm), ("dCm", dCm)):
        _set(bp, name, xp, t)
    bp.dA, bp.dDskip, bp.ddt_bias = xp.ptr(dA), _ptr(xp, dDskip), _ptr(xp, ddt_bias)
    bp.dinitial_state = _ptr(xp, dh0)
    _lib.check(_lib.dn_mamba2_backward(byref(bp)), "dn_mamba2_backward")
    if len(xp.shape(Bm)) == 3:
        dBm, dCm = dBm[:, :, 0, :], dCm[:, :, 0, :]
    return dx, ddt, dA, dBm, dCm, dDskip, ddt_bias, dh0


# --- RWKV-4 WKV ----------------------------------------------------------------------------------


def _rwkv4_params(xp, k, v, time_decay, time_first, initial_state, impl, n_threads):
    k, v = xp.prep(k, "k"), xp.prep(v, "v")
    _ndim(xp, k, "k", 3, "[B,T,C]")
    B, T, C = xp.shape(k)
    _expect(xp, v, "v", (B, T, C), "[B,T,C]")
    w = xp.prep(time_decay, "time_decay", True)
    u = xp.prep(time_first, "time_first", True)
    _expect(xp, w, "time_decay", (C,), "[C]")
    _expect(xp, u, "time_first", (C,), "[C]")
    h0 = _opt(xp, initial_state, "initial_state", (B, 3, C), "[B,3,C]", True)
    p = _lib.dn_rwkv4_params_default(B, T, C)
    _set(p, "k", xp, k)
    _set(p, "v", xp, v)
    p.time_decay, p.time_first = xp.ptr(w), xp.ptr(u)
    p.initial_state = _ptr(xp, h0)
    p.impl = impl_code(impl)
    p.n_threads = _int(n_threads, "n_threads")
    return p, (B, T, C), (k, v, w, u, h0)


def rwkv4_forward(xp, k, v, time_decay, time_first, initial_state=None, output_final_state=False,
                  impl="auto", n_threads=0):
    """(y [B,T,C], final_state [B,3,C] or None)."""
    p, (B, T, C), keep = _rwkv4_params(xp, k, v, time_decay, time_first, initial_state, impl, n_threads)
    y = xp.empty((B, T, C))
    _set(p, "y", xp, y)
    ht = xp.empty((B, 3, C)) if output_final_state else None
    p.final_state = _ptr(xp, ht)
    _lib.check(_lib.dn_rwkv4_forward(byref(p)), "dn_rwkv4_forward")
    return y, ht


def rwkv4_backward(xp, k, v, time_decay, time_first, dy, initial_state=None, dfinal_state=None,
                   impl="auto", n_threads=0):
    """(dk, dv, dtime_decay, dtime_first, dinitial_state or None)."""
    p, (B, T, C), keep = _rwkv4_params(xp, k, v, time_decay, time_first, initial_state, impl, n_threads)
    dy = xp.prep(dy, "dy")
    _expect(xp, dy, "dy", (B, T, C), "[B,T,C]")
    dht = _opt(xp, dfinal_state, "dfinal_state", (B, 3, C), "[B,3,C]", True)
    bp = _lib.dn_rwkv4_bwd_params_default(byref(p))
    _set(bp, "dy", xp, dy)
    bp.dfinal_state = _ptr(xp, dht)
    dk, dv = xp.empty((B, T, C)), xp.empty((B, T, C))
    dw, du = xp.zeros((C,)), xp.zeros((C,))
    dh0 = xp.empty((B, 3, C)) if initial_state is not None else None
    _set(bp, "dk", xp, dk)
    _set(bp, "dv", xp, dv)
    bp.dtime_decay, bp.dtime_first, bp.dinitial_state = xp.ptr(dw), xp.ptr(du), _ptr(xp, dh0)
    _lib.check(_lib.dn_rwkv4_backward(byref(bp)), "dn_rwkv4_backward")
    return dk, dv, dw, du, dh0


# --- short causal convolution --------------------------------------------------------------------


def _conv_params(xp, x, weight, bias, silu, initial_state, impl, n_threads):
    x = xp.prep(x, "x")
    _ndim(xp, x, "x", 3, "[B,T,D]")
    B, T, D = xp.shape(x)
    w = xp.prep(weight, "weight", True)
    _ndim(xp, w, "weight", 2, "[D,W]")
    W = xp.shape(w)[1]
    _expect(xp, w, "weight", (D, W), "[D,W]")
    bias = _opt(xp, bias, "bias", (D,), "[D]", True)
    h0 = _opt(xp, initial_state, "initial_state", (B, D, max(W - 1, 0)), "[B,D,W-1]", True)
    p = _lib.dn_conv_params_default(B, T, D, W)
    _set(p, "x", xp, x)
    p.weight, p.bias = xp.ptr(w), _ptr(xp, bias)
    p.silu = 1 if silu else 0
    p.initial_state = _ptr(xp, h0)
    p.impl = impl_code(impl)
    p.n_threads = _int(n_threads, "n_threads")
    return p, (B, T, D, W), (x, w, bias, h0)


def conv_forward(xp, x, weight, bias=None, silu=False, initial_state=None, output_final_state=False,
                 impl="auto", n_threads=0):
    """(y [B,T,D], final_state [B,D,W-1] or None)."""
    p, (B, T, D, W), keep = _conv_params(xp, x, weight, bias, silu, initial_state, impl, n_threads)
    y = xp.empty((B, T, D))
    _set(p, "y", xp, y)
    ht = xp.empty((B, D, max(W - 1, 0))) if output_final_state else None
    p.final_state = _ptr(xp, ht)
    _lib.check(_lib.dn_conv_forward(byref(p)), "dn_conv_forward")
    return y, ht


def conv_backward(xp, x, weight, dy, bias=None, silu=False, initial_state=None, dfinal_state=None,
                  impl="auto", n_threads=0):
    """(dx, dweight, dbias or None, dinitial_state or None)."""
    p, (B, T, D, W), keep = _conv_params(xp, x, weight, bias, silu, initial_state, impl, n_threads)
    dy = xp.prep(dy, "dy")
    _expect(xp, dy, "dy", (B, T, D), "[B,T,D]")
    dht = _opt(xp, dfinal_state, "dfinal_state", (B, D, max(W - 1, 0)), "[B,D,W-1]", True)
    bp = _lib.dn_conv_bwd_params_default(byref(p))
    _set(bp, "dy", xp, dy)
    bp.dfinal_state = _ptr(xp, dht)
    dx = xp.empty((B, T, D))
    dw = xp.zeros((D, W))
    db = xp.zeros((D,)) if bias is not None else None
    dh0 = xp.empty((B, D, max(W - 1, 0))) if initial_state is not None else None
    _set(bp, "dx", xp, dx)
    bp.dweight, bp.dbias, bp.dinitial_state = xp.ptr(dw), _ptr(xp, db), _ptr(xp, dh0)
    _lib.check(_lib.dn_conv_backward(byref(bp)), "dn_conv_backward")
    return dx, dw, db, dh0


del math
