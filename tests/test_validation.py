"""Bad input raises ValueError or TypeError naming the argument (and the shapes);
edge values (N = 0, NaN, inf) behave as arithmetic says."""

import numpy as np
import pytest

import convkit
from convkit import reference
from _helpers import assert_close

MODULES = [pytest.param(convkit, id="convkit"), pytest.param(reference, id="reference")]
METHODS = ["direct", "im2col", "auto"]

X_SHAPE = (2, 4, 6, 7)
W_SHAPE = (6, 2, 3, 3)  # groups=2
Y_SHAPE = (2, 6, 4, 5)


def _arrays(x_shape=X_SHAPE, w_shape=W_SHAPE, dtype=np.float64):
    rng = np.random.default_rng(0)
    return (rng.standard_normal(x_shape).astype(dtype),
            rng.standard_normal(w_shape).astype(dtype))


def _forward_call(x_shape=X_SHAPE, w_shape=W_SHAPE, bias=None, x_dtype=np.float64,
                  w_dtype=None, **kwargs):
    """A conv2d call on valid default arrays with one thing changed."""
    kwargs.setdefault("groups", 2)

    def call(module):
        x, weight = _arrays(x_shape, w_shape)
        return module.conv2d(x.astype(x_dtype), weight.astype(w_dtype or x_dtype), bias,
                             **kwargs)
    return call


