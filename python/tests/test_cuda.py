"""CUDA tensors (python/deltanet/_cuda.py): the linear-attention forward and decode step on the GPU
against the same calls on the CPU, through the fla-named functions and the op layer; the refusals
(mixed devices, mixed dtypes, the CPU-only ops); gradients on the GPU against the CPU's. Skipped, saying so, without a GPU or with
a library built without CUDA.

Tolerances: fp32 inputs run fp32 kernels on both sides (the GPU's chunkwise fp32 form keeps fp32
products), so the outputs differ by fp32 rounding in another order: 1e-4 relative RMS. bf16 and
fp16 inputs run the tensor-core kernels, which round the intermediate products (W, U, the chunk
states, v_new) to the input type as fla does; against the CPU's fp32 computation on the same
rounded inputs the output moves by a few units of that type's precision (2.2e-3 to 4.5e-3 for
bf16 and 2.7e-4 to 6.4e-4 for fp16 against the double reference in tests/test_cuda.c), so 2e-2
and 4e-3 hold with margin while a wrong stride, gate or state moves it by O(1).
"""
import pytest
import torch

import deltanet
from deltanet import fla, ops
from conftest import close


def _has_cuda():
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    try:
        q = torch.zeros(1, 1, 1, 16, device="cuda")
        ops.la("linear_attn", q, q, q)
    except deltanet.DeltanetError as e:  # a library built without CUDA, or no device for it
        return f"the library cannot run on the GPU: {e}"
    return None


_WHY = _has_cuda()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"CUDA tests skipped: {_WHY}")


def _inputs(B, T, H, HV, K, V, dtype, seed=0, N=None):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    x = dict(q=r(B, T, H, K).to(dtype), k=(r(B, T, H, K) / K ** 0.5).to(dtype),
             v=r(B, T, HV, V).to(dtype), g=-torch.rand(B, T, HV, generator=gen),
             beta=torch.rand(B, T, HV, generator=gen), h0=r(N or B, HV, K, V) * 0.1)
    return x


TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T", [1, 37, 200])
def test_chunk_gated_delta_rule(dtype, T):
    x = _inputs(2, T, 2, 4, 64, 32, dtype, seed=T)
    cpu = fla.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"],
                                     initial_state=x["h0"], output_final_state=True,
                                     use_qk_l2norm_in_kernel=True)
    d = {k: v.cuda() for k, v in x.items()}
    gpu = fla.chunk_gated_delta_rule(d["q"], d["k"], d["v"], d["g"], d["beta"],
                                     initial_state=d["h0"], output_final_state=True,
                                     use_qk_l2norm_in_kernel=True)
    assert gpu[0].is_cuda and gpu[0].dtype == dtype and gpu[1].dtype == torch.float32
    close(gpu[0].float().cpu(), cpu[0].float(), TOL[dtype], f"o {dtype} T={T}")
    close(gpu[1].cpu(), cpu[1], TOL[dtype], f"final state {dtype} T={T}")


def test_varlen_strided_and_recurrent_forms():
    x = _inputs(1, 90, 2, 4, 64, 64, torch.bfloat16, seed=3, N=3)
    cu = torch.tensor([0, 0, 31, 90])
    d = {k: v.cuda() for k, v in x.items()}
    # a strided q: every other head of a wider tensor (passed by strides, not copied)
    wide = torch.randn(1, 90, 4, 64).to(torch.bfloat16)
    wide[:, :, ::2] = x["q"]
    for fn in (fla.chunk_gated_delta_rule, fla.fused_recurrent_gated_delta_rule):
        cpu = fn(wide[:, :, ::2], x["k"], x["v"], g=x["g"], beta=x["beta"], initial_state=x["h0"],
                 output_final_state=True, cu_seqlens=cu)
        gpu = fn(wide.cuda()[:, :, ::2], d["k"], d["v"], g=d["g"], beta=d["beta"],
                 initial_state=d["h0"], output_final_state=True, cu_seqlens=cu.cuda())
        close(gpu[0].float().cpu(), cpu[0].float(), TOL[torch.bfloat16], f"{fn.__name__} o")
        close(gpu[1].cpu(), cpu[1], TOL[torch.bfloat16], f"{fn.__name__} states")


