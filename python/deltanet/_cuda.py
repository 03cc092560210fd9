"""CUDA tensors: the linear-attention forward and decode step on the GPU, through the same C entry
point as the CPU (dn_la_forward with the device and stream fields of dn_la_params).

What the C library runs on a GPU (include/deltanet.h, dn_la_params): the recurrence (any head
size; T = 1 with the state updated in place is the batched decode step) and the chunkwise
forward, with q, k, v and o in fp32, bf16 or fp16 read and written as they are (no conversion),
g, beta and the states in fp32; and the backward (dn_la_backward with the same fields), every
gradient on the GPU in the inputs' types (LaCuda, the autograd.Function ops.la uses for CUDA
tensors that need a gradient).

Every tensor is passed by pointer with its strides (elements), on torch's current stream of the
tensors' device; the call is queued on that stream like any torch kernel. cu_seqlens is read on
the host (the C library schedules the sequences there), so a CUDA cu_seqlens is copied once.
"""
from ctypes import byref

import torch

from . import _lib
from ._impl import _scale, default_scale, impl_code, la_op

_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # dn_dtype: DN_F32, DN_F16, DN_BF16


def _dev(x, name, device):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device}, q on {device}: every tensor of a call must be on "
                         "the same device")
    return x


def _rows(x):
    """x with a contiguous last dimension (a view when it already is)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _f32(x, name, shape, device, contiguous=False):
    if x is None:
        return None
    _dev(x, name, device)
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")
    x = x.float() if x.dtype != torch.float32 else x
    return x.contiguous() if contiguous else _rows(x)


def _set(p, field, x):
    setattr(p, field, x.data_ptr())
    st = getattr(p, field + "_s")
    s = x.stride()
    st.b, st.t, st.h = s[0], s[1] if x.dim() > 1 else 0, s[2] if x.dim() > 2 else 0


def _params(op, q, k, v, g, beta, scale, initial_state, cu_seqlens, qk_l2norm, impl):
    """dn_la_params for a GPU call (o and final_state unset), the checked tensors it points to
    (kept alive by the caller), and (B, T, H, HV, K, V, NS)."""
    device = q.device
    for name, x in (("k", k), ("v", v)):
        _dev(x, name, device)
        if x.dtype != q.dtype:
            raise TypeError(f"q, k and v must share one dtype on the GPU: q is {q.dtype}, {name} is "
                            f"{x.dtype}")
    if q.dtype not in _DTYPES:
        raise TypeError(f"q, k, v must be float32, bfloat16 or float16 on the GPU, got {q.dtype}")
    if q.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q must be [B,T,H,K] and v [B,T,HV,V], got {list(q.shape)} and "
                         f"{list(v.shape)}")
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    if tuple(k.shape) != (B, T, H, K) or tuple(v.shape[:2]) != (B, T):
        raise ValueError(f"k must be {[B, T, H, K]} and v [{B},{T},HV,V], got {list(k.shape)} and "
                         f"{list(v.shape)}")
    q, k, v = _rows(q), _rows(k), _rows(v)
    g = _f32(g, "g", (B, T, HV), device)
    beta = _f32(beta, "beta", (B, T, HV), device)
    cu = None
    NS = B
    if cu_seqlens is not None:
        cu = cu_seqlens.detach().to("cpu", torch.int64).contiguous()
        if cu.dim() != 1 or cu.shape[0] < 1:
            raise ValueError("cu_seqlens must be 1-D with N+1 offsets")
        NS = cu.shape[0] - 1
    h0 = _f32(initial_state, "initial_state", (NS, HV, K, V), device, contiguous=True)
    opi = la_op(op)
    p = _lib.dn_la_params_default(opi, B, T, H, HV, K, V)
    for name, x in (("q", q), ("k", k), ("v", v)):
        _set(p, name, x)
    if g is not None:
        _set(p, "g", g)
    if beta is not None:
        _set(p, "beta", beta)
    p.initial_state = h0.data_ptr() if h0 is not None else None
    if cu is not None:
        p.cu_seqlens, p.n_seqs = cu.data_ptr(), NS
    s = _scale(scale)
    p.scale = default_scale(K) if s is None else s
    p.qk_l2norm = 1 if qk_l2norm else 0
    p.impl = impl_code(impl)
    p.dtype = _DTYPES[q.dtype]
    p.device = device.index if device.index is not None else torch.cuda.current_device()
    p.stream = torch.cuda.current_stream(device).cuda_stream
    return p, (q, k, v, g, beta, h0, cu), (B, T, H, HV, K, V, NS)


def la_forward(op, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
               qk_l2norm, impl, final_state=None):
    """o [B,T,HV,V] in q's dtype on q's device, and the final state [N,HV,K,V] fp32 (or None).
    final_state: write the final state there (it may be initial_state itself: in place)."""
    p, keep, (B, T, H, HV, K, V, NS) = _params(op, q, k, v, g, beta, scale, initial_state,
                                               cu_seqlens, qk_l2norm, impl)
    o = torch.empty((B, T, HV, V), dtype=keep[0].dtype, device=q.device)
    _set(p, "o", o)
    ht = final_state
    if ht is None and output_final_state:
        ht = torch.empty((NS, HV, K, V), dtype=torch.float32, device=q.device)
    p.final_state = ht.data_ptr() if ht is not None else None
    _lib.check(_lib.dn_la_forward(p), "dn_la_forward")
    return o, ht


def la_backward(op, q, k, v, g, beta, do, dht, scale, initial_state, cu_seqlens, qk_l2norm):
    """(dq, dk, dv, dg, dbeta, dinitial_state) on the GPU: dq, dk, dv in q's dtype, the others
    fp32, None where the call has no such input (the chunkwise backward, dn_la_backward)."""
    p, keep, (B, T, H, HV, K, V, NS) = _params(op, q, k, v, g, beta, scale, initial_state,
                                               cu_seqlens, qk_l2norm, "auto")
    q, g, beta, h0 = keep[0], keep[3], keep[4], keep[5]
    do = _rows(_dev(do, "do", q.device).to(q.dtype))
    if tuple(do.shape) != (B, T, HV, V):
        raise ValueError(f"do must have shape {[B, T, HV, V]}, got {list(do.shape)}")
    dht = _f32(dht, "dfinal_state", (NS, HV, K, V), q.device, contiguous=True)
    bp = _lib.dn_la_bwd_params_default(byref(p))
    _set(bp, "dout", do)
    bp.dfinal_state = dht.data_ptr() if dht is not None else None
    e = lambda *shape, dt=q.dtype: torch.empty(shape, dtype=dt, device=q.device)  # noqa: E731
    dq, dk, dv = e(B, T, H, K), e(B, T, H, K), e(B, T, HV, V)
    dg = e(B, T, HV, dt=torch.float32) if g is not None else None
    db = e(B, T, HV, dt=torch.float32) if beta is not None else None
    dh0 = e(NS, HV, K, V, dt=torch.float32) if h0 is not None else None
    for name, x in (("dq", dq), ("dk", dk), ("dv", dv), ("dg", dg), ("dbeta", db)):
        if x is not None:
            _set(bp, name, x)
    bp.dinitial_state = dh0.data_ptr() if dh0 is not None else None
    _lib.check(_lib.dn_la_backward(byref(bp)), "dn_la_backward")
    return dq, dk, dv, dg, db, dh0


class LaCuda(torch.autograd.Function):
    """ops.la on CUDA tensors that need a gradient: the GPU forward, then the GPU backward (which
    recomputes the chunk states rather than keep them)."""

    @staticmethod
    def forward(ctx, op, q, k, v, g, beta, h0, scale, output_final_state, cu_seqlens, qk_l2norm,
                impl):
        o, ht = la_forward(op, q, k, v, g, beta, scale, h0, output_final_state, cu_seqlens,
                           qk_l2norm, impl)
        ctx.save_for_backward(q, k, v, g, beta, h0)
        ctx.opts = (op, scale, cu_seqlens, qk_l2norm)
        ctx.ofs = bool(output_final_state)
        if ht is None:
            return o, o.new_empty((0,), dtype=torch.float32)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, beta, h0 = ctx.saved_tensors
        op, scale, cu, qk_l2norm = ctx.opts
        if do is None:
            do = torch.zeros_like(v, dtype=q.dtype)
        grads = la_backward(op, q, k, v, g, beta, do, dht if ctx.ofs else None, scale, h0, cu,
                            qk_l2norm)
        need = ctx.needs_input_grad
        dq, dk, dv, dg, db, dh0 = (x if need[i + 1] else None for i, x in enumerate(grads))
        return None, dq, dk, dv, dg, db, dh0, None, None, None, None, None


def la_step(op, state, q, k, v, g, beta, scale, qk_l2norm):
    """One decode step on the GPU: q, k [B,H,K], v [B,HV,V], g, beta [B,HV]; state [B,HV,K,V]
    (fp32, contiguous) updated in place. o [B,HV,V] in q's dtype: the recurrence over one token
    with initial_state == final_state (the C library's batched decode step)."""
    device = q.device
    _dev(state, "state", device)
    if state.dtype != torch.float32 or not state.is_contiguous() or state.dim() != 4:
        raise TypeError("state must be a contiguous float32 [B,HV,K,V] tensor (updated in place)")
    o, _ = la_forward(op, q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1),
                      None if g is None else g.unsqueeze(1),
                      None if beta is None else beta.unsqueeze(1), scale or None, state, False,
                      None, qk_l2norm, "recurrent", final_state=state)
    return o.squeeze(1)
