"""deltanet.transformers.patch_qwen3_5 on tiny random models of transformers' Qwen3.5 and
Qwen3-Next: the same logits with and without deltanet's kernels, for a prefill and for decode
steps through the model's cache, and for generate()."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from deltanet.transformers import patch_qwen3_5, unpatch  # noqa: E402


def tiny(kind, seed=0):
    torch.manual_seed(seed)
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                  linear_value_head_dim=8, linear_conv_kernel_dim=4, max_position_embeddings=256,
                  layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"])
    if kind == "qwen3_5":
        from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**common))
    else:
        from transformers import Qwen3NextConfig, Qwen3NextForCausalLM
        model = Qwen3NextForCausalLM(Qwen3NextConfig(**common, num_experts=4, num_experts_per_tok=2,
                                                     moe_intermediate_size=32,
                                                     shared_expert_intermediate_size=32))
    # random A_log / dt_bias / norms (a fresh model has them at their initial constants)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("A_log", "dt_bias")) or "norm" in n:
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def prefill_and_decode(model, ids, steps):
    """Logits of a prefill of ids, then of `steps` decode steps (greedy tokens) through the cache."""
    with torch.no_grad():
        out = model(ids, use_cache=True)
        logits, cache = [out.logits], out.cache
        tok = out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            out = model(tok, cache=cache, use_cache=True)
            cache = out.cache
            logits.append(out.logits)
            tok = out.logits[:, -1:].argmax(-1)
    return logits


@pytest.mark.parametrize("kind", ["qwen3_5", "qwen3_next"])
def test_same_logits(kind, monkeypatch):
    import deltanet.fla as dfla

    model = tiny(kind)
    ids = torch.randint(0, 97, (2, 45), generator=torch.Generator().manual_seed(1))
    want = prefill_and_decode(model, ids, 5)
    assert patch_qwen3_5(model) == 3
    assert patch_qwen3_5(model) == 0  # idempotent
    calls = {"chunk": 0, "recurrent": 0}
    for name, key in [("chunk_gated_delta_rule", "chunk"), ("fused_recurrent_gated_delta_rule", "recurrent")]:
        f = getattr(dfla, name)
        monkeypatch.setattr(dfla, name, lambda *a, _f=f, _k=key, **kw: calls.__setitem__(_k, calls[_k] + 1) or _f(*a, **kw))
    got = prefill_and_decode(model, ids, 5)
    assert calls == {"chunk": 3, "recurrent": 15}  # 3 layers: one prefill, 5 decode steps
    for i, (a, b) in enumerate(zip(got, want)):
        err = float((a - b).abs().max() / b.abs().max())
        assert err < 1e-4, f"step {i}: max relative difference {err:.3g}"
    # generate() runs the same path end to end
    with torch.no_grad():
        g1 = model.generate(ids[:, :10], max_new_tokens=6, do_sample=False)
    assert unpatch(model) == 3
    with torch.no_grad():
        g2 = model.generate(ids[:, :10], max_new_tokens=6, do_sample=False)
    assert torch.equal(g1, g2)


def test_dispatch_is_per_model():
    """Patching one model leaves another in the same process on transformers' functions, and the
    patched layers really call deltanet."""
    import deltanet.fla as dfla
    from transformers.models.qwen3_5 import modeling_qwen3_5 as mod

    a, b = tiny("qwen3_5", 1), tiny("qwen3_5", 2)
    patch_qwen3_5(a)
    calls = []
    orig = dfla.chunk_gated_delta_rule

    def spy(*args, **kw):
        calls.append(1)
        return orig(*args, **kw)

    dfla.chunk_gated_delta_rule = spy
    try:
        ids = torch.randint(0, 97, (1, 20))
        with torch.no_grad():
            b(ids)
            assert not calls
            a(ids)
            assert len(calls) == 3
    finally:
        dfla.chunk_gated_delta_rule = orig
    assert hasattr(mod.torch_chunk_gated_delta_rule, "_deltanet_original")


def test_no_gdn_layer():
    with pytest.raises(ValueError, match="no Gated DeltaNet layer"):
        patch_qwen3_5(torch.nn.Linear(2, 2))
