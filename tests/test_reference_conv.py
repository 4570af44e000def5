"""The oracle is proven: convkit.reference's forward against obvious loops, and its
backward against central finite differences of its forward, in float64."""

import numpy as np
import pytest

from convkit import reference
from _helpers import assert_close, numerical_gradient

# id -> (x shape, weight shape, conv kwargs with explicit ((t, b), (l, r)) padding)
CASES = {
    "plain": ((2, 2, 4, 5), (3, 2, 2, 3), dict(padding=((0, 0), (0, 0)))),
    "groups2_stride2": ((1, 4, 5, 5), (4, 2, 3, 2), dict(groups=2, stride=2,
                                                         padding=((1, 1), (1, 1)))),
    "asymmetric_padding_dilation2": ((1, 2, 5, 4), (2, 2, 2, 3),
                                     dict(dilation=2, padding=((1, 2), (0, 3)))),
    "depthwise_stride_2x1": ((2, 3, 4, 5), (3, 1, 3, 3), dict(groups=3, stride=(2, 1),
                                                               padding=((1, 0), (2, 1)))),
    "same_even_kernel_stride2": ((1, 2, 5, 6), (2, 2, 4, 2), dict(stride=2, padding="same")),
    "dilation_2x1_stride_1x3": ((1, 1, 6, 7), (2, 1, 2, 2),
                                dict(dilation=(2, 1), stride=(1, 3), padding=((0, 1), (1, 1)))),
}
CASE_IDS = list(CASES)


def _inputs(case, seed=0):
    x_shape, w_shape, kwargs = CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    weight = rng.standard_normal(w_shape)
    bias = rng.standard_normal(w_shape[0])
    return x, weight, bias, kwargs


def _loop_conv2d(x, weight, bias, stride, pads, dilation, groups):
    """y[n, k, p, q] = bias[k] + sum over c, r, s, written as loops over outputs."""
    N, C, H, W = x.shape
    K, Cg, R, S = weight.shape
    (sh, sw), (dh, dw) = stride, dilation
    padded = np.zeros((N, C, H + sum(pads[0]), W + sum(pads[1])))
    padded[:, :, pads[0][0]:pads[0][0] + H, pads[1][0]:pads[1][0] + W] = x
    P = (padded.shape[2] - dh * (R - 1) - 1) // sh + 1
    Q = (padded.shape[3] - dw * (S - 1) - 1) // sw + 1
    y = np.zeros((N, K, P, Q))
    for n in range(N):
        for k in range(K):
            g = k // (K // groups)
            for p in range(P):
                for q in range(Q):
                    total = bias[k]
                    for c in range(Cg):
                        for r in range(R):
                            for s in range(S):
                                total += (weight[k, c, r, s]
                                          * padded[n, g * Cg + c, p * sh + r * dh,
                                                   q * sw + s * dw])
                    y[n, k, p, q] = total
    return y


def _explicit(kwargs, x_shape, w_shape):
    """stride, ((t, b), (l, r)), dilation, groups, with "same" resolved the Keras way."""
    stride = np.broadcast_to(kwargs.get("stride", 1), 2)
    dilation = np.broadcast_to(kwargs.get("dilation", 1), 2)
    pads = kwargs["padding"]
    if pads == "same":
        pads = []
        for i in range(2):
            size, kernel = x_shape[2 + i], w_shape[2 + i]
            out = -(-size // stride[i])
            total = max((out - 1) * stride[i] + dilation[i] * (kernel - 1) + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
    return tuple(stride), pads, tuple(dilation), kwargs.get("groups", 1)


@pytest.mark.parametrize("case", CASE_IDS)
def test_reference_forward_matches_loops(case):
    x, weight, bias, kwargs = _inputs(case)
    expected = _loop_conv2d(x, weight, bias, *_explicit(kwargs, x.shape, weight.shape))
    assert_close(reference.conv2d(x, weight, bias, **kwargs), expected)


@pytest.mark.parametrize("case", CASE_IDS)
def test_reference_backward_matches_finite_differences(case):
    x, weight, bias, kwargs = _inputs(case)
    grad_output = np.random.default_rng(1).standard_normal(
        reference.conv2d(x, weight, **kwargs).shape)

    def loss(x_, weight_, bias_):
        return np.vdot(reference.conv2d(x_, weight_, bias_, **kwargs), grad_output)

    # The loss is linear in each argument, so accuracy-4 central differences are
    # exact up to rounding; a large step keeps that rounding far below 1e-9.
    eps = 1e-2
    expected = (numerical_gradient(lambda v: loss(v, weight, bias), x, eps),
                numerical_gradient(lambda v: loss(x, v, bias), weight, eps),
                numerical_gradient(lambda v: loss(x, weight, v), bias, eps))
    grads = reference.conv2d_backward(grad_output, x, weight, **kwargs)
    for name, actual, wanted in zip(("grad_input", "grad_weight", "grad_bias"),
                                    grads, expected):
        assert_close(actual, wanted, kind="grad", err_msg=f"{case} {name}")


def test_finite_differences_catch_a_wrong_gradient():
    """The check above is sharp: a gradient off in one entry by 1e-6 fails it."""
    x, weight, bias, kwargs = _inputs("groups2_stride2")
    grad_output = np.ones(reference.conv2d(x, weight, **kwargs).shape)
    grad_weight = reference.conv2d_backward(grad_output, x, weight, **kwargs)[1]
    numerical = numerical_gradient(
        lambda v: np.vdot(reference.conv2d(x, v, **kwargs), grad_output), weight, 1e-2)
    assert_close(grad_weight, numerical, kind="grad")
    grad_weight[1, 0, 2, 1] += 1e-6
    with pytest.raises(AssertionError):
        assert_close(grad_weight, numerical, kind="grad")


@pytest.mark.parametrize("case", ["plain", "groups2_stride2"])
def test_reference_keeps_float32(case):
    x, weight, bias, kwargs = _inputs(case)
    x, weight, bias = (a.astype(np.float32) for a in (x, weight, bias))
    y = reference.conv2d(x, weight, bias, **kwargs)
    assert y.dtype == np.float32
    grads = reference.conv2d_backward(np.ones_like(y), x, weight, **kwargs)
    assert [g.dtype for g in grads] == [np.float32] * 3
