"""The C ABI of libdeltanet through ctypes: the library, its params structs, and the status check.

Every struct here mirrors one in include/deltanet.h field by field (python/tests/test_abi.py
compiles a C program that prints the C layout and compares). Nothing here computes anything.
"""

import ctypes
import os
import sys
from ctypes import POINTER, c_char_p, c_double, c_float, c_int, c_int64, c_size_t, c_void_p

_HERE = os.path.dirname(os.path.abspath(__file__))
_fp = POINTER(c_float)
_ip = POINTER(c_int64)


def _find_library():
    """The packaged library, else $DELTANET_LIB, else the repository's build/ (running in-tree)."""
    env = os.environ.get("DELTANET_LIB")
    candidates = [env] if env else []
    candidates += [
        os.path.join(_HERE, "libdeltanet.so"),
        os.path.join(_HERE, "..", "..", "build", "libdeltanet.so"),
    ]
    for path in candidates:
        if path and os.path.exists(path):
            return os.path.abspath(path)
    raise ImportError(
        "deltanet: libdeltanet.so not found (looked in "
        + ", ".join(c for c in candidates if c)
        + "); install the package with `pip install .` from the repository, or set DELTANET_LIB"
    )


lib = ctypes.CDLL(_find_library())

# --- enums (include/deltanet.h) -------------------------------------------------------------------
OK, ERR_NULL, ERR_SHAPE, ERR_STRIDE, ERR_ARG, ERR_UNSUPPORTED, ERR_ALLOC, ERR_FULL, ERR_FORMAT, ERR_IO = range(10)
OPS = {"linear_attn": 0, "gla": 1, "deltanet": 2, "gdn": 3, "softmax_attn": 4, "mamba1": 5,
       "mamba2": 6, "rwkv4": 7, "short_conv": 8}
IMPLS = {"auto": 0, "ref": 1, "recurrent": 2, "chunk": 3}


class Strides(ctypes.Structure):
    _fields_ = [("b", c_int64), ("t", c_int64), ("h", c_int64)]


def _struct(name, fields):
    return type(name, (ctypes.Structure,), {"_fields_": fields})


def _tensor(name):
    """A pointer field and its strides field, the pattern of every activation in the ABI."""
    return [(name, c_void_p), (name + "_s", Strides)]


LaParams = _struct("LaParams", [("op", c_int)] + [(n, c_int64) for n in "B T H HV K V".split()]
                   + _tensor("q") + _tensor("k") + _tensor("v") + _tensor("g") + _tensor("beta")
                   + _tensor("o") + [("initial_state", c_void_p), ("final_state", c_void_p),
                                     ("cu_seqlens", c_void_p), ("n_seqs", c_int64), ("scale", c_float),
                                     ("qk_l2norm", c_int), ("chunk_size", c_int), ("impl", c_int),
                                     ("n_threads", c_int), ("workspace", c_void_p),
                                     ("workspace_bytes", c_size_t), ("dtype", c_int),
                                     ("device", c_int), ("stream", c_void_p),
                                     ("state_dtype", c_int)]
                   + _tensor("gate_a") + _tensor("gate_b")
                   + [("A_log", c_void_p), ("dt_bias", c_void_p)])
LaBwdParams = _struct("LaBwdParams", [("fwd", LaParams)] + _tensor("dout")
                      + [("dfinal_state", c_void_p)] + _tensor("dq") + _tensor("dk") + _tensor("dv")
                      + _tensor("dg") + _tensor("dbeta")
                      + [("dinitial_state", c_void_p), ("workspace", c_void_p),
                         ("workspace_bytes", c_size_t), ("saved", c_void_p),
                         ("saved_bytes", c_size_t)])
AttnParams = _struct("AttnParams", [(n, c_int64) for n in "B TQ TK H HKV D".split()]
                     + _tensor("q") + _tensor("k") + _tensor("v") + _tensor("o")
                     + [("lse", c_void_p), ("scale", c_float), ("window", c_int64), ("impl", c_int),
                        ("n_threads", c_int)])
AttnBwdParams = _struct("AttnBwdParams", [("fwd", AttnParams)] + _tensor("dout") + _tensor("dq")
                        + _tensor("dk") + _tensor("dv"))
MambaParams = _struct("MambaParams", [(n, c_int64) for n in "B T D N G".split()]
                      + _tensor("x") + _tensor("dt") + [("A", c_void_p)] + _tensor("Bm")
                      + _tensor("Cm") + [("Dskip", c_void_p), ("dt_bias", c_void_p),
                                         ("dt_softplus", c_int)] + _tensor("z") + _tensor("y")
                      + [("initial_state", c_void_p), ("final_state", c_void_p), ("impl", c_int),
                         ("n_threads", c_int)])
MambaBwdParams = _struct("MambaBwdParams", [("fwd", MambaParams)] + _tensor("dy")
                         + [("dfinal_state", c_void_p)] + _tensor("dx") + _tensor("ddt")
                         + _tensor("dBm") + _tensor("dCm") + _tensor("dz")
                         + [(n, c_void_p) for n in "dA dDskip ddt_bias dinitial_state".split()])