def test_gate_in_kernel_and_other_ops():
    x = _inputs(2, 50, 2, 2, 32, 32, torch.float32, seed=5)
    a = torch.randn(2, 50, 2)
    A_log, dt_bias = torch.randn(2), torch.randn(2)
    kw = dict(use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias, use_beta_sigmoid_in_kernel=True)
    cpu = fla.chunk_gated_delta_rule(x["q"], x["k"], x["v"], a, x["beta"], **kw)
    gpu = fla.chunk_gated_delta_rule(x["q"].cuda(), x["k"].cuda(), x["v"].cuda(), a.cuda(),
                                     x["beta"].cuda(), use_gate_in_kernel=True, A_log=A_log.cuda(),
                                     dt_bias=dt_bias.cuda(), use_beta_sigmoid_in_kernel=True)
    close(gpu[0].cpu(), cpu[0], 1e-4, "gate computed from a, A_log, dt_bias")
    for op in ("linear_attn", "gla", "deltanet"):
        g = x["g"] if op == "gla" else None
        beta = x["beta"] if op == "deltanet" else None
        c = ops.la(op, x["q"], x["k"], x["v"], g, beta, output_final_state=True)
        dg = ops.la(op, x["q"].cuda(), x["k"].cuda(), x["v"].cuda(),
                    None if g is None else g.cuda(), None if beta is None else beta.cuda(),
                    output_final_state=True)
        close(dg[0].cpu(), c[0], 1e-4, f"{op} o")
        close(dg[1].cpu(), c[1], 1e-4, f"{op} state")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_la_step_in_place(dtype):
    x = _inputs(3, 1, 2, 4, 64, 32, dtype, seed=7)
    q, k, v = x["q"][:, 0], x["k"][:, 0], x["v"][:, 0]
    g, beta = x["g"][:, 0], x["beta"][:, 0]
    s_cpu = x["h0"].clone()
    s_gpu = x["h0"].cuda()
    for step in range(3):
        o_cpu = ops.la_step("gdn", s_cpu, q, k, v, g, beta)
        o_gpu = ops.la_step("gdn", s_gpu, q.cuda(), k.cuda(), v.cuda(), g.cuda(), beta.cuda())
        close(o_gpu.float().cpu(), o_cpu.float(), TOL[dtype], f"step {step} o")
        close(s_gpu.cpu(), s_cpu, TOL[dtype], f"step {step} state")


def test_release_scratch_then_run():
    """The scratch pool handed back between two calls: the second maps it again, same result."""
    x = {k: v.cuda() for k, v in _inputs(1, 200, 1, 2, 64, 64, torch.bfloat16).items()}
    o1 = fla.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"])[0]
    deltanet.cuda_release_scratch()
    o2 = fla.chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"])[0]
    assert torch.equal(o1, o2)


def test_refusals():
    x = _inputs(1, 8, 1, 1, 16, 16, torch.float32)
    d = {k: v.cuda() for k, v in x.items()}
    with pytest.raises(ValueError, match="same device"):
        fla.chunk_gated_delta_rule(d["q"], x["k"], d["v"], d["g"], d["beta"])
    with pytest.raises(TypeError, match="one dtype"):
        fla.chunk_gated_delta_rule(d["q"], d["k"].half(), d["v"], d["g"], d["beta"])
    with pytest.raises(ValueError, match="CPU tensors"):
        ops.attn(d["q"], d["k"], d["v"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", ["gdn", "deltanet", "gla", "linear_attn"])
def test_gradients(dtype, op):
    """Every gradient of the GPU backward (dn_la_backward on the device) against the CPU's for
    the same rounded inputs and the same loss. fp32 holds 1e-4 (fp32 products, like the CPU's).
    bf16 inputs take the tensor-core sweeps (bf16 operands, fp32 accumulation: errors about
    2.5e-3, tests/test_cuda.c) and dq, dk, dv are rounded to bf16, so every bf16 gradient is
    held to 2e-2."""
    x = _inputs(2, 70, 2, 4, 64, 32, dtype, seed=11)
    x["beta"] = x["beta"] if op in ("gdn", "deltanet") else None
    x["g"] = x["g"] if op in ("gdn", "gla") else None
    gen = torch.Generator().manual_seed(5)
    wo = torch.randn(2, 70, 4, 32, generator=gen)
    wh = torch.randn(2, 4, 64, 32, generator=gen)

    def run(dev):
        t = {k: (v.detach().to(dev).requires_grad_() if v is not None else None)
             for k, v in x.items()}
        o, ht = ops.la(op, t["q"], t["k"], t["v"], t["g"], t["beta"], initial_state=t["h0"],
                       output_final_state=True, qk_l2norm=True)
        loss = (o.float() * wo.to(dev)).sum() + (ht * wh.to(dev)).sum()
        loss.backward()
        return {k: v.grad.float().cpu() for k, v in t.items() if v is not None}

    cpu, gpu = run("cpu"), run("cuda")
    for name in cpu:
        close(gpu[name], cpu[name],
              TOL[dtype] if name in ("q", "k", "v") or dtype == torch.bfloat16 else 1e-4,
              f"d{name}")
