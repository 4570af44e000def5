"""Every run-time variant of the direct and max-pooling kernels is right.

AVX-512, AVX2 and the baseline ISA are each checked against the reference.

The variant is chosen once at import, so each one runs in a subprocess with
CONVKIT_ISA capping the choice.
"""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json
import numpy as np
import convkit
from convkit import reference
from convkit._lib import _conv, _pool

cases = [
    ((2, 3, 11, 9), (16, 3, 3, 3), dict(padding=1)),                     # K blocks of 8
    ((2, 4, 10, 10), (4, 1, 3, 3), dict(groups=4, padding="same")),      # 1-channel blocks
    ((1, 5, 13, 12), (10, 5, 4, 2), dict(stride=(2, 3), dilation=(2, 1), padding=((1, 2), (0, 3)))),
    ((3, 8, 7, 40), (9, 8, 2, 5), dict(padding=(1, 2))),                 # wide rows, K tail
    ((2, 32, 9, 7), (40, 32, 3, 3), dict(stride=2, padding=1)),          # channel-vector kernel
    ((2, 16, 6, 6), (33, 16, 3, 3), dict(padding=2, dilation=2)),        # channel-vector, K tail
    ((2, 3, 30, 37), (3, 1, 5, 3), dict(groups=3, padding=(2, 1))),      # depthwise, flat runs
    ((2, 2, 9, 21), (4, 1, 3, 4), dict(groups=2, stride=(2, 1), padding=(4, 0))),  # row by row
    ((2, 3, 6, 37), (8, 3, 3, 5), dict(dilation=(1, 2), padding=(1, 3))),  # col2im, wide rows
    ((1, 2, 14, 40), (6, 1, 3, 7), dict(groups=2, padding=(1, 5), dilation=(2, 3))),  # in place
    ((1, 6, 20, 23), (8, 6, 3, 3), dict(padding=1)),                     # widest grid block
    ((2, 20, 9, 11), (12, 20, 3, 3), dict(stride=2, padding=1)),         # ... in channel passes
    ((2, 16, 8, 10), (8, 16, 3, 3), {}),                                 # grad_input by rows
    ((2, 32, 9, 9), (12, 32, 5, 5), {}),                                 # ... 5 columns
]
worst = 0.0
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    for xs, ws, kw in cases:
        x = rng.standard_normal(xs).astype(dtype)
        w = rng.standard_normal(ws).astype(dtype)
        b = rng.standard_normal(ws[0]).astype(dtype)
        y = convkit.conv2d(x, w, b, method="direct", **kw)
        y_ref = reference.conv2d(x, w, b, **kw)
        gy = rng.standard_normal(y.shape).astype(dtype)
        got = convkit.conv2d_backward(gy, x, w, method="direct", **kw)
        want = reference.conv2d_backward(gy, x, w, **kw)
        tol = 2e-4 if dtype == np.float32 else 1e-10
        for a, e in [(y, y_ref)] + list(zip(got, want)):
            assert a.shape == e.shape and a.dtype == e.dtype
            err = float(np.max(np.abs(a - e)) / max(1.0, float(np.max(np.abs(e)))))
            assert err < tol, (dtype, xs, ws, kw, err)
            worst = max(worst, err)
pool_cases = [((2, 3, 9, W), kw) for W in (5, 21, 70)
              for kw in (dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(2, 3)),
                         dict(kernel_size=2),
                         dict(kernel_size=3, stride=1, padding=1, dilation=(1, 2)))]
for dtype in (np.float32, np.float64):
    for xs, kw in pool_cases:
        x = rng.integers(-2, 3, size=xs).astype(dtype)
        x[rng.random(xs) < 0.1] = np.nan
        x[rng.random(xs) < 0.3] = -np.inf
        y, idx = convkit.max_pool2d(x, **kw, return_indices=True)
        y_ref, idx_ref = reference.max_pool2d(x, **kw, return_indices=True)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(idx, idx_ref)
print(json.dumps({"isa": _conv.kernel_isa(), "pool_isa": _pool.pool_kernel_isa(),
                  "worst": worst}))
"""


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return set()


@pytest.mark.parametrize("cap,needs", [("baseline", set()), ("avx2", {"avx2", "fma"}),
                                       ("", {"avx512f", "avx2", "fma"})],
                         ids=["baseline", "avx2", "widest"])
def test_direct_kernel_variant_matches_reference(cap, needs, tmp_path):
    if not needs <= _cpu_flags():
        pytest.skip(f"this CPU lacks {sorted(needs - _cpu_flags())}")
    env = dict(os.environ, CONVKIT_ISA=cap)
    # cwd away from the checkout, whose uncompiled convkit/ would shadow the installed one
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {"baseline": "baseline", "avx2": "avx2", "": "avx512f"}[cap]
    assert report["isa"] == expected
    assert report["pool_isa"] == expected
