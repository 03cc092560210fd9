#!/usr/bin/env python3
"""Tiny random Qwen3.5 checkpoints and their reference logits, for the C loader's parity tests.

Writes, under tests/fixtures/ (or the directory given as the first argument):
  qwen3_5_text/  Qwen3_5ForCausalLM layout (model.layers.*), bf16 weights, sharded in three
                 files with model.safetensors.index.json, separate lm_head
  qwen3_5_vl/    Qwen3_5ForConditionalGeneration layout (model.language_model.*, a tiny
                 vision tower under model.visual.*), fp16 weights, one file, tied embeddings
  qwen3_5_moe/   Qwen3_5MoeForCausalLM: 4 experts, top 2, a shared expert, fp32 weights
  qwen3_next/    Qwen3NextForCausalLM: fused in_proj_qkvz / in_proj_ba, experts in layers 0, 2,
                 3 and a dense MLP in layer 1 (mlp_only_layers), norm_topk_prob false, bf16
  qwen3_5_run/   a bf16 Qwen3.5 with the tokenizer fixture's Qwen3 BPE (tokenizer.json,
                 tokenizer_config.json) and reference.json: a prompt, its ids and the greedy
                 continuation (ids and text), for `deltanet run`
Each holds config.json, the weights, and reference.safetensors:
  tokens [T] int32           the prompt
  logits [T, vocab] f32      transformers' logits of one forward over the prompt
  generated [S] int32        S greedy tokens decoded one at a time with the cache
  step_logits [S, vocab] f32 the logits of each decode step (the step that fed generated[i-1])

The weights are stored in bf16 / fp16 and the reference is computed in fp32 from the same
rounded values, so the C side (which widens to fp32 exactly) sees the very model the reference
ran. Shapes: the 3:1 pattern (GGGA), grouped value heads (2 key heads, 4 value heads), value head
dim unlike the key head dim, partial rotary (0.25 of 32), grouped-query attention.

Needs torch and transformers (>= 5, with Qwen3.5). The fixtures are committed; CI does not run
this script.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import (Qwen3_5Config, Qwen3_5ForCausalLM,
                          Qwen3_5ForConditionalGeneration, Qwen3_5MoeForCausalLM,
                          Qwen3_5MoeTextConfig, Qwen3_5TextConfig, Qwen3NextConfig,
                          Qwen3NextForCausalLM)

T_PROMPT, STEPS = 40, 32
RUN_STEPS = 12


def text_config(tie):
    return dict(
        vocab_size=311, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        layer_types=["linear_attention"] * 3 + ["full_attention"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
        linear_value_head_dim=24, linear_conv_kernel_dim=4, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.25, "mrope_section": [2, 1, 1],
                         "mrope_interleaved": True},
        tie_word_embeddings=tie, hidden_act="silu")


def randomise(model, seed):
    """Weights away from their init (norms, gates) so that every path shapes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.empty(p.shape).uniform_(-1.0, 1.5, generator=g))
            elif name.endswith("dt_bias"):
                p.copy_(torch.empty(p.shape).uniform_(-2.0, 1.0, generator=g))
            elif p.ndim == 1:
                p.copy_(torch.empty(p.shape).uniform_(-0.3, 0.3, generator=g)
                        + (1.0 if name.endswith("linear_attn.norm.weight") else 0.0))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.08)


def reference(model, vocab, seed, text_model):
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, vocab, (1, T_PROMPT), generator=g)
    with torch.no_grad():
        out = model(input_ids=tokens, use_cache=True)
        logits = out.logits[0].float().clone()
        cache = out.past_key_values
        nxt = int(torch.argmax(out.logits[0, -1]))
        generated, step_logits = [], []
        for i in range(STEPS):
            generated.append(nxt)
            pos = torch.tensor([[T_PROMPT + i]])
            kw = dict(input_ids=torch.tensor([[nxt]]), past_key_values=cache, use_cache=True)
            if text_model:
                kw["position_ids"] = pos
            out = model(**kw)
            cache = out.past_key_values
            step_logits.append(out.logits[0, -1].float().clone())
            nxt = int(torch.argmax(out.logits[0, -1]))
    return {
        "tokens": tokens[0].to(torch.int32).contiguous(),
        "logits": logits.contiguous(),
        "generated": torch.tensor(generated, dtype=torch.int32),
        "step_logits": torch.stack(step_logits).contiguous(),
    }


