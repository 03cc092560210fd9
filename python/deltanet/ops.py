"""The ops as PyTorch custom operators (torch.library), with their backward from the C library.

Each op is registered as `deltanet::<name>` with a fake (meta) implementation for torch.compile
and an autograd formula that calls the op's C backward, so the ops work under autograd,
torch.compile and torch.func as far as custom operators do. The public functions below take
fp32, bf16, fp16 (or fp64) tensors, convert them to fp32 at the boundary (the C side is fp32; the
conversion is part of the autograd graph) and return outputs in the input's dtype, states in
fp32, as flash-linear-attention does. Tensors whose last dimension is contiguous are passed as
strided views without a copy.

    o, state = deltanet.ops.la("gdn", q, k, v, g=g, beta=beta, output_final_state=True)
"""

from typing import Optional

import torch
from torch import Tensor

from . import _impl
from ._arrays import _shape_error, torch_arrays

_A = torch_arrays()
_A_CHECKED = torch_arrays(checked=True)  # for tensors that went through f32() below
_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _nothing():
    return torch.empty(0, dtype=torch.float32)


def _function(name, opname, setup, grad):
    """An autograd.Function running a registered operator with its registered formula: what
    torch.func's transforms need (a setup_context), which custom operators' own autograd
    registration does not provide in every torch version. The operator's autograd is not
    recorded again inside, and the backward has no gradient of its own (as in the C library)."""

    def forward(*inputs):
        with torch.no_grad():  # through torch.ops, which torch.compile traces
            return getattr(torch.ops.deltanet, opname)(*inputs)

    def backward(ctx, *grads):
        with torch.no_grad():
            return grad(ctx, *grads)

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "setup_context": staticmethod(setup),
        "backward": staticmethod(backward)})


def f32(x, name, optional=False):
    """The boundary: a CPU floating tensor, as fp32 (autograd-tracked), or a clear error."""
    if x is None:
        if optional:
            return None
        raise TypeError(f"{name} is required, got None")
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_cpu:
        raise ValueError(f"{name} is on {x.device}: this op runs on CPU tensors (on the GPU deltanet "
                         "runs the linear-attention forward and decode step: la, la_step, deltanet.fla)")
    if x.dtype is torch.float32:
        return x
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float32, bfloat16, float16 or float64, got {x.dtype}")
    return x.float()


def as_f32(x, name, optional=False):
    """A floating tensor as fp32 on its own device (gate and beta preprocessing of deltanet.fla)."""
    if isinstance(x, Tensor) and x.is_cuda:
        if x.dtype not in _FLOATS:
            raise TypeError(f"{name} must be float32, bfloat16, float16 or float64, got {x.dtype}")
        return x.float()
    return f32(x, name, optional)


def _grad_wanted(*tensors):
    """Whether autograd will differentiate a call over these tensors."""
    return torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad
                                           for t in tensors)


def _index(x, name):
    if x is None:
        return None
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return _A.prep_index(x, name)


# --- linear-attention family -------------------------------------------------------------------


@torch.library.custom_op("deltanet::la_forward", mutates_args=())
def _la_forward(q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor], beta: Optional[Tensor],
                initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor], op: int,
                scale: float, qk_l2norm: bool, impl: int, chunk_size: int,
                output_final_state: bool) -> tuple[Tensor, Tensor]:
    o, ht = _impl.la_forward(_A, op, q, k, v, g, beta, scale, initial_state, output_final_state,
                             cu_seqlens, qk_l2norm, impl, chunk_size)
    return o, (ht if ht is not None else _nothing())


def _la_forward_fake(q, k, v, cu_seqlens, output_final_state):
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    NS = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    o = q.new_empty((B, T, HV, V), dtype=torch.float32)
    ht = q.new_empty((NS, HV, K, V) if output_final_state else (0,), dtype=torch.float32)
    return o, ht


@_la_forward.register_fake
def _(q, k, v, g, beta, initial_state, cu_seqlens, op, scale, qk_l2norm, impl, chunk_size,
      output_final_state):
    return _la_forward_fake(q, k, v, cu_seqlens, output_final_state)


