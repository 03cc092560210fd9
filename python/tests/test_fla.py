"""deltanet.fla against flash-linear-attention's interface: names, argument names and defaults
(fla's current signatures, written out below since fla itself runs only on GPUs), return values,
the options fla has, and a clear error for each argument deltanet does not support."""

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deltanet import fla
from conftest import close, l2n, la_torch

# name -> fla's parameters in order with their defaults (REQ: no default), from fla-org's
# fla/ops/*/chunk.py and fused_recurrent.py
REQ = inspect.Parameter.empty
FLA = {
    "chunk_gated_delta_rule": [("q", REQ), ("k", REQ), ("v", REQ), ("g", REQ), ("beta", REQ),
                               ("scale", None), ("initial_state", None), ("output_final_state", False),
                               ("use_qk_l2norm_in_kernel", False), ("use_beta_sigmoid_in_kernel", False),
                               ("allow_neg_eigval", False), ("state_v_first", False), ("cu_seqlens", None),
                               ("cu_seqlens_cpu", None), ("chunk_indices", None), ("cp_context", None)],
    "fused_recurrent_gated_delta_rule": [
        ("q", REQ), ("k", REQ), ("v", REQ), ("g", None), ("gk", None), ("gv", None), ("beta", None),
        ("scale", None), ("initial_state", None), ("output_final_state", False),
        ("use_qk_l2norm_in_kernel", False), ("use_gate_in_kernel", False), ("A_log", None),
        ("dt_bias", None), ("use_beta_sigmoid_in_kernel", False), ("allow_neg_eigval", False),
        ("state_v_first", False), ("cu_seqlens", None)],
    "chunk_delta_rule": [("q", REQ), ("k", REQ), ("v", REQ), ("beta", REQ), ("scale", None),
                         ("initial_state", None), ("output_final_state", False),
                         ("use_qk_l2norm_in_kernel", False), ("cu_seqlens", None), ("cu_seqlens_cpu", None)],
    "fused_recurrent_delta_rule": [("q", REQ), ("k", REQ), ("v", REQ), ("beta", None), ("scale", None),
                                   ("initial_state", None), ("output_final_state", False),
                                   ("use_qk_l2norm_in_kernel", False), ("cu_seqlens", None)],
    "chunk_simple_gla": [("q", REQ), ("k", REQ), ("v", REQ), ("g", None), ("g_gamma", None),
                         ("scale", None), ("initial_state", None), ("output_final_state", False),
                         ("state_v_first", False), ("cu_seqlens", None), ("cu_seqlens_cpu", None)],
    "fused_recurrent_simple_gla": [("q", REQ), ("k", REQ), ("v", REQ), ("g", None), ("g_gamma", None),
                                   ("scale", None), ("initial_state", None), ("output_final_state", False),
                                   ("reverse", False), ("state_v_first", False), ("cu_seqlens", None)],
    "chunk_linear_attn": [("q", REQ), ("k", REQ), ("v", REQ), ("scale", None), ("initial_state", None),
                          ("output_final_state", False), ("normalize", True), ("cu_seqlens", None)],
    "fused_recurrent_linear_attn": [("q", REQ), ("k", REQ), ("v", REQ), ("scale", None),
                                    ("initial_state", None), ("output_final_state", False),
                                    ("reverse", False), ("normalize", False), ("cu_seqlens", None)],
}


@pytest.mark.parametrize("name", sorted(FLA))
def test_signature(name):
    params = [p for p in inspect.signature(getattr(fla, name)).parameters.values()
              if p.kind != inspect.Parameter.VAR_KEYWORD]
    assert [(p.name, p.default) for p in params] == FLA[name]