# (id, call, exception type, substrings the message must contain)
FORWARD_ERRORS = [
    ("x_3d", _forward_call(x_shape=(4, 6, 7)), ValueError, ["x", "(4, 6, 7)"]),
    ("x_5d", _forward_call(x_shape=(1, 2, 4, 6, 7)), ValueError, ["x", "(1, 2, 4, 6, 7)"]),
    ("x_0d", _forward_call(x_shape=()), ValueError, ["x", "()"]),
    ("weight_3d", _forward_call(w_shape=(6, 2, 3)), ValueError, ["weight", "(6, 2, 3)"]),
    ("weight_5d", _forward_call(w_shape=(6, 2, 3, 3, 1)), ValueError,
     ["weight", "(6, 2, 3, 3, 1)"]),
    ("C_not_matching_weight", _forward_call(x_shape=(2, 3, 6, 7), groups=1), ValueError,
     ["weight", "(6, 2, 3, 3)", "x", "(2, 3, 6, 7)"]),
    ("C_not_matching_weight_groups", _forward_call(x_shape=(2, 6, 6, 7)), ValueError,
     ["weight", "(6, 2, 3, 3)", "x", "(2, 6, 6, 7)", "groups=2"]),
    ("C_not_divisible_by_groups", _forward_call(x_shape=(2, 5, 6, 7)), ValueError,
     ["groups=2", "C=5", "(2, 5, 6, 7)", "(6, 2, 3, 3)"]),
    ("K_not_divisible_by_groups", _forward_call(w_shape=(5, 2, 3, 3)), ValueError,
     ["groups=2", "K=5", "(2, 4, 6, 7)", "(5, 2, 3, 3)"]),
    ("groups_zero", _forward_call(groups=0), ValueError, ["groups", "0"]),
    ("groups_negative", _forward_call(groups=-2), ValueError, ["groups", "-2"]),
    ("groups_float", _forward_call(groups=2.0), TypeError, ["groups", "2.0"]),
    ("groups_bool", _forward_call(w_shape=(6, 4, 3, 3), groups=True), TypeError,
     ["groups", "True"]),
    ("kernel_larger_than_input", _forward_call(x_shape=(1, 2, 3, 4), w_shape=(2, 1, 5, 3)),
     ValueError, ["kernel 5x3", "3x4", "(1, 2, 3, 4)"]),
    ("kernel_larger_than_padded_input",
     _forward_call(x_shape=(1, 2, 3, 4), w_shape=(2, 1, 6, 3), padding=1), ValueError,
     ["kernel 6x3", "5x6", "(1, 2, 3, 4)"]),
    ("dilated_kernel_larger_than_input",
     _forward_call(x_shape=(1, 2, 4, 4), w_shape=(2, 1, 3, 3), dilation=2), ValueError,
     ["kernel 3x3", "5x5", "4x4", "(1, 2, 4, 4)"]),
    ("stride_zero", _forward_call(stride=0), ValueError, ["stride", "0"]),
    ("stride_negative", _forward_call(stride=-1), ValueError, ["stride", "-1"]),
    ("stride_pair_zero", _forward_call(stride=(1, 0)), ValueError, ["stride", "(1, 0)"]),
    ("stride_float", _forward_call(stride=1.5), TypeError, ["stride", "1.5"]),
    ("stride_triple", _forward_call(stride=(1, 1, 1)), TypeError, ["stride", "(1, 1, 1)"]),
    ("stride_bool", _forward_call(stride=True), TypeError, ["stride", "True"]),
    ("dilation_zero", _forward_call(dilation=0), ValueError, ["dilation", "0"]),
    ("dilation_pair_negative", _forward_call(dilation=(-1, 1)), ValueError,
     ["dilation", "(-1, 1)"]),
    ("padding_negative", _forward_call(padding=-1), ValueError, ["padding", "-1"]),
    ("padding_pair_negative", _forward_call(padding=(0, -1)), ValueError,
     ["padding", "(0, -1)"]),
    ("padding_asymmetric_negative", _forward_call(padding=((0, 0), (1, -1))), ValueError,
     ["padding", "((0, 0), (1, -1))"]),
    ("padding_unknown_string", _forward_call(padding="full"), ValueError,
     ["padding", "'full'"]),
    ("padding_three_entries", _forward_call(padding=(1, 1, 1)), ValueError,
     ["padding", "(1, 1, 1)"]),
    ("padding_float", _forward_call(padding=1.0), TypeError, ["padding", "1.0"]),
    ("bias_wrong_length", _forward_call(bias=np.zeros(5)), ValueError,
     ["bias", "(6,)", "(5,)", "(6, 2, 3, 3)"]),
    ("bias_2d", _forward_call(bias=np.zeros((6, 1))), ValueError, ["bias", "(6,)", "(6, 1)"]),
    ("bias_int", _forward_call(bias=np.zeros(6, dtype=np.int64)), TypeError,
     ["bias", "int64", "(6,)"]),
    ("bias_float32_x_float64", _forward_call(bias=np.zeros(6, dtype=np.float32)), TypeError,
     ["bias", "float32", "x", "float64"]),
    ("x_int64", _forward_call(x_dtype=np.int64, w_dtype=np.float64), TypeError,
     ["x", "int64", "(2, 4, 6, 7)"]),
    ("x_int32", _forward_call(x_dtype=np.int32, w_dtype=np.float64), TypeError,
     ["x", "int32", "(2, 4, 6, 7)"]),
    ("x_bool", _forward_call(x_dtype=np.bool_, w_dtype=np.float64), TypeError,
     ["x", "bool", "(2, 4, 6, 7)"]),
    ("x_complex", _forward_call(x_dtype=np.complex128, w_dtype=np.float64), TypeError,
     ["x", "complex128", "(2, 4, 6, 7)"]),
    ("x_object", _forward_call(x_dtype=object, w_dtype=np.float64), TypeError,
     ["x", "object", "(2, 4, 6, 7)"]),
    ("x_float16", _forward_call(x_dtype=np.float16, w_dtype=np.float64), TypeError,
     ["x", "float16", "(2, 4, 6, 7)"]),
    ("weight_int", _forward_call(w_dtype=np.int64), TypeError,
     ["weight", "int64", "(6, 2, 3, 3)"]),
    ("weight_complex", _forward_call(w_dtype=np.complex64), TypeError,
     ["weight", "complex64", "(6, 2, 3, 3)"]),
    ("x_float32_weight_float64", _forward_call(x_dtype=np.float32, w_dtype=np.float64),
     TypeError, ["weight", "float64", "x", "float32", "(2, 4, 6, 7)", "(6, 2, 3, 3)"]),
    ("x_float64_weight_float32", _forward_call(x_dtype=np.float64, w_dtype=np.float32),
     TypeError, ["weight", "float32", "x", "float64", "(2, 4, 6, 7)", "(6, 2, 3, 3)"]),
    ("method_unknown", _forward_call(method="fast"), ValueError, ["method", "'fast'"]),
]


