"""The pooling reference itself: hand-computed cases and finite-difference gradients.

(Its parity with PyTorch is in test_pooling_torch.py; the kernels are
checked against it in test_pooling.py.)
"""

import numpy as np
import pytest

from convkit import reference
from _helpers import assert_close, numerical_gradient

# (x shape, kwargs); no ties in random float64 data, so max is differentiable
GRADIENT_CASES = {
    "k2_s2": ((1, 2, 4, 5), dict(kernel_size=2)),
    "k3_s2_p1_overlapping": ((1, 2, 5, 6), dict(kernel_size=3, stride=2, padding=1)),
    "k2x3_s1_ceil": ((2, 1, 5, 4), dict(kernel_size=(2, 3), stride=(2, 1), ceil_mode=True)),
    "k3_s2_p1_ceil_past_padding": ((1, 1, 6, 6), dict(kernel_size=3, stride=2, padding=1,
                                                       ceil_mode=True)),
    "same_k3_s2": ((1, 2, 5, 6), dict(kernel_size=3, stride=2, padding="same")),
    "global": ((2, 2, 3, 4), dict(kernel_size=(3, 4))),
}


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["include_pad", "exclude_pad"])
@pytest.mark.parametrize("case", list(GRADIENT_CASES))
def test_avg_pool2d_backward_is_the_finite_difference_gradient(case, count_include_pad):
    shape, kwargs = GRADIENT_CASES[case]
    kwargs = dict(kwargs, count_include_pad=count_include_pad)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    weights = rng.standard_normal(reference.avg_pool2d(x, **kwargs).shape)
    numerical = numerical_gradient(lambda v: np.sum(weights * reference.avg_pool2d(v, **kwargs)),
                                   x)
    assert_close(reference.avg_pool2d_backward(weights, shape, **kwargs), numerical,
                 kind="grad")


@pytest.mark.parametrize("case", list(GRADIENT_CASES) + ["dilation2"])
def test_max_pool2d_backward_is_the_finite_difference_gradient(case):
    shape, kwargs = GRADIENT_CASES.get(case, ((1, 2, 7, 6), dict(kernel_size=2, dilation=2,
                                                                 padding=1)))
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    y, indices = reference.max_pool2d(x, **kwargs, return_indices=True)
    weights = rng.standard_normal(y.shape)
    numerical = numerical_gradient(lambda v: np.sum(weights * reference.max_pool2d(v, **kwargs)),
                                   x)
    assert_close(reference.max_pool2d_backward(weights, indices, shape), numerical, kind="grad")


def test_max_pool2d_by_hand():
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y, indices = reference.max_pool2d(x, 2, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(y[0, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    np.testing.assert_array_equal(indices[0, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    # dilated taps at rows/columns -1, 1, 3 (and 1, 3, 5): every window's max is x[3, 3]
    y = reference.max_pool2d(x, 3, stride=2, dilation=2, padding=1)
    np.testing.assert_array_equal(y[0, 0], [[18, 18], [18, 18]])


def test_max_pool2d_nan_ties_and_minus_inf_by_hand():
    x = np.array([[[[1.0, np.nan, 3.0, np.nan], [0.0, 5.0, 2.0, 1.0]]]])
    y, indices = reference.max_pool2d(x, (2, 4), return_indices=True)
    assert np.isnan(y[0, 0, 0, 0]) and indices[0, 0, 0, 0] == 3
    ties = np.full((1, 1, 2, 4), 2.0)
    _, indices = reference.max_pool2d(ties, 2, return_indices=True)
    np.testing.assert_array_equal(indices[0, 0], [[0, 2]])
    minus_inf = np.full((1, 1, 2, 2), -np.inf)
    y, indices = reference.max_pool2d(minus_inf, 2, stride=1, padding=1, return_indices=True)
    assert np.all(y == -np.inf)
    np.testing.assert_array_equal(indices[0, 0], [[0, 0, 1], [0, 0, 1], [2, 2, 3]])


def test_avg_pool2d_divisors_by_hand():
    x = np.arange(36.0).reshape(1, 1, 6, 6)
    # the last ceil_mode window covers rows/columns 5..7 of a 6 + 2 * 1 padded
    # input: torch divides by its cells inside the padded input, 2 x 2
    y = reference.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
    assert y.shape == (1, 1, 4, 4)
    assert y[0, 0, 3, 3] == pytest.approx(35 / 4)
    assert y[0, 0, 0, 0] == pytest.approx((0 + 1 + 6 + 7) / 9)
    y = reference.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True,
                             count_include_pad=False)
    assert y[0, 0, 3, 3] == 35 and y[0, 0, 0, 0] == pytest.approx((0 + 1 + 6 + 7) / 4)
    # a kernel longer than the input by less than a stride: one window (torch)
    y = reference.avg_pool2d(np.arange(4.0).reshape(1, 1, 2, 2), 3, stride=2, ceil_mode=True)
    np.testing.assert_array_equal(y, [[[[1.5]]]])


def test_avg_pool2d_backward_spreads_each_share_by_hand():
    grad = reference.avg_pool2d_backward(np.array([[[[4.0, 8.0]]]]), (1, 1, 2, 3), 2,
                                         stride=1)
    np.testing.assert_array_equal(grad[0, 0], [[1, 3, 2], [1, 3, 2]])