def inputs(seed=0, B=2, T=40, H=2, HV=4, K=16, V=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    return dict(q=r(B, T, H, K).to(dtype), k=(r(B, T, H, K) / 4).to(dtype), v=r(B, T, HV, V).to(dtype),
                g=-torch.rand(B, T, HV, generator=g), beta=torch.rand(B, T, HV, generator=g),
                h0=r(B, HV, K, V) * 0.1)


def test_gdn_defaults_and_forms():
    x = inputs()
    o, s = fla.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"])
    assert s is None and o.shape == (2, 40, 4, 8) and o.dtype == torch.float32
    o1, s1 = fla.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], scale=16 ** -0.5,
                                        initial_state=x["h0"], output_final_state=True,
                                        use_qk_l2norm_in_kernel=True)
    o2, s2 = fla.fused_recurrent_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], beta=x["beta"],
                                                  initial_state=x["h0"], output_final_state=True,
                                                  use_qk_l2norm_in_kernel=True)
    ow, sw = la_torch("gdn", x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["h0"],
                      qk_l2norm=True)
    for a, b, n in [(o1, ow, "chunk o"), (s1, sw, "chunk state"), (o2, ow, "recurrent o"),
                    (s2, sw, "recurrent state")]:
        close(a, b, 2e-5, n)
    assert s1.dtype == torch.float32 and s1.shape == (2, 4, 16, 8)
    for cs in (16, 32, 64):
        o3, _ = fla.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["h0"],
                                           use_qk_l2norm_in_kernel=True, chunk_size=cs)
        close(o3, ow, 2e-5, f"chunk_size {cs}")


def test_gdn_matches_transformers_fallback():
    """The same call through transformers' own torch implementation of the rule (what Qwen3.5
    runs on CPU without fla) gives the same outputs and state."""
    mod = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")
    x = inputs(3, T=70)
    args = (x["q"], x["k"], x["v"])
    want = mod.torch_chunk_gated_delta_rule.__wrapped__(*args, g=x["g"], beta=x["beta"], initial_state=x["h0"],
                                                      output_final_state=True, use_qk_l2norm_in_kernel=True)
    got = fla.chunk_gated_delta_rule(*args, g=x["g"], beta=x["beta"], initial_state=x["h0"],
                                     output_final_state=True, use_qk_l2norm_in_kernel=True)
    close(got[0], want[0], 1e-5, "o")
    close(got[1], want[1], 1e-5, "state")


def test_gdn_options():
    x = inputs(1)
    q, k, v = x["q"], x["k"], x["v"]
    # use_gate_in_kernel: g is the raw input of -exp(A_log) softplus(g + dt_bias)
    a = torch.randn(2, 40, 4)
    A_log, dt_bias = torch.randn(4) * 0.3, torch.randn(4)
    g = -A_log.exp() * F.softplus(a + dt_bias)
    want, _ = fla.chunk_gated_delta_rule(q, k, v, g, x["beta"])
    got, _ = fla.chunk_gated_delta_rule(q, k, v, a, x["beta"], use_gate_in_kernel=True, A_log=A_log,
                                        dt_bias=dt_bias)
    close(got, want, 1e-6, "use_gate_in_kernel (chunk)")
    got, _ = fla.fused_recurrent_gated_delta_rule(q, k, v, a, beta=x["beta"], use_gate_in_kernel=True,
                                                  A_log=A_log, dt_bias=dt_bias)
    close(got, want, 2e-5, "use_gate_in_kernel (recurrent)")
    # beta as logits, and 2 sigmoid for negative eigenvalues
    b = torch.randn(2, 40, 4)
    for neg, mult in [(False, 1), (True, 2)]:
        want, _ = fla.chunk_gated_delta_rule(q, k, v, x["g"], b.sigmoid() * mult)
        got, _ = fla.chunk_gated_delta_rule(q, k, v, x["g"], b, use_beta_sigmoid_in_kernel=True,
                                            allow_neg_eigval=neg)
        close(got, want, 1e-6, f"beta sigmoid {neg}")
    # V-first state layout, in and out (and fla's deprecated name for it)
    o1, s1 = fla.chunk_gated_delta_rule(q, k, v, x["g"], x["beta"], initial_state=x["h0"],
                                        output_final_state=True)
    o2, s2 = fla.chunk_gated_delta_rule(q, k, v, x["g"], x["beta"], initial_state=x["h0"].transpose(-1, -2),
                                        output_final_state=True, state_v_first=True)
    assert torch.equal(o1, o2) and torch.equal(s1.transpose(-1, -2), s2)
    with pytest.warns(DeprecationWarning):
        o3, s3 = fla.fused_recurrent_gated_delta_rule(q, k, v, x["g"], beta=x["beta"],
                                                      initial_state=x["h0"].transpose(-1, -2),
                                                      output_final_state=True, transpose_state_layout=True)
    close(s3, s2, 2e-5, "transpose_state_layout")
    # no gate: the delta rule; no beta: ones
    o4, _ = fla.fused_recurrent_gated_delta_rule(q, k, v, beta=x["beta"])
    o5, _ = fla.fused_recurrent_delta_rule(q, k, v, x["beta"])
    o6, _ = fla.chunk_delta_rule(q, k, v, x["beta"])
    close(o4, o5, 0, "g=None is DeltaNet")
    close(o6, o5, 2e-5, "chunk vs recurrent delta rule")
    o7, _ = fla.fused_recurrent_delta_rule(q, k, v)
    o8, _ = fla.fused_recurrent_delta_rule(q, k, v, torch.ones(2, 40, 4))
    assert torch.equal(o7, o8)