def _check_raises(call, module, error, fragments):
    with pytest.raises(error) as info:
        call(module)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("call, error, fragments",
                         [pytest.param(*case[1:], id=case[0]) for case in FORWARD_ERRORS])
def test_conv2d_bad_input_raises(module, call, error, fragments):
    _check_raises(call, module, error, fragments)


@pytest.mark.parametrize("module", MODULES)
def test_conv2d_x_none_raises_type_error(module):
    _, weight = _arrays()
    with pytest.raises(TypeError, match="x must be a float32 or float64 array"):
        module.conv2d(None, weight, groups=2)


def _backward_call(gy_shape=Y_SHAPE, gy_dtype=np.float64, x_shape=X_SHAPE, w_shape=W_SHAPE,
                   x_dtype=np.float64, **kwargs):
    kwargs.setdefault("groups", 2)

    def call(module):
        x, weight = _arrays(x_shape, w_shape)
        grad_output = np.ones(gy_shape, dtype=gy_dtype)
        return module.conv2d_backward(grad_output, x.astype(x_dtype), weight.astype(x_dtype),
                                      **kwargs)
    return call


BACKWARD_ERRORS = [
    ("grad_output_wrong_shape", _backward_call(gy_shape=(2, 6, 5, 5)), ValueError,
     ["grad_output", "(2, 6, 4, 5)", "(2, 6, 5, 5)", "(2, 4, 6, 7)", "(6, 2, 3, 3)"]),
    ("grad_output_wrong_ndim", _backward_call(gy_shape=(6, 4, 5)), ValueError,
     ["grad_output", "(2, 6, 4, 5)", "(6, 4, 5)"]),
    ("grad_output_int", _backward_call(gy_dtype=np.int64), TypeError,
     ["grad_output", "int64", "(2, 6, 4, 5)"]),
    ("grad_output_float32_x_float64", _backward_call(gy_dtype=np.float32), TypeError,
     ["grad_output", "float32", "x", "float64"]),
    ("x_wrong_ndim", _backward_call(x_shape=(4, 6, 7)), ValueError, ["x", "(4, 6, 7)"]),
    ("C_not_divisible_by_groups", _backward_call(x_shape=(2, 5, 6, 7)), ValueError,
     ["groups=2", "C=5", "(2, 5, 6, 7)"]),
    ("x_int", _backward_call(x_dtype=np.int32), TypeError, ["x", "int32", "(2, 4, 6, 7)"]),
    ("stride_zero", _backward_call(stride=0), ValueError, ["stride", "0"]),
    ("padding_unknown_string", _backward_call(padding="full"), ValueError, ["padding"]),
    ("method_unknown", _backward_call(method="gemm"), ValueError, ["method", "'gemm'"]),
    ("output_mask_two_entries", _backward_call(output_mask=(True, False)), ValueError,
     ["output_mask", "(True, False)"]),
    ("output_mask_four_entries", _backward_call(output_mask=(True,) * 4), ValueError,
     ["output_mask"]),
    ("output_mask_none", _backward_call(output_mask=None), TypeError,
     ["output_mask", "None"]),
    ("output_mask_bool", _backward_call(output_mask=True), TypeError,
     ["output_mask", "True"]),
    ("output_mask_string", _backward_call(output_mask="yes"), TypeError,
     ["output_mask", "'yes'"]),
    ("output_mask_array_entry",
     _backward_call(output_mask=(np.array([True, False]), True, True)), TypeError,
     ["output_mask"]),
]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("call, error, fragments",
                         [pytest.param(*case[1:], id=case[0]) for case in BACKWARD_ERRORS])
def test_conv2d_backward_bad_input_raises(module, call, error, fragments):
    _check_raises(call, module, error, fragments)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("mask", [(True, False, True), [False, True, False],
                                  (np.True_, np.False_, np.True_)],
                         ids=["tuple", "list", "numpy_bools"])
