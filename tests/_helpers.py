"""Shared test utilities: dtype-keyed tolerances, input variants, finite differences."""

import numpy as np

# (rtol, atol) per dtype, forward and gradient apart; the atol is scaled by
# the magnitude of the expected values in assert_close.
TOLERANCES = {
    ("forward", np.dtype(np.float32)): (2e-5, 2e-5),
    ("forward", np.dtype(np.float64)): (1e-10, 1e-10),
    ("grad", np.dtype(np.float32)): (5e-5, 5e-5),
    ("grad", np.dtype(np.float64)): (1e-9, 1e-9),
}


def assert_close(actual, expected, kind="forward", err_msg=""):
    """Compare shape, dtype, then values with tolerances keyed by dtype."""
    assert actual is not None and expected is not None
    assert actual.shape == expected.shape, (actual.shape, expected.shape, err_msg)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype, err_msg)
    rtol, atol = TOLERANCES[(kind, np.dtype(expected.dtype))]
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0, where=np.isfinite(expected))))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=err_msg)


def same_on_thread_counts(call, counts=(1, 2)):
    """``call()`` on each of ``counts`` threads: asserts the results are bitwise
    equal and returns the first."""
    import convkit

    results = []
    for n in counts:
        with convkit.num_threads(n):
            results.append(call())
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)
    return results[0]


def layouts(array):
    """The same values in other memory layouts: (name, array) pairs.

    Each is read-only, so a kernel that writes to its input fails loudly.
    """
    variants = {
        "c": np.array(array),
        "fortran": np.asfortranarray(array),
        "noncontiguous": np.repeat(array, 2, axis=-1)[..., ::2],
        "negative_strides": np.flip(np.flip(array, axis=-1).copy(), axis=-1),
    }
    for value in variants.values():
        value.flags.writeable = False
    return list(variants.items())


def numerical_gradient(f, x, eps=1e-6):
    """Central finite differences (accuracy 4) of scalar ``f`` at float64 ``x``."""
    x = np.array(x, dtype=np.float64)
    grad = np.empty_like(x)
    flat, grad_flat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        original = flat[i]
        values = []
        for step in (-2, -1, 1, 2):
            flat[i] = original + step * eps
            values.append(f(x))
        flat[i] = original
        grad_flat[i] = (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * eps)
    return grad


def check_unmodified(arrays, copies):
    """Assert that each array still equals the copy taken before a call."""
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, copies[name], err_msg=f"{name} was modified")
