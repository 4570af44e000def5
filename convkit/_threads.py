"""How many threads convkit's kernels use, and BLAS limits around them.

The count is resolved here, once per call, in Python; kernels receive it as
their last argument. ``set_num_threads`` changes the process-wide default;
``num_threads`` overrides it inside a ``with`` block for the current thread
(or asyncio task) only, so concurrent callers do not disturb each other.
"""

import concurrent.futures
import contextlib
import contextvars
import os
import threading

from convkit._lib import _openmp

_override = contextvars.ContextVar("convkit_num_threads", default=None)
_default = None
# Whether a call of this process may have started OpenMP threads, and
# whether this process was forked after one did (see get_num_threads).
_teams_started = False
_forked_after_teams = False


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _initial_threads():
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n >= 1:
            return n
    return _cpu_count()


def _check_count(n):
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
        raise TypeError(f"the number of threads must be an int, got {n!r}")
    n = int(n.__index__()) if not isinstance(n, int) else n
    if n < 1:
        raise ValueError(f"the number of threads must be >= 1, got {n}")
    return n


def set_num_threads(n):
    """Set the number of threads convkit's kernels use (process-wide default)."""
    global _default
    _default = _check_count(n)


def get_num_threads():
    """Threads the next kernel call will use (1 when built without OpenMP).

    Also 1 in a process forked (``os.fork``, multiprocessing's "fork") after
    convkit ran kernels on several threads: GCC's OpenMP runtime would wait
    there forever for the parent's threads, which the child does not have.
    """
    if not _openmp.openmp_enabled() or _forked_after_teams:
        return 1
    override = _override.get()
    if override is not None:
        return override
    if _default is None:
        set_num_threads(_initial_threads())
    return _default


@contextlib.contextmanager
def num_threads(n):
    """Context manager: use ``n`` threads inside the block (this thread only).

    >>> with convkit.num_threads(1):
    ...     y = convkit.conv2d(x, w)
    """
    token = _override.set(_check_count(n))
    try:
        yield
    finally:
        _override.reset(token)