@torch.library.custom_op("deltanet::la_backward", mutates_args=())
def _la_backward(q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor], beta: Optional[Tensor],
                 initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor], do: Tensor,
                 dfinal_state: Optional[Tensor], op: int, scale: float, qk_l2norm: bool, impl: int,
                 chunk_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = _impl.la_backward(_A, op, q, k, v, g, beta, do, dfinal_state, scale, initial_state,
                              cu_seqlens, qk_l2norm, impl, chunk_size)
    return tuple(x if x is not None else _nothing() for x in grads)


@_la_backward.register_fake
def _(q, k, v, g, beta, initial_state, cu_seqlens, do, dfinal_state, op, scale, qk_l2norm, impl,
      chunk_size):
    e = q.new_empty((0,))
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            torch.empty_like(g) if g is not None else e,
            torch.empty_like(beta) if beta is not None else e,
            torch.empty_like(initial_state) if initial_state is not None else e)


def _la_setup(ctx, inputs, output):
    q, k, v, g, beta, h0, cu, op, scale, qk_l2norm, impl, chunk_size, ofs = inputs
    ctx.save_for_backward(q, k, v, g, beta, h0, cu)
    ctx.opts = (op, scale, qk_l2norm, impl, chunk_size)
    ctx.has = (g is not None, beta is not None, h0 is not None, bool(ofs))


def _la_grad(ctx, do, dht):
    q, k, v, g, beta, h0, cu = ctx.saved_tensors
    if do is None:  # o took no part in the loss (grads not materialised)
        do = v.new_zeros(v.shape)
    has_g, has_beta, has_h0, ofs = ctx.has
    dht = dht if ofs else None
    op, scale, qk_l2norm, impl, chunk_size = ctx.opts
    if impl == _impl.IMPL_RECURRENT:  # the backward has no token-recurrent form; same gradients
        impl = _impl.IMPL_AUTO
    dq, dk, dv, dg, db, dh0 = _la_backward(q, k, v, g, beta, h0, cu, do, dht, op, scale, qk_l2norm,
                                           impl, chunk_size)
    return (dq, dk, dv, dg if has_g else None, db if has_beta else None, dh0 if has_h0 else None,
            None, None, None, None, None, None, None)


_la_forward.register_autograd(_la_grad, setup_context=_la_setup)


def _la_vmap(info, in_dims, q, k, v, g, beta, h0, cu, *opts):
    """torch.func.vmap: the op once per slice of the mapped dimension (the C call has no batch
    dimension of its own beyond B)."""
    n = info.batch_size
    args = (q, k, v, g, beta, h0, cu)
    outs = [_la_forward(*[a if d is None else a.select(d, i) for a, d in zip(args, in_dims)], *opts)
            for i in range(n)]
    return (torch.stack([o for o, _ in outs]), torch.stack([h for _, h in outs])), (0, 0)


torch.library.register_vmap("deltanet::la_forward", _la_vmap)


class _La(torch.autograd.Function):
    """The same formula as an autograd.Function (forward and backward are the operators above):
    torch.func's transforms (grad, vjp, jacrev) need one with a setup_context, which custom
    operators' own autograd registration does not provide in every torch version."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*inputs):
        with torch.no_grad():  # the operator's own autograd must not record this call again
            return _la_forward(*inputs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _la_setup(ctx, inputs, output)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for an unused state output

    @staticmethod
    def backward(ctx, do, dht):
        with torch.no_grad():  # no gradient of the backward (the C library has none)
            return _la_grad(ctx, do, dht)


default_scale = _impl.default_scale
_functorch_active = torch._C._functorch.peek_interpreter_stack  # None outside torch.func transforms


def _needs_graph(*tensors):
    """Whether the call must go through the registered operator: autograd will differentiate it,
    or torch.compile / a torch.func transform is tracing. Otherwise (inference, decode) the op
    body runs directly, without the dispatcher's few microseconds."""
    if torch.compiler.is_compiling() or _functorch_active() is not None:
        return True
    if torch.is_grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return True
    for t in tensors:  # a functorch wrapper or a tensor subclass dispatches through the op
        if t is not None and type(t) is not Tensor:
            return True
    return False


