"""convkit: 2-D convolution and pooling for NumPy arrays, with gradients.

Cython + OpenMP kernels behind a NumPy API with PyTorch's semantics, a plain
NumPy reference (:mod:`convkit.reference`) and a small layer API
(:mod:`convkit.nn`) for building and training CNNs.
"""

__version__ = "0.1.0"

from convkit._scratch import clear_scratch_cache
from convkit._threads import get_num_threads, num_threads, set_num_threads
from convkit.functional import (
    avg_pool2d,
    avg_pool2d_backward,
    col2im,
    conv2d,
    conv2d_backward,
    get_workspace_limit,
    im2col,
    max_pool2d,
    max_pool2d_backward,
    set_workspace_limit,
    workspace_limit,
)


def show_config(file=None):
    """Print the version, compiler, OpenMP, SIMD flags, BLAS and thread count."""
    import platform
    import sys

    import numpy as np

    from convkit import _scratch, _threads
    from convkit import _lib
    from convkit._lib import _conv, _openmp, _pool

    info = _openmp.build_info()
    blas = _threads.blas_info()
    if blas:
        blas_text = "; ".join(
            f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('threading_layer')}, "
            f"{lib.get('architecture')}, {lib.get('num_threads')} threads)" for lib in blas)
    else:
        blas_text = "unknown (install threadpoolctl to see it)"
    lines = [
        f"convkit {__version__}",
        f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}",
        f"compiler: {info['compiler']}",
        f"compile flags: {info['compile_flags'] or '(none recorded)'}",
        f"OpenMP: {'yes' if info['openmp'] else 'no (kernels run serially)'}",
        f"SIMD baseline: {' '.join(info['simd_baseline']) or 'none'}; direct kernels: "
        f"{_conv.kernel_isa()}, max pooling: {_pool.pool_kernel_isa()} "
        f"(picked at import; CONVKIT_ISA=avx2|baseline caps them)",
        f"BLAS (NumPy's, used by method='im2col'): {blas_text}",
        f"threads: {get_num_threads()}",
        f"OpenMP wait policy: {_lib.WAIT_POLICY}",
        f"im2col workspace limit: {get_workspace_limit() / (1 << 20):g} MiB",
        f"scratch kept between calls: {_scratch.cached_bytes() / (1 << 20):.1f} MiB "
        f"in this thread (buffers up to {_scratch.MAX_CACHED_BYTES >> 20} MiB each)",
    ]
    print("\n".join(lines), file=file or sys.stdout)


__all__ = [
    "__version__",
    "conv2d",
    "conv2d_backward",
    "im2col",
    "col2im",
    "max_pool2d",
    "max_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "set_num_threads",
    "get_num_threads",
    "num_threads",
    "set_workspace_limit",
    "get_workspace_limit",
    "workspace_limit",
    "show_config",
]
