"""Hugging Face transformers' Qwen3.5 / Qwen3-Next models on deltanet's Gated DeltaNet kernels.

Without flash-linear-attention (GPU only), transformers runs the Gated DeltaNet layers of these
models on CPU through pure-torch fallbacks of the chunked and the recurrent rule. One call swaps
both for deltanet's, for the layers of one model, with no other change to the user's code:

    model = AutoModelForCausalLM.from_pretrained(...)      # or from a config
    deltanet.transformers.patch_qwen3_5(model)              # returns the number of layers patched
    model.generate(...)                                      # prefill: chunkwise, decode: recurrent
    deltanet.transformers.unpatch(model)                     # back to transformers' functions

It applies to every module of the model whose modeling file calls `torch_chunk_gated_delta_rule`
and `torch_recurrent_gated_delta_rule` (Qwen3_5GatedDeltaNet, Qwen3_5MoeGatedDeltaNet,
Qwen3NextGatedDeltaNet). The modeling module's two names are replaced once by dispatchers that
call deltanet while one of the patched layers runs (a per-thread flag set by the layer's
wrapped forward) and transformers' own function otherwise, so other models in the process are
unaffected. Packed sequences (cu_seqlens) are supported, which the torch fallback refuses.
"""

import sys
import threading

from . import fla

__all__ = ["patch_qwen3_5", "patch_qwen3_next", "unpatch"]

_NAMES = ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule")
_local = threading.local()


def _chunk(query, key, value, g, beta, chunk_size=64, initial_state=None, output_final_state=False,
           use_qk_l2norm_in_kernel=False, cu_seqlens=None, **unused):
    # transformers' call passes its attention plumbing in **kwargs (the hub wrapper filters them
    # by signature); chunk_size is the fallback's own padding size, not a result-changing option
    return fla.chunk_gated_delta_rule(query, key, value, g, beta, initial_state=initial_state,
                                      output_final_state=output_final_state,
                                      use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                                      cu_seqlens=cu_seqlens)


def _recurrent(query, key, value, g, beta, initial_state=None, output_final_state=False,
               use_qk_l2norm_in_kernel=False, cu_seqlens=None, **unused):
    return fla.fused_recurrent_gated_delta_rule(query, key, value, g, beta=beta,
                                                initial_state=initial_state,
                                                output_final_state=output_final_state,
                                                use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                                                cu_seqlens=cu_seqlens)


def _dispatcher(ours, theirs):
    def rule(*args, **kwargs):
        if getattr(_local, "depth", 0):
            return ours(*args, **kwargs)
        return theirs(*args, **kwargs)

    rule.__wrapped__ = theirs
    rule._deltanet_original = theirs
    return rule


def _install(module):
    """Replaces the modeling module's two rule functions by dispatchers (once per module)."""
    for name, ours in zip(_NAMES, (_chunk, _recurrent)):
        current = getattr(module, name)
        if not hasattr(current, "_deltanet_original"):
            setattr(module, name, _dispatcher(ours, current))


def _wrap_forward(layer):
    forward = layer.forward

    def patched_forward(*args, **kwargs):
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            return forward(*args, **kwargs)
        finally:
            _local.depth -= 1

    patched_forward._deltanet_original = forward
    layer.forward = patched_forward


def _gdn_layers(model):
    for m in model.modules():
        module = sys.modules.get(type(m).__module__)
        if module is not None and all(hasattr(module, n) for n in _NAMES) \
                and type(m).__name__.endswith("GatedDeltaNet"):
            yield m, module


def patch_qwen3_5(model):
    """Makes the Gated DeltaNet layers of `model` (a transformers Qwen3.5, Qwen3.5-MoE or
    Qwen3-Next model, any head) run deltanet's kernels. Returns the number of layers patched
    (calling it again patches nothing new). Raises ValueError if the model has no such layer."""
    layers = list(_gdn_layers(model))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Gated DeltaNet layer that deltanet knows "
                         "(Qwen3.5, Qwen3.5-MoE, Qwen3-Next)")
    n = 0
    for layer, module in layers:
        _install(module)
        if not hasattr(layer.forward, "_deltanet_original"):
            _wrap_forward(layer)
            n += 1
    return n


patch_qwen3_next = patch_qwen3_5


def unpatch(model):
    """Gives the model's Gated DeltaNet layers back transformers' own functions."""
    n = 0
    for layer, _ in _gdn_layers(model):
        if hasattr(layer.forward, "_deltanet_original"):
            del layer.forward  # the instance attribute; the class's forward shows again
            n += 1
    return n