def la(op, q, k, v, g=None, beta=None, *, scale=None, initial_state=None, output_final_state=False,
       cu_seqlens=None, qk_l2norm=False, impl="auto", chunk_size=64):
    """Linear attention ('linear_attn'), scalar-gated ('gla'), DeltaNet ('deltanet') or Gated
    DeltaNet ('gdn') over q, k [B,T,H,K], v [B,T,HV,V], g, beta [B,T,HV] (docs/OPS.md), with
    initial_state [N,HV,K,V] and cu_seqlens [N+1] (B = 1) for variable-length batches.

    Returns (o [B,T,HV,V] in q's dtype, final_state [N,HV,K,V] fp32 or None).

    CUDA tensors run on the GPU, forward and backward, in fp32, bf16 or fp16 as they are, on
    torch's current stream."""
    if isinstance(q, Tensor) and q.is_cuda:
        from . import _cuda
        if _grad_wanted(q, k, v, g, beta, initial_state):
            o, ht = _cuda.LaCuda.apply(op, q, k, v, g, beta, initial_state, scale,
                                       output_final_state, cu_seqlens, qk_l2norm, impl)
        else:
            o, ht = _cuda.la_forward(op, q, k, v, g, beta, scale, initial_state,
                                     output_final_state, cu_seqlens, qk_l2norm, impl)
        return o, (ht if output_final_state else None)
    dtype = q.dtype if isinstance(q, Tensor) else None
    q, k, v = f32(q, "q"), f32(k, "k"), f32(v, "v")
    g, beta = f32(g, "g", True), f32(beta, "beta", True)
    h0 = f32(initial_state, "initial_state", True)
    cu = _index(cu_seqlens, "cu_seqlens")
    if q.dim() != 4:
        raise _shape_error(f"q must be 4-D [B,T,H,K], got shape {tuple(q.shape)}")
    scale = default_scale(q.shape[-1]) if scale is None else _impl._scale(scale)
    opi, impl, chunk_size = _impl.la_op(op), _impl.impl_code(impl), _impl._int(chunk_size, "chunk_size")
    if _needs_graph(q, k, v, g, beta, h0):
        args = (q, k, v, g, beta, h0, cu, opi, scale, bool(qk_l2norm), impl, chunk_size,
                bool(output_final_state))
        o, ht = _La.apply(*args)
    else:
        o, ht = _impl.la_forward(_A_CHECKED, opi, q, k, v, g, beta, scale, h0, output_final_state, cu,
                                 qk_l2norm, impl, chunk_size)
    if dtype is not torch.float32:
        o = o.to(dtype)
    return o, (ht if output_final_state else None)


@torch.library.custom_op("deltanet::la_step", mutates_args=("state",))
def _la_step(state: Tensor, q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor],
             beta: Optional[Tensor], op: int, scale: float, qk_l2norm: bool) -> Tensor:
    return _impl.la_step(_A, op, state, q, k, v, g, beta, scale, qk_l2norm)


@_la_step.register_fake
def _(state, q, k, v, g, beta, op, scale, qk_l2norm):
    return v.new_empty(v.shape, dtype=torch.float32)


def la_step(op, state, q, k, v, g=None, beta=None, *, scale=None, qk_l2norm=False):
    """One decode step: q, k [B,H,K], v [B,HV,V], g, beta [B,HV]; state [B,HV,K,V] (fp32,
    contiguous) is updated in place. Returns o [B,HV,V] in q's dtype. Not differentiable."""
    if not isinstance(state, Tensor) or state.dtype != torch.float32 or not state.is_contiguous():
        raise TypeError("state must be a contiguous float32 torch.Tensor (it is updated in place)")
    if isinstance(q, Tensor) and q.is_cuda:
        from . import _cuda
        return _cuda.la_step(op, state, q, k, v, g, beta, scale, qk_l2norm)
    dtype = q.dtype if isinstance(q, Tensor) else None
    q, k, v = f32(q, "q"), f32(k, "k"), f32(v, "v")
    g, beta = f32(g, "g", True), f32(beta, "beta", True)
    scale = 0.0 if scale is None else _impl._scale(scale)
    return _la_step(state, q, k, v, g, beta, _impl.la_op(op), scale, bool(qk_l2norm)).to(dtype)


# --- causal softmax attention --------------------------------------------------------------------


