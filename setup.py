"""Builds libdeltanet.so with the project's Makefile (`make shared`) and puts it inside the
deltanet package, so the wheel carries the library it was built with. Knobs of the Makefile
pass through DELTANET_MAKE_FLAGS, e.g. DELTANET_MAKE_FLAGS="BLAS=0 OPENMP=0" pip install .
"""

import os
import shlex
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = os.path.dirname(os.path.abspath(__file__))


class BuildWithLibrary(build_py):
    def run(self):
        flags = shlex.split(os.environ.get("DELTANET_MAKE_FLAGS", ""))
        jobs = os.environ.get("DELTANET_MAKE_JOBS", "2")
        subprocess.check_call(["make", f"-j{jobs}", *flags, "shared"], cwd=ROOT)
        lib = subprocess.check_output(["make", "-s", *flags, "print-shared"], cwd=ROOT, text=True)
        super().run()
        dest = os.path.join(self.build_lib, "deltanet")
        os.makedirs(dest, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, lib.strip().splitlines()[-1]), os.path.join(dest, "libdeltanet.so"))


class BinaryDistribution(Distribution):
    """The wheel holds a compiled library: tag it for this platform, not py3-none-any."""

    def has_ext_modules(self):
        return True


setup(options={"build": {"build_base": "build/python"}},
      cmdclass={"build_py": BuildWithLibrary}, distclass=BinaryDistribution)
