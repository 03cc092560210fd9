"""The linear-attention family (linear attention, GLA, DeltaNet, Gated DeltaNet) through the
numpy functions and the torch custom operator: every implementation against the C reference
(impl='ref', through the same binding) and against the float64 torch recurrence of conftest.py,
forward and backward, over a grid of shapes with grouped value heads, variable-length batches,
initial states, strided views and chunk sizes."""

import numpy as np
import pytest
import torch

import deltanet
import deltanet.ops as ops
from conftest import close, la_inputs, la_torch

OPS = ["linear_attn", "gla", "deltanet", "gdn"]
# (B, T, H, HV, K, V): odd T, T below / at / past a chunk, GVA (HV = 2H), K != V
GRID = [(1, 1, 1, 1, 16, 16), (3, 7, 2, 4, 16, 32), (2, 63, 2, 2, 32, 16), (1, 65, 1, 2, 64, 64),
        (2, 130, 2, 4, 16, 24), (1, 200, 1, 1, 100, 40)]
FWD_TOL = 2e-5  # fp32 kernels against double accumulation (relative RMS)
BWD_TOL = 1e-4


def T(x, grad=False):
    return None if x is None else torch.tensor(x, requires_grad=grad)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", GRID, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("l2", [False, True])
def test_forward_numpy(rng, op, shape, l2):
    x = la_inputs(rng, op, *shape, h0=True)
    ref = deltanet.la_forward(op, **x, output_final_state=True, qk_l2norm=l2, impl="ref")
    want = la_torch(op, **{n: T(a) for n, a in x.items()}, qk_l2norm=l2)
    close(ref[0], want[0], 1e-6, "C reference o vs torch float64")
    close(ref[1], want[1], 1e-6, "C reference state vs torch float64")
    for impl, cs in [("auto", 64), ("recurrent", 64), ("chunk", 16), ("chunk", 64), ("chunk", 128)]:
        o, ht = deltanet.la_forward(op, **x, output_final_state=True, qk_l2norm=l2, impl=impl,
                                    chunk_size=cs)
        assert o.dtype == np.float32 and ht.dtype == np.float32
        close(o, ref[0], FWD_TOL, f"{impl}/{cs} o")
        close(ht, ref[1], FWD_TOL, f"{impl}/{cs} final_state")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", GRID[:5], ids=lambda s: "x".join(map(str, s)))
def test_backward_torch(rng, op, shape):
    """Gradients of every input (and of the initial state) from the C backward, through autograd,
    against autograd through the float64 torch recurrence; the loss reads o and the final state."""
    x = la_inputs(rng, op, *shape, h0=True)
    B, Tn, H, HV, K, V = shape
    wo = torch.tensor(rng.standard_normal((B, Tn, HV, V)))
    ws = torch.tensor(rng.standard_normal((B, HV, K, V)))
    for impl in ["auto", "ref", "chunk"]:
        a = {n: T(v, True) for n, v in x.items()}
        o, ht = ops.la(op, **a, output_final_state=True, qk_l2norm=True, impl=impl, chunk_size=16)
        ((o.double() * wo).sum() + (ht.double() * ws).sum()).backward()
        b = {n: T(v, True).double().detach().requires_grad_() for n, v in x.items() if v is not None}
        o2, h2 = la_torch(op, **b, qk_l2norm=True)
        ((o2 * wo).sum() + (h2 * ws).sum()).backward()
        for n in b:
            close(a[n].grad, b[n].grad, BWD_TOL, f"{op} {impl} d{n}")
        for n, v in a.items():
            if v is None:
                assert n not in b


@pytest.mark.parametrize("op", OPS)
def test_backward_numpy_matches_ref(rng, op):
    x = la_inputs(rng, op, 2, 40, 2, 4, 16, 16, h0=True)
    do = rng.standard_normal((2, 40, 4, 16)).astype(np.float32)
    dht = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    ref = deltanet.la_backward(op, **x, do=do, dht=dht, impl="ref")
    fast = deltanet.la_backward(op, **x, do=do, dht=dht)
    names = ["dq", "dk", "dv", "dg", "dbeta", "dinitial_state"]
    for n, r, f in zip(names, ref, fast):
        assert (r is None) == (f is None), n
        if r is not None:
            close(f, r, BWD_TOL, n)
    assert (ref[3] is None) == (op not in ("gla", "gdn"))
    assert (ref[4] is None) == (op not in ("deltanet", "gdn"))


