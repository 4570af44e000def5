"""Build the Cython kernels of convkit.

Environment switches (all optional):

CONVKIT_REQUIRE_OPENMP=1  fail the build when the compiler cannot do OpenMP
                          (the default is a warning and a serial build).
CONVKIT_NO_OPENMP=1       build serial kernels even where OpenMP works (what a
                          compiler without OpenMP gets; for testing that path).
CONVKIT_NATIVE=1          add -march=native (not portable: the wheel only runs
                          on CPUs like the one that built it).
CONVKIT_DEBUG=1           -O0 -g and Cython bounds/wraparound checks back on.
CONVKIT_SANITIZE=1        build with AddressSanitizer + UndefinedBehaviorSanitizer
                          (run Python with LD_PRELOAD of libasan, see README).
"""

import os
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent.resolve()
LIB = Path("convkit") / "_lib"


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


OPENMP_PROBE = textwrap.dedent(
    """\
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d", n > 0);
        return omp_get_max_threads() > 0 ? 0 : 1;
    }
    """
)


def _openmp_flags(compiler):
    """Return (compile_args, link_args) that make OpenMP work, or None.

    Tries the flag spellings of GCC/Clang and MSVC by compiling and linking a
    probe, the way scikit-learn and POT detect OpenMP.
    """
    if compiler.compiler_type == "msvc":
        candidates = [(["/openmp"], [])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"]),
                      (["-Xpreprocessor", "-fopenmp"], ["-lomp"])]
    for compile_args, link_args in candidates:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "probe.c"
            src.write_text(OPENMP_PROBE)
            try:
                objects = compiler.compile([str(src)], output_dir=tmp,
                                           extra_postargs=compile_args)
                exe = str(Path(tmp) / "probe")
                compiler.link_executable(objects, exe, extra_postargs=link_args)
                subprocess.run([exe], check=True, capture_output=True, timeout=60)
            except Exception:
                continue
        return compile_args, link_args
    return None


def _supports(compiler, flag):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "flag.c"
        src.write_text("int main(void) { return 0; }\n")
        try:
            compiler.compile([str(src)], output_dir=tmp, extra_postargs=[flag, "-Werror"])
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    """build_ext that probes OpenMP and sets optimisation flags per compiler."""

    def build_extensions(self):
        compiler = self.compiler
        msvc = compiler.compiler_type == "msvc"
        compile_args, link_args = [], []
        if msvc:
            compile_args += ["/O2"]
        elif _flag("CONVKIT_DEBUG"):
            compile_args += ["-O0", "-g"]
        else:
            compile_args += ["-O3"]
            # Vectorise float reductions only where the code asks for it
            # (omp simd); no -ffast-math: NaN/inf must propagate.
            if _supports(compiler, "-fno-math-errno"):
                compile_args.append("-fno-math-errno")
            # Every loop starts a 64-byte line, so a short hot loop's speed
            # no longer turns on where unrelated code moved it: stride-2
            # col2im's one-element loop ran resnet-3x3-s2's grad_input 8%
            # slower when an edit elsewhere left it across a line (Zen 4).
            if _supports(compiler, "-falign-loops=64"):
                compile_args.append("-falign-loops=64")
        if not msvc and _flag("CONVKIT_NATIVE"):
            compile_args.append("-march=native")
        if not msvc and _flag("CONVKIT_SANITIZE"):
            san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                   "-fno-sanitize-recover=undefined"]
            compile_args += san + ["-g"]
            link_args += san

        openmp = None if _flag("CONVKIT_NO_OPENMP") else _openmp_flags(compiler)
        if openmp is None:
            message = ("convkit: no OpenMP (the C compiler does not support it, or "
                       "CONVKIT_NO_OPENMP is set); building serial kernels "
                       "(show_config() will say so).")
            if _flag("CONVKIT_REQUIRE_OPENMP"):
                raise RuntimeError(message + " CONVKIT_REQUIRE_OPENMP is set.")
            warnings.warn(message)
            print("WARNING: " + message, file=sys.stderr)
        else:
            compile_args += openmp[0]
            link_args += openmp[1]

        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args) + compile_args
            ext.extra_link_args = list(ext.extra_link_args) + link_args
            ext.define_macros = list(ext.define_macros) + [
                ("CONVKIT_COMPILER_FLAGS", '"' + " ".join(compile_args) + '"'),
            ]
        super().build_extensions()


def _extensions():
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_25_API_VERSION")]
    exts = []
    for pyx in sorted((HERE / LIB).glob("*.pyx")):
        name = "convkit._lib." + pyx.stem
        exts.append(Extension(name, [str(LIB / pyx.name)],
                              include_dirs=[np.get_include(), str(LIB)],
                              define_macros=macros))
    debug = _flag("CONVKIT_DEBUG") or _flag("CONVKIT_SANITIZE")
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": debug,
        "nonecheck": False,
        "embedsignature": True,
    }
    return cythonize(exts, compiler_directives=directives, quiet=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
