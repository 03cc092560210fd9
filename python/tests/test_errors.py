"""Bad input from Python raises a Python exception, never a crash: wrong dtype, device, shape,
non-tensors and None get a clear message from the binding; what the C library checks (dimensions,
options, values) comes back with the library's own message (dn_last_error) in a ValueError,
NotImplementedError or MemoryError."""

import numpy as np
import pytest
import torch

import deltanet
import deltanet.ops as ops
from deltanet import fla


def gdn_np(B=1, T=8, H=2, HV=2, K=8, V=8):
    r = np.random.default_rng(0)
    return dict(q=r.standard_normal((B, T, H, K), dtype=np.float32),
                k=r.standard_normal((B, T, H, K), dtype=np.float32),
                v=r.standard_normal((B, T, HV, V), dtype=np.float32),
                g=-r.random((B, T, HV), dtype=np.float32), beta=r.random((B, T, HV), dtype=np.float32))


def gdn_t(**kw):
    return {n: torch.tensor(a) for n, a in gdn_np(**kw).items()}


@pytest.mark.parametrize("bad,exc,msg", [
    (dict(q=[[1.0]]), TypeError, "q must be a numpy.ndarray, got list"),
    (dict(k=None), TypeError, "k must be a numpy.ndarray, got NoneType"),
    (dict(v=np.zeros((1, 8, 2, 8), np.int32)), TypeError, "v must hold floating-point values"),
    (dict(q=np.zeros((8, 2, 8), np.float32)), ValueError, r"q must be 4-D \[B,T,H,K\]"),
    (dict(k=np.zeros((1, 8, 2, 4), np.float32)), ValueError, r"k has shape \(1, 8, 2, 4\), expected"),
    (dict(g=np.zeros((1, 8, 3), np.float32)), ValueError, r"g has shape"),
])
def test_numpy_binding_checks(bad, exc, msg):
    x = gdn_np()
    x.update(bad)
    with pytest.raises(exc, match=msg):
        deltanet.la_forward("gdn", **x)


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(op="gdn", v=slice(0, 3)), ValueError, r"HV \(3\) is not a multiple of H \(2\)"),
    (dict(op="deltanet"), ValueError, "deltanet has no gate but g was given"),
    (dict(op="gdn", drop="beta"), ValueError, r"beta \[B,T,HV\] is required"),
    (dict(op="gdn", impl="chunk", chunk_size=17), ValueError, "chunk"),
    (dict(op="gdn", pos_g=True), ValueError, "is positive"),
    (dict(op="gdn", scale=float("nan")), ValueError, "scale"),
    (dict(op="gdn", cu=[0, 3, 2, 8]), ValueError, "cu_seqlens"),
    (dict(op="gdn", cu=[0, 3, 7]), ValueError, "must equal T"),
])
def test_c_messages(kw, exc, msg):
    """The C library's own checks: the exception carries dn_last_error()'s sentence."""
    x = gdn_np(HV=4)
    op = kw["op"]
    if "v" in kw:
        x = {n: (a[:, :, kw["v"]] if n in ("v", "g", "beta") else a) for n, a in x.items()}
    if kw.get("drop"):
        x[kw["drop"]] = None
    if kw.get("pos_g"):
        x["g"][0, 3, 1] = 0.5
    cu = np.array(kw["cu"], np.int64) if "cu" in kw else None
    with pytest.raises(exc, match=msg) as e:
        deltanet.la_forward(op, **x, cu_seqlens=cu, scale=kw.get("scale"), impl=kw.get("impl", "auto"),
                            chunk_size=kw.get("chunk_size", 64))
    assert isinstance(e.value, deltanet.DeltanetError) and e.value.status is not None
    # the same call through torch
    xt = {n: (torch.tensor(a) if a is not None else None) for n, a in x.items()}
    with pytest.raises(exc, match=msg):
        ops.la(op, **xt, cu_seqlens=None if cu is None else torch.tensor(cu), scale=kw.get("scale"),
               impl=kw.get("impl", "auto"), chunk_size=kw.get("chunk_size", 64))


