"""CUDA tensors: the linear-attention forward and decode step on the GPU, through the same C entry
point as the CPU (dn_la_forward with the device and stream fields of dn_la_params).

What the C library runs on a GPU (include/deltanet.h, dn_la_params): the recurrence (any head
size; T = 1 with the state updated in place is the batched decode step) and the chunkwise
forward, with q, k, v and o in fp32, bf16 or fp16 read and written as they are (no conversion),
g, beta and the states in fp32. The backward is CPU-only for now: a CUDA input that needs a
gradient is refused here with that reason, never silently copied to the CPU.

Every tensor is passed by pointer with its strides (elements), on torch's current stream of the
tensors' device; the call is queued on that stream like any torch kernel. cu_seqlens is read on
the host (the C library schedules the sequences there), so a CUDA cu_seqlens is copied once.
"""
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


def la_forward(op, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
               qk_l2norm, impl, final_state=None):
    """o [B,T,HV,V] in q's dtype on q's device, and the final state [N,HV,K,V] fp32 (or None).
    final_state: write the final state there (it may be initial_state itself: in place)."""
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
    o = torch.empty((B, T, HV, V), dtype=q.dtype, device=device)
    for name, x in (("q", q), ("k", k), ("v", v), ("o", o)):
        _set(p, name, x)
    if g is not None:
        _set(p, "g", g)
    if beta is not None:
        _set(p, "beta", beta)
    ht = final_state
    if ht is None and output_final_state:
        ht = torch.empty((NS, HV, K, V), dtype=torch.float32, device=device)
    p.initial_state = h0.data_ptr() if h0 is not None else None
    p.final_state = ht.data_ptr() if ht is not None else None
    if cu is not None:
        p.cu_seqlens, p.n_seqs = cu.data_ptr(), NS
    s = _scale(scale)
    p.scale = default_scale(K) if s is None else s
    p.qk_l2norm = 1 if qk_l2norm else 0
    p.impl = impl_code(impl)
    p.dtype = _DTYPES[q.dtype]
    p.device = device.index if device.index is not None else torch.cuda.current_device()
    p.stream = torch.cuda.current_stream(device).cuda_stream
    _lib.check(_lib.dn_la_forward(p), "dn_la_forward")
    return o, ht


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
