"""flash-linear-attention's functions on deltanet's CPU kernels: the same names, argument names,
defaults, layouts ([B,T,H,...], no head_first) and return values `(o, final_state)`, so that

    from deltanet.fla import chunk_gated_delta_rule

replaces `from fla.ops.gated_delta_rule import chunk_gated_delta_rule`. `o` comes back in q's
dtype and the final state in fp32, `final_state` is None unless `output_final_state`. What fla
accepts and deltanet does not compute (per-key / per-value gates `gk`, `gv`, headwise-vector beta,
reverse scans, context parallelism) raises NotImplementedError; an argument fla does not know
raises TypeError. fla's pre-activations (`use_gate_in_kernel`, `use_beta_sigmoid_in_kernel`) and
its V-first state layout are applied with torch around the op, so autograd covers them.

The chunk_* functions run the library's DN_IMPL_AUTO (the chunkwise form for sequences of 16
tokens or more) unless `chunk_size` is given, which selects the chunkwise form in chunks of that
size; the fused_recurrent_* functions run the token recurrence (their backward, which has no
recurrent form, runs the chunkwise backward: the same gradients).
"""

import warnings

import torch
import torch.nn.functional as F

from . import _impl, ops

__all__ = ["chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule", "chunk_delta_rule",
           "fused_recurrent_delta_rule", "chunk_simple_gla", "fused_recurrent_simple_gla",
           "chunk_linear_attn", "fused_recurrent_linear_attn", "chunk_gdn", "fused_recurrent_gdn"]


def _no_extra(fn, kwargs):
    if "head_first" in kwargs:
        raise ValueError(f"{fn}: head_first was removed from fla; inputs must be [B, T, H, ...]")
    if kwargs:
        raise TypeError(f"{fn}() got unexpected keyword argument(s) {', '.join(sorted(kwargs))} "
                        "(deltanet.fla takes fla's documented arguments only)")


def _state_layout(fn, state_v_first, kwargs):
    if "transpose_state_layout" in kwargs:  # fla's deprecated name for state_v_first
        if state_v_first:
            raise ValueError(f"{fn}: pass state_v_first or transpose_state_layout, not both")
        warnings.warn("transpose_state_layout is fla's deprecated name for state_v_first",
                      DeprecationWarning, stacklevel=3)
        return bool(kwargs.pop("transpose_state_layout"))
    return bool(state_v_first)


def _check_varlen(q, initial_state, cu_seqlens):
    if cu_seqlens is None:
        return
    if isinstance(q, torch.Tensor) and q.shape[0] != 1:
        raise ValueError(f"with cu_seqlens the batch size must be 1 (flatten the sequences into "
                         f"one row), got B = {q.shape[0]}")
    if isinstance(initial_state, torch.Tensor) and isinstance(cu_seqlens, torch.Tensor) \
            and initial_state.shape[0] != cu_seqlens.shape[0] - 1:
        raise ValueError(f"initial_state holds {initial_state.shape[0]} states for "
                         f"{cu_seqlens.shape[0] - 1} sequences (one per sequence in cu_seqlens)")


def _chunk_impl(fn, chunk_size):
    if chunk_size is None:
        return "auto", 64
    if chunk_size not in (16, 32, 64, 128):
        raise ValueError(f"{fn}: chunk_size must be 16, 32, 64 or 128, got {chunk_size}")
    return "chunk", chunk_size


def _run(op, q, k, v, g, beta, scale, initial_state, output_final_state, qk_l2norm, cu_seqlens,
         impl, chunk_size, state_v_first=False):
    if state_v_first and initial_state is not None:
        initial_state = initial_state.transpose(-1, -2)
    o, ht = ops.la(op, q, k, v, g, beta, scale=scale, initial_state=initial_state,
                   output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                   qk_l2norm=qk_l2norm, impl=impl, chunk_size=chunk_size)
    if state_v_first and ht is not None:
        ht = ht.transpose(-1, -2).contiguous()
    return o, ht


