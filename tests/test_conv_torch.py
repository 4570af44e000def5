"""Parity with torch.nn.functional.conv2d: forward and all three gradients."""

import math

import numpy as np
import pytest

import convkit
from _helpers import assert_close

torch = pytest.importorskip("torch", exc_type=ImportError)
F = torch.nn.functional

DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
METHODS = ["direct", "im2col", "auto"]

# id -> (x shape, weight shape, bias?, stride, ((t, b), (l, r)) or "same", dilation, groups)
CASES = {
    "nonsquare_3x5": ((2, 3, 7, 9), (4, 3, 3, 5), True, 1, ((0, 0), (0, 0)), 1, 1),
    "1x1_pointwise": ((2, 4, 5, 6), (6, 4, 1, 1), False, 1, ((0, 0), (0, 0)), 1, 1),
    "7x7_pad3": ((1, 2, 9, 10), (3, 2, 7, 7), True, 1, ((3, 3), (3, 3)), 1, 1),
    "stride_3x2_not_dividing": ((2, 3, 8, 10), (4, 3, 3, 2), True, (3, 2),
                                ((1, 1), (0, 0)), 1, 1),
    "asymmetric_padding": ((2, 3, 6, 7), (4, 3, 3, 2), True, 2, ((1, 2), (0, 3)), 1, 1),
    "same_even_kernel_stride2": ((2, 3, 7, 8), (4, 3, 4, 2), False, 2, "same", 1, 1),
    "same_stride2_dilation2": ((1, 4, 9, 8), (4, 2, 3, 3), True, 2, "same", 2, 2),
    "dilation2": ((2, 3, 9, 8), (4, 3, 3, 2), False, 1, ((1, 1), (1, 1)), 2, 1),
    "groups2": ((2, 4, 6, 7), (6, 2, 3, 3), True, 1, ((1, 1), (1, 1)), 1, 2),
    "depthwise": ((2, 5, 6, 7), (5, 1, 3, 3), True, 1, ((1, 1), (1, 1)), 1, 5),
    "N1_C1": ((1, 1, 8, 9), (4, 1, 5, 3), True, 1, ((0, 0), (0, 0)), 1, 1),
    "wide_reduction": ((1, 16, 4, 4), (16, 16, 3, 3), True, 1, ((1, 1), (1, 1)), 1, 1),
}


def _keras_same(size, kernel, stride, dilation):
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def _torch_conv(x, weight, bias, stride, pads, dilation, groups):
    """torch conv2d with explicit ((t, b), (l, r)) padding applied by F.pad."""
    (top, bottom), (left, right) = pads
    if top == bottom and left == right:
        return F.conv2d(x, weight, bias, stride, (top, left), dilation, groups)
    padded = F.pad(x, (left, right, top, bottom))
    return F.conv2d(padded, weight, bias, stride, 0, dilation, groups)


def _torch_forward_backward(x, weight, bias, grad_output, conv):
    tensors = [torch.from_numpy(a.copy()).requires_grad_() if a is not None else None
               for a in (x, weight, bias)]
    y = conv(*tensors)
    y.backward(torch.from_numpy(grad_output))
    grad_bias = tensors[2].grad.numpy() if bias is not None else \
        grad_output.sum(axis=(0, 2, 3))
    return y.detach().numpy(), (tensors[0].grad.numpy(), tensors[1].grad.numpy(), grad_bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(case, method, dtype):
    x_shape, w_shape, has_bias, stride, padding, dilation, groups = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[0]).astype(dtype) if has_bias else None
    stride2, dilation2 = np.broadcast_to(stride, 2), np.broadcast_to(dilation, 2)
    pads = padding if padding != "same" else tuple(
        _keras_same(x_shape[2 + i], w_shape[2 + i], int(stride2[i]), int(dilation2[i]))
        for i in range(2))
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    y = convkit.conv2d(x, weight, bias, method=method, **kwargs)
    grad_output = rng.standard_normal(y.shape).astype(dtype)
    grads = convkit.conv2d_backward(grad_output, x, weight, method=method, **kwargs)

    y_torch, grads_torch = _torch_forward_backward(
        x, weight, bias, grad_output,
        lambda xt, wt, bt: _torch_conv(xt, wt, bt, tuple(stride2), pads, tuple(dilation2),
                                       groups))
    assert_close(y, y_torch)
    for name, actual, wanted in zip(("grad_input", "grad_weight", "grad_bias"),
                                    grads, grads_torch):
        assert_close(actual, wanted, kind="grad", err_msg=name)


SAME_CASES = [  # (H, W), (R, S), dilation
    ((6, 7), (2, 2), 1),
    ((5, 6), (3, 4), 1),
    ((7, 5), (4, 4), 1),
    ((6, 6), (1, 1), 1),
    ((9, 8), (3, 3), 2),
    ((8, 9), (2, 4), 2),
    ((8, 7), (4, 3), (2, 1)),
    ((3, 4), (5, 6), 1),  # kernel larger than the input
]


# PyTorch warns that it pads a copy of the input for an even kernel: its business.
@pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["direct", "im2col"])
@pytest.mark.parametrize("hw, kernel, dilation", SAME_CASES,
                         ids=[f"{h}x{w}_k{r}x{s}_d{d}".replace(" ", "")
                              for (h, w), (r, s), d in SAME_CASES])
def test_same_at_stride1_equals_torch_same(hw, kernel, dilation, method, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2) + hw).astype(dtype)
    weight = rng.standard_normal((3, 2) + kernel).astype(dtype)
    bias = rng.standard_normal(3).astype(dtype)
    y = convkit.conv2d(x, weight, bias, padding="same", dilation=dilation, method=method)
    assert y.shape == (2, 3) + hw
    grad_output = rng.standard_normal(y.shape).astype(dtype)
    grads = convkit.conv2d_backward(grad_output, x, weight, padding="same",
                                    dilation=dilation, method=method)
    y_torch, grads_torch = _torch_forward_backward(
        x, weight, bias, grad_output,
        lambda xt, wt, bt: F.conv2d(xt, wt, bt, padding="same", dilation=dilation))
    assert_close(y, y_torch)
    for name, actual, wanted in zip(("grad_input", "grad_weight", "grad_bias"),
                                    grads, grads_torch):
        assert_close(actual, wanted, kind="grad", err_msg=name)
