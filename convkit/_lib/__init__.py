"""Compiled kernels (Cython + OpenMP); see the module docstrings.

libgomp reads its settings once, when it loads with the first of these
modules. By default its worker threads busy-wait after every parallel
region, for long enough to take the cores NumPy's BLAS then needs on the
im2col path (measured: the im2col forward of (8, 256, 14, 14) * 3x3 took 26
ms with the default wait and 12.5 ms with a passive one, 2 threads). Unless
the user chose a wait policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT), convkit
asks its libgomp for a passive wait while loading, then leaves os.environ as
it found it.
"""

import os

_SET_WAIT_POLICY = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
if _SET_WAIT_POLICY:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
try:
    from convkit._lib import _conv, _openmp, _pool  # noqa: F401  (load libgomp now)
finally:
    if _SET_WAIT_POLICY:
        del os.environ["OMP_WAIT_POLICY"]

WAIT_POLICY = "passive (set by convkit)" if _SET_WAIT_POLICY else (
    f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')!r} "
    f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', '')!r} (yours)")