@torch.library.custom_op("deltanet::attn_forward", mutates_args=())
def _attn_forward(q: Tensor, k: Tensor, v: Tensor, scale: float, window: int,
                  impl: int) -> tuple[Tensor, Tensor]:
    return _impl.attn_forward(_A, q, k, v, scale, window, impl)


@_attn_forward.register_fake
def _(q, k, v, scale, window, impl):
    B, TQ, H, D = q.shape
    return q.new_empty((B, TQ, H, D), dtype=torch.float32), q.new_empty((B, H, TQ), dtype=torch.float32)


@torch.library.custom_op("deltanet::attn_backward", mutates_args=())
def _attn_backward(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, do: Tensor, scale: float,
                   window: int, impl: int) -> tuple[Tensor, Tensor, Tensor]:
    return _impl.attn_backward(_A, q, k, v, o, lse, do, scale, window, impl)


@_attn_backward.register_fake
def _(q, k, v, o, lse, do, scale, window, impl):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _attn_setup(ctx, inputs, output):
    q, k, v, scale, window, impl = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1])
    ctx.opts = (scale, window, impl)


def _attn_grad(ctx, do, dlse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = _attn_backward(q, k, v, o, lse, do, *ctx.opts)
    return dq, dk, dv, None, None, None


_attn_forward.register_autograd(_attn_grad, setup_context=_attn_setup)
_Attn = _function("_Attn", "attn_forward", _attn_setup, _attn_grad)


def attn(q, k, v, *, scale=None, window=0, impl="auto", return_lse=False):
    """Causal softmax attention: q [B,TQ,H,D], k, v [B,TK,HKV,D] (grouped-query heads; query i at
    position TK - TQ + i), optional sliding window. Returns o [B,TQ,H,D] in q's dtype (and the
    log-sum-exp [B,H,TQ] fp32 with return_lse; its gradient is not propagated)."""
    dtype = q.dtype if isinstance(q, Tensor) else None
    q, k, v = f32(q, "q"), f32(k, "k"), f32(v, "v")
    if q.dim() != 4:
        raise _shape_error(f"q must be 4-D [B,TQ,H,D], got shape {tuple(q.shape)}")
    scale = default_scale(q.shape[-1]) if scale is None else _impl._scale(scale)
    o, lse = _Attn.apply(q, k, v, scale, _impl._int(window, "window"), _impl.impl_code(impl))
    return (o.to(dtype), lse) if return_lse else o.to(dtype)


# --- Mamba-1 -------------------------------------------------------------------------------------


@torch.library.custom_op("deltanet::mamba_forward", mutates_args=())
def _mamba_forward(x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, Dskip: Optional[Tensor],
                   z: Optional[Tensor], dt_bias: Optional[Tensor], initial_state: Optional[Tensor],
                   dt_softplus: bool, output_final_state: bool, impl: int) -> tuple[Tensor, Tensor]:
    y, ht = _impl.mamba_forward(_A, x, dt, A, Bm, Cm, Dskip, z, dt_bias, dt_softplus, initial_state,
                                output_final_state, impl)
    return y, (ht if ht is not None else _nothing())


@_mamba_forward.register_fake
def _(x, dt, A, Bm, Cm, Dskip, z, dt_bias, initial_state, dt_softplus, output_final_state, impl):
    B, T, D = x.shape
    N = A.shape[1]
    return torch.empty_like(x), x.new_empty((B, D, N) if output_final_state else (0,))


@torch.library.custom_op("deltanet::mamba_backward", mutates_args=())
def _mamba_backward(x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, Dskip: Optional[Tensor],
                    z: Optional[Tensor], dt_bias: Optional[Tensor], initial_state: Optional[Tensor],
                    dy: Tensor, dfinal_state: Optional[Tensor], dt_softplus: bool,
                    impl: int) -> list[Tensor]:
    grads = _impl.mamba_backward(_A, x, dt, A, Bm, Cm, dy, Dskip, z, dt_bias, dt_softplus,
                                 initial_state, dfinal_state, impl)
    return [t if t is not None else _nothing() for t in grads]


@_mamba_backward.register_fake
def _(x, dt, A, Bm, Cm, Dskip, z, dt_bias, initial_state, dy, dfinal_state, dt_softplus, impl):
    e = x.new_empty((0,))
    like = [x, dt, A, Bm, Cm, Dskip, z, dt_bias, initial_state]
    return [torch.empty_like(t) if t is not None else e for t in like]


def _mamba_setup(ctx, inputs, output):
    x, dt, A, Bm, Cm, Dskip, z, dt_bias, h0, dt_softplus, ofs, impl = inputs
    ctx.save_for_backward(x, dt, A, Bm, Cm, Dskip, z, dt_bias, h0)
    ctx.opts = (dt_softplus, impl)
    ctx.ofs = ofs


def _mamba_grad(ctx, dy, dht):
    saved = ctx.saved_tensors
    g = _mamba_backward(*saved, dy, dht if ctx.ofs else None, *ctx.opts)
    # order of the C backward: dx, ddt, dA, dBm, dCm, dDskip, dz, ddt_bias, dh0
    out = [g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]]
    out = [o if s is not None else None for o, s in zip(out, saved)]
    return (*out, None, None, None)