@pytest.mark.parametrize("op", OPS)
def test_gradcheck(op):
    """torch.autograd.gradcheck on the operator with float64 inputs (converted to fp32 at the
    boundary, the reference accumulating in double): finite differences of size 1e-3 against the
    C backward, at a tolerance that fp32 rounding allows."""
    rng = np.random.default_rng(7)
    x = la_inputs(rng, op, 1, 5, 1, 2, 4, 3, h0=True)
    names = [n for n, v in x.items() if v is not None]
    args = [torch.tensor(x[n], dtype=torch.float64, requires_grad=True) for n in names]

    def f(*a):
        kw = dict(zip(names, a))
        o, ht = ops.la(op, **kw, output_final_state=True, qk_l2norm=True, impl="ref")
        return o, ht

    assert torch.autograd.gradcheck(f, args, eps=1e-3, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("op", OPS)
def test_varlen(rng, op):
    """cu_seqlens: each sequence (including empty ones) starts from its own state and gives its
    own final state; equal to running the sequences one by one."""
    cu = np.array([0, 1, 30, 30, 95, 100], dtype=np.int64)
    N = len(cu) - 1
    x = la_inputs(rng, op, 1, int(cu[-1]), 2, 4, 16, 8, h0=True, N=N)
    ref = deltanet.la_forward(op, **x, cu_seqlens=cu, output_final_state=True, impl="ref")
    want = la_torch(op, **{n: T(a) for n, a in x.items()}, cu_seqlens=cu)
    close(ref[0], want[0], 1e-6, "varlen C ref o vs torch")
    close(ref[1], want[1], 1e-6, "varlen C ref states vs torch")
    o, ht = deltanet.la_forward(op, **x, cu_seqlens=cu, output_final_state=True)
    close(o, ref[0], FWD_TOL, "varlen o")
    close(ht, ref[1], FWD_TOL, "varlen states")
    # torch, int32 offsets, backward against the torch recurrence
    a = {n: T(v, True) for n, v in x.items()}
    o, ht = ops.la(op, **a, cu_seqlens=torch.tensor(cu, dtype=torch.int32), output_final_state=True)
    (o.sum() + (ht * ht).sum()).backward()
    b = {n: T(v, True).double().detach().requires_grad_() for n, v in x.items() if v is not None}
    o2, h2 = la_torch(op, **b, cu_seqlens=cu)
    (o2.sum() + (h2 * h2).sum()).backward()
    for n in b:
        close(a[n].grad, b[n].grad, BWD_TOL, f"varlen d{n}")


def test_strided_views_no_copy(rng):
    """Views whose last dimension is contiguous are passed with their strides (the results equal
    those of contiguous copies); views with a strided last dimension are copied."""
    B, Tn, H, K = 2, 33, 2, 16
    big = rng.standard_normal((B, Tn, 3 * H, K + 5)).astype(np.float32)
    q, k = big[:, :, :H, :K], big[:, :, H:2 * H, 2:K + 2]  # strided, last dim contiguous
    v = big[:, :, 2 * H:, ::-1][:, :, :, :K]  # negative stride: copied
    g = -rng.random((B, Tn, 2 * H)).astype(np.float32)[:, :, ::2]
    beta = rng.random((B, Tn, H)).astype(np.float32)
    o1, _ = deltanet.la_forward("gdn", q, k, v, g, beta)
    o2, _ = deltanet.la_forward("gdn", *(np.ascontiguousarray(a) for a in (q, k, v, g, beta)))
    np.testing.assert_array_equal(o1, o2)
    tq = torch.tensor(big)[:, :, :H, :K]
    assert not tq.is_contiguous()
    ot, _ = ops.la("gdn", tq, torch.tensor(np.ascontiguousarray(k)), torch.tensor(np.ascontiguousarray(v)),
                   torch.tensor(np.ascontiguousarray(g)), torch.tensor(beta))
    np.testing.assert_array_equal(ot.numpy(), o2)
    # a transposed torch view (strided last dimension) is copied, same result
    tk = torch.tensor(np.ascontiguousarray(k).transpose(0, 1, 3, 2).copy()).transpose(2, 3)
    ot2, _ = ops.la("gdn", tq, tk, torch.tensor(np.ascontiguousarray(v)),
                    torch.tensor(np.ascontiguousarray(g)), torch.tensor(beta))
    np.testing.assert_array_equal(ot2.numpy(), o2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(rng, dtype):
    """bf16 / fp16 in: converted to fp32 at the boundary, o returned in the input dtype, state in
    fp32, gradients in each input's dtype."""
    x = la_inputs(rng, "gdn", 1, 20, 2, 2, 16, 16, h0=True)
    a = {n: torch.tensor(v).to(dtype).requires_grad_() for n, v in x.items()}
    o, ht = ops.la("gdn", **a, output_final_state=True)
    assert o.dtype == dtype and ht.dtype == torch.float32
    o32, _ = ops.la("gdn", **{n: v.detach().float() for n, v in a.items()})
    close(o.float().detach(), o32, 1e-2 if dtype != torch.float32 else 0, "dtype")
    o.float().sum().backward()
    for n, v in a.items():
        assert v.grad is not None and v.grad.dtype == dtype, n


@pytest.mark.parametrize("op", OPS)
def test_step_equals_forward(rng, op):
    """la_step (decode) token by token equals the forward over the sequence, numpy and torch."""
    x = la_inputs(rng, op, 2, 9, 2, 4, 16, 8, h0=True)
    o, ht = deltanet.la_forward(op, **x, output_final_state=True, qk_l2norm=True, impl="ref")
    state = x["initial_state"].copy()
    tstate = torch.tensor(x["initial_state"])
    for t in range(9):
        sl = {n: (None if x[n] is None else np.ascontiguousarray(x[n][:, t])) for n in
              ("q", "k", "v", "g", "beta")}
        o1 = deltanet.la_step(op, state, **sl, qk_l2norm=True)
        close(o1, o[:, t], FWD_TOL, f"numpy step {t}")
        o2 = ops.la_step(op, tstate, **{n: T(a) for n, a in sl.items()}, qk_l2norm=True)
        close(o2, o[:, t], FWD_TOL, f"torch step {t}")
    close(state, ht, FWD_TOL, "numpy state after steps")
    close(tstate, ht, FWD_TOL, "torch state after steps")


def test_inference_path_equals_operator(rng):
    """Without autograd the op body runs directly (no dispatcher): same results, bitwise."""
    x = {n: T(v) for n, v in la_inputs(rng, "gdn", 2, 50, 2, 4, 16, 16, h0=True).items()}
    with torch.no_grad():
        o1, h1 = ops.la("gdn", **x, output_final_state=True)
    o2, h2 = torch.ops.deltanet.la_forward(x["q"], x["k"], x["v"], x["g"], x["beta"],
                                          x["initial_state"], None, 3, 0.25, False, 0, 64, True)
    assert torch.equal(o1, o2) and torch.equal(h1, h2)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("impl,cs", [("auto", 64), ("chunk", 16), ("chunk", 64)])
def test_training_buffer(rng, op, impl, cs):
    """la_forward_train's buffer handed to la_backward gives the gradients of the recomputing
    backward."""
    x = la_inputs(rng, op, 2, 45, 2, 4, 16, 8, h0=True)
    o, ht, saved = deltanet.la_forward_train(op, **x, output_final_state=True, qk_l2norm=True,
                                             impl=impl, chunk_size=cs)
    o2, ht2 = deltanet.la_forward(op, **x, output_final_state=True, qk_l2norm=True, impl=impl,
                                  chunk_size=cs)
    close(o, o2, FWD_TOL, "training forward o")
    close(ht, ht2, FWD_TOL, "training forward state")
    do = rng.standard_normal(o.shape).astype(np.float32)
    kw = dict(do=do, dht=ht * 0.5, qk_l2norm=True, impl=impl, chunk_size=cs)
    with_saved = deltanet.la_backward(op, **x, **kw, saved=saved)
    plain = deltanet.la_backward(op, **x, **kw)
    for a, b in zip(with_saved, plain):
        assert (a is None) == (b is None)
        if a is not None:
            close(a, b, 1e-5, "backward with the training buffer")
    with pytest.raises(ValueError, match="saved"):
        deltanet.la_backward(op, **x, **kw, saved=saved[: saved.shape[0] // 2])
