"""Facts about the compiled build: OpenMP, compiler, SIMD baseline."""


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(CONVKIT_OPENMP)


def openmp_max_threads():
    """omp_get_max_threads() of the runtime (1 without OpenMP)."""
    return omp_get_max_threads()


def build_info():
    """dict with the compiler, its flags and the SIMD baseline of this build."""
    return {
        "compiler": CONVKIT_COMPILER.decode(),
        "compile_flags": CONVKIT_COMPILER_FLAGS.decode(),
        "simd_baseline": convkit_simd_baseline().decode().split(),
        "openmp": bool(CONVKIT_OPENMP),
    }