_mamba_forward.register_autograd(_mamba_grad, setup_context=_mamba_setup)
_Mamba = _function("_Mamba", "mamba_forward", _mamba_setup, _mamba_grad)


def mamba(x, dt, A, Bm, Cm, Dskip=None, z=None, dt_bias=None, *, dt_softplus=False,
          initial_state=None, output_final_state=False, impl="auto"):
    """Mamba-1 selective scan: x, dt [B,T,D], A [D,N], Bm, Cm [B,T,G,N] or [B,T,N], optional
    Dskip [D], gate z [B,T,D], dt_bias [D], states [B,D,N]. Returns (y in x's dtype, final_state
    fp32 or None)."""
    dtype = x.dtype if isinstance(x, Tensor) else None
    args = [f32(x, "x"), f32(dt, "dt"), f32(A, "A"), f32(Bm, "Bm"), f32(Cm, "Cm"),
            f32(Dskip, "Dskip", True), f32(z, "z", True), f32(dt_bias, "dt_bias", True),
            f32(initial_state, "initial_state", True)]
    y, ht = _Mamba.apply(*args, bool(dt_softplus), bool(output_final_state), _impl.impl_code(impl))
    return y.to(dtype), (ht if output_final_state else None)


# --- Mamba-2 -------------------------------------------------------------------------------------


@torch.library.custom_op("deltanet::mamba2_forward", mutates_args=())
def _mamba2_forward(x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor,
                    Dskip: Optional[Tensor], dt_bias: Optional[Tensor],
                    initial_state: Optional[Tensor], dt_softplus: bool, output_final_state: bool,
                    impl: int, chunk_size: int) -> tuple[Tensor, Tensor]:
    y, ht = _impl.mamba2_forward(_A, x, dt, A, Bm, Cm, Dskip, dt_bias, dt_softplus, initial_state,
                                 output_final_state, impl, chunk_size)
    return y, (ht if ht is not None else _nothing())


@_mamba2_forward.register_fake
def _(x, dt, A, Bm, Cm, Dskip, dt_bias, initial_state, dt_softplus, output_final_state, impl,
      chunk_size):
    B, T, H, P = x.shape
    N = Bm.shape[-1]
    return torch.empty_like(x), x.new_empty((B, H, N, P) if output_final_state else (0,))


@torch.library.custom_op("deltanet::mamba2_backward", mutates_args=())
def _mamba2_backward(x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor,
                     Dskip: Optional[Tensor], dt_bias: Optional[Tensor],
                     initial_state: Optional[Tensor], dy: Tensor, dfinal_state: Optional[Tensor],
                     dt_softplus: bool, impl: int, chunk_size: int) -> list[Tensor]:
    grads = _impl.mamba2_backward(_A, x, dt, A, Bm, Cm, dy, Dskip, dt_bias, dt_softplus,
                                  initial_state, dfinal_state, impl, chunk_size)
    return [t if t is not None else _nothing() for t in grads]


@_mamba2_backward.register_fake
def _(x, dt, A, Bm, Cm, Dskip, dt_bias, initial_state, dy, dfinal_state, dt_softplus, impl,
      chunk_size):
    e = x.new_empty((0,))
    like = [x, dt, A, Bm, Cm, Dskip, dt_bias, initial_state]
    return [torch.empty_like(t) if t is not None else e for t in like]