def threads_for(work, n_threads=None, min_work_per_thread=1 << 15):
    """Thread count for a call doing ``work`` multiply-adds (or element visits).

    Tiny calls run serially: waking a thread team costs microseconds, more
    than the work itself below ``min_work_per_thread`` per thread.
    """
    global _teams_started
    if n_threads is None:
        n_threads = get_num_threads()
    n = max(1, min(n_threads, work // min_work_per_thread))
    if n > 1:
        _teams_started = True
    return n


_blas = None


def _blas_controller():
    """Cached threadpoolctl controller of the BLAS NumPy uses (None if unavailable)."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas = False
        else:
            controller = ThreadpoolController().select(user_api="blas")
            _blas = (controller, [lib.num_threads for lib in controller.lib_controllers])
    return _blas or None


def can_limit_blas():
    """Whether ``blas_threads`` can hold NumPy's BLAS to a thread count (threadpoolctl found it)."""
    return _blas_controller() is not None


def blas_info():
    """List of dicts describing the BLAS libraries NumPy loaded (needs threadpoolctl)."""
    found = _blas_controller()
    if found is None:
        return []
    return [lib.info() for lib in found[0].lib_controllers]


@contextlib.contextmanager
def blas_threads(n):
    """Hold NumPy's BLAS to ``n`` threads inside the block.

    A no-op when threadpoolctl is missing or when BLAS already uses ``n``
    threads by default, so the common case touches no global state.
    """
    found = _blas_controller()
    if found is None or all(count == n for count in found[1]):
        yield
        return
    with found[0].limit(limits=n):
        yield


# Multiply-adds per BLAS thread below which GEMMs run on one thread: OpenBLAS's
# threads cost more than they save on small GEMMs (2-core EPYC, 2 vs 1 BLAS
# threads, medians of convkit's im2col backward: 3.6 M multiply-adds 1269 vs
# 457 us, 7.2 M 1656 vs 706 us; from about 26 M (a 1x1 conv's 0.51 vs 0.56 ms)
# the second thread pays).
BLAS_MIN_WORK_PER_THREAD = 1 << 22
# Multiply-adds per thread below which conv2d and conv2d_backward run their
# kernels serially. A call's fixed costs (validation, packing, several
# thread-team wake-ups in a backward) outweigh a second thread on small
# problems (2-core EPYC, 3x3 convolutions, 1 vs 2 threads taking turns,
# median per-pair ratios: 0.23-0.45 M multiply-adds backward 0.95x, 1.8 M
# forward 0.95x and backward 1.03x, 7.2 M forward 1.34x and backward 1.19x).
CONV_MIN_WORK_PER_THREAD = 1 << 20
# Elements per thread below which a memory-bound scan (the finiteness check
# of conv2d_backward) runs serially.
SCAN_MIN_WORK_PER_THREAD = 1 << 17
# Elements per thread below which the packing of the weights runs serially
# (2-core Zen 4 EPYC: the 51,200 weights^T of mnist-conv2's grad_input
# packed in 83 us on one thread, 44 us on two).
PACK_MIN_WORK_PER_THREAD = 1 << 14


def blas_threads_for(work, n_threads=None):
    """``blas_threads`` for GEMMs of ``work`` multiply-adds in all."""
    return blas_threads(threads_for(work, n_threads, BLAS_MIN_WORK_PER_THREAD))


_gemm = None


def blas_gemm():
    """{dtype: address} of cblas_sgemm and cblas_dgemm in NumPy's own OpenBLAS, or None.

    convkit's kernels call them from their OpenMP threads (``_conv.gemm_batch``)
    instead of fanning GEMMs out to ``gemm_pool``'s Python threads, which
    sleep between calls: waking one cost about 60 us a call on a 2-core
    EPYC VM, 15% of a resnet-1x1 forward. Found only where it is safe to
    call: threadpoolctl can hold that BLAS to one thread, and it is the
    OpenBLAS bundled with NumPy's wheels (its ``scipy_cblas_?gemm64_``
    symbols, 64-bit integers) that NumPy itself calls. A 3x2 product checks
    each address against ``np.matmul`` before it is used.
    """
    global _gemm
    if not can_limit_blas():
        return None
    if _gemm is None:
        _gemm = _find_blas_gemm() or False
    return _gemm or None


def _find_blas_gemm():
    import ctypes

    import numpy as np

    found = _blas_controller()
    if found is None:
        return None
    numpy_dir = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    for lib in found[0].lib_controllers:
        info = lib.info()
        path = os.path.abspath(str(info.get("filepath", "")))
        if (info.get("internal_api") != "openblas"
                or not os.path.basename(path).startswith("libscipy_openblas64_")
                or not path.startswith(os.path.join(numpy_dir, "numpy"))):
            continue
        try:
            dynlib = ctypes.CDLL(path)
            config = dynlib.scipy_openblas_get_config64_
            config.restype = ctypes.c_char_p
            if b"USE64BITINT" not in config():
                continue
            gemm = {np.dtype(np.float32): dynlib.scipy_cblas_sgemm64_,
                    np.dtype(np.float64): dynlib.scipy_cblas_dgemm64_}
        except (OSError, AttributeError):
            continue
        addresses = {dtype: ctypes.cast(fn, ctypes.c_void_p).value for dtype, fn in gemm.items()}
        if all(_gemm_agrees(address, dtype) for dtype, address in addresses.items()):
            return addresses
    return None


def _gemm_agrees(address, dtype):
    """Whether the BLAS call at ``address`` gives np.matmul's product on small operands."""
    import numpy as np

    from convkit._lib import _conv

    a = np.arange(1.0, 7.0, dtype=dtype).reshape(1, 1, 3, 2)
    b = np.arange(2.0, 10.0, dtype=dtype).reshape(1, 1, 2, 4)
    out = np.full((1, 1, 3, 4), np.nan, dtype=dtype)
    with blas_threads(1):
        _conv.gemm_batch(address, a, b, out, False, 2, False, 4, 4, 1)
    return bool(np.array_equal(out, np.matmul(a, b)))


_pools = {}
_pools_lock = threading.Lock()


def _after_fork_in_child():
    """In a forked child: the parent's pool and OpenMP threads do not exist there."""
    global _pools_lock, _forked_after_teams
    _pools.clear()
    _pools_lock = threading.Lock()
    _forked_after_teams = _forked_after_teams or _teams_started


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def gemm_pool(n):
    """A shared pool of ``n`` Python threads that run single-threaded BLAS calls side by side.

    The fallback of functional._matmul where ``blas_gemm`` finds no BLAS
    to call from the kernels' OpenMP threads.

    OpenBLAS's sgemm does not give the same bits on 1 and on several of its
    own threads on every CPU (its Haswell/Zen kernels on a 2-core EPYC: up to
    1e-4 apart), so convkit never lets BLAS split a GEMM: it splits the batch
    of GEMMs across these threads instead, each GEMM the same call whatever
    the thread count. NumPy releases the GIL around BLAS.
    """
    with _pools_lock:
        pool = _pools.get(n)
        if pool is None:
            pool = _pools[n] = concurrent.futures.ThreadPoolExecutor(
                max_workers=n, thread_name_prefix="convkit-gemm")
        return pool