def test_varlen_and_dtypes():
    x = inputs(2, B=1, T=50)
    cu = torch.tensor([0, 10, 10, 50])
    h0 = torch.randn(3, 4, 16, 8) * 0.1
    o, s = fla.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=h0,
                                      output_final_state=True, cu_seqlens=cu)
    ow, sw = la_torch("gdn", x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=h0, cu_seqlens=cu)
    close(o, ow, 2e-5, "varlen o")
    close(s, sw, 2e-5, "varlen states")
    for dt in (torch.bfloat16, torch.float16):
        xb = inputs(2, dtype=dt)
        o, s = fla.chunk_gated_delta_rule(xb["q"], xb["k"], xb["v"], xb["g"].to(dt), xb["beta"].to(dt),
                                          output_final_state=True)
        assert o.dtype == dt and s.dtype == torch.float32


def test_simple_gla_and_linear_attn():
    x = inputs(4, HV=2)
    q, k, v = x["q"], x["k"], x["v"]
    g = -torch.rand(2, 40, 2)
    ow, sw = la_torch("gla", q, k, v, g, initial_state=x["h0"][:, :2])
    for f in (fla.chunk_simple_gla, fla.fused_recurrent_simple_gla):
        o, s = f(q, k, v, g, initial_state=x["h0"][:, :2], output_final_state=True)
        close(o, ow, 2e-5, f.__name__)
        close(s, sw, 2e-5, f.__name__ + " state")
    gamma = -torch.rand(2)
    o1, _ = fla.chunk_simple_gla(q, k, v, g_gamma=gamma)
    o2, _ = fla.chunk_simple_gla(q, k, v, g=gamma.expand(2, 40, 2).contiguous())
    close(o1, o2, 0, "g_gamma")
    o3, _ = fla.chunk_simple_gla(q, k, v)
    close(o3, la_torch("linear_attn", q, k, v)[0], 2e-5, "no gate: linear attention")
    # linear attention, plain and normalized (o_t / (scale q_t . (z0 + sum k) + 1e-10))
    o, s = fla.chunk_linear_attn(q, k, v, normalize=False, output_final_state=True)
    ow, sw = la_torch("linear_attn", q, k, v)
    close(o, ow, 2e-5, "linear attn")
    close(s, sw, 2e-5, "linear attn state")
    # normalized linear attention runs on positive feature maps (a denominator near 0 would
    # amplify rounding without bound)
    q, k = q.abs(), k.abs()
    z0 = torch.rand(2, 1, 2, 16, generator=torch.Generator().manual_seed(5))
    for f, kw in [(fla.chunk_linear_attn, {}), (fla.fused_recurrent_linear_attn, {"normalize": True})]:
        o, (s, z) = f(q, k, v, initial_state=(x["h0"][:, :2], z0), output_final_state=True, **kw)
        oo, ss = la_torch("linear_attn", q, k, v, initial_state=x["h0"][:, :2])
        zc = z0.double() + k.double().cumsum(1)  # [B,T,H,K]
        den = (q.double() * 16 ** -0.5 * zc).sum(-1, keepdim=True) + 1e-10
        close(o, oo / den, 2e-5, f.__name__ + " normalized")
        close(s, ss, 2e-5, f.__name__ + " kv state")
        close(z, zc[:, -1:], 2e-5, f.__name__ + " z state")
    o, (s, z) = fla.chunk_linear_attn(q, k, v)
    assert s is None and z.shape == (2, 1, 2, 16)


