"""Memory: no leaks over 10,000 calls, im2col workspace within its cap, huge sizes refused."""

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import convkit
from convkit import _limits, reference
from _helpers import assert_close

CALLS = 10_000
# A leak of >= ~100 bytes per call (one small array, one memoryview) grows
# RSS by >= 1 MiB over 10,000 calls; allocator noise measured ~0.1 MiB.
RSS_BOUND = 1 << 20

RSS_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import convkit

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8))
    weight = rng.standard_normal((4, 3, 3, 3))
    bias = rng.standard_normal(4)
    grad_y = rng.standard_normal((2, 4, 8, 8))
    cols = convkit.im2col(x, 3, padding=1)
    pooled, indices = convkit.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    grad_pooled = rng.standard_normal(pooled.shape)
    kernels = {
        "conv2d direct": lambda: convkit.conv2d(x, weight, bias, padding=1, method="direct"),
        "conv2d im2col": lambda: convkit.conv2d(x, weight, bias, padding=1, method="im2col"),
        "conv2d_backward direct": lambda: convkit.conv2d_backward(
            grad_y, x, weight, padding=1, method="direct"),
        "conv2d_backward im2col": lambda: convkit.conv2d_backward(
            grad_y, x, weight, padding=1, method="im2col"),
        "im2col": lambda: convkit.im2col(x, 3, padding=1),
        "col2im": lambda: convkit.col2im(cols, x.shape, 3, padding=1),
        "max_pool2d": lambda: convkit.max_pool2d(x, 3, stride=2, padding=1,
                                                 return_indices=True),
        "max_pool2d_backward": lambda: convkit.max_pool2d_backward(grad_pooled, indices,
                                                                   x.shape),
        "avg_pool2d": lambda: convkit.avg_pool2d(x, 3, stride=2, padding=1),
        "avg_pool2d_backward": lambda: convkit.avg_pool2d_backward(grad_pooled, x.shape, 3,
                                                                   stride=2, padding=1),
    }
    calls = int(sys.argv[1])
    result = {}
    for name, call in kernels.items():
        for _ in range(1000):
            call()
        before = rss()
        for _ in range(calls):
            call()
        result[name] = [before, rss()]
    print(json.dumps(result))
""")


@pytest.fixture(scope="module")
def rss_growth():
    """{kernel: (rss before, rss after)} of 10,000 calls, measured in a fresh interpreter."""
    # cwd away from the checkout, whose uncompiled convkit/ would shadow the installed one
    result = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(CALLS)],
                            capture_output=True, text=True, timeout=300,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer's quarantine holds freed memory: RSS grows")
@pytest.mark.parametrize("kernel", ["conv2d direct", "conv2d im2col", "conv2d_backward direct",
                                    "conv2d_backward im2col", "im2col", "col2im",
                                    "max_pool2d", "max_pool2d_backward", "avg_pool2d",
                                    "avg_pool2d_backward"])
def test_rss_flat_over_10000_calls(rss_growth, kernel):
    before, after = rss_growth[kernel]
    assert after - before <= RSS_BOUND, (
        f"{kernel}: RSS grew by {(after - before) / 1024:.0f} KiB over {CALLS} calls "
        f"(from {before / (1 << 20):.1f} MiB)")


CAP = 64 * 1024
# Python objects of one call (array headers, the tile generator): a constant,
# whatever the batch size.
OVERHEAD = 8 * 1024


def _peak_bytes(call):
    """(result, peak bytes traced during ``call`` above what was allocated before it)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = call()
        return result, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def _nbytes(arrays):
    return sum(array.nbytes for array in arrays if array is not None)