Mamba2Params = _struct("Mamba2Params", [(n, c_int64) for n in "B T H P N G".split()]
                       + _tensor("x") + _tensor("dt") + [("A", c_void_p)] + _tensor("Bm")
                       + _tensor("Cm") + [("Dskip", c_void_p), ("dt_bias", c_void_p),
                                          ("dt_softplus", c_int)] + _tensor("y")
                       + [("initial_state", c_void_p), ("final_state", c_void_p), ("impl", c_int),
                          ("chunk_size", c_int), ("n_threads", c_int)])
Mamba2BwdParams = _struct("Mamba2BwdParams", [("fwd", Mamba2Params)] + _tensor("dy")
                          + [("dfinal_state", c_void_p)] + _tensor("dx") + _tensor("ddt")
                          + _tensor("dBm") + _tensor("dCm")
                          + [(n, c_void_p) for n in "dA dDskip ddt_bias dinitial_state".split()])
Rwkv4Params = _struct("Rwkv4Params", [(n, c_int64) for n in "B T C".split()] + _tensor("k")
                      + _tensor("v") + [("time_decay", c_void_p), ("time_first", c_void_p)]
                      + _tensor("y") + [("initial_state", c_void_p), ("final_state", c_void_p),
                                        ("impl", c_int), ("n_threads", c_int)])
Rwkv4BwdParams = _struct("Rwkv4BwdParams", [("fwd", Rwkv4Params)] + _tensor("dy")
                         + [("dfinal_state", c_void_p)] + _tensor("dk") + _tensor("dv")
                         + [(n, c_void_p) for n in "dtime_decay dtime_first dinitial_state".split()])
ConvParams = _struct("ConvParams", [(n, c_int64) for n in "B T D W".split()] + _tensor("x")
                     + [("weight", c_void_p), ("bias", c_void_p), ("silu", c_int)] + _tensor("y")
                     + [("initial_state", c_void_p), ("final_state", c_void_p), ("impl", c_int),
                        ("n_threads", c_int)])
ConvBwdParams = _struct("ConvBwdParams", [("fwd", ConvParams)] + _tensor("dy")
                        + [("dfinal_state", c_void_p)] + _tensor("dx")
                        + [(n, c_void_p) for n in "dweight dbias dinitial_state".split()])

# The ABI's structs by their C names (test_abi.py compares each with sizeof/offsetof in C).
STRUCTS = {"dn_strides": Strides, "dn_la_params": LaParams, "dn_la_bwd_params": LaBwdParams,
           "dn_attn_params": AttnParams, "dn_attn_bwd_params": AttnBwdParams,
           "dn_mamba_params": MambaParams, "dn_mamba_bwd_params": MambaBwdParams,
           "dn_mamba2_params": Mamba2Params, "dn_mamba2_bwd_params": Mamba2BwdParams,
           "dn_rwkv4_params": Rwkv4Params, "dn_rwkv4_bwd_params": Rwkv4BwdParams,
           "dn_conv_params": ConvParams, "dn_conv_bwd_params": ConvBwdParams}


def _fn(name, restype, argtypes):
    f = getattr(lib, name)
    f.restype, f.argtypes = restype, argtypes
    return f


dn_last_error = _fn("dn_last_error", c_char_p, [])
dn_status_str = _fn("dn_status_str", c_char_p, [c_int])
dn_build_info = _fn("dn_build_info", c_char_p, [])
dn_set_num_threads = _fn("dn_set_num_threads", None, [c_int])
dn_get_num_threads = _fn("dn_get_num_threads", c_int, [])
dn_isa_name = _fn("dn_isa_name", c_char_p, [c_int])
dn_isa_active = _fn("dn_isa_active", c_int, [])
dn_isa_from_name = _fn("dn_isa_from_name", c_int, [c_char_p, POINTER(c_int)])
dn_set_isa = _fn("dn_set_isa", c_int, [c_int])
dn_cuda_release_scratch = _fn("dn_cuda_release_scratch", c_int, [])