def test_output_mask_accepts_bool_sequences(module, mask):
    x, weight = _arrays()
    grads = module.conv2d_backward(np.ones(Y_SHAPE), x, weight, groups=2, output_mask=mask)
    assert [g is not None for g in grads] == [bool(m) for m in mask]


def _unfold_call(function, **kwargs):
    def call(module):
        if function == "im2col":
            args = dict(x=np.zeros((2, 3, 5, 6)), kernel_size=3)
            args.update(kwargs)
            return module.im2col(**args)
        args = dict(cols=np.zeros((2, 27, 12)), input_shape=(2, 3, 5, 6), kernel_size=3)
        args.update(kwargs)
        return module.col2im(**args)
    return call


UNFOLD_ERRORS = [
    ("im2col_x_3d", _unfold_call("im2col", x=np.zeros((3, 5, 6))), ValueError,
     ["x", "(3, 5, 6)"]),
    ("im2col_x_int", _unfold_call("im2col", x=np.zeros((2, 3, 5, 6), dtype=np.int16)),
     TypeError, ["x", "int16", "(2, 3, 5, 6)"]),
    ("im2col_kernel_zero", _unfold_call("im2col", kernel_size=0), ValueError,
     ["kernel_size", "0"]),
    ("im2col_kernel_float", _unfold_call("im2col", kernel_size=2.5), TypeError,
     ["kernel_size", "2.5"]),
    ("im2col_kernel_too_large", _unfold_call("im2col", kernel_size=(6, 3)), ValueError,
     ["(2, 3, 5, 6)"]),
    ("im2col_stride_zero", _unfold_call("im2col", stride=0), ValueError, ["stride"]),
    ("im2col_padding_negative", _unfold_call("im2col", padding=-1), ValueError, ["padding"]),
    ("col2im_cols_wrong_shape", _unfold_call("col2im", cols=np.zeros((2, 27, 11))),
     ValueError, ["cols", "(2, 27, 12)", "(2, 27, 11)", "(2, 3, 5, 6)"]),
    ("col2im_cols_int", _unfold_call("col2im", cols=np.zeros((2, 27, 12), dtype=int)),
     TypeError, ["cols", "int64", "(2, 27, 12)"]),
    ("col2im_input_shape_3d", _unfold_call("col2im", input_shape=(3, 5, 6)), ValueError,
     ["input_shape", "(3, 5, 6)"]),
    ("col2im_kernel_too_large", _unfold_call("col2im", kernel_size=7), ValueError,
     ["(2, 3, 5, 6)"]),
]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("call, error, fragments",
                         [pytest.param(*case[1:], id=case[0]) for case in UNFOLD_ERRORS])
def test_im2col_col2im_bad_input_raises(module, call, error, fragments):
    _check_raises(call, module, error, fragments)


@pytest.mark.parametrize("name, good, bad", [
    ("stride", 1, True), ("stride", (1, 2), (True, 2)), ("dilation", 1, np.True_),
    ("padding", 1, True), ("padding", ((1, 0), (0, 1)), ((True, 0), (0, 1))),
    ("groups", 2, True), ("stride", 1, 1.0),
])
def test_cached_geometry_still_refuses_lookalikes(name, good, bad):
    """conv_geometry caches plain arguments; one equal to a cached one but of a refused
    type (True == 1 and hashes alike) must still raise, call after call."""
    from convkit._validation import conv_geometry

    args = dict(stride=1, padding=0, dilation=1, groups=2)
    args[name] = good
    g = conv_geometry(X_SHAPE, W_SHAPE, **args)
    assert conv_geometry(X_SHAPE, W_SHAPE, **args) is g
    args[name] = bad
    for _ in range(2):
        with pytest.raises(TypeError, match=name):
            conv_geometry(X_SHAPE, W_SHAPE, **args)
    # NumPy integers are accepted, uncached, with the same geometry.
    args[name] = np.int64(good) if isinstance(good, int) else good
    assert conv_geometry(X_SHAPE, W_SHAPE, **args) == g


