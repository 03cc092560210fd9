"""The ctypes mirror of the C ABI (deltanet/_lib.py) against the header: a small C program
compiled here prints sizeof and offsetof of every field of every params struct, which must equal
the ctypes layout, and the packed decode-path format must give the same bytes as the struct."""

import ctypes
import os
import shutil
import subprocess

import pytest

from deltanet import _lib

HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "include")


def leaves(cls, prefix="", base=0):
    for name, typ in cls._fields_:
        off = base + getattr(cls, name).offset
        if isinstance(typ, type) and issubclass(typ, ctypes.Structure):
            yield from leaves(typ, f"{prefix}{name}.", off)
        else:
            yield f"{prefix}{name}", off


@pytest.mark.skipif(not shutil.which("cc"), reason="no C compiler")
def test_struct_layout_matches_header(tmp_path):
    lines = ["#include <deltanet.h>", "#include <stddef.h>", "#include <stdio.h>", "int main(void) {"]
    for cname, cls in _lib.STRUCTS.items():
        lines.append(f'printf("{cname} sizeof %zu\\n", sizeof({cname}));')
        for field, _ in leaves(cls):
            lines.append(f'printf("{cname} {field} %zu\\n", offsetof({cname}, {field}));')
    lines.append("return 0; }")
    src = tmp_path / "abi.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "abi"
    subprocess.check_call(["cc", "-I", HEADER, str(src), "-o", str(exe)])
    c = dict(line.rsplit(" ", 1) for line in subprocess.check_output([str(exe)], text=True).splitlines())
    for cname, cls in _lib.STRUCTS.items():
        assert int(c[f"{cname} sizeof"]) == ctypes.sizeof(cls), cname
        for field, off in leaves(cls):
            assert int(c[f"{cname} {field}"]) == off, f"{cname}.{field}"


def test_packed_params_equal_struct():
    p = _lib.dn_la_params_default(3, 2, 5, 2, 4, 16, 8)
    p.q, p.q_s.b, p.q_s.t, p.q_s.h = 1000, 7, 8, 9
    p.scale, p.qk_l2norm, p.impl, p.n_seqs = 0.5, 1, 2, 3
    values = []
    for field, _ in leaves(_lib.LaParams):
        obj = p
        for part in field.split("."):
            obj = getattr(obj, part)
        values.append(obj or 0)
    assert _lib.LA_PACK.pack(*values) == bytes(p)
