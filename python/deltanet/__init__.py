"""deltanet from Python: the C library's ops on numpy arrays (this module), as PyTorch custom
operators (deltanet.ops), under flash-linear-attention's names (deltanet.fla), and inside Hugging
Face transformers' Qwen3.5 / Qwen3-Next models (deltanet.transformers). docs/PYTHON.md has the
usage; the math is docs/OPS.md.

numpy functions take float arrays (converted to float32 when they are not), return float32
arrays, and raise ValueError / NotImplementedError / MemoryError carrying the C library's message
when it rejects a call. Backward functions return the gradients of every input, None where the
call had no such input.
"""

import inspect as _inspect

from . import _impl
from ._arrays import NUMPY as _NUMPY
from ._lib import AllocationError, ArgumentError, DeltanetError, ShapeError, UnsupportedError
from ._lib import dn_build_info as _build_info
from ._lib import dn_get_num_threads as _get_threads
from ._lib import check as _check
from ._lib import dn_cuda_release_scratch as _release_scratch
from ._lib import dn_set_num_threads as _set_threads

__version__ = "0.1.0"


def _numpy(f):
    def call(*args, **kwargs):
        return f(_NUMPY, *args, **kwargs)

    sig = _inspect.signature(f)
    call.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])
    call.__name__ = call.__qualname__ = f.__name__
    call.__doc__ = f.__doc__
    return call


la_forward = _numpy(_impl.la_forward)
la_backward = _numpy(_impl.la_backward)
la_forward_train = _numpy(_impl.la_forward_train)
la_step = _numpy(_impl.la_step)
attn_forward = _numpy(_impl.attn_forward)
attn_backward = _numpy(_impl.attn_backward)
mamba_forward = _numpy(_impl.mamba_forward)
mamba_backward = _numpy(_impl.mamba_backward)
mamba2_forward = _numpy(_impl.mamba2_forward)
mamba2_backward = _numpy(_impl.mamba2_backward)
rwkv4_forward = _numpy(_impl.rwkv4_forward)
rwkv4_backward = _numpy(_impl.rwkv4_backward)
conv_forward = _numpy(_impl.conv_forward)
conv_backward = _numpy(_impl.conv_backward)


def build_info():
    """The C library's one-line build description (version, compiler, SIMD levels, OpenMP)."""
    return _build_info().decode()


def set_num_threads(n):
    """Threads of the C library's fast paths (0: all cores)."""
    _set_threads(int(n))


def get_num_threads():
    return _get_threads()


def cuda_release_scratch():
    """Hands back to the driver the GPU memory that the C kernels keep in their scratch pool
    between calls (their workspaces: gigabytes after a long-context backward; the pool is the
    library's own, outside torch's allocator and its statistics). Raises DeltanetError without a
    CUDA build or device."""
    _check(_release_scratch(), "cuda_release_scratch")


__all__ = ["la_forward", "la_backward", "la_forward_train", "la_step", "attn_forward", "attn_backward",
           "mamba_forward", "mamba_backward", "mamba2_forward", "mamba2_backward", "rwkv4_forward",
           "rwkv4_backward", "conv_forward", "conv_backward", "build_info", "set_num_threads",
           "get_num_threads", "cuda_release_scratch", "DeltanetError", "ShapeError", "ArgumentError", "UnsupportedError",
           "AllocationError"]