def _mamba2_setup(ctx, inputs, output):
    x, dt, A, Bm, Cm, Dskip, dt_bias, h0, dt_softplus, ofs, impl, chunk_size = inputs
    ctx.save_for_backward(x, dt, A, Bm, Cm, Dskip, dt_bias, h0)
    ctx.opts = (dt_softplus, impl, chunk_size)
    ctx.ofs = ofs


def _mamba2_grad(ctx, dy, dht):
    saved = ctx.saved_tensors
    g = _mamba2_backward(*saved, dy, dht if ctx.ofs else None, *ctx.opts)
    out = [o if s is not None else None for o, s in zip(g, saved)]
    return (*out, None, None, None, None)


_mamba2_forward.register_autograd(_mamba2_grad, setup_context=_mamba2_setup)
_Mamba2 = _function("_Mamba2", "mamba2_forward", _mamba2_setup, _mamba2_grad)


def mamba2(x, dt, A, Bm, Cm, Dskip=None, dt_bias=None, *, dt_softplus=False, initial_state=None,
           output_final_state=False, impl="auto", chunk_size=64):
    """Mamba-2 (SSD): x [B,T,H,P], dt [B,T,H], A [H], Bm, Cm [B,T,G,N] or [B,T,N], optional
    Dskip, dt_bias [H], states [B,H,N,P]. Returns (y in x's dtype, final_state fp32 or None)."""
    dtype = x.dtype if isinstance(x, Tensor) else None
    args = [f32(x, "x"), f32(dt, "dt"), f32(A, "A"), f32(Bm, "Bm"), f32(Cm, "Cm"),
            f32(Dskip, "Dskip", True), f32(dt_bias, "dt_bias", True),
            f32(initial_state, "initial_state", True)]
    y, ht = _Mamba2.apply(*args, bool(dt_softplus), bool(output_final_state),
                            _impl.impl_code(impl), _impl._int(chunk_size, "chunk_size"))
    return y.to(dtype), (ht if output_final_state else None)


# --- RWKV-4 --------------------------------------------------------------------------------------


@torch.library.custom_op("deltanet::rwkv4_forward", mutates_args=())
def _rwkv4_forward(k: Tensor, v: Tensor, time_decay: Tensor, time_first: Tensor,
                   initial_state: Optional[Tensor], output_final_state: bool,
                   impl: int) -> tuple[Tensor, Tensor]:
    y, ht = _impl.rwkv4_forward(_A, k, v, time_decay, time_first, initial_state, output_final_state,
                                impl)
    return y, (ht if ht is not None else _nothing())


@_rwkv4_forward.register_fake
def _(k, v, time_decay, time_first, initial_state, output_final_state, impl):
    B, T, C = k.shape
    return torch.empty_like(k), k.new_empty((B, 3, C) if output_final_state else (0,))


@torch.library.custom_op("deltanet::rwkv4_backward", mutates_args=())
def _rwkv4_backward(k: Tensor, v: Tensor, time_decay: Tensor, time_first: Tensor,
                    initial_state: Optional[Tensor], dy: Tensor, dfinal_state: Optional[Tensor],
                    impl: int) -> list[Tensor]:
    grads = _impl.rwkv4_backward(_A, k, v, time_decay, time_first, dy, initial_state, dfinal_state,
                                 impl)
    return [t if t is not None else _nothing() for t in grads]


@_rwkv4_backward.register_fake
def _(k, v, time_decay, time_first, initial_state, dy, dfinal_state, impl):
    e = k.new_empty((0,))
    return [torch.empty_like(k), torch.empty_like(v), torch.empty_like(time_decay),
            torch.empty_like(time_first),
            torch.empty_like(initial_state) if initial_state is not None else e]


def _rwkv4_setup(ctx, inputs, output):
    k, v, w, u, h0, ofs, impl = inputs
    ctx.save_for_backward(k, v, w, u, h0)
    ctx.impl, ctx.ofs = impl, ofs


