# OpenMP shim: every omp_* call goes through _config.h, which defines
# serial stand-ins when the compiler has no OpenMP.
cdef extern from "_config.h" nogil:
    int omp_get_max_threads()
    int omp_get_thread_num()
    int CONVKIT_OPENMP
    const char *CONVKIT_COMPILER
    const char *CONVKIT_COMPILER_FLAGS
    const char *convkit_simd_baseline()