# (C, H): a tile of whole images, and a tile of output rows of one image.
@pytest.mark.parametrize("C,H", [(4, 8), (4, 16)])
@pytest.mark.parametrize("N", [1, 8, 32])
@pytest.mark.parametrize("output_mask", [(True, False, False), (False, True, True), None])
def test_im2col_workspace_within_cap(N, C, H, output_mask):
    rng = np.random.default_rng(N)
    x = rng.standard_normal((N, C, H, H))
    weight = rng.standard_normal((8, C, 3, 3))
    grad_y = rng.standard_normal((N, 8, H, H))
    whole_batch_columns = x.size * 9 * x.itemsize
    if N == 32:
        assert whole_batch_columns > 8 * CAP, "the cap must bind for the test to mean anything"
    if output_mask is None:
        def call():
            return (convkit.conv2d(x, weight, padding=1, method="im2col"),)
        temporaries = 0
    else:
        def call():
            return convkit.conv2d_backward(grad_y, x, weight, padding=1, method="im2col",
                                           output_mask=output_mask)
        # grad_weight sums per-image products: one weight-sized temporary.
        temporaries = weight.nbytes if output_mask[1] else 0
    # One thread: the bound does not depend on it, and idle OpenMP/BLAS teams
    # spinning on a busy machine would only slow the test down.
    with convkit.workspace_limit(CAP), convkit.num_threads(1):
        call()  # first calls create lasting caches (the BLAS controller)
        outputs, peak = _peak_bytes(call)
    assert peak <= CAP + _nbytes(outputs) + temporaries + OVERHEAD, (
        f"peak {peak} bytes: cap {CAP}, outputs {_nbytes(outputs)}, "
        f"whole-batch columns {whole_batch_columns}")


X = np.ones((1, 1, 3, 3))
WEIGHT = np.ones((1, 1, 3, 3))


@pytest.mark.parametrize("call", [
    lambda: convkit.conv2d(X, WEIGHT, stride=2**64),
    lambda: convkit.conv2d(X, WEIGHT[:, :, :1, :1], dilation=(1, 2**63)),
    lambda: convkit.conv2d(X, WEIGHT, padding=2**62),
    lambda: convkit.conv2d(X, WEIGHT, padding=2**31),
    lambda: convkit.conv2d_backward(np.ones((1, 1, 1, 1)), X, WEIGHT, stride=(2**63, 1)),
    lambda: convkit.im2col(X, 1, padding=((0, 0), (2**62, 2**62))),
    lambda: convkit.max_pool2d_backward(np.ones((1, 1, 1, 1)), np.zeros((1, 1, 1, 1), np.int64),
                                        (1, 1, 2**32, 2**32)),
], ids=["stride", "dilation", "padded size", "output", "backward stride", "im2col",
        "max_pool2d_backward"])
def test_refuses_int64_overflow(call):
    with pytest.raises(ValueError, match="64-bit"):
        call()


@pytest.mark.parametrize("call", [
    lambda: convkit.conv2d(X, WEIGHT, padding=10**6),
    lambda: convkit.conv2d(np.ones((1, 64, 64, 64)), np.ones((1, 64, 64, 64)),
                           padding=((0, 0), (0, 10**7)), method="im2col"),
    lambda: convkit.im2col(X, 1, padding=10**6),
    lambda: convkit.col2im(np.ones((1, 1, 1)), (1, 1, 10**15, 1), 1, stride=10**15),
    lambda: convkit.max_pool2d_backward(np.ones((1, 1, 1, 1)), np.zeros((1, 1, 1, 1), np.int64),
                                        (1, 1, 10**6, 10**6)),
], ids=["conv2d output", "im2col workspace", "im2col output", "col2im output",
        "max_pool2d_backward"])
def test_refuses_more_than_physical_memory(call):
    with pytest.raises(MemoryError, match="memory of this machine"):
        call()


@pytest.mark.parametrize("call", [
    lambda: convkit.max_pool2d(X, 2, stride=2**64),
    lambda: convkit.max_pool2d(X, 1, dilation=2**63),
    lambda: convkit.avg_pool2d(X, 2, stride=(1, 2**64)),
], ids=["max_pool2d stride", "max_pool2d dilation", "avg_pool2d stride"])
def test_pooling_refuses_int64_overflow(call):
    with pytest.raises(ValueError, match="64-bit"):
        call()


def test_avg_pool2d_backward_checks_sizes_before_allocating():
    """A huge input_shape is refused before any (P,)-sized window count is built."""
    with pytest.raises((ValueError, MemoryError)) as info:
        convkit.avg_pool2d_backward(np.ones((1, 1, 1, 1)), (1, 1, 10**13, 1), 1)
    assert "Unable to allocate" not in str(info.value), "NumPy, not convkit, refused it"


