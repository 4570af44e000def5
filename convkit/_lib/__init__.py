"""Compiled kernels (Cython + OpenMP); see the module docstrings.

libgomp reads its settings once, when it loads with the first of these
modules. By default its worker threads busy-wait for a long while after
every parallel region, taking the cores NumPy's BLAS then needs on the
im2col path; a passive wait instead makes every region pay a wake-up that
costs more than a small convolution. A short spin keeps the team hot between
the regions of one call and lets BLAS have the cores soon after. Measured on
the 2-core EPYC VM, 2 threads, medians: im2col forward (8, 256, 14, 14) * 3x3
26 ms with the default wait, 15 ms with GOMP_SPINCOUNT=3000; a 29 M
multiply-add direct conv 811 us passive (slower than 1 thread's 704 us),
371 us with the short spin. Unless the user chose a wait policy
(OMP_WAIT_POLICY or GOMP_SPINCOUNT), convkit sets the short spin while its
kernels load, then leaves os.environ as it found it.
"""

import os

_SPIN_COUNT = "3000"
_SET_WAIT_POLICY = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
if _SET_WAIT_POLICY:
    os.environ["GOMP_SPINCOUNT"] = _SPIN_COUNT
try:
    from convkit._lib import _conv, _openmp, _pool  # noqa: F401  (load libgomp now)
except ImportError as error:
    raise ImportError(
        f"convkit's compiled kernels could not be loaded from {os.path.dirname(__file__)} "
        f"({error}). Build them with `pip install .` (or `python setup.py build_ext "
        f"--inplace` in a development checkout); if convkit is installed, run Python "
        f"from outside the source checkout, whose uncompiled convkit/ shadows it.") from error
finally:
    if _SET_WAIT_POLICY:
        del os.environ["GOMP_SPINCOUNT"]

WAIT_POLICY = f"GOMP_SPINCOUNT={_SPIN_COUNT} (set by convkit)" if _SET_WAIT_POLICY else (
    f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')!r} "
    f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', '')!r} (yours)")
