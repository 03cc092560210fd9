"""The custom operators under torch.library's own checks (opcheck: schema, fake tensors,
autograd registration), torch.compile and torch.func."""

import pytest
import torch

import deltanet.ops as ops
from conftest import close


def gdn(seed=0, B=2, T=20, H=2, HV=4, K=8, V=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, K, generator=g) / 3,
            torch.randn(B, T, HV, V, generator=g), -torch.rand(B, T, HV, generator=g),
            torch.rand(B, T, HV, generator=g), torch.randn(B, HV, K, V, generator=g) * 0.1)


def test_opcheck_la():
    q, k, v, g, beta, h0 = gdn()
    args = (q, k, v, g, beta, h0, None, 3, 0.3, True, 0, 64, True)
    torch.library.opcheck(torch.ops.deltanet.la_forward.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_opcheck_others():
    x = torch.randn(1, 6, 4)
    w = torch.randn(4, 3)
    torch.library.opcheck(torch.ops.deltanet.conv_forward.default, (x, w, None, None, True, True, 0),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    q = torch.randn(1, 5, 2, 8)
    torch.library.opcheck(torch.ops.deltanet.attn_forward.default, (q, q, q, 0.3, 0, 0),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_torch_compile_forward_backward():
    q, k, v, g, beta, h0 = gdn(1)

    def f(q, k, v, g, beta, h0):
        o, ht = ops.la("gdn", q, k, v, g, beta, initial_state=h0, output_final_state=True,
                       qk_l2norm=True)
        return (o * o).sum() + ht.sum()

    eager = [t.clone().requires_grad_() for t in (q, k, v, g, beta, h0)]
    f(*eager).backward()
    comp = [t.clone().requires_grad_() for t in (q, k, v, g, beta, h0)]
    torch.compile(f, fullgraph=True, backend="aot_eager")(*comp).backward()
    for a, b in zip(comp, eager):
        close(a.grad, b.grad, 1e-6, "compiled grad")


def test_torch_func():
    q, k, v, g, beta, h0 = gdn(2, B=1)

    def loss(q):
        o, _ = ops.la("gdn", q, k, v, g, beta, qk_l2norm=True)
        return o.square().sum()

    gq = torch.func.grad(loss)(q)
    qq = q.clone().requires_grad_()
    loss(qq).backward()
    close(gq, qq.grad, 1e-6, "torch.func.grad")
    # vmap over a leading axis of the batch (a custom op without a vmap rule runs per slice)
    qs = torch.stack([q, q * 0.5])
    try:
        out = torch.func.vmap(lambda x: ops.la("gdn", x, k, v, g, beta)[0])(qs)
    except (RuntimeError, NotImplementedError) as e:  # torch versions without the fallback
        pytest.skip(f"vmap over a custom op not available here: {e}")
    close(out[1], ops.la("gdn", qs[1], k, v, g, beta)[0], 1e-6, "vmap")


def test_torch_func_other_ops():
    """torch.func.grad through the other ops' operators equals autograd's gradient."""
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(1, 9, 4, generator=g), torch.randn(4, 3, generator=g)
    q = torch.randn(1, 6, 2, 8, generator=g)
    cases = [
        (lambda x: ops.short_conv(x, w, silu=True)[0].square().sum(), x),
        (lambda q: ops.attn(q, q, q).square().sum(), q),
        (lambda k: ops.rwkv4(k, k, torch.zeros(4), torch.zeros(4))[0].sum(), x),
    ]
    for f, a in cases:
        gf = torch.func.grad(f)(a)
        aa = a.clone().requires_grad_()
        f(aa).backward()
        close(gf, aa.grad, 1e-6, "torch.func.grad")


def test_torch_compile_other_ops():
    g = torch.Generator().manual_seed(4)
    x, w, b = torch.randn(2, 7, 8, generator=g), torch.randn(8, 4, generator=g), torch.randn(8, generator=g)

    def f(x, w, b):
        y, h = ops.short_conv(x, w, b, silu=True, output_final_state=True)
        return y.square().sum() + h.sum()

    eager = [t.clone().requires_grad_() for t in (x, w, b)]
    f(*eager).backward()
    comp = [t.clone().requires_grad_() for t in (x, w, b)]
    torch.compile(f, fullgraph=True, backend="aot_eager")(*comp).backward()
    for a, e in zip(comp, eager):
        close(a.grad, e.grad, 1e-6, "compiled conv grad")