@pytest.mark.parametrize("name, good, bad, error", [
    ("kernel_size", 2, True, TypeError), ("stride", (2, 1), (True, 1), TypeError),
    ("stride", None, 1.0, TypeError), ("padding", 1, True, TypeError),
    ("dilation", 1, np.True_, TypeError), ("ceil_mode", True, 1, TypeError),
    ("ceil_mode", False, 0, TypeError), ("padding", 1, 2, ValueError),
])
def test_cached_pool_geometry_still_refuses_lookalikes(name, good, bad, error):
    """pool_geometry caches plain arguments too: a refused lookalike of a cached one
    (True == 1, 1 == True for ceil_mode) still raises, call after call."""
    from convkit._validation import pool_geometry

    args = dict(kernel_size=3, stride=None, padding=0, dilation=1, ceil_mode=False)
    args[name] = good
    g = pool_geometry((2, 3, 9, 8), **args)
    assert pool_geometry((2, 3, 9, 8), **args) is g
    args[name] = bad
    for _ in range(2):
        with pytest.raises(error, match=name):
            pool_geometry((2, 3, 9, 8), **args)
    # A NumPy bool is a bool here: accepted, uncached, with the same geometry.
    if name == "ceil_mode":
        args[name] = np.bool_(good)
        assert pool_geometry((2, 3, 9, 8), **args) == g


def test_cached_avg_divisors_are_read_only_and_per_dtype():
    """avg_pool2d's cached divisors cannot be written through, and a float64 call
    after a float32 one (same geometry) gets its own."""
    from convkit import _pooling
    from convkit._validation import pool_geometry

    x = np.arange(2 * 3 * 7 * 5, dtype=np.float32).reshape(2, 3, 7, 5)
    y32 = convkit.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    y64 = convkit.avg_pool2d(x.astype(np.float64), 3, 2, 1, count_include_pad=False)
    np.testing.assert_allclose(y32, y64, rtol=1e-6)
    g = pool_geometry(x.shape, 3, 2, 1, 1, False)
    for dtype in (np.float32, np.float64):
        rows, cols = _pooling._avg_divisors(g, False, np.dtype(dtype))
        assert rows.dtype == dtype and not rows.flags.writeable and not cols.flags.writeable


# ---------------------------------------------------------------- empty batch

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("method", METHODS)
def test_empty_batch_forward_and_backward(method, dtype):
    x = np.zeros((0, 4, 7, 6), dtype=dtype)
    weight = np.ones((6, 2, 3, 2), dtype=dtype)
    bias = np.ones(6, dtype=dtype)
    kwargs = dict(stride=(2, 1), padding=((1, 0), (0, 2)), groups=2, method=method)
    y = convkit.conv2d(x, weight, bias, **kwargs)
    assert y.shape == (0, 6, 3, 7)
    assert y.dtype == dtype
    grad_input, grad_weight, grad_bias = convkit.conv2d_backward(y, x, weight, **kwargs)
    assert grad_input.shape == x.shape and grad_input.dtype == dtype
    assert grad_weight.shape == weight.shape and grad_weight.dtype == dtype
    assert grad_bias.shape == (6,) and grad_bias.dtype == dtype
    # Nothing flows back from an empty batch: every gradient is exactly zero.
    assert not grad_weight.any() and not grad_bias.any()


def test_empty_batch_reference_agrees():
    x = np.zeros((0, 3, 5, 5))
    weight = np.ones((2, 3, 3, 3))
    y = reference.conv2d(x, weight, np.ones(2), padding="same")
    assert y.shape == (0, 2, 5, 5)
    grads = reference.conv2d_backward(y, x, weight, padding="same")
    assert [g.shape for g in grads] == [x.shape, weight.shape, (2,)]
    assert not grads[1].any() and not grads[2].any()