def test_memory_guard_counts_outputs_and_workspace(monkeypatch):
    """With 1 MiB of 'memory', calls needing 2 MiB are refused, calls needing less run."""
    monkeypatch.setattr(_limits, "physical_memory", lambda: 1 << 20)
    weight = np.ones((4, 4, 1, 1))
    with pytest.raises(MemoryError, match=r"y \(64, 4, 32, 32\)"):
        convkit.conv2d(np.ones((64, 4, 32, 32)), weight)
    assert convkit.conv2d(np.ones((16, 4, 32, 32)), weight).shape == (16, 4, 32, 32)
    x = np.ones((4, 4, 32, 32))
    weight = np.ones((4, 4, 3, 3))
    with convkit.workspace_limit(1 << 30), pytest.raises(MemoryError, match="im2col workspace"):
        convkit.conv2d(x, weight, padding=1, method="im2col")
    with convkit.workspace_limit(1 << 16):
        assert convkit.conv2d(x, weight, padding=1, method="im2col").shape == x.shape


def _cached_buffers():
    from convkit import _scratch

    return list(_scratch._local.__dict__.get("buffers", {}).values())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scratch_buffers_never_escape(dtype):
    """Outputs share no memory with the kept scratch, and later calls leave them unchanged."""
    rng = np.random.default_rng(4)
    calls = []
    for x_shape, w_shape, kwargs in [((4, 6, 12, 11), (70, 6, 3, 3), dict(padding=1)),
                                     ((3, 2, 9, 10), (8, 2, 5, 3), dict(stride=2)),
                                     ((2, 4, 8, 8), (4, 1, 3, 3), dict(groups=4, padding=1))]:
        x = rng.standard_normal(x_shape).astype(dtype)
        weight = rng.standard_normal(w_shape).astype(dtype)
        y = convkit.conv2d(x, weight, method="direct", **kwargs)
        grads = convkit.conv2d_backward(rng.standard_normal(y.shape).astype(dtype), x, weight,
                                        method="direct", **kwargs)
        calls.append([y, *grads])
    snapshots = [[a.copy() for a in outputs] for outputs in calls]
    convkit.conv2d(rng.standard_normal((5, 6, 12, 11)).astype(dtype),
                   rng.standard_normal((70, 6, 3, 3)).astype(dtype), padding=1, method="direct")
    buffers = _cached_buffers()
    assert buffers
    for outputs, snapshot in zip(calls, snapshots):
        for array, saved in zip(outputs, snapshot):
            np.testing.assert_array_equal(array, saved)
            assert not any(np.shares_memory(array, raw) for raw in buffers)


def test_scratch_cache_is_bounded_and_clearable(monkeypatch):
    from convkit import _scratch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16, 20, 20)).astype(np.float32)
    weight = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    expected = convkit.conv2d(x, weight, padding=1, method="direct")
    assert _scratch.cached_bytes() > 0
    convkit.clear_scratch_cache()
    assert _scratch.cached_bytes() == 0
    monkeypatch.setattr(_scratch, "MAX_CACHED_BYTES", 1024)
    np.testing.assert_array_equal(convkit.conv2d(x, weight, padding=1, method="direct"),
                                  expected)
    assert all(raw.size <= 1024 for raw in _cached_buffers())


def test_scratch_zero_key_spares_only_a_repeated_fill():
    """A keyed zero fill is skipped only after a call with the same key, shape and dtype."""
    from convkit import _scratch

    def dirty(key, shape=(2, 8)):
        array = _scratch.scratch("zero-key-test", shape, np.float32, zero=True, zero_key=key)
        was_zero = not array.any()
        array[:, 1] = 7  # a keyed caller writes the same positions every time
        return was_zero

    assert dirty("a")
    assert not dirty("a")  # kept: the caller overwrites column 1 before reading it
    assert dirty("b")  # another key fills again
    assert not dirty("b")
    assert dirty("b", shape=(4, 4))  # the same key for another shape fills again
    _scratch.scratch("zero-key-test", (2, 8), np.float32)  # an unkeyed call forgets
    assert dirty("b", shape=(4, 4))
    convkit.clear_scratch_cache()
    assert dirty("b", shape=(4, 4))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_scratch_padding_survives_other_layouts(dtype):
    """A forward whose packed padding is kept zero between calls (same layout) still
    matches after calls with other layouts wrote where its padding lies."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((8, 16, 10, 10)).astype(dtype)
    weight = rng.standard_normal((8, 16, 3, 3)).astype(dtype)
    expected = reference.conv2d(x, weight, padding=1)
    first = convkit.conv2d(x, weight, padding=1, method="direct")
    assert_close(first, expected)
    # The same scratch shape, the input shifted: its packed values land in
    # the first layout's left padding column.
    convkit.conv2d(x + 1, weight, padding=((2, 0), (0, 2)), method="direct")
    np.testing.assert_array_equal(convkit.conv2d(x, weight, padding=1, method="direct"), first)