def _gate(fn, g, A_log, dt_bias):
    """fla's use_gate_in_kernel: g is the raw input, the log decay -exp(A_log) softplus(g + dt_bias)."""
    if A_log is None:
        raise ValueError(f"{fn}: use_gate_in_kernel=True needs A_log")
    if g is None:
        raise ValueError(f"{fn}: use_gate_in_kernel=True needs g (the raw gate input)")
    x = ops.as_f32(g, "g")
    if dt_bias is not None:
        x = x + ops.as_f32(dt_bias, "dt_bias")
    return -ops.as_f32(A_log, "A_log").exp() * F.softplus(x)


def _beta(fn, beta, use_beta_sigmoid_in_kernel, allow_neg_eigval):
    if allow_neg_eigval and not use_beta_sigmoid_in_kernel:
        raise ValueError(f"{fn}: allow_neg_eigval=True requires use_beta_sigmoid_in_kernel=True")
    if isinstance(beta, torch.Tensor) and beta.dim() == 4:
        raise NotImplementedError(f"{fn}: a headwise-vector beta [B,T,HV,V] is not supported by "
                                  "deltanet (beta is one scalar per token and value head)")
    if use_beta_sigmoid_in_kernel:
        beta = ops.as_f32(beta, "beta").sigmoid()
        if allow_neg_eigval:
            beta = beta * 2
    return beta


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None,
                           output_final_state=False, use_qk_l2norm_in_kernel=False,
                           use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False,
                           state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None,
                           chunk_indices=None, cp_context=None, **kwargs):
    """Gated DeltaNet, chunkwise: q, k [B,T,H,K], v [B,T,HV,V], g (log decay), beta [B,T,HV];
    initial_state [N,HV,K,V]. Returns (o [B,T,HV,V], final_state [N,HV,K,V] or None).
    chunk_indices and cu_seqlens_cpu (fla's precomputed hints) are accepted and not needed."""
    fn = "chunk_gated_delta_rule"
    state_v_first = _state_layout(fn, state_v_first, kwargs)
    if cp_context is not None:
        raise NotImplementedError(f"{fn}: context parallelism (cp_context) is not supported")
    impl, chunk_size = _chunk_impl(fn, kwargs.pop("chunk_size", None))
    if kwargs.pop("use_gate_in_kernel", False):
        g = _gate(fn, g, kwargs.pop("A_log", None), kwargs.pop("dt_bias", None))
    else:
        kwargs.pop("A_log", None), kwargs.pop("dt_bias", None)  # fla reads them only with the gate
    _no_extra(fn, kwargs)
    if cu_seqlens is None and cu_seqlens_cpu is not None:
        cu_seqlens = cu_seqlens_cpu
    _check_varlen(q, initial_state, cu_seqlens)
    beta = _beta(fn, beta, use_beta_sigmoid_in_kernel, allow_neg_eigval)
    return _run("gdn", q, k, v, g, beta, scale, initial_state, output_final_state,
                use_qk_l2norm_in_kernel, cu_seqlens, impl, chunk_size, state_v_first)


def fused_recurrent_gated_delta_rule(q, k, v, g=None, gk=None, gv=None, beta=None, scale=None,
                                     initial_state=None, output_final_state=False,
                                     use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False,
                                     A_log=None, dt_bias=None, use_beta_sigmoid_in_kernel=False,
                                     allow_neg_eigval=False, state_v_first=False, cu_seqlens=None,
                                     **kwargs):
    """Gated DeltaNet, token by token (decode). g None: no decay (the delta rule); beta None:
    ones. Returns (o [B,T,HV,V], final_state [N,HV,K,V] or None)."""
    fn = "fused_recurrent_gated_delta_rule"
    if kwargs:  # (each check below is skipped when it cannot apply: this is the decode call)
        state_v_first = _state_layout(fn, state_v_first, kwargs)
        _no_extra(fn, kwargs)
    if gk is not None or gv is not None:
        raise NotImplementedError(f"{fn}: per-key (gk) and per-value (gv) gates are not supported "
                                  "by deltanet; pass the scalar gate g [B,T,HV]")
    if cu_seqlens is not None:
        _check_varlen(q, initial_state, cu_seqlens)
    if use_gate_in_kernel:
        g = _gate(fn, g, A_log, dt_bias)
    if beta is None:
        beta = torch.ones(v.shape[:3], dtype=torch.float32) if isinstance(v, torch.Tensor) else beta
    beta = _beta(fn, beta, use_beta_sigmoid_in_kernel, allow_neg_eigval)
    return _run("gdn" if g is not None else "deltanet", q, k, v, g, beta, scale, initial_state,
                output_final_state, use_qk_l2norm_in_kernel, cu_seqlens, "recurrent", 64,
                state_v_first)


def chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False,
                     use_qk_l2norm_in_kernel=False, cu_seqlens=None, cu_seqlens_cpu=None, **kwargs):
    """DeltaNet, chunkwise: q, k [B,T,H,K], v [B,T,HV,V], beta [B,T,HV]. Returns (o, final_state)."""
    fn = "chunk_delta_rule"
    impl, chunk_size = _chunk_impl(fn, kwargs.pop("chunk_size", None))
    _no_extra(fn, kwargs)
    if cu_seqlens is None and cu_seqlens_cpu is not None:
        cu_seqlens = cu_seqlens_cpu
    _check_varlen(q, initial_state, cu_seqlens)
    beta = _beta(fn, beta, False, False)
    return _run("deltanet", q, k, v, None, beta, scale, initial_state, output_final_state,
                use_qk_l2norm_in_kernel, cu_seqlens, impl, chunk_size)


def fused_recurrent_delta_rule(q, k, v, beta=None, scale=None, initial_state=None,
                               output_final_state=False, use_qk_l2norm_in_kernel=False,
                               cu_seqlens=None):
    """DeltaNet, token by token. beta None: ones. Returns (o, final_state)."""
    fn = "fused_recurrent_delta_rule"
    if scale is not None and not scale > 0:
        raise ValueError(f"{fn}: scale must be positive, got {scale}")
    _check_varlen(q, initial_state, cu_seqlens)
    if beta is None:
        beta = torch.ones(v.shape[:3], dtype=torch.float32) if isinstance(v, torch.Tensor) else beta
    beta = _beta(fn, beta, False, False)
    return _run("deltanet", q, k, v, None, beta, scale, initial_state, output_final_state,
                use_qk_l2norm_in_kernel, cu_seqlens, "recurrent", 64)


def _simple_gate(fn, q, g, g_gamma):
    """The scalar gate [B,T,H]: g, or the per-head constant g_gamma [H] broadcast (no copy)."""
    if g is not None and g_gamma is not None:
        raise ValueError(f"{fn}: pass g or g_gamma, not both")
    if g_gamma is None:
        return g
    g_gamma = ops.f32(g_gamma, "g_gamma")
    if g_gamma.dim() != 1 or not isinstance(q, torch.Tensor) or q.dim() != 4 \
            or g_gamma.shape[0] != q.shape[2]:
        raise ValueError(f"{fn}: g_gamma must be [H] with H the heads of q, got shape "
                         f"{tuple(g_gamma.shape)}")
    return g_gamma.expand(q.shape[0], q.shape[1], q.shape[2])


def chunk_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None,
                     output_final_state=False, state_v_first=False, cu_seqlens=None,
                     cu_seqlens_cpu=None, **kwargs):
    """Scalar-gated linear attention (Mamba-2 / SSD form), chunkwise: g [B,T,H] log decay, or
    g_gamma [H] a constant per head, or neither (plain linear attention). Returns (o, final_state)."""
    fn = "chunk_simple_gla"
    impl, chunk_size = _chunk_impl(fn, kwargs.pop("chunk_size", None))
    _no_extra(fn, kwargs)
    if cu_seqlens is None and cu_seqlens_cpu is not None:
        cu_seqlens = cu_seqlens_cpu
    _check_varlen(q, initial_state, cu_seqlens)
    g = _simple_gate(fn, q, g, g_gamma)
    return _run("gla" if g is not None else "linear_attn", q, k, v, g, None, scale, initial_state,
                output_final_state, False, cu_seqlens, impl, chunk_size, state_v_first)