def round_to(model, dtype):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).float())


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
    torch.manual_seed(0)

    # the causal-LM layout, bf16, sharded
    cfg = Qwen3_5TextConfig(**text_config(tie=False))
    model = Qwen3_5ForCausalLM(cfg).float().eval()
    randomise(model, 1)
    round_to(model, torch.bfloat16)
    d = os.path.join(root, "qwen3_5_text")
    os.makedirs(d, exist_ok=True)
    ref = reference(model, cfg.vocab_size, 1, True)
    model.to(torch.bfloat16).save_pretrained(d, max_shard_size="60KB")
    save_file(ref, os.path.join(d, "reference.safetensors"))

    # the vision-language layout, fp16, tied, one file
    tc = text_config(tie=True)
    vc = dict(depth=1, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
              patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
              num_position_embeddings=16)
    cfg = Qwen3_5Config(text_config=tc, vision_config=vc, tie_word_embeddings=True)
    model = Qwen3_5ForConditionalGeneration(cfg).float().eval()
    randomise(model, 2)
    round_to(model, torch.float16)
    d = os.path.join(root, "qwen3_5_vl")
    os.makedirs(d, exist_ok=True)
    ref = reference(model, tc["vocab_size"], 2, False)
    model.to(torch.float16).save_pretrained(d)
    save_file(ref, os.path.join(d, "reference.safetensors"))

    # Qwen3.5-MoE, causal-LM layout, fp32: experts in every layer, a shared expert
    tc = text_config(tie=False)
    del tc["intermediate_size"]
    tc.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
              shared_expert_intermediate_size=20)
    cfg = Qwen3_5MoeTextConfig(**tc)
    model = Qwen3_5MoeForCausalLM(cfg).float().eval()
    randomise(model, 3)
    d = os.path.join(root, "qwen3_5_moe")
    os.makedirs(d, exist_ok=True)
    ref = reference(model, cfg.vocab_size, 3, True)
    model.save_pretrained(d)
    save_file(ref, os.path.join(d, "reference.safetensors"))

    # Qwen3-Next, bf16: fused in_proj_qkvz / in_proj_ba, experts except in layer 1 (dense)
    tc = text_config(tie=False)
    tc.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
              shared_expert_intermediate_size=20, decoder_sparse_step=1, mlp_only_layers=[1],
              norm_topk_prob=False)
    cfg = Qwen3NextConfig(**tc)
    model = Qwen3NextForCausalLM(cfg).float().eval()
    randomise(model, 4)
    round_to(model, torch.bfloat16)
    d = os.path.join(root, "qwen3_next")
    os.makedirs(d, exist_ok=True)
    ref = reference(model, cfg.vocab_size, 4, True)
    model.to(torch.bfloat16).save_pretrained(d)
    save_file(ref, os.path.join(d, "reference.safetensors"))

    # a model with a real tokenizer, for `deltanet run`: the tokenizer fixture's Qwen3 BPE
    # (tests/fixtures/tokenizer/qwen3, tools/make_tokenizer_fixture.py), a prompt encoded by
    # tokenizers and greedy decoding until a stop token or RUN_STEPS tokens
    from tokenizers import Tokenizer
    tdir = os.path.join(root, "tokenizer", "qwen3")
    tok = Tokenizer.from_file(os.path.join(tdir, "tokenizer.json"))
    tc = text_config(tie=True)
    tc["vocab_size"] = tok.get_vocab_size(with_added_tokens=True)
    cfg = Qwen3_5TextConfig(**tc)
    model = Qwen3_5ForCausalLM(cfg).float().eval()
    randomise(model, 5)
    round_to(model, torch.bfloat16)
    d = os.path.join(root, "qwen3_5_run")
    os.makedirs(d, exist_ok=True)
    prompt = "The delta rule writes: Grüße, 東京 42!"
    ids = tok.encode(prompt).ids
    stops = {tok.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>")}
    out, cache = [], None
    with torch.no_grad():
        o = model(input_ids=torch.tensor([ids]), use_cache=True)
        for i in range(RUN_STEPS):
            nxt = int(torch.argmax(o.logits[0, -1]))
            if nxt in stops:
                break
            out.append(nxt)
            o = model(input_ids=torch.tensor([[nxt]]), past_key_values=o.past_key_values,
                      position_ids=torch.tensor([[len(ids) + i]]), use_cache=True)
    model.to(torch.bfloat16).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(tdir, f), "rb") as a, open(os.path.join(d, f), "wb") as b:
            b.write(a.read())
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump({"prompt": prompt, "prompt_ids": ids, "generated": out,
                   "text": tok.decode(out, skip_special_tokens=True)}, f, ensure_ascii=False)

    for sub in ("qwen3_5_text", "qwen3_5_vl", "qwen3_5_moe", "qwen3_next", "qwen3_5_run"):
        p = os.path.join(root, sub)
        for f in sorted(os.listdir(p)):
            print(f"{sub}/{f}: {os.path.getsize(os.path.join(p, f))} bytes")
        with open(os.path.join(p, "config.json")) as f:
            print(sub, "model_type", json.load(f).get("model_type"))


if __name__ == "__main__":
    main()