dn_la_params_default = _fn("dn_la_params_default", LaParams, [c_int] + [c_int64] * 6)
dn_la_forward = _fn("dn_la_forward", c_int, [POINTER(LaParams)])
dn_la_bwd_params_default = _fn("dn_la_bwd_params_default", LaBwdParams, [POINTER(LaParams)])
dn_la_backward = _fn("dn_la_backward", c_int, [POINTER(LaBwdParams)])
dn_la_saved_size = _fn("dn_la_saved_size", c_int, [POINTER(LaParams), POINTER(c_size_t)])
dn_la_forward_train = _fn("dn_la_forward_train", c_int, [POINTER(LaParams), c_void_p, c_size_t])
dn_la_step = _fn("dn_la_step", c_int, [c_int] + [c_void_p] * 7 + [c_int64] * 5 + [c_float, c_int])
dn_attn_params_default = _fn("dn_attn_params_default", AttnParams, [c_int64] * 5)
dn_attn_forward = _fn("dn_attn_forward", c_int, [POINTER(AttnParams)])
dn_attn_bwd_params_default = _fn("dn_attn_bwd_params_default", AttnBwdParams, [POINTER(AttnParams)])
dn_attn_backward = _fn("dn_attn_backward", c_int, [POINTER(AttnBwdParams)])
dn_mamba_params_default = _fn("dn_mamba_params_default", MambaParams, [c_int64] * 5)
dn_mamba_forward = _fn("dn_mamba_forward", c_int, [POINTER(MambaParams)])
dn_mamba_bwd_params_default = _fn("dn_mamba_bwd_params_default", MambaBwdParams, [POINTER(MambaParams)])
dn_mamba_backward = _fn("dn_mamba_backward", c_int, [POINTER(MambaBwdParams)])
dn_mamba2_params_default = _fn("dn_mamba2_params_default", Mamba2Params, [c_int64] * 6)
dn_mamba2_forward = _fn("dn_mamba2_forward", c_int, [POINTER(Mamba2Params)])
dn_mamba2_bwd_params_default = _fn("dn_mamba2_bwd_params_default", Mamba2BwdParams, [POINTER(Mamba2Params)])
dn_mamba2_backward = _fn("dn_mamba2_backward", c_int, [POINTER(Mamba2BwdParams)])
dn_rwkv4_params_default = _fn("dn_rwkv4_params_default", Rwkv4Params, [c_int64] * 3)
dn_rwkv4_forward = _fn("dn_rwkv4_forward", c_int, [POINTER(Rwkv4Params)])
dn_rwkv4_bwd_params_default = _fn("dn_rwkv4_bwd_params_default", Rwkv4BwdParams, [POINTER(Rwkv4Params)])
dn_rwkv4_backward = _fn("dn_rwkv4_backward", c_int, [POINTER(Rwkv4BwdParams)])
dn_conv_params_default = _fn("dn_conv_params_default", ConvParams, [c_int64] * 4)
dn_conv_forward = _fn("dn_conv_forward", c_int, [POINTER(ConvParams)])
dn_conv_bwd_params_default = _fn("dn_conv_bwd_params_default", ConvBwdParams, [POINTER(ConvParams)])
dn_conv_backward = _fn("dn_conv_backward", c_int, [POINTER(ConvBwdParams)])


# --- errors ---------------------------------------------------------------------------------------
class DeltanetError(Exception):
    """A non-OK dn_status; .status is the code, the message is dn_last_error()."""

    status = None


class ShapeError(DeltanetError, ValueError):
    pass


class ArgumentError(DeltanetError, ValueError):
    pass


class UnsupportedError(DeltanetError, NotImplementedError):
    pass


class AllocationError(DeltanetError, MemoryError):
    pass


_ERRORS = {ERR_NULL: ArgumentError, ERR_SHAPE: ShapeError, ERR_STRIDE: ShapeError,
           ERR_ARG: ArgumentError, ERR_UNSUPPORTED: UnsupportedError, ERR_ALLOC: AllocationError}


def raise_status(status, where):
    """Raises the Python exception for a non-OK status, with the C library's message."""
    msg = (dn_last_error() or b"").decode("utf-8", "replace")
    kind = (dn_status_str(status) or b"").decode()
    cls = _ERRORS.get(status, DeltanetError)
    err = cls(f"{where}: {msg} ({kind})")
    err.status = status
    raise err


def check(status, where):
    if status:
        raise_status(status, where)


# --- the decode-step call path --------------------------------------------------------------------
# A params struct filled field by field costs a few microseconds per field through ctypes; a
# decode step fills ~40. struct.pack writes the same bytes in one call: the format is derived from
# the ctypes layout above (offsets, padding, sizeof), so the two cannot disagree.
import struct as _struct

_CODES = {c_int64: "q", c_void_p: "Q", c_float: "f", c_int: "i", c_size_t: "Q", c_double: "d"}


def _leaves(cls, base=0):
    for name, typ in cls._fields_:
        off = base + getattr(cls, name).offset
        if isinstance(typ, type) and issubclass(typ, ctypes.Structure):
            yield from _leaves(typ, off)
        else:
            yield off, typ


def packer(cls):
    """struct.Struct whose pack(*leaf values in field order) gives cls's bytes (pointers as ints)."""
    fmt, pos = "<", 0
    for off, typ in _leaves(cls):
        if off > pos:
            fmt += f"{off - pos}x"
        fmt += _CODES[typ]
        pos = off + ctypes.sizeof(typ)
    if ctypes.sizeof(cls) > pos:
        fmt += f"{ctypes.sizeof(cls) - pos}x"
    s = _struct.Struct(fmt)
    assert s.size == ctypes.sizeof(cls), (cls.__name__, s.size, ctypes.sizeof(cls))
    return s


LA_PACK = packer(LaParams)
# dn_la_forward taking the packed bytes (a separate function object: its own argtypes)
dn_la_forward_packed = lib["dn_la_forward"]
dn_la_forward_packed.restype, dn_la_forward_packed.argtypes = c_int, [c_char_p]
