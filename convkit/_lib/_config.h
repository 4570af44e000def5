/* Compile-time facts about this build, and the OpenMP shim.
 *
 * Every omp_* call in convkit goes through here, so a compiler without
 * OpenMP still builds serial kernels (omp_get_max_threads() == 1).
 */
#ifndef CONVKIT_CONFIG_H
#define CONVKIT_CONFIG_H

#ifdef _OPENMP
#include <omp.h>
#define CONVKIT_OPENMP 1
#else
#define CONVKIT_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
#endif

#ifndef CONVKIT_COMPILER_FLAGS
#define CONVKIT_COMPILER_FLAGS ""
#endif

#if defined(__clang__)
#define CONVKIT_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define CONVKIT_COMPILER "gcc " __VERSION__
#elif defined(_MSC_VER)
#define CONVKIT_COMPILER "msvc"
#else
#define CONVKIT_COMPILER "unknown"
#endif

/* Instruction sets the compiler was allowed to use everywhere (baseline). */
static const char *convkit_simd_baseline(void) {
    return ""
#if defined(__SSE2__) || defined(_M_X64)
        "SSE2 "
#endif
#if defined(__AVX__)
        "AVX "
#endif
#if defined(__FMA__)
        "FMA "
#endif
#if defined(__AVX2__)
        "AVX2 "
#endif
#if defined(__AVX512F__)
        "AVX512F "
#endif
#if defined(__ARM_NEON)
        "NEON "
#endif
        ;
}

#endif