def test_backward_through_fla():
    x = inputs(5, T=30)
    a = {n: t.clone().requires_grad_() for n, t in x.items()}
    o, s = fla.chunk_gated_delta_rule(a["q"], a["k"], a["v"], a["g"], a["beta"], initial_state=a["h0"],
                                      output_final_state=True, use_qk_l2norm_in_kernel=True)
    (o.sum() + s.square().sum()).backward()
    b = {n: t.double().clone().requires_grad_() for n, t in x.items()}
    o2, s2 = la_torch("gdn", b["q"], b["k"], b["v"], b["g"], b["beta"], initial_state=b["h0"], qk_l2norm=True)
    (o2.sum() + s2.square().sum()).backward()
    for n in a:
        close(a[n].grad, b[n].grad, 1e-4, "d" + n)
    # the recurrent form's backward (the chunkwise backward: the same gradients)
    a2 = {n: t.clone().requires_grad_() for n, t in x.items()}
    o, s = fla.fused_recurrent_gated_delta_rule(a2["q"], a2["k"], a2["v"], a2["g"], beta=a2["beta"],
                                                initial_state=a2["h0"], output_final_state=True,
                                                use_qk_l2norm_in_kernel=True)
    (o.sum() + s.square().sum()).backward()
    for n in a:
        close(a2[n].grad, b[n].grad, 1e-4, "recurrent d" + n)


def test_errors():
    x = inputs()
    q, k, v, g, beta = x["q"], x["k"], x["v"], x["g"], x["beta"]
    with pytest.raises(ValueError, match="head_first"):
        fla.chunk_gated_delta_rule(q, k, v, g, beta, head_first=True)
    with pytest.raises(TypeError, match="unexpected keyword"):
        fla.chunk_gated_delta_rule(q, k, v, g, beta, not_an_fla_arg=1)
    with pytest.raises(TypeError):
        fla.fused_recurrent_delta_rule(q, k, v, beta, head_first=False)
    with pytest.raises(NotImplementedError, match="gk"):
        fla.fused_recurrent_gated_delta_rule(q, k, v, gk=torch.zeros(2, 40, 4, 16), beta=beta)
    with pytest.raises(NotImplementedError, match="headwise"):
        fla.fused_recurrent_gated_delta_rule(q, k, v, g, beta=torch.rand(2, 40, 4, 8))
    with pytest.raises(NotImplementedError, match="reverse"):
        fla.fused_recurrent_simple_gla(q, k, v[:, :, :2], reverse=True)
    with pytest.raises(NotImplementedError, match="reverse"):
        fla.fused_recurrent_linear_attn(q, k, v[:, :, :2], reverse=True)
    with pytest.raises(NotImplementedError, match="cp_context"):
        fla.chunk_gated_delta_rule(q, k, v, g, beta, cp_context=object())
    with pytest.raises(ValueError, match="batch size must be 1"):
        fla.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=torch.tensor([0, 40]))
    with pytest.raises(ValueError, match="one per sequence"):
        fla.chunk_gated_delta_rule(q[:1], k[:1], v[:1], g[:1], beta[:1], initial_state=x["h0"],
                                   cu_seqlens=torch.tensor([0, 40]))
    with pytest.raises(ValueError, match="allow_neg_eigval"):
        fla.chunk_gated_delta_rule(q, k, v, g, beta, allow_neg_eigval=True)
    with pytest.raises(ValueError, match="chunk_size"):
        fla.chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=17)
    with pytest.raises(ValueError, match="A_log"):
        fla.chunk_gated_delta_rule(q, k, v, g, beta, use_gate_in_kernel=True)
    with pytest.raises(ValueError, match="not both"):
        fla.chunk_simple_gla(q, k, v[:, :, :2], g=g[:, :, :2], g_gamma=torch.zeros(2))
    with pytest.raises(ValueError, match="scale must be positive"):
        fla.fused_recurrent_delta_rule(q, k, v, beta, scale=-1.0)
    # the C library's own checks come back with its message
    with pytest.raises(ValueError, match="is not a multiple of H"):
        fla.chunk_gated_delta_rule(q, k, v[:, :, :3], g[:, :, :3], beta[:, :, :3])
    with pytest.raises(ValueError, match="is positive"):
        fla.chunk_gated_delta_rule(q, k, v, -g, beta)
    with pytest.raises(ValueError, match=r"outside \[0, 2\]"):
        fla.chunk_gated_delta_rule(q, k, v, g, beta + 2.5)