def test_empty_batch_im2col_col2im():
    x = np.zeros((0, 3, 5, 6), dtype=np.float32)
    cols = convkit.im2col(x, (2, 3), stride=2)
    assert cols.shape == (0, 18, 2 * 2) and cols.dtype == np.float32
    back = convkit.col2im(cols, x.shape, (2, 3), stride=2)
    assert back.shape == x.shape and back.dtype == np.float32


# ------------------------------------------------------------- NaN and inf

def _touching(mask, kernel_shape, **kwargs):
    """Outputs whose window covers a True pixel of ``mask`` (N, C, H, W)."""
    ones = np.ones(kernel_shape)
    return reference.conv2d(mask.astype(np.float64), ones, **kwargs) > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("method", METHODS)
def test_nan_and_inf_in_x_propagate(method, dtype):
    rng = np.random.default_rng(1)
    x = rng.uniform(0.5, 1.0, (2, 1, 8, 9)).astype(dtype)
    x[0, 0, 2, 3] = np.nan
    x[0, 0, 6, 7] = np.inf
    x[1, 0, 4, 4] = np.inf
    x[1, 0, 5, 5] = -np.inf
    weight = rng.uniform(0.5, 1.0, (3, 1, 3, 2)).astype(dtype)
    kwargs = dict(stride=(1, 2), padding=1)
    y = convkit.conv2d(x, weight, method=method, **kwargs)
    assert y.shape == (2, 3, 8, 5) and y.dtype == dtype

    def touching(pixel_mask):
        return np.broadcast_to(_touching(pixel_mask, (1, 1, 3, 2), **kwargs), y.shape)

    nan_source = touching(np.isnan(x))
    pos, neg = touching(np.isposinf(x)), touching(np.isneginf(x))
    # NaN in the window, or +inf meeting -inf (positive weights), gives NaN.
    np.testing.assert_array_equal(np.isnan(y), nan_source | (pos & neg))
    np.testing.assert_array_equal(np.isposinf(y), pos & ~neg & ~nan_source)
    np.testing.assert_array_equal(np.isneginf(y), neg & ~pos & ~nan_source)
    assert_close(y, reference.conv2d(x, weight, **kwargs))


@pytest.mark.parametrize("method", METHODS)
def test_nan_in_grad_output_propagates(method):
    rng = np.random.default_rng(2)
    x = rng.uniform(0.5, 1.0, (1, 2, 6, 6))
    weight = rng.uniform(0.5, 1.0, (2, 2, 3, 3))
    grad_output = np.ones((1, 2, 4, 4))
    grad_output[0, 1, 1, 2] = np.nan
    grads = convkit.conv2d_backward(grad_output, x, weight, method=method)
    expected = reference.conv2d_backward(grad_output, x, weight)
    grad_input, grad_weight, grad_bias = grads
    # The NaN output reads input rows 1..3, columns 2..4 of every channel.
    expected_nan = np.zeros(x.shape, bool)
    expected_nan[0, :, 1:4, 2:5] = True
    np.testing.assert_array_equal(np.isnan(grad_input), expected_nan)
    assert np.isnan(grad_weight[1]).all() and not np.isnan(grad_weight[0]).any()
    np.testing.assert_array_equal(np.isnan(grad_bias), [False, True])
    for actual, wanted in zip(grads, expected):
        assert_close(actual, wanted, kind="grad")


@pytest.mark.parametrize("method", ["direct", "im2col"])
def test_inf_weight_times_zero_padding_is_nan(method):
    # Padding is zeros, so an infinite weight tap over the padding contributes
    # 0 * inf = NaN, exactly as torch.nn.functional.conv2d computes it.
    x = np.ones((1, 1, 3, 3))
    weight = np.ones((1, 1, 2, 2))
    weight[0, 0, 0, 0] = np.inf
    with np.errstate(invalid="ignore"):
        y = convkit.conv2d(x, weight, padding=1, method=method)
        expected = reference.conv2d(x, weight, padding=1)
    assert np.isnan(expected[0, 0, 0, :]).all() and np.isnan(expected[0, 0, :, 0]).all()
    assert np.isposinf(expected[0, 0, 1:, 1:]).all()
    np.testing.assert_array_equal(y, expected)
