"""Build step of lstm-doctor: the fused engine's C kernel (``pip install .`` or ``-e .``).

Everything else is declared in pyproject.toml. The extension is optional: on
a machine without a C compiler the install still succeeds, and the capture
runs the NumPy engine (``--engine auto`` says so once on stderr).

Flags (gcc, clang): -O3 so the row loops vectorise; -ffp-contract=off so no
multiply-add is fused (c and h must round as NumPy's ufuncs do);
-fno-trapping-math so that the selects of the σ/tanh polynomials can be
vectorised (nothing reads the floating-point exception flags); never
-ffast-math, which would drop the NaN checks and reassociate the sums.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

UNIX_FLAGS = ["-O3", "-std=c11", "-ffp-contract=off", "-fno-trapping-math"]
MSVC_FLAGS = ["/O2", "/fp:precise"]


class BuildExt(build_ext):
    def build_extensions(self):
        flags = MSVC_FLAGS if self.compiler.compiler_type == "msvc" else UNIX_FLAGS
        for ext in self.extensions:
            ext.extra_compile_args = flags + list(ext.extra_compile_args)
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "lstm_doctor.capture.fused._kernels",
            ["lstm_doctor/capture/fused/_kernels.c"],
            optional=True,  # no compiler: install anyway, capture with the NumPy engine
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
