"""How the ops see arrays: one small adapter for numpy arrays and one for torch tensors.

The op bodies in _impl.py are written once against this interface (prepare an input, allocate an
output, take a pointer and element strides), so numpy and torch run the same argument handling.
An input keeps its strides when its last dimension is contiguous (the C ABI takes the strides of
the first three dimensions); anything else is copied once into fp32 contiguous memory.
"""

import numpy as np

from . import _lib


def _shape_error(msg):
    err = _lib.ShapeError(msg)
    err.status = _lib.ERR_SHAPE
    return err


class NumpyArrays:
    kind = "numpy.ndarray"

    @staticmethod
    def prep(x, name, contiguous=False):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must hold floating-point values, got dtype {x.dtype}")
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        st = x.strides
        if x.ndim == 0 or contiguous or st[-1] != 4 or min(st) < 0 or any(s % 4 for s in st):
            x = np.ascontiguousarray(x)
        return x

    @staticmethod
    def prep_index(x, name):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
        if x.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integers, got dtype {x.dtype}")
        if x.ndim != 1:
            raise _shape_error(f"{name} must be 1-D, got shape {tuple(x.shape)}")
        return np.ascontiguousarray(x, dtype=np.int64)

    @staticmethod
    def ptr(x):
        return x.ctypes.data

    @staticmethod
    def strides(x):
        return tuple(s // 4 for s in x.strides)

    @classmethod
    def pin(cls, x, name):
        """(the prepared array, its view): what the packed params need, the array kept alive."""
        x = cls.prep(x, name)
        return x, cls.view(x)

    @staticmethod
    def view(x):
        """(pointer, strides of the first three dims) as the ABI's packed fields; zeros for None."""
        if x is None:
            return (0, 0, 0, 0)
        s = x.strides
        return (x.__array_interface__["data"][0], s[0] // 4, s[1] // 4 if len(s) > 1 else 0,
                s[2] // 4 if len(s) > 2 else 0)

    @staticmethod
    def shape(x):
        return tuple(x.shape)

    @staticmethod
    def empty(shape):
        return np.empty(shape, np.float32)

    @staticmethod
    def zeros(shape):
        return np.zeros(shape, np.float32)

    @staticmethod
    def aligned(n):
        """n float32, 64-byte aligned (the library's training buffer)."""
        raw = np.empty(n + 16, np.float32)
        off = (-raw.ctypes.data % 64) // 4
        return raw[off:off + n]


class TorchArrays:
    """fp32 CPU tensors (the torch op bodies receive tensors already converted to fp32)."""

    kind = "torch.Tensor"

    def __init__(self):
        import torch

        self.torch = torch

    def prep(self, x, name, contiguous=False):
        torch = self.torch
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"{name} is on {x.device}: this build of deltanet runs on CPU tensors only")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.dtype != torch.float32:
            x = x.float()
        if x.dim() and (contiguous or x.stride(-1) != 1):
            x = x.contiguous()
        return x

    def prep_index(self, x, name):
        torch = self.torch
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"{name} is on {x.device}: this build of deltanet runs on CPU tensors only")
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got {x.dtype}")
        if x.dim() != 1:
            raise _shape_error(f"{name} must be 1-D, got shape {tuple(x.shape)}")
        return x.to(torch.int64).contiguous()

    @staticmethod
    def ptr(x):
        return x.data_ptr()

    @staticmethod
    def strides(x):
        return x.stride()

    def pin(self, x, name):
        x = self.prep(x, name)
        return x, self.view(x)

    @staticmethod
    def view(x):
        if x is None:
            return (0, 0, 0, 0)
        s = x.stride()
        if len(s) >= 3:
            return (x.data_ptr(), s[0], s[1], s[2])
        return (x.data_ptr(), s[0] if s else 0, s[1] if len(s) > 1 else 0, 0)

    @staticmethod
    def shape(x):
        return x.shape  # torch.Size is a tuple

    # Outputs are allocated by numpy and shared with torch: a third of the cost of torch.empty
    # (allocation and release) on the decode path, and the same CPU memory.
    def empty(self, shape):
        return self.torch.from_numpy(np.empty(shape, np.float32))

    def zeros(self, shape):
        return self.torch.from_numpy(np.zeros(shape, np.float32))

    def aligned(self, n):
        return self.torch.from_numpy(NumpyArrays.aligned(n))


class CheckedTorchArrays(TorchArrays):
    """Tensors the caller has already checked (type, CPU, fp32): only the layout is handled."""

    @staticmethod
    def prep(x, name, contiguous=False):
        if x.is_contiguous():  # a cached flag: cheaper than reading a stride
            return x
        if contiguous or (x.dim() and x.stride(-1) != 1):
            return x.contiguous()
        return x

    @staticmethod
    def pin(x, name):
        s = x.stride()  # one read of the strides serves the layout check and the view
        if not s:
            return x, (x.data_ptr(), 0, 0, 0)
        if s[-1] != 1:
            x = x.contiguous()
            s = x.stride()
        if len(s) >= 3:
            return x, (x.data_ptr(), s[0], s[1], s[2])
        return x, (x.data_ptr(), s[0], s[1] if len(s) > 1 else 0, 0)


NUMPY = NumpyArrays()
_TORCH = None


def torch_arrays(checked=False):
    global _TORCH
    if _TORCH is None:
        _TORCH = (TorchArrays(), CheckedTorchArrays())
    return _TORCH[1 if checked else 0]
