"""Property tests: on random valid configurations direct == im2col == reference.

Run on one thread so that a failure here is about geometry; results across
thread counts are tests/test_threads.py's business.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import convkit
from convkit import reference
from _helpers import assert_close


@st.composite
def conv_configs(draw):
    """x, weight, bias and conv kwargs of a random valid (small) convolution."""
    groups = draw(st.integers(1, 3))
    C, K = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.one_of(
        st.sampled_from(["same", "valid"]),
        st.integers(0, 2),
        st.tuples(st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)),
                  st.tuples(st.integers(0, 3), st.integers(0, 3))),
    ))
    if padding == "same":
        pads = ((0, 0), (0, 0))  # "same" always yields ceil(H / stride) >= 1 outputs
    elif padding == "valid":
        pads = ((0, 0), (0, 0))
    elif isinstance(padding, int):
        pads = ((padding,) * 2,) * 2
    elif isinstance(padding[0], int):
        pads = ((padding[0],) * 2, (padding[1],) * 2)
    else:
        pads = padding
    # Smallest input for which the dilated kernel fits the padded input.
    min_h = max(1, dilation[0] * (R - 1) + 1 - sum(pads[0])) if padding != "same" else 1
    min_w = max(1, dilation[1] * (S - 1) + 1 - sum(pads[1])) if padding != "same" else 1
    H, W = draw(st.integers(min_h, min_h + 6)), draw(st.integers(min_w, min_w + 6))
    N = draw(st.integers(1, 2))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    weight = rng.standard_normal((K, C // groups, R, S)).astype(dtype)
    bias = rng.standard_normal(K).astype(dtype) if draw(st.booleans()) else None
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return x, weight, bias, kwargs


@settings(max_examples=60)
@given(conv_configs())
def test_forward_direct_equals_im2col_equals_reference(config):
    x, weight, bias, kwargs = config
    expected = reference.conv2d(x, weight, bias, **kwargs)
    for method in ("direct", "im2col", "auto"):
        with convkit.num_threads(1):
            y = convkit.conv2d(x, weight, bias, method=method, **kwargs)
        assert_close(y, expected, err_msg=method)


@settings(max_examples=60)
@given(conv_configs(), st.integers(0, 2 ** 16))
def test_backward_direct_equals_im2col_equals_reference(config, seed):
    x, weight, _, kwargs = config
    y_shape = reference.conv2d(x, weight, **kwargs).shape
    grad_output = np.random.default_rng(seed).standard_normal(y_shape).astype(x.dtype)
    expected = reference.conv2d_backward(grad_output, x, weight, **kwargs)
    for method in ("direct", "im2col", "auto"):
        with convkit.num_threads(1):
            grads = convkit.conv2d_backward(grad_output, x, weight, method=method, **kwargs)
        for name, actual, wanted in zip(("grad_input", "grad_weight", "grad_bias"),
                                        grads, expected):
            assert_close(actual, wanted, kind="grad", err_msg=f"{method} {name}")


@settings(max_examples=40)
@given(conv_configs(), st.integers(0, 2 ** 16))
def test_im2col_col2im_adjoint(config, seed):
    x, weight, _, kwargs = config
    unfold = dict(kernel_size=weight.shape[2:], stride=kwargs["stride"],
                  padding=kwargs["padding"], dilation=kwargs["dilation"])
    x = x.astype(np.float64)
    with convkit.num_threads(1):
        cols = convkit.im2col(x, **unfold)
        c = np.random.default_rng(seed).standard_normal(cols.shape)
        folded = convkit.col2im(c, x.shape, **unfold)
    np.testing.assert_array_equal(cols, reference.im2col(x, **unfold))
    lhs, rhs = np.vdot(cols, c), np.vdot(x, folded)
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, np.abs(cols).sum() * np.abs(c).max())