def _rwkv4_grad(ctx, dy, dht):
    k, v, w, u, h0 = ctx.saved_tensors
    dk, dv, dw, du, dh0 = _rwkv4_backward(k, v, w, u, h0, dy, dht if ctx.ofs else None, ctx.impl)
    return dk, dv, dw, du, (dh0 if h0 is not None else None), None, None


_rwkv4_forward.register_autograd(_rwkv4_grad, setup_context=_rwkv4_setup)
_Rwkv4 = _function("_Rwkv4", "rwkv4_forward", _rwkv4_setup, _rwkv4_grad)


def rwkv4(k, v, time_decay, time_first, *, initial_state=None, output_final_state=False,
          impl="auto"):
    """RWKV-4 WKV: k, v [B,T,C], time_decay, time_first [C], state [B,3,C] (num, den, max).
    Returns (y in k's dtype, final_state fp32 or None)."""
    dtype = k.dtype if isinstance(k, Tensor) else None
    args = [f32(k, "k"), f32(v, "v"), f32(time_decay, "time_decay"), f32(time_first, "time_first"),
            f32(initial_state, "initial_state", True)]
    y, ht = _Rwkv4.apply(*args, bool(output_final_state), _impl.impl_code(impl))
    return y.to(dtype), (ht if output_final_state else None)


# --- short causal convolution --------------------------------------------------------------------


@torch.library.custom_op("deltanet::conv_forward", mutates_args=())
def _conv_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], initial_state: Optional[Tensor],
                  silu: bool, output_final_state: bool, impl: int) -> tuple[Tensor, Tensor]:
    y, ht = _impl.conv_forward(_A, x, weight, bias, silu, initial_state, output_final_state, impl)
    return y, (ht if ht is not None else _nothing())


@_conv_forward.register_fake
def _(x, weight, bias, initial_state, silu, output_final_state, impl):
    B, T, D = x.shape
    W = weight.shape[1]
    return torch.empty_like(x), x.new_empty((B, D, W - 1) if output_final_state else (0,))


@torch.library.custom_op("deltanet::conv_backward", mutates_args=())
def _conv_backward(x: Tensor, weight: Tensor, bias: Optional[Tensor], initial_state: Optional[Tensor],
                   dy: Tensor, dfinal_state: Optional[Tensor], silu: bool,
                   impl: int) -> list[Tensor]:
    grads = _impl.conv_backward(_A, x, weight, dy, bias, silu, initial_state, dfinal_state, impl)
    return [t if t is not None else _nothing() for t in grads]


@_conv_backward.register_fake
def _(x, weight, bias, initial_state, dy, dfinal_state, silu, impl):
    e = x.new_empty((0,))
    return [torch.empty_like(x), torch.empty_like(weight),
            torch.empty_like(bias) if bias is not None else e,
            torch.empty_like(initial_state) if initial_state is not None else e]


def _conv_setup(ctx, inputs, output):
    x, w, b, h0, silu, ofs, impl = inputs
    ctx.save_for_backward(x, w, b, h0)
    ctx.opts, ctx.ofs = (silu, impl), ofs


def _conv_grad(ctx, dy, dht):
    x, w, b, h0 = ctx.saved_tensors
    dx, dw, db, dh0 = _conv_backward(x, w, b, h0, dy, dht if ctx.ofs else None, *ctx.opts)
    return dx, dw, (db if b is not None else None), (dh0 if h0 is not None else None), None, None, None


_conv_forward.register_autograd(_conv_grad, setup_context=_conv_setup)
_Conv = _function("_Conv", "conv_forward", _conv_setup, _conv_grad)


def short_conv(x, weight, bias=None, *, silu=False, initial_state=None, output_final_state=False,
               impl="auto"):
    """Causal depthwise convolution: x [B,T,D], weight [D,W] (W = 2..4), bias [D], optional SiLU,
    state [B,D,W-1] (the previous inputs). Returns (y in x's dtype, final_state fp32 or None)."""
    dtype = x.dtype if isinstance(x, Tensor) else None
    args = [f32(x, "x"), f32(weight, "weight"), f32(bias, "bias", True),
            f32(initial_state, "initial_state", True)]
    y, ht = _Conv.apply(*args, bool(silu), bool(output_final_state), _impl.impl_code(impl))
    return y.to(dtype), (ht if output_final_state else None)