def fused_recurrent_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None,
                               output_final_state=False, reverse=False, state_v_first=False,
                               cu_seqlens=None, **kwargs):
    """Scalar-gated linear attention, token by token. Returns (o, final_state)."""
    fn = "fused_recurrent_simple_gla"
    state_v_first = _state_layout(fn, state_v_first, kwargs)
    _no_extra(fn, kwargs)
    if reverse:
        raise NotImplementedError(f"{fn}: reverse=True (a right-to-left scan) is not supported")
    _check_varlen(q, initial_state, cu_seqlens)
    g = _simple_gate(fn, q, g, g_gamma)
    return _run("gla" if g is not None else "linear_attn", q, k, v, g, None, scale, initial_state,
                output_final_state, False, cu_seqlens, "recurrent", 64, state_v_first)


def _linear_attn(fn, q, k, v, scale, initial_state, output_final_state, normalize, cu_seqlens,
                 impl, chunk_size):
    """fla's linear attention. normalize divides o_t by scale q_t . (z0 + sum_{s<=t} k_s) + 1e-10:
    that denominator is linear attention itself with a value of ones, so it runs as one more value
    column of the same call (its state column is fla's z_state [N,1,H,K])."""
    _check_varlen(q, initial_state[0] if isinstance(initial_state, tuple) else initial_state,
                  cu_seqlens)
    if not normalize:
        if isinstance(initial_state, tuple):
            raise TypeError(f"{fn}: a (kv_state, z_state) initial_state needs normalize=True")
        return _run("linear_attn", q, k, v, None, None, scale, initial_state, output_final_state,
                    False, cu_seqlens, impl, chunk_size)
    kv0, z0 = initial_state if isinstance(initial_state, tuple) else (initial_state, None)
    v32 = ops.f32(v, "v")
    ones = torch.ones(v32.shape[:-1] + (1,), dtype=torch.float32)
    h0 = None
    if kv0 is not None or z0 is not None:
        q32 = ops.f32(q, "q")
        N, H, K = (kv0.shape[0] if kv0 is not None else z0.shape[0]), v32.shape[2], q32.shape[-1]
        kv0 = ops.f32(kv0, "initial_state") if kv0 is not None else torch.zeros(N, H, K, v32.shape[-1])
        z0 = ops.f32(z0, "z_state") if z0 is not None else torch.zeros(N, 1, H, K)
        if z0.dim() != 4 or z0.shape[1] != 1:
            raise ValueError(f"{fn}: z_state must be [N,1,H,K], got shape {tuple(z0.shape)}")
        h0 = torch.cat([kv0, z0[:, 0, :, :, None]], dim=-1)
    o, ht = ops.la("linear_attn", q, k, torch.cat([v32, ones], dim=-1), scale=scale,
                   initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens, impl=impl,
                   chunk_size=chunk_size)
    o = o.float()
    out = (o[..., :-1] / (o[..., -1:] + 1e-10)).to(q.dtype)
    kv = ht[..., :-1].contiguous() if output_final_state else None
    return out, (kv, ht[..., -1][:, None].contiguous())


def chunk_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False,
                      normalize=True, cu_seqlens=None):
    """Linear attention, chunkwise. normalize (default True, as in fla) returns
    (o, (final_state or None, z_state [N,1,H,K])); otherwise (o, final_state)."""
    return _linear_attn("chunk_linear_attn", q, k, v, scale, initial_state, output_final_state,
                        normalize, cu_seqlens, "auto", 64)


def fused_recurrent_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False,
                                reverse=False, normalize=False, cu_seqlens=None):
    """Linear attention, token by token (normalize default False, as in fla)."""
    if reverse:
        raise NotImplementedError("fused_recurrent_linear_attn: reverse=True (a right-to-left "
                                  "scan) is not supported")
    return _linear_attn("fused_recurrent_linear_attn", q, k, v, scale, initial_state,
                        output_final_state, normalize, cu_seqlens, "recurrent", 64)


chunk_gdn = chunk_gated_delta_rule
fused_recurrent_gdn = fused_recurrent_gated_delta_rule
del _impl