def test_torch_boundary():
    x = gdn_t()
    with pytest.raises(TypeError, match="must be float32, bfloat16, float16 or float64, got torch.int64"):
        ops.la("gdn", **{**x, "q": x["q"].long()})
    with pytest.raises(TypeError, match="torch.complex64"):
        ops.la("gdn", **{**x, "k": x["k"].to(torch.complex64)})
    with pytest.raises(ValueError, match="is on meta: this op runs on CPU tensors"):
        ops.la("gdn", **{**x, "v": x["v"].to("meta")})
    with pytest.raises(TypeError, match="q must be a torch.Tensor, got ndarray"):
        ops.la("gdn", **{**x, "q": x["q"].numpy()})
    with pytest.raises(TypeError, match="k is required, got None"):
        ops.la("gdn", **{**x, "k": None})
    with pytest.raises(ValueError, match=r"q must be 4-D"):
        ops.la("gdn", **{**x, "q": x["q"][0]})
    with pytest.raises(ValueError, match="op must be one of"):
        ops.la("gdnn", **x)
    with pytest.raises(TypeError, match="cu_seqlens must hold integers"):
        ops.la("gdn", **x, cu_seqlens=torch.tensor([0.0, 8.0]))
    with pytest.raises(ValueError, match=r"initial_state has shape"):
        ops.la("gdn", **x, initial_state=torch.zeros(1, 2, 8, 9))
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.la("gdn", **x, impl="fast")
    # fla names: the same checks
    with pytest.raises(TypeError, match="torch.int32"):
        fla.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"].int(), x["beta"])
    with pytest.raises(TypeError, match="must be a torch.Tensor, got str"):
        fla.fused_recurrent_gated_delta_rule(x["q"], "k", x["v"], x["g"], beta=x["beta"])


def test_backward_errors_raise_in_python():
    """An error in the C backward (here: a wrong dfinal_state shape given to the numpy function)
    is an exception too."""
    x = gdn_np()
    with pytest.raises(ValueError, match="dfinal_state has shape"):
        deltanet.la_backward("gdn", **x, do=np.zeros((1, 8, 2, 8), np.float32),
                             dht=np.zeros((1, 2, 8, 7), np.float32))
    with pytest.raises(ValueError, match="do has shape"):
        deltanet.la_backward("gdn", **x, do=np.zeros((1, 8, 2, 7), np.float32))


def test_other_ops_errors():
    r = np.random.default_rng(0)
    f = lambda *s: r.standard_normal(s).astype(np.float32)
    with pytest.raises(ValueError, match=r"H % HKV|multiple"):
        deltanet.attn_forward(f(1, 4, 3, 8), f(1, 4, 2, 8), f(1, 4, 2, 8))
    with pytest.raises(ValueError, match=r"A > 0|positive|A\["):
        deltanet.mamba_forward(f(1, 4, 4), f(1, 4, 4), np.abs(f(4, 2)) + 1, f(1, 4, 2), f(1, 4, 2))
    with pytest.raises(ValueError, match=r"W|width"):
        deltanet.conv_forward(f(1, 4, 4), f(4, 7))
    with pytest.raises(ValueError, match="time_first has shape"):
        deltanet.rwkv4_forward(f(1, 4, 4), f(1, 4, 4), f(4), f(5))
    with pytest.raises(TypeError, match="A must be a torch.Tensor"):
        ops.mamba2(torch.zeros(1, 4, 2, 4), torch.zeros(1, 4, 2), None and 1 or [1.0], torch.zeros(1, 4, 1, 4),
                   torch.zeros(1, 4, 1, 4))


def test_alloc_failure_is_memory_error():
    """Inputs that are views of a few bytes (zero strides) asking for a 16 TiB output: a
    MemoryError, never a crash."""
    K = 8
    q = np.broadcast_to(np.ones(K, np.float32), (1, 1 << 38, 1, K))
    g = np.broadcast_to(np.zeros(1, np.float32), (1, 1 << 38, 1))
    with pytest.raises(MemoryError):
        deltanet.la_forward("gla", q, q, q, g)
    qt = torch.ones(K).expand(1, 1 << 38, 1, K)
    with pytest.raises(MemoryError):
        ops.la("gla", qt, qt, qt, torch.zeros(1).expand(1, 1 << 38, 1))


def test_cuda_release_scratch():
    """Without a CUDA build or device it is an error naming itself; with one it succeeds (and
    tests/test_cuda.py runs the GPU after it)."""
    try:
        deltanet.cuda_release_scratch()
    except deltanet.DeltanetError as e:
        assert "cuda_release_scratch" in str(e)
        assert not torch.cuda.is_available() or "no CUDA kernels" in str(e)
