"""conv2d and conv2d_backward (direct, im2col, auto) against convkit.reference."""

import itertools
import math

import numpy as np
import pytest

import convkit
from convkit import reference
from _helpers import assert_close, check_unmodified, layouts, same_on_thread_counts

METHODS = ["direct", "im2col", "auto"]
DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]

# id -> (x shape (N, C, H, W), weight shape (K, C // groups, R, S), bias?, conv kwargs)
CASES = {
    "nonsquare_3x5_kernel": ((2, 3, 7, 9), (4, 3, 3, 5), True, {}),
    "1x1_pointwise": ((2, 4, 5, 6), (6, 4, 1, 1), False, {}),
    "1x1_pointwise_groups2": ((2, 4, 5, 3), (6, 2, 1, 1), True, dict(groups=2)),
    "1x1_stride2_pad1": ((2, 4, 5, 6), (3, 4, 1, 1), True, dict(stride=2, padding=1)),
    "7x7_pad3": ((1, 2, 9, 10), (3, 2, 7, 7), True, dict(padding=3)),
    "stride_3_not_dividing": ((2, 3, 8, 11), (4, 3, 3, 3), False, dict(stride=3)),
    "stride_2x3_pad1": ((2, 2, 9, 10), (3, 2, 2, 3), True, dict(stride=(2, 3), padding=1)),
    "asymmetric_padding": ((2, 3, 6, 7), (4, 3, 3, 2), True,
                           dict(stride=2, padding=((1, 2), (0, 3)))),
    "asymmetric_padding_pair": ((1, 2, 5, 4), (2, 2, 3, 3), False, dict(padding=(2, 0))),
    "same_even_kernel_stride2": ((2, 3, 7, 8), (4, 3, 4, 2), False,
                                 dict(stride=2, padding="same")),
    "same_even_kernel_stride1": ((1, 2, 6, 5), (3, 2, 2, 4), True, dict(padding="same")),
    "same_stride3_dilation2": ((1, 2, 10, 9), (2, 2, 3, 2), True,
                               dict(stride=3, dilation=2, padding="same")),
    "dilation2": ((2, 3, 9, 8), (4, 3, 3, 2), False, dict(dilation=2, padding=1)),
    "dilation_2x1_stride_1x2": ((1, 2, 10, 9), (2, 2, 2, 3), True,
                                dict(dilation=(2, 1), stride=(1, 2), padding=(2, 1))),
    "groups2": ((2, 4, 6, 7), (6, 2, 3, 3), True, dict(groups=2, padding=1)),
    "groups2_same_dilation2_stride2": ((2, 4, 9, 7), (4, 2, 2, 3), False,
                                       dict(groups=2, dilation=2, stride=2, padding="same")),
    "depthwise": ((2, 5, 6, 7), (5, 1, 3, 3), True, dict(groups=5, padding=1)),
    "depthwise_multiplier2_stride2": ((1, 3, 6, 5), (6, 1, 3, 3), False,
                                      dict(groups=3, stride=2)),
    "N1_C1": ((1, 1, 8, 9), (4, 1, 5, 3), True, {}),
    "C1_K1_valid": ((2, 1, 5, 5), (1, 1, 2, 2), False, dict(padding="valid")),
    "kernel_fills_input": ((1, 2, 4, 5), (3, 2, 4, 5), True, {}),
    "wide_reduction_auto_im2col": ((1, 16, 4, 4), (16, 16, 3, 3), True, dict(padding=1)),
    # Channel-vector grad_weight: a K/G tail in the lanes, groups, image runs.
    "channel_vector_gw_groups2_K_tail": ((3, 6, 7, 8), (40, 3, 3, 3), True,
                                         dict(groups=2, padding=1)),
    "C1_K8_stride2_auto_im2col": ((2, 1, 9, 8), (8, 1, 3, 3), True, dict(stride=2, padding=1)),
    # Single-channel gradients under "auto": grad_input direct at stride 1,
    # grad_weight by the depthwise row kernel (3x3) or the channel-vector one.
    "C1_K32_3x3_same_depthwise_rows": ((2, 1, 9, 10), (32, 1, 3, 3), False, dict(padding=1)),
    "C1_K20_5x5_channel_vector_gw": ((3, 1, 9, 8), (20, 1, 5, 5), True, {}),
    # Few input channels, 8 or more output channels: grad_input scatters
    # (col2im), here with input pixels no tap reaches between the strides.
    "narrow_scatter_stride3_dilation2": ((2, 2, 11, 10), (8, 2, 2, 3), True,
                                         dict(stride=3, dilation=2, padding=1)),
    "channel_vector_gw_9_images_stride2": ((9, 4, 11, 10), (24, 4, 3, 2), False,
                                           dict(stride=2, dilation=(1, 2), padding=1)),
    # grad_input as weights x grad_output then col2im: small maps, groups,
    # dilation and a column stride.
    "scatter_grad_input_groups_dilation": ((2, 4, 9, 10), (6, 2, 3, 3), True,
                                           dict(groups=2, dilation=2, stride=(1, 2))),
    "scatter_grad_input_pad_5x5": ((3, 5, 8, 8), (9, 5, 5, 5), False, dict(padding=1)),
    # col2im by output pixel (column stride 1): rows wider than a vector and
    # not a multiple of one, column dilation, a channel tail past its blocks
    # of 4, and a row stride.
    "scatter_wide_rows_dilation_channel_tail": ((2, 5, 7, 35), (8, 5, 3, 4), True,
                                                dict(dilation=(2, 3), padding=(2, 4))),
    "scatter_row_stride2": ((1, 3, 13, 20), (12, 3, 5, 3), False,
                            dict(stride=(2, 1), padding=(2, 0))),
    # Stride 1, no padding: the channel-vector kernels read x without packing.
    "channel_vector_unpacked_input": ((2, 20, 7, 6), (36, 20, 3, 3), True, {}),
    "1x1_pointwise_direct_grad_weight": ((3, 6, 5, 7), (20, 6, 1, 1), True, {}),
    # Channel-vector forward with its wide block and a K tail (K/G = 70).
    "channel_vector_wide_K_tail": ((2, 8, 9, 8), (70, 8, 5, 4), True, dict(padding=(2, 1))),
    "channel_vector_wide_stride2": ((3, 12, 11, 9), (66, 6, 5, 5), False,
                                    dict(groups=2, stride=2, padding=1)),
    # Channel-vector forward whose block's weights (C/G*R*S = 1170 columns)
    # outgrow one pass on every kernel variant: passes over chunks of input
    # channels, partial sums kept between them, a position block tail.
    "channel_vector_input_chunks": ((2, 130, 6, 7), (20, 130, 3, 3), True, {}),
}
CASE_IDS = list(CASES)


def make_inputs(case, dtype, seed=0):
    """x, weight, bias (or None), grad_output and kwargs of a named case."""
    x_shape, w_shape, has_bias, kwargs = CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[0]).astype(dtype) if has_bias else None
    y_shape = reference.conv2d(x, weight, **kwargs).shape
    grad_output = rng.standard_normal(y_shape).astype(dtype)
    return x, weight, bias, grad_output, kwargs


def test_grid_exercises_both_auto_branches():
    """The grid must reach both kernels through method="auto"."""
    from convkit._validation import conv_geometry
    from convkit.functional import _choose_method

    chosen = set()
    for x_shape, w_shape, _, kwargs in CASES.values():
        g = conv_geometry(x_shape, w_shape, kwargs.get("stride", 1), kwargs.get("padding", 0),
                          kwargs.get("dilation", 1), kwargs.get("groups", 1))
        for op in ("forward", "grad_input", "grad_weight"):
            for itemsize in (4, 8):
                chosen.add((_choose_method(g, op, itemsize), g.is_pointwise))
    from convkit.functional import _blas_narrower_than_kernels

    # 1x1 convolutions take the GEMMs unless BLAS's vectors are narrower.
    expected = {("direct", False), ("direct" if _blas_narrower_than_kernels() else "im2col", True)}
    # A non-pointwise im2col grad_weight needs K/G >= 8 below half the
    # channel-vector kernel's block, which only the AVX-512 variant's
    # 32-channel float32 block leaves room for.
    from convkit._lib import _conv

    blocks = [_conv.grad_weight_channel_block(itemsize) for itemsize in (4, 8)]
    if max(blocks) > 2 * 8:
        expected.add(("im2col", False))
    assert expected <= chosen


@pytest.mark.parametrize("isa, libraries, narrower", [
    ("avx512f", [{"internal_api": "openblas", "architecture": "Haswell"}], True),
    ("avx512f", [{"internal_api": "openblas", "architecture": "Zen"}], True),
    ("avx512f", [{"internal_api": "openblas", "architecture": "SkylakeX"}], False),
    ("avx512f", [{"internal_api": "openblas", "architecture": "SapphireRapids"}], False),
    ("avx512f", [{"internal_api": "mkl", "architecture": None}], False),
    ("avx512f", [], False),
    ("avx2", [{"internal_api": "openblas", "architecture": "Haswell"}], False),
    ("baseline", [{"internal_api": "openblas", "architecture": "Prescott"}], False),
])
def test_pointwise_rule_follows_blas_width(monkeypatch, isa, libraries, narrower):
    """1x1 convolutions run direct exactly where BLAS's vectors are narrower than the kernels'."""
    from convkit import _threads
    from convkit._lib import _conv
    from convkit._validation import conv_geometry
    from convkit import functional

    monkeypatch.setattr(_conv, "kernel_isa", lambda: isa)
    monkeypatch.setattr(_threads, "blas_info", lambda: libraries)
    functional._blas_narrower_than_kernels.cache_clear()
    try:
        assert functional._blas_narrower_than_kernels() is narrower
        pointwise = conv_geometry((2, 8, 5, 5), (4, 8, 1, 1), 1, 0, 1, 1)
        methods = {functional._measured_method(pointwise, op, 4)
                   for op in ("forward", "grad_input")}
        assert methods == {"direct" if narrower else "im2col"}
        # grad_weight with K/G filling the channel-vector block runs that
        # kernel only with AVX-512 kernels; elsewhere the GEMMs were faster.
        wide = conv_geometry((2, 8, 5, 5), (64, 8, 1, 1), 1, 0, 1, 1)
        expected = "direct" if isa == "avx512f" else "im2col"
        assert functional._measured_method(wide, "grad_weight", 4) == expected
        # Other shapes keep their rule.
        three = conv_geometry((2, 8, 5, 5), (4, 8, 3, 3), 1, 1, 1, 1)
        assert functional._measured_method(three, "forward", 4) == "direct"
    finally:
        functional._blas_narrower_than_kernels.cache_clear()


def test_auto_stays_off_blas_it_cannot_hold(monkeypatch):
    """Without threadpoolctl (BLAS's threads out of reach), "auto" never picks im2col."""
    from convkit import _threads
    from convkit._validation import conv_geometry
    from convkit.functional import _choose_method, _measured_method

    monkeypatch.setattr(_threads, "_blas", False)
    assert not _threads.can_limit_blas()
    measured_im2col = 0
    for x_shape, w_shape, _, kwargs in CASES.values():
        g = conv_geometry(x_shape, w_shape, kwargs.get("stride", 1), kwargs.get("padding", 0),
                          kwargs.get("dilation", 1), kwargs.get("groups", 1))
        for op in ("forward", "grad_input", "grad_weight"):
            for itemsize in (4, 8):
                measured_im2col += _measured_method(g, op, itemsize) == "im2col"
                assert _choose_method(g, op, itemsize) == "direct"
    assert measured_im2col, "the grid must reach im2col where BLAS can be held"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", CASE_IDS)
def test_forward_matches_reference(case, method, dtype):
    x, weight, bias, _, kwargs = make_inputs(case, dtype)
    y = convkit.conv2d(x, weight, bias, method=method, **kwargs)
    expected = reference.conv2d(x, weight, bias, **kwargs)
    assert y.shape == expected.shape
    assert y.dtype == dtype
    assert_close(y, expected, err_msg=case)


# Forward cases that pack column-shifted planes (functional._shifted_layout):
# stride, dilation and padding per axis, output counts that leave a partial
# vector, K tails in the channel block, groups, and per-image tasks (C/G > 4).
SHIFTED_CASES = {
    "stride1_partial_vector": ((2, 1, 13, 11), (10, 1, 5, 3), True, {}),
    "stride2_dilation2_pad": ((2, 3, 15, 14), (9, 3, 3, 3), True,
                              dict(stride=2, dilation=(2, 1), padding=(1, 2))),
    "stride_2x3": ((1, 2, 17, 19), (12, 2, 2, 5), False, dict(stride=(2, 3), padding=1)),
    "groups2_K_tail": ((2, 4, 12, 10), (10, 2, 3, 3), True, dict(groups=2, padding=1)),
    "dilation_1x2_wide_groups": ((4, 12, 10, 12), (40, 6, 2, 3), True,
                                 dict(groups=2, dilation=(1, 2), padding=(0, 2))),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SHIFTED_CASES)
def test_shifted_layout_forward(case, dtype, monkeypatch):
    """The column-shifted packing matches the reference and, bit for bit, the phase planes."""
    from convkit import functional

    x_shape, w_shape, has_bias, kwargs = SHIFTED_CASES[case]
    rng = np.random.default_rng(5)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[0]).astype(dtype) if has_bias else None
    chosen = []
    rule = functional._use_shifted_layout
    monkeypatch.setattr(functional, "_use_shifted_layout",
                        lambda *args: chosen.append(rule(*args)) or chosen[-1])
    with convkit.num_threads(2):
        y = convkit.conv2d(x, weight, bias, method="direct", **kwargs)
        assert chosen == [True], case
        assert_close(y, reference.conv2d(x, weight, bias, **kwargs), err_msg=case)
        monkeypatch.setattr(functional, "_use_shifted_layout", lambda *args: False)
        unshifted = convkit.conv2d(x, weight, bias, method="direct", **kwargs)
    np.testing.assert_array_equal(y, unshifted)


# Geometries of every grid-kernel path: the whole input packed first (one
# image), packed per (image, group) task, narrow groups packed per block, the
# column-shifted layout, one output channel per block (K/G < 4), a partial
# last block of output channels, mixed strides and dilations.
CHANNEL_PASS_CASES = {
    "packed one image": ((1, 40, 13, 13), (16, 40, 3, 3), dict(padding=1)),
    "per image, stride 2": ((4, 24, 17, 17), (12, 24, 3, 3), dict(stride=2, padding=1)),
    "narrow groups": ((2, 8, 12, 12), (16, 4, 3, 3), dict(groups=2, padding=2, dilation=2)),
    "shifted layout": ((4, 3, 16, 16), (32, 3, 3, 3), dict(padding=1)),
    "one channel per block": ((2, 20, 9, 11), (2, 20, 2, 3), dict(stride=(2, 1))),
    "block tail, mixed": ((3, 33, 15, 14), (11, 33, 3, 2), dict(stride=(1, 2), dilation=(2, 1),
                                                              padding=((1, 2), (0, 1)))),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CHANNEL_PASS_CASES)
def test_channel_passes_keep_the_sums(case, dtype, monkeypatch):
    """Summing the input channels in passes gives one pass's bits, forward and grad_input."""
    from convkit import functional

    x_shape, w_shape, kwargs = CHANNEL_PASS_CASES[case]
    rng = np.random.default_rng(11)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[0]).astype(dtype)
    y = convkit.conv2d(x, weight, bias, method="direct", **kwargs)
    grad_y = rng.standard_normal(y.shape).astype(dtype)

    def run():
        with convkit.num_threads(2):
            forward = convkit.conv2d(x, weight, bias, method="direct", **kwargs)
            grad_x = convkit.conv2d_backward(grad_y, x, weight, method="direct",
                                             output_mask=(True, False, False), **kwargs)[0]
        return forward, grad_x

    monkeypatch.setattr(functional, "_GRID_PASS_BYTES", 1 << 40)
    one_forward, one_grad_x = run()
    assert_close(one_forward, reference.conv2d(x, weight, bias, **kwargs), err_msg=case)
    for pass_bytes in (1, 3 * x.itemsize, 16 * x.itemsize):
        monkeypatch.setattr(functional, "_GRID_PASS_BYTES", pass_bytes)
        forward, grad_x = run()
        np.testing.assert_array_equal(forward, one_forward, err_msg=f"{case}, {pass_bytes}")
        np.testing.assert_array_equal(grad_x, one_grad_x, err_msg=f"{case}, {pass_bytes}")


# Channel-vector geometries (its narrow and wide blocks, a K tail, strides):
# the forward and the grad_input, which runs it on the flipped weights.
CHANNEL_VECTOR_PASS_CASES = {
    "mnist-conv2 like": ((3, 32, 12, 12), (64, 32, 5, 5), {}),
    "c256 like": ((2, 48, 14, 14), (40, 48, 3, 3), dict(padding=1)),
    "wide block, K tail": ((2, 8, 9, 8), (70, 8, 5, 4), dict(padding=(2, 1))),
    "stride 2, groups": ((3, 12, 11, 9), (66, 6, 5, 5), dict(groups=2, stride=2, padding=1)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CHANNEL_VECTOR_PASS_CASES)
def test_channel_vector_passes_keep_the_sums(case, dtype):
    """The channel-vector kernel's passes over chunks of input channels give one pass's bits.

    The chunk is set per CPU at import (one pass for the AVX-512 kernels on
    Zen 4, 32 KB of weights elsewhere); every setting must give the same bits.
    """
    from convkit._lib import _conv

    x_shape, w_shape, kwargs = CHANNEL_VECTOR_PASS_CASES[case]
    rng = np.random.default_rng(12)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[0]).astype(dtype)
    grad_y = rng.standard_normal(reference.conv2d(x, weight, **kwargs).shape).astype(dtype)

    def run(chunk_bytes):
        _conv._set_kvec_chunk_bytes(chunk_bytes)
        with convkit.num_threads(2):
            forward = convkit.conv2d(x, weight, bias, method="direct", **kwargs)
            grad_x = convkit.conv2d_backward(grad_y, x, weight, method="direct",
                                             output_mask=(True, False, False), **kwargs)[0]
        return forward, grad_x

    chosen = _conv.kvec_chunk_bytes()
    try:
        one_forward, one_grad_x = run(1 << 62)
        assert_close(one_forward, reference.conv2d(x, weight, bias, **kwargs), err_msg=case)
        assert_close(one_grad_x, reference.conv2d_backward(grad_y, x, weight, **kwargs)[0],
                     kind="grad", err_msg=case)
        # One input channel a pass, 3 (of a 64-channel block, more of a
        # narrower one), and the default 32 KB of weights.
        taps = w_shape[2] * w_shape[3]
        for chunk_bytes in (1, 3 * 64 * taps * x.itemsize, 32768):
            forward, grad_x = run(chunk_bytes)
            np.testing.assert_array_equal(forward, one_forward, err_msg=f"{case}, {chunk_bytes}")
            np.testing.assert_array_equal(grad_x, one_grad_x, err_msg=f"{case}, {chunk_bytes}")
    finally:
        _conv._set_kvec_chunk_bytes(chosen)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", CASE_IDS)
def test_backward_matches_reference(case, method, dtype):
    x, weight, _, grad_output, kwargs = make_inputs(case, dtype)
    grads = convkit.conv2d_backward(grad_output, x, weight, method=method, **kwargs)
    expected = reference.conv2d_backward(grad_output, x, weight, **kwargs)
    assert len(grads) == 3
    for name, actual, wanted, shape in zip(("grad_input", "grad_weight", "grad_bias"),
                                           grads, expected,
                                           (x.shape, weight.shape, (weight.shape[0],))):
        assert actual.shape == shape, name
        assert actual.dtype == dtype, name
        assert_close(actual, wanted, kind="grad", err_msg=f"{case} {name}")


# Depthwise grad_weight: the row kernel (column stride and dilation 1), in
# flat runs of several output rows or row by row, with blocks of 3x3 taps,
# their edge rows and output rows no tap reaches; the packed kernel otherwise.
DEPTHWISE_GRAD_WEIGHT = {
    "flat_runs": ((2, 3, 40, 40), (3, 1, 3, 3), dict(padding=1)),
    "multiplier2_5x5": ((3, 4, 9, 5), (8, 1, 5, 5), dict(padding=2)),
    "one_column_wide_rows": ((2, 2, 8, 37), (2, 1, 7, 1), dict(padding=(3, 0))),
    "rows_no_tap_reaches": ((2, 2, 12, 11), (2, 1, 3, 4), dict(padding=(5, 1))),
    "row_stride": ((2, 3, 11, 10), (3, 1, 3, 3), dict(stride=(2, 1), padding=1)),
    "row_dilation_valid": ((1, 3, 9, 17), (3, 1, 3, 2), dict(dilation=(2, 1))),
    "tiny_rows": ((2, 5, 3, 2), (5, 1, 2, 2), {}),
    "column_dilation_packed": ((2, 3, 9, 10), (3, 1, 3, 3), dict(dilation=(1, 2), padding=2)),
    "column_stride_packed": ((2, 3, 9, 10), (3, 1, 3, 3), dict(stride=(1, 2), padding=1)),
}


def _depthwise_inputs(case, dtype):
    x_shape, w_shape, kwargs = DEPTHWISE_GRAD_WEIGHT[case]
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    kwargs = dict(kwargs, groups=x_shape[1])
    grad_output = rng.standard_normal(reference.conv2d(x, weight, **kwargs).shape).astype(dtype)
    return x, weight, grad_output, kwargs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(DEPTHWISE_GRAD_WEIGHT))
def test_depthwise_grad_weight(case, dtype):
    """Every path of the depthwise grad_weight, equal at 1 and 2 threads."""
    x, weight, grad_output, kwargs = _depthwise_inputs(case, dtype)
    expected = reference.conv2d_backward(grad_output, x, weight, **kwargs)[1]
    result = same_on_thread_counts(lambda: convkit.conv2d_backward(
        grad_output, x, weight, method="direct", output_mask=(False, True, False), **kwargs)[1])
    assert_close(result, expected, kind="grad", err_msg=case)


# id -> (x shape, weight shape, conv kwargs): convolutions of one input channel
# per group that the in-place depthwise forward kernel runs (see
# functional._use_depthwise_forward), between them every kind of its blocks:
# 6 full rows by 2 and 1 vectors (for 3x3 kernels with dilated columns,
# input row by input row), single rows by 4, 2 and 1 vectors, interior and
# edge vectors, rows just one vector wide, the lane-by-lane sums at the ends
# of x; and of the 3x3 band kernel (CK_DEFINE_FORWARD_DW3: 3x3 at row stride
# and dilation 1): bands of 4 rows and the single rows left over, rows that
# miss a kernel row (top, bottom, several), padding on one side only, and
# vectors that would read before the start or past the end of x.
DEPTHWISE_FORWARD = {
    "mobilenet_28": ((2, 4, 28, 28), (4, 1, 3, 3), dict(padding=1)),
    "wide_rows_3x3": ((1, 3, 20, 70), (3, 1, 3, 3), dict(padding=1)),
    "wide_rows_3x3_dilated_columns": ((2, 2, 15, 75), (4, 1, 3, 3),
                                      dict(padding=(1, 2), dilation=(1, 2))),
    "one_vector_rows": ((3, 2, 9, 16), (2, 1, 3, 3), dict(padding="same")),
    "wide_rows_5x5": ((1, 3, 20, 70), (3, 1, 5, 5), dict(padding=2)),
    "multiplier3_dilated": ((2, 2, 14, 40), (6, 1, 3, 7), dict(padding=(1, 5),
                                                               dilation=(2, 3))),
    "row_stride_crop": ((2, 3, 17, 33), (3, 1, 3, 3), dict(stride=(2, 1),
                                                           padding=((2, 0), (4, 1)))),
    "valid_no_padding": ((1, 2, 13, 35), (2, 1, 4, 2), {}),
    "widest_row_of_taps": ((1, 2, 9, 48), (2, 1, 2, 16), dict(padding=(1, 8))),
    "rows_no_tap_reaches": ((2, 2, 5, 24), (2, 1, 3, 3), dict(padding=(6, 1))),
    "bands_3x3_top_unpadded": ((2, 3, 11, 21), (6, 1, 3, 3), dict(padding=((0, 2), (1, 1)))),
    "bands_3x3_one_sided": ((1, 2, 14, 19), (4, 1, 3, 3), dict(padding=((2, 1), (0, 2)))),
    "bands_3x3_short_planes": ((3, 2, 2, 33), (6, 1, 3, 3), dict(padding=(2, 1))),
}


def _depthwise_forward_inputs(case, dtype):
    x_shape, w_shape, kwargs = DEPTHWISE_FORWARD[case]
    rng = np.random.default_rng(11)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    bias = rng.standard_normal(w_shape[0]).astype(dtype)
    return x, weight, bias, dict(kwargs, groups=x_shape[1])


@pytest.fixture
def depthwise_calls(monkeypatch):
    """Counts the calls of the in-place depthwise forward kernel."""
    from convkit._lib import _conv

    calls = []
    kernel = _conv.forward_depthwise

    def spy(*args):
        calls.append(args)
        return kernel(*args)

    monkeypatch.setattr(_conv, "forward_depthwise", spy)
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(DEPTHWISE_FORWARD))
def test_depthwise_forward(case, dtype, depthwise_calls):
    """The in-place depthwise kernel, against the reference, equal at 1 and 2 threads."""
    x, weight, bias, kwargs = _depthwise_forward_inputs(case, dtype)
    expected = reference.conv2d(x, weight, bias, **kwargs)
    result = same_on_thread_counts(
        lambda: convkit.conv2d(x, weight, bias, method="direct", **kwargs))
    assert len(depthwise_calls) == 2
    assert_close(result, expected, err_msg=case)


@pytest.mark.parametrize("case", ["mobilenet_28", "row_stride_crop"])
def test_depthwise_grad_input_runs_in_place(case, depthwise_calls):
    """A stride-1 depthwise grad_input is a depthwise forward: the same kernel runs it."""
    x, weight, _, kwargs = _depthwise_forward_inputs(case, np.float64)
    grad_output = np.random.default_rng(3).standard_normal(
        reference.conv2d(x, weight, **kwargs).shape)
    got = convkit.conv2d_backward(grad_output, x, weight, method="direct",
                                  output_mask=(True, False, False), **kwargs)[0]
    expected = reference.conv2d_backward(grad_output, x, weight, **kwargs)[0]
    assert len(depthwise_calls) == (1 if kwargs.get("stride", 1) == 1 else 0)
    assert_close(got, expected, kind="grad", err_msg=case)


# Depthwise grad_input at strides above 1 (functional._use_depthwise_scatter_grad_input):
# each plane scattered into column-phase rows, then interleaved.
DEPTHWISE_STRIDED_GRAD_INPUT = {
    "mobilenet_s2_odd_width": ((2, 4, 15, 17), (4, 1, 3, 3), dict(stride=2, padding=1)),
    "stride_2x3_dilated": ((1, 3, 20, 23), (3, 1, 5, 4), dict(stride=(2, 3), padding=(2, 1),
                                                              dilation=(1, 2))),
    "column_stride_only": ((2, 2, 9, 14), (2, 1, 2, 5), dict(stride=(1, 2),
                                                             padding=((1, 0), (2, 2)))),
    "row_stride_only": ((1, 3, 11, 10), (3, 1, 3, 3), dict(stride=(2, 1), padding=1)),
    "stride_3_columns_no_tap_reaches": ((2, 2, 10, 11), (2, 1, 2, 2), dict(stride=3)),
    "same_stride_2": ((1, 5, 13, 9), (5, 1, 4, 4), dict(stride=2, padding="same")),
    "stride_4_past_the_kernel": ((1, 2, 9, 9), (2, 1, 3, 3), dict(stride=4, padding=1)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(DEPTHWISE_STRIDED_GRAD_INPUT))
def test_depthwise_strided_grad_input(case, dtype, monkeypatch):
    """The depthwise scatter kernel, against the reference, equal at 1 and 2 threads,
    cells no tap reaches left zero."""
    from convkit._lib import _conv

    calls = []
    kernel = _conv.grad_input_depthwise_scatter
    monkeypatch.setattr(_conv, "grad_input_depthwise_scatter",
                        lambda *args: calls.append(args) or kernel(*args))
    x_shape, w_shape, kwargs = DEPTHWISE_STRIDED_GRAD_INPUT[case]
    kwargs = dict(kwargs, groups=x_shape[1])
    rng = np.random.default_rng(5)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    grad_y = rng.standard_normal(reference.conv2d(x, weight, **kwargs).shape).astype(dtype)
    expected = reference.conv2d_backward(grad_y, x, weight, **kwargs)[0]
    result = same_on_thread_counts(lambda: convkit.conv2d_backward(
        grad_y, x, weight, method="direct", output_mask=(True, False, False), **kwargs)[0])
    assert len(calls) == 2
    assert_close(result, expected, kind="grad", err_msg=case)


def test_depthwise_forward_nonfinite():
    """inf beside a row's edge stays out of the cleared lanes; an inf weight keeps 0 * inf.

    The kernel reads across the neighbouring row and clears those lanes, so
    an inf there must not reach the other row's sums. It skips the padding,
    so a non-finite weight takes the grid kernels, which multiply the
    padding's zeros by it as the reference does.
    """
    x, weight, bias, kwargs = _depthwise_forward_inputs("mobilenet_28", np.float32)
    x[0, 1, 5, 27] = np.inf     # read across by row 6's left edge vector
    x[1, 2, 9, 0] = -np.inf     # read across by row 8's right edge vector
    x[1, 3, 27, 27] = np.nan    # the last element of x
    bad_weight = weight.copy()
    bad_weight[2, 0, 0, 0] = np.inf
    with np.errstate(invalid="ignore"):
        for w in (weight, bad_weight):
            got = convkit.conv2d(x, w, bias, method="direct", **kwargs)
            expected = reference.conv2d(x, w, bias, **kwargs)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
            np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
            finite = np.isfinite(expected)
            assert_close(got[finite], expected[finite])


def test_depthwise_forward_keeps_grid_kernels_elsewhere(depthwise_calls):
    """Rows narrower than a vector, column strides and 4+ outputs per group keep the grid."""
    from convkit._lib import _conv

    lanes = _conv.vector_lanes(4)
    rng = np.random.default_rng(0)
    for x_shape, w_shape, kwargs in [
            ((1, 2, 9, lanes - 1), (2, 1, 3, 3), dict(groups=2)),
            ((1, 2, 9, 40), (2, 1, 3, 3), dict(groups=2, stride=(1, 2))),
            ((1, 2, 9, 40), (8, 1, 3, 3), dict(groups=2)),
            ((1, 2, 9, 40), (2, 1, 3, 17), dict(groups=2))]:
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        assert_close(convkit.conv2d(x, w, method="direct", **kwargs),
                     reference.conv2d(x, w, **kwargs))
    assert depthwise_calls == []


@pytest.mark.parametrize("case", ["flat_runs", "rows_no_tap_reaches", "row_stride"])
def test_depthwise_grad_weight_nonfinite_grad_output(case):
    """An inf or NaN in grad_output meets the padding (0 * inf is NaN) as in torch.

    The row kernel clears such products away, so channels holding one take
    the packed kernel; channels beside them stay exact.
    """
    x, weight, grad_output, kwargs = _depthwise_inputs(case, np.float64)
    P, Q = grad_output.shape[2:]
    grad_output[0, 0, 0, 0] = np.inf           # a corner: most taps read padding
    grad_output[1, 1, P - 1, Q // 2] = np.nan  # the last row
    with np.errstate(invalid="ignore"):
        got = convkit.conv2d_backward(grad_output, x, weight, method="direct",
                                      output_mask=(False, True, False), **kwargs)[1]
        expected = reference.conv2d_backward(grad_output, x, weight, **kwargs)[1]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    finite = np.isfinite(expected)
    assert_close(got[finite], expected[finite], kind="grad", err_msg=case)


MASKS = list(itertools.product([True, False], repeat=3))


@pytest.mark.parametrize("method", ["direct", "im2col"])
@pytest.mark.parametrize("mask", MASKS, ids=["".join("TF"[not m] for m in mask)
                                             for mask in MASKS])
def test_backward_output_mask(mask, method):
    """Masked-out gradients are None; the others equal the full computation bitwise."""
    x, weight, _, grad_output, kwargs = make_inputs("groups2_same_dilation2_stride2",
                                                    np.float64)
    full = convkit.conv2d_backward(grad_output, x, weight, method=method, **kwargs)
    masked = convkit.conv2d_backward(grad_output, x, weight, method=method,
                                     output_mask=mask, **kwargs)
    for wanted, actual, full_grad in zip(mask, masked, full):
        if wanted:
            np.testing.assert_array_equal(actual, full_grad)
        else:
            assert actual is None


LAYOUT_NAMES = [name for name, _ in layouts(np.zeros((1, 1)))]


def _no_shared_memory(outputs, inputs):
    for out_name, out in outputs.items():
        assert out.flags.writeable, out_name
        for in_name, array in inputs.items():
            assert not np.shares_memory(out, array), f"{out_name} shares memory with {in_name}"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layout", LAYOUT_NAMES)
@pytest.mark.parametrize("case", ["asymmetric_padding", "groups2", "1x1_pointwise_groups2"])
def test_forward_any_layout_unmodified_and_unshared(case, layout, method):
    x, weight, bias, _, kwargs = make_inputs(case, np.float32)
    bias = np.arange(weight.shape[0], dtype=np.float32) if bias is None else bias
    inputs = {name: dict(layouts(array))[layout]
              for name, array in (("x", x), ("weight", weight), ("bias", bias))}
    copies = {name: array.copy() for name, array in inputs.items()}
    y = convkit.conv2d(inputs["x"], inputs["weight"], inputs["bias"], method=method, **kwargs)
    check_unmodified(inputs, copies)
    _no_shared_memory({"y": y}, inputs)
    assert_close(y, reference.conv2d(x, weight, bias, **kwargs))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layout", LAYOUT_NAMES)
@pytest.mark.parametrize("case", ["asymmetric_padding", "groups2", "1x1_pointwise_groups2"])
def test_backward_any_layout_unmodified_and_unshared(case, layout, method):
    x, weight, _, grad_output, kwargs = make_inputs(case, np.float32)
    inputs = {name: dict(layouts(array))[layout]
              for name, array in (("grad_output", grad_output), ("x", x), ("weight", weight))}
    copies = {name: array.copy() for name, array in inputs.items()}
    grads = convkit.conv2d_backward(inputs["grad_output"], inputs["x"], inputs["weight"],
                                    method=method, **kwargs)
    check_unmodified(inputs, copies)
    _no_shared_memory(dict(zip(("grad_input", "grad_weight", "grad_bias"), grads)), inputs)
    expected = reference.conv2d_backward(grad_output, x, weight, **kwargs)
    for actual, wanted in zip(grads, expected):
        assert_close(actual, wanted, kind="grad")


def _tf_same_padding(size, kernel, stride, dilation):
    """Keras/TensorFlow "same", written out independently of convkit._validation."""
    out = math.ceil(size / stride)
    extent = dilation * (kernel - 1) + 1
    total = max((out - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


SAME_CASES = [  # (H, W), (R, S), stride, dilation
    ((5, 6), (2, 2), 1, 1),
    ((6, 5), (4, 3), 2, 1),
    ((5, 7), (4, 4), 2, 1),
    ((7, 6), (3, 2), 2, 2),
    ((9, 8), (2, 5), 3, (2, 1)),
    ((4, 4), (1, 1), 2, 1),
    ((3, 4), (5, 6), 1, 1),  # kernel larger than the input
    ((8, 8), (3, 3), 4, 3),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("hw, kernel, stride, dilation", SAME_CASES,
                         ids=[f"{h}x{w}_k{r}x{s}_s{st}_d{d}".replace(" ", "")
                              for (h, w), (r, s), st, d in SAME_CASES])
def test_same_padding_is_keras_padding(hw, kernel, stride, dilation, method):
    """ "same" = ceil(H / stride) outputs, extra padding at the bottom/right."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2) + hw)
    weight = rng.standard_normal((3, 2) + kernel)
    stride2, dilation2 = np.broadcast_to(stride, 2), np.broadcast_to(dilation, 2)
    pads = [_tf_same_padding(hw[i], kernel[i], int(stride2[i]), int(dilation2[i]))
            for i in range(2)]
    y = convkit.conv2d(x, weight, stride=stride, dilation=dilation, padding="same",
                       method=method)
    assert y.shape == (2, 3, math.ceil(hw[0] / stride2[0]), math.ceil(hw[1] / stride2[1]))
    # Explicit zero padding of the input followed by a "valid" convolution.
    padded = np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))
    expected = reference.conv2d(padded, weight, stride=stride, dilation=dilation)
    assert_close(y, expected)
    assert_close(reference.conv2d(x, weight, stride=stride, dilation=dilation,
                                  padding="same"), expected)


@pytest.mark.parametrize("method", ["direct", "im2col"])
def test_padding_spellings_agree(method):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 5, 6))
    weight = rng.standard_normal((2, 2, 3, 3))

    def conv(**kwargs):
        return convkit.conv2d(x, weight, method=method, **kwargs)

    np.testing.assert_array_equal(conv(padding=1), conv(padding=(1, 1)))
    np.testing.assert_array_equal(conv(padding=(2, 1)), conv(padding=((2, 2), (1, 1))))
    np.testing.assert_array_equal(conv(padding="valid"), conv(padding=0))
    np.testing.assert_array_equal(conv(padding="SAME"), conv(padding=((1, 1), (1, 1))))
    np.testing.assert_array_equal(conv(stride=2, dilation=1), conv(stride=(2, 2),
                                                                   dilation=(1, 1)))
    np.testing.assert_array_equal(conv(padding=(np.int64(1), np.int32(1))), conv(padding=1))


@pytest.mark.parametrize("method", METHODS)
def test_bias_is_added_per_output_channel(method):
    x, weight, _, _, kwargs = make_inputs("groups2", np.float64)
    bias = np.array([1.0, -2.0, 3.5, 0.0, 10.0, -7.25])
    with_bias = convkit.conv2d(x, weight, bias, method=method, **kwargs)
    without = convkit.conv2d(x, weight, method=method, **kwargs)
    assert_close(with_bias - without, np.broadcast_to(bias[None, :, None, None], without.shape))


@pytest.mark.parametrize("method", METHODS)
def test_hand_computed_values(method):
    """A result small enough to check by hand, independent of the reference."""
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)   # [[1,2,3],[4,5,6],[7,8,9]]
    weight = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])  # x[i, j] - x[i+1, j+1]
    y = convkit.conv2d(x, weight, np.array([0.5]), method=method)
    np.testing.assert_array_equal(y, [[[[-3.5, -3.5], [-3.5, -3.5]]]])
    y = convkit.conv2d(x, weight, padding=((0, 1), (1, 0)), stride=(1, 2), method=method)
    # padded rows: [0,1,2,3],[0,4,5,6],[0,7,8,9],[0,0,0,0]; windows at columns 0 and 2
    np.testing.assert_array_equal(y, [[[[-4.0, -4.0], [-7.0, -4.0], [0.0, 8.0]]]])
    grad_input, grad_weight, grad_bias = convkit.conv2d_backward(
        np.ones((1, 1, 2, 2)), x, weight, method=method)
    np.testing.assert_array_equal(grad_input[0, 0], [[1, 1, 0], [1, 0, -1], [0, -1, -1]])
    np.testing.assert_array_equal(grad_weight[0, 0], [[12, 16], [24, 28]])
    np.testing.assert_array_equal(grad_bias, [4.0])


@pytest.mark.parametrize("method", METHODS)
def test_inf_products_match_torch_semantics(method):
    # Only products that exist in the convolution may meet an inf: the direct
    # kernels' padded grids must not turn 0 * inf into NaN in the gradients.
    x = np.zeros((1, 2, 5, 6))
    x[0, 0, 2, 5] = np.inf             # read by one column of taps only
    weight = np.ones((8, 2, 3, 3))
    weight[0, 1, 0, 0] = -np.inf       # meets grad_output's zero padding in grad_input
    grad_output = np.ones((1, 8, 5, 6))
    with np.errstate(invalid="ignore"):
        got = convkit.conv2d_backward(grad_output, x, weight, padding=1, method=method)
        expected = reference.conv2d_backward(grad_output, x, weight, padding=1)
    for a, e in zip(got, expected):
        assert a.shape == e.shape
        np.testing.assert_array_equal(np.isnan(a), np.isnan(e))
        np.testing.assert_array_equal(a[np.isfinite(e)], e[np.isfinite(e)])
        np.testing.assert_array_equal(a[np.isinf(e)], e[np.isinf(e)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 15, 17, 1000, 300_001])
def test_finiteness_scan_finds_every_position(size, dtype):
    """conv2d_backward's check that sends non-finite operands to im2col, at 1 and 2 threads."""
    from convkit.functional import _all_finite

    values = np.linspace(-3e38 if dtype == np.float32 else -1e308, 1, size).astype(dtype)
    for n in (1, 2):
        with convkit.num_threads(n):
            assert _all_finite(values)
            for bad in (np.inf, -np.inf, np.nan):
                for position in sorted({0, size // 2, size - 1}):
                    spoiled = values.copy()
                    spoiled[position] = bad
                    assert not _all_finite(spoiled), (bad, position)


def _case_arrays(x_shape, w_shape, kwargs, dtype, seed=3):
    """x, weight, grad_output (seeded normal draws) and kwargs of a (shapes, kwargs) case."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    grad_y = rng.standard_normal(reference.conv2d(x, weight, **kwargs).shape).astype(dtype)
    return x, weight, grad_y, kwargs


# The channel-vector grad_weight reads x in place, checking the taps of
# output positions near the edges (above all in rows and columns no tap of
# which stays inside, and padding beyond the kernel's reach), or reads a
# zero-padded copy at stride 1 (functional._pad_for_grad_weight). 32 output
# channels a group fill its block on every ISA.
GRAD_WEIGHT_EDGE_CASES = {
    "same_3x3_chunked_rows": ((2, 3, 26, 24), (32, 3, 3, 3), dict(padding=1)),
    "dilated_5x5": ((1, 2, 20, 23), (32, 2, 5, 5), dict(padding=3, dilation=2)),
    "asymmetric_same_even": ((2, 3, 9, 12), (32, 3, 4, 2), dict(padding="same")),
    "one_sided": ((1, 2, 11, 13), (32, 2, 3, 3), dict(padding=((2, 0), (0, 3)))),
    "padding_past_the_taps": ((1, 2, 6, 7), (32, 2, 3, 3), dict(padding=4)),
    "stride_2": ((2, 4, 15, 16), (32, 4, 3, 3), dict(stride=2, padding=1)),
    "stride_1x3_dilated": ((1, 3, 10, 17), (32, 3, 2, 3), dict(stride=(1, 3), padding=(1, 2),
                                                               dilation=(2, 1))),
    "groups_valid": ((2, 4, 9, 8), (64, 2, 3, 2), dict(groups=2)),
    "groups_padded": ((1, 4, 13, 9), (64, 2, 3, 3), dict(groups=2, padding=1)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GRAD_WEIGHT_EDGE_CASES)
def test_grad_weight_in_place_and_padded(case, dtype, monkeypatch):
    """Both ways and both kernel variants give the reference's grad_weight, with the same bits."""
    from convkit import functional

    x, weight, grad_y, kwargs = _case_arrays(*GRAD_WEIGHT_EDGE_CASES[case], dtype)
    expected = reference.conv2d_backward(grad_y, x, weight, **kwargs)[1]
    results = []
    for share, wide, threads in itertools.product((1.0, 0.0), (False, True), (1, 2)):
        # share 1.0: never pad; 0.0: pad wherever the stride is 1.
        monkeypatch.setattr(functional, "_GW_EDGE_SHARE", share)
        monkeypatch.setattr(functional, "_use_wide_grad_weight", lambda g, itemsize: wide)
        with convkit.num_threads(threads):
            grad_w = convkit.conv2d_backward(grad_y, x, weight, method="direct",
                                             output_mask=(False, True, False), **kwargs)[1]
        assert_close(grad_w, expected, kind="grad", err_msg=f"{case} {share} {wide} {threads}")
        results.append(grad_w)
    for grad_w in results[1:]:
        np.testing.assert_array_equal(grad_w, results[0], err_msg=case)


def test_wide_grad_weight_for_short_rows_only():
    """mnist-conv2 (8 output columns, 64 channels) takes the wide variant, resnet-3x3 (56) not."""
    from convkit._validation import conv_geometry
    from convkit.functional import _use_wide_grad_weight

    assert _use_wide_grad_weight(conv_geometry((64, 32, 12, 12), (64, 32, 5, 5), 1, 0, 1, 1), 4)
    assert not _use_wide_grad_weight(conv_geometry((8, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1, 1),
                                     4)


def test_grad_weight_pads_small_maps_only():
    """The rule pads resnet-3x3-c256's 14x14 maps, reads resnet-3x3's 56x56 in place."""
    from convkit._validation import conv_geometry
    from convkit.functional import _pad_for_grad_weight

    def rule(x_shape, w_shape, stride, padding):
        return _pad_for_grad_weight(conv_geometry(x_shape, w_shape, stride, padding, 1, 1))

    assert rule((8, 256, 14, 14), (256, 256, 3, 3), 1, 1)
    assert not rule((8, 64, 56, 56), (64, 64, 3, 3), 1, 1)
    assert not rule((8, 64, 56, 56), (128, 64, 3, 3), 2, 1)
    assert not rule((8, 32, 12, 12), (64, 32, 5, 5), 1, 0)


# Column strides above 1 in the scatter form of grad_input: col2im sums each
# channel's column phases apart, then interleaves them (ck_col2ims).
STRIDED_SCATTER_CASES = {
    "stride_2_odd_width": ((2, 5, 17, 19), (6, 5, 3, 3), dict(stride=2, padding=1)),
    "stride_2x3_dilated": ((1, 3, 20, 23), (4, 3, 5, 4), dict(stride=(2, 3), padding=(2, 1),
                                                              dilation=(1, 2))),
    "stride_2_groups": ((2, 4, 16, 16), (8, 2, 3, 3), dict(stride=2, groups=2)),
    "column_stride_only": ((1, 2, 13, 14), (3, 2, 2, 5), dict(stride=(1, 2),
                                                              padding=((1, 0), (3, 2)))),
    "stride_3_padding_past_taps": ((1, 6, 9, 10), (4, 6, 3, 3), dict(stride=3, padding=4)),
    "one_channel": ((2, 1, 15, 15), (8, 1, 5, 5), dict(stride=2, padding=2)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", STRIDED_SCATTER_CASES)
def test_strided_scatter_grad_input(case, dtype, monkeypatch):
    from convkit import functional

    monkeypatch.setattr(functional, "_use_scatter_grad_input", lambda g, itemsize: True)
    x, weight, grad_y, kwargs = _case_arrays(*STRIDED_SCATTER_CASES[case], dtype)
    grad_x = convkit.conv2d_backward(grad_y, x, weight, method="direct",
                                     output_mask=(True, False, False), **kwargs)[0]
    expected = reference.conv2d_backward(grad_y, x, weight, **kwargs)[0]
    assert_close(grad_x, expected, kind="grad", err_msg=case)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("x_shape, K", [((3, 4, 9, 9), 8), ((40, 4, 4, 4), 2)],
                         ids=["49_positions", "tiny_tasks"])
def test_scatter_grad_input_reads_beyond_a_task(x_shape, K, groups, dtype, monkeypatch):
    """The scatter form reads small tasks' grad_output in place; the kernel's
    reads past a task's positions (49, or 4 of tiny tasks whose reads span
    several tasks, no whole vector) see the next tasks' values, which must
    not reach the task's result, even non-finite, nor leave the array
    (tools/sanitize.sh checks that)."""
    from convkit import functional

    monkeypatch.setattr(functional, "_use_scatter_grad_input", lambda g, itemsize: True)
    x, weight, grad_y, kwargs = _case_arrays(x_shape, (K, 4 // groups, 3, 3),
                                             dict(groups=groups), dtype)
    grad_y[1, -1] = np.inf
    grad_y[1, 0, 0, 0] = np.nan
    grad_x = convkit.conv2d_backward(grad_y, x, weight, method="direct",
                                     output_mask=(True, False, False), **kwargs)[0]
    for n in (0, 2, x_shape[0] - 1):
        expected = reference.conv2d_backward(grad_y[n:n + 1], x[n:n + 1], weight, **kwargs)[0]
        assert_close(grad_x[n:n + 1], expected, kind="grad", err_msg=f"image {n}")


def test_grad_input_forms_are_both_exercised():
    """The CASES reach both the scatter (col2im) and the gather form of direct grad_input."""
    from convkit._validation import conv_geometry
    from convkit.functional import _use_scatter_grad_input

    forms = set()
    for x_shape, w_shape, _, kwargs in CASES.values():
        g = conv_geometry(x_shape, w_shape, kwargs.get("stride", 1), kwargs.get("padding", 0),
                          kwargs.get("dilation", 1), kwargs.get("groups", 1))
        forms.add(_use_scatter_grad_input(g, 8))
    assert forms == {True, False}


# grad_input by rows (functional._grad_input_rows): unpadded convolutions at
# stride 1 with 3 or 5 kernel columns, a whole input row in registers.
ROWS_CASES = {
    "mnist_conv2": ((3, 32, 12, 12), (64, 32, 5, 5), {}),
    "keras_3x3": ((2, 32, 13, 13), (24, 32, 3, 3), {}),
    "one_output_column": ((2, 16, 6, 3), (8, 16, 3, 3), {}),
    "one_output_row": ((2, 16, 5, 9), (8, 16, 5, 5), {}),
    "lane_tail": ((2, 20, 9, 11), (7, 20, 3, 3), {}),
    "three_channels": ((2, 3, 8, 8), (5, 3, 5, 5), {}),
    "groups": ((2, 32, 10, 10), (12, 16, 5, 5), dict(groups=2)),
    "tall_kernel": ((2, 16, 11, 12), (8, 16, 6, 5), {}),
    "one_kernel_row": ((2, 16, 4, 12), (8, 16, 1, 3), {}),
}


def _rows_widest(S, dtype):
    from convkit._lib import _conv

    return _conv.grad_input_rows_shape(S, np.dtype(dtype).itemsize)[1]


def _rows_grad_input(grad_y, x, weight, kwargs):
    from convkit import functional
    from convkit._validation import conv_geometry

    g = conv_geometry(x.shape, weight.shape, 1, 0, 1, kwargs.get("groups", 1))
    return functional._grad_input_rows(grad_y, weight, g, convkit.get_num_threads())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ROWS_CASES)
def test_grad_input_rows(case, dtype):
    """Every real term, none twice, at any width up to the kernel's widest."""
    x_shape, w_shape, kwargs = ROWS_CASES[case]
    if _rows_widest(w_shape[3], dtype) < x_shape[3] - w_shape[3] + 1:
        pytest.skip("this CPU's kernel variant has no grad_input by rows for this shape")
    x, weight, grad_y, kwargs = _case_arrays(x_shape, w_shape, kwargs, dtype)
    expected = reference.conv2d_backward(grad_y, x, weight, **kwargs)[0]
    assert_close(_rows_grad_input(grad_y, x, weight, kwargs), expected, kind="grad",
                 err_msg=case)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S", [3, 5])
def test_grad_input_rows_widest(S, dtype):
    """Grad_output rows of the widest width the kernel takes, and conv2d_backward's
    choice of another form one column wider."""
    from convkit import functional
    from convkit._validation import conv_geometry

    widest = _rows_widest(S, dtype)
    if not widest:
        pytest.skip("this CPU's kernel variant has no grad_input by rows for this kernel")
    for Q in (widest - 1, widest):
        x, weight, grad_y, kwargs = _case_arrays((2, 16, 4, Q + S - 1), (4, 16, 3, S), {}, dtype)
        expected = reference.conv2d_backward(grad_y, x, weight)[0]
        assert_close(_rows_grad_input(grad_y, x, weight, kwargs), expected, kind="grad",
                     err_msg=f"Q={Q}")
    wider = conv_geometry((2, 64, 4, widest + S), (4, 64, 3, S), 1, 0, 1, 1)
    assert not functional._use_rows_grad_input(wider, np.dtype(dtype).itemsize)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_input_rows_nonfinite(dtype):
    """inf and NaN in grad_output and the weights reach the pixels the reference's do."""
    x, weight, grad_y, kwargs = _case_arrays((2, 16, 9, 9), (8, 16, 3, 3), {}, dtype)
    if not _rows_widest(3, dtype):
        pytest.skip("this CPU's kernel variant has no grad_input by rows")
    grad_y[0, 1, 2, 3] = np.inf
    grad_y[0, 2, 6, 6] = -np.inf
    grad_y[1, 0, 0, 0] = np.nan
    weight[3, 5, 2, 0] = np.inf
    with np.errstate(invalid="ignore"):
        expected = reference.conv2d_backward(grad_y, x, weight)[0]
    actual = _rows_grad_input(grad_y, x, weight, kwargs)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(actual), np.isinf(expected))
    assert_close(actual, expected, kind="grad")


def test_grad_input_rows_rule():
    """mnist-conv2's grad_input runs by rows where the kernel exists; padded,
    strided, dilated and 1-channel convolutions never do."""
    from convkit._validation import conv_geometry
    from convkit.functional import _use_rows_grad_input

    def rule(x_shape, w_shape, stride=1, padding=0, dilation=1, itemsize=4):
        return _use_rows_grad_input(conv_geometry(x_shape, w_shape, stride, padding, dilation,
                                                  1), itemsize)

    assert rule((64, 32, 12, 12), (64, 32, 5, 5)) == (_rows_widest(5, np.float32) >= 8)
    assert not rule((64, 32, 12, 12), (64, 32, 5, 5), padding=1)
    assert not rule((64, 32, 12, 12), (64, 32, 3, 3), stride=2)
    assert not rule((64, 32, 12, 12), (64, 32, 3, 3), dilation=2)
    assert not rule((64, 1, 28, 28), (32, 1, 5, 5))
    assert not rule((64, 32, 12, 12), (64, 32, 4, 4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_transpose_kernel(dtype):
    """ck_transpose_*: whole vector blocks, edges, and negative strides either side."""
    from convkit._lib import _conv

    rng = np.random.default_rng(3)
    for rows, cols in itertools.product((0, 1, 3, 4, 7, 8, 9, 16, 21), (0, 1, 5, 8, 12, 17)):
        src = rng.standard_normal((rows, cols + 3)).astype(dtype)[:, 1:cols + 1]
        for flip_src, flip_dst in itertools.product((False, True), repeat=2):
            s = src[::-1] if flip_src else src
            dst = np.full((cols, rows), np.nan, dtype)
            _conv.transpose(s, dst[::-1] if flip_dst else dst)
            expected = s.T[::-1] if flip_dst else s.T
            np.testing.assert_array_equal(dst, expected, err_msg=f"{rows}x{cols}")
    src = np.zeros((4, 6), dtype)
    with pytest.raises(ValueError, match="contiguous rows"):
        _conv.transpose(src[:, ::2], np.zeros((3, 4), dtype))
    with pytest.raises(ValueError, match="shape of src.T"):
        _conv.transpose(src, np.zeros((4, 6), dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C, R", [(64, 1), (40, 3), (3, 3)], ids=["one_tap", "long", "short"])
def test_grid_forward_kernels_agree(C, R, dtype):
    """The grid forward's register blocks (fwd, fwds, fwdq) give every output the same bits.

    The kernel is picked by the grid's length, so the first rows of a taller
    image come from another kernel than the image cut to those rows.
    """
    from convkit._lib import _conv

    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, C, 18, 8)).astype(dtype)
    w = rng.standard_normal((9, C, R, R)).astype(dtype)
    itemsize = np.dtype(dtype).itemsize
    kinds = set()
    full = convkit.conv2d(x, w, method="direct")
    for rows in range(R, 19):
        kinds.add(_conv.forward_kind(C * R * R, R * R, (rows - R + 1) * 8, itemsize))
        part = convkit.conv2d(x[:, :, :rows], w, method="direct")
        np.testing.assert_array_equal(part, full[:, :, :rows - R + 1], err_msg=f"{rows} rows")
    if _conv.kernel_isa() == "avx512f" and R == 1:
        assert kinds == {"fwds", "fwdq"}
    if _conv.kernel_isa() == "avx512f" and C == 40 and dtype == np.float32:
        assert "fwd" in kinds


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, C, H, W, K, R, S, padding, dilation", [
    (2, 16, 12, 9, 16, 3, 3, 1, 1),                 # "same", both paddings 1
    (1, 9, 7, 13, 12, 3, 5, ((1, 2), (2, 1)), 1),   # asymmetric: z = 2
    (2, 8, 10, 11, 8, 3, 3, ((0, 1), (3, 3)), (1, 2)),  # dilated columns, z = 3
    (1, 24, 6, 20, 16, 5, 3, 2, 1),                 # taller kernel, z = 2
    (3, 16, 9, 9, 16, 3, 3, ((1, 1), (3, 3)), 1),   # over-padded: W + z < Q, no sharing
], ids=["same", "asymmetric", "dilated", "tall", "over_padded"])
def test_shared_padding_layout(N, C, H, W, K, R, S, padding, dilation, dtype, monkeypatch):
    """The grid forward with its rows' column padding shared gives _phase_layout's bits.

    The same terms in the same order, read from planes W + max(left, right)
    wide; the taps left of a row read the zeros ending the row before it
    (before the first row: those at the plane's start), and a non-finite
    input next to them reaches no output it should not. grad_input (the
    same forward on grad_output) too.
    """
    from convkit import functional

    g = functional.conv_geometry((N, C, H, W), (K, C, R, S), 1, padding, dilation, 1)
    layout = functional._shared_padding_layout(g)
    assert (layout is None) == (g.W + max(g.padding[1]) < g.Q)
    rng = np.random.default_rng(17)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    x[0, 0, :, 0] = np.inf           # first and last columns: next to the shared zeros
    x[-1, -1, :, -1] = np.nan
    w = rng.standard_normal((K, C, R, S)).astype(dtype)
    kw = dict(padding=padding, dilation=dilation, method="direct")
    y = convkit.conv2d(x, w, **kw)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gi = convkit.conv2d_backward(gy, x, w, output_mask=(True, False, False), **kw)[0]
    functional._shared_padding_layout.cache_clear()
    monkeypatch.setattr(functional, "_shared_padding_layout", lambda g: None)
    np.testing.assert_array_equal(y, convkit.conv2d(x, w, **kw))
    np.testing.assert_array_equal(
        gi, convkit.conv2d_backward(gy, x, w, output_mask=(True, False, False), **kw)[0])
    x_ref = np.nan_to_num(x, nan=0.0, posinf=0.0)
    finite = reference.conv2d(x_ref, w, padding=padding, dilation=dilation)
    # The outputs whose window holds the inf or the NaN.
    touched = reference.conv2d((~np.isfinite(x)).astype(dtype), np.ones_like(w),
                               padding=padding, dilation=dilation) > 0
    assert np.all(np.isfinite(y) == ~touched)
    assert_close(y[~touched], finite[~touched])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kb", [((1, 256, 40, 3, 3), 64), ((2, 7, 5, 2, 3), 4),
                                       ((3, 70, 3, 1, 1), 32), ((1, 5, 600, 1, 1), 8)],
                         ids=["wide_blocks", "tail_lanes", "groups_tail", "long_runs"])
@pytest.mark.parametrize("view", ["contiguous", "flipped_swapped", "channels_last",
                                  "channels_strided", "taps_transposed"])
def test_pack_weights(shape, kb, view, dtype):
    """The weight packing kernel: a tile per block of kb output channels, zeros past K/G."""
    from convkit._lib import _conv

    rng = np.random.default_rng(5)
    w = rng.standard_normal(shape).astype(dtype)
    if view == "flipped_swapped":
        # grad_input's kind of view: K/G and C/G swapped, taps flipped.
        w = rng.standard_normal(shape[:1] + shape[2:3] + shape[1:2] + shape[3:]).astype(dtype)
        w = w.transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    elif view == "channels_last":
        # Output channels adjacent (stride 1), as the scatter grad_input's
        # transposed weights are: the packing's contiguous-run loop.
        w = np.moveaxis(np.ascontiguousarray(np.moveaxis(w, 1, -1)), -1, 1)
        assert w.strides[1] == w.itemsize
    elif view == "channels_strided":
        # Taps contiguous, input channels not RS apart: one transpose per channel.
        w = rng.standard_normal(shape[:2] + (2 * shape[2],) + shape[3:]).astype(dtype)[:, :, ::2]
    elif view == "taps_transposed":
        # Taps at no single stride: the element-by-element loop.
        w = np.ascontiguousarray(w.swapaxes(3, 4)).swapaxes(3, 4)
    G, Kg, Cg, R, S = w.shape
    blocks = -(-Kg // kb)
    expected = np.zeros((G, blocks * kb, Cg, R * S), dtype)
    expected[:, :Kg] = w.reshape(G, Kg, Cg, R * S)
    expected = expected.reshape(G, blocks, kb, Cg, R * S).transpose(0, 1, 3, 4, 2)
    for n_threads in (1, 2):
        out = np.full((G, blocks, Cg, R * S, kb), np.nan, dtype)
        _conv.pack_weights(w, out, n_threads)
        np.testing.assert_array_equal(out, expected)


# Geometries of the channel-vector forward's plans: c256's 14x14 "same", a
# 7x7 map, asymmetric and over-padded ones (outputs that read only
# padding), dilation, strides, and a grad_input phase (negative padding).
PLAN_GEOMETRIES = {
    "14x14_same": ((8, 256, 14, 14), (256, 256, 3, 3), 1, 1, 1),
    "7x7_same": ((1, 8, 7, 7), (8, 8, 3, 3), 1, 1, 1),
    "asymmetric_5x3": ((1, 8, 9, 11), (8, 8, 5, 3), 1, ((2, 1), (0, 2)), 1),
    "over_padded": ((1, 8, 4, 5), (8, 8, 3, 3), 1, ((4, 3), (5, 2)), 1),
    "dilated_strided": ((1, 8, 12, 13), (8, 8, 3, 2), (2, 1), 2, (1, 3)),
    "phase_negative_padding": ((1, 8, 10, 9), (8, 8, 2, 2), 1, ((-1, 0), (0, -1)), 1),
}


@pytest.mark.parametrize("qb, qt", [(6, 4), (8, 4), (3, 3)])
@pytest.mark.parametrize("name", PLAN_GEOMETRIES)
def test_channel_vector_plan(name, qb, qt):
    """Every position once, in blocks whose boxes hold every tap that reads inside the input."""
    from convkit._validation import ConvGeometry, conv_geometry
    from convkit.functional import _channel_vector_plan, _plan_cost

    x_shape, w_shape, stride, padding, dilation = PLAN_GEOMETRIES[name]
    if name.startswith("phase"):
        # As _grad_input_direct builds it: conv_geometry refuses negative padding.
        (N, C, H, W), (K, _, R, S) = x_shape, w_shape
        (pt, pb), (pl, pr) = padding
        g = ConvGeometry(N, C, H, W, K, R, S, H + pt + pb - R + 1, W + pl + pr - S + 1, 1,
                         (1, 1), (1, 1), padding)
    else:
        g = conv_geometry(x_shape, w_shape, stride, padding, dilation, 1)
    (sh, sw), (dh, dw) = g.stride, g.dilation
    (pt, _), (pl, _) = g.padding
    full = g.P * g.Q * g.R * g.S
    costs = {}
    for skip in (False, True):
        order, plan = _channel_vector_plan(g, qb, qt, skip)
        assert sorted(order.tolist()) == list(range(g.P * g.Q))
        start, count, width, r_lo, r_hi, s_lo, s_hi = plan.T
        np.testing.assert_array_equal(start, np.concatenate([[0], np.cumsum(count)[:-1]]))
        assert count.sum() == g.P * g.Q and (count >= 1).all() and (count <= width).all()
        assert set(width.tolist()) <= {qb, qt}
        assert ((width == qb) | (count <= qt)).all()
        for b in range(len(plan)):
            for j in order[start[b]:start[b] + count[b]]:
                p, q = divmod(int(j), g.Q)
                for r in range(g.R):
                    for s in range(g.S):
                        h, w = p * sh + r * dh - pt, q * sw + s * dw - pl
                        if not skip or (0 <= h < g.H and 0 <= w < g.W):
                            assert r_lo[b] <= r < r_hi[b] and s_lo[b] <= s < s_hi[b], \
                                (name, skip, b, p, q, r, s)
        costs[skip] = _plan_cost(plan)
        if not skip:
            assert (r_lo == 0).all() and (r_hi == g.R).all() and (s_lo == 0).all() \
                and (s_hi == g.S).all()
            np.testing.assert_array_equal(order, np.arange(g.P * g.Q))
    assert costs[True] <= costs[False]
    if name == "14x14_same" and qb == 6:
        # The grouped plan (the real multiply-adds are 90.7%).
        assert costs[True] / full < 0.92


@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_vector_forward_nonfinite_weight_meets_padding(dtype):
    """A weight that is not finite gets the channel-vector forward's plan of every tap.

    Its plans leave out the taps that read only padding, which the reference
    multiplies by the weights (0 * inf is NaN); so a weight that is not
    finite gets the plan of every tap, and an inf or NaN in x reaches
    exactly the outputs it should either way.
    """
    from convkit._validation import conv_geometry
    from convkit.functional import _channel_vector, _phase_layout

    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 40, 9, 9)).astype(dtype)
    weight = rng.standard_normal((40, 40, 3, 3)).astype(dtype)
    g = conv_geometry(x.shape, weight.shape, 1, 1, 1, 1)
    assert _channel_vector(g, x.itemsize, _phase_layout(g)[1])
    x[0, 3, 0, 8] = np.inf      # a corner: its box has 4 taps
    x[1, 5, 4, 0] = np.nan      # the left edge
    with np.errstate(invalid="ignore"):
        for bad in (None, np.inf, np.nan):
            w = weight.copy()
            if bad is not None:
                w[7, 2, 0, 2] = bad     # a corner tap: reads padding on two edges
            got = convkit.conv2d(x, w, method="direct", padding=1)
            expected = reference.conv2d(x, w, padding=1)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=str(bad))
            np.testing.assert_array_equal(np.isinf(got), np.isinf(expected), err_msg=str(bad))
            finite = np.isfinite(expected)
            assert_close(got[finite], expected[finite], err_msg=str(bad))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w_shape, kwargs", [
    ((40, 40, 3, 3), dict(padding=1)),                        # c256-like "same"
    ((36, 12, 5, 3), dict(padding=((2, 1), (0, 2)))),         # asymmetric, a K tail
    ((64, 8, 3, 3), dict(padding=2, dilation=(2, 1))),        # dilated, over-padded rows
])
def test_channel_vector_grad_weight_leaves_out_padding(w_shape, kwargs, dtype, monkeypatch):
    """On small padded maps the channel-vector grad_weight skips the padding's terms.

    Same bits as its zero-padded copy (the terms it leaves out are gy * 0),
    which it still takes for a grad_output holding an inf or a NaN: those
    must meet the padding's zeros (0 * inf is NaN) as in the reference.
    """
    from convkit import functional
    from convkit._validation import conv_geometry

    rng = np.random.default_rng(21)
    x = rng.standard_normal((3, w_shape[1], 9, 8)).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    g = conv_geometry(x.shape, weight.shape, 1, kwargs["padding"], kwargs.get("dilation", 1), 1)
    assert functional._pad_for_grad_weight(g)
    assert functional._use_channel_vector_grad_weight(g, x.itemsize)
    grad_y = rng.standard_normal(reference.conv2d(x, weight, **kwargs).shape).astype(dtype)

    def grad_weight(gy):
        return convkit.conv2d_backward(gy, x, weight, method="direct",
                                       output_mask=(False, True, False), **kwargs)[1]

    exact = grad_weight(grad_y)
    assert_close(exact, reference.conv2d_backward(grad_y, x, weight, **kwargs)[1], kind="grad")
    with monkeypatch.context() as m:
        # The padded copy, as for a grad_output that is not finite.
        m.setattr(functional, "_all_finite", lambda array: False)
        padded = functional._grad_weight_channel_vector(grad_y, x, g, 2)
    np.testing.assert_array_equal(exact, padded)
    grad_y[0, 3, 0, 0] = np.inf         # a corner: reads the padding at most taps
    grad_y[2, 5, -1, 4] = np.nan        # the last row
    with np.errstate(invalid="ignore"):
        got = grad_weight(grad_y)
        expected = reference.conv2d_backward(grad_y, x, weight, **kwargs)[1]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    finite = np.isfinite(expected)
    assert_close(got[finite], expected[finite], kind="grad")


MASKED_CASES = {
    # id: (x shape, K, R, S, padding, dilation, groups)
    "same_3x3": ((1, 16, 12, 9), 16, 3, 3, 1, 1, 1),
    "rows_narrower_than_a_vector": ((1, 8, 12, 4), 12, 3, 3, 1, 1, 1),
    "span_as_wide_as_the_row": ((1, 8, 24, 2), 8, 5, 5, 2, 1, 1),
    "asymmetric_4x4": ((1, 8, 10, 11), 8, 4, 4, ((1, 2), (2, 1)), 1, 1),
    "dilated": ((1, 8, 13, 13), 16, 3, 3, 2, 2, 1),
    "dilated_columns": ((1, 8, 9, 14), 8, 3, 3, (1, 2), (1, 2), 1),
    "7x7": ((1, 6, 11, 23), 16, 7, 7, 3, 1, 1),
    "channel_tail": ((1, 16, 8, 9), 12, 3, 3, 1, 1, 1),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MASKED_CASES.values(), ids=MASKED_CASES.keys())
def test_masked_forward(case, dtype, monkeypatch):
    """The grid forward on x in place (one image: _forward_masked) gives the packed planes' bits.

    Lanes whose tap reads outside the input are zeroed, as the padding
    would be: a non-finite input in the first or last column or row (read,
    for a neighbouring row's edge, by the vectors that span two rows) must
    reach no output it should not, a non-finite weight must meet the
    padding (0 * inf is NaN), and grad_input (the same forward on
    grad_output) gives the same bits too.
    """
    from convkit import functional
    from convkit._lib import _conv

    if not _conv.has_masked_forward(np.dtype(dtype).itemsize):
        pytest.skip(f"no masked forward in the {_conv.kernel_isa()} kernels")
    shape, K, R, S, padding, dilation, groups = case
    kw = dict(padding=padding, dilation=dilation, groups=groups, method="direct")
    rng = np.random.default_rng(23)
    x = rng.standard_normal(shape).astype(dtype)
    x[0, 0, :, 0] = np.inf
    x[0, -1, :, -1] = np.nan
    x[0, 1, 0, 1] = -np.inf
    x[0, 2, -1, -2] = np.inf
    w = rng.standard_normal((K, shape[1] // groups, R, S)).astype(dtype)
    w_nan = w.copy()
    w_nan[1, 0, 0, 0] = np.nan
    gy = rng.standard_normal((1, K) + shape[2:]).astype(dtype)
    # The grid kernels, not the channel-vector one some of these shapes take.
    monkeypatch.setattr(functional, "_channel_vector", lambda *a: False)
    taken = []
    use = functional._use_masked_forward
    monkeypatch.setattr(functional, "_use_masked_forward",
                        lambda *a: taken.append(use(*a)) or taken[-1])
    outs = [convkit.conv2d(x, w, **kw), convkit.conv2d(x, w_nan, **kw),
            convkit.conv2d_backward(gy, x, w, output_mask=(True, False, False), **kw)[0]]
    assert taken and all(taken)
    monkeypatch.setattr(functional, "_use_masked_forward", lambda *a: False)
    for out, expected in zip(outs, [convkit.conv2d(x, w, **kw), convkit.conv2d(x, w_nan, **kw),
                                    convkit.conv2d_backward(gy, x, w, output_mask=(True, False,
                                                                                   False),
                                                            **kw)[0]]):
        np.testing.assert_array_equal(out, expected)
    ref_kw = dict(padding=padding, dilation=dilation, groups=groups)
    touched = reference.conv2d((~np.isfinite(x)).astype(dtype), np.ones_like(w), **ref_kw) > 0
    assert np.all(np.isfinite(outs[0]) == ~touched)
    finite = reference.conv2d(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), w, **ref_kw)
    assert_close(outs[0][~touched], finite[~touched])
    assert np.isnan(outs[1][0, 1]).all()
    assert_close(outs[2], reference.conv2d_backward(gy, x, w, output_mask=(True, False, False),
                                                    **ref_kw)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_forward_batch(dtype):
    """forward_masked's tasks over images and groups (7 channels of a block of 8).

    Every block of positions here touches a first or last row: the
    masked-load path, next to images whose edge rows hold inf.
    """
    from convkit import functional
    from convkit._lib import _conv

    if not _conv.has_masked_forward(np.dtype(dtype).itemsize):
        pytest.skip(f"no masked forward in the {_conv.kernel_isa()} kernels")
    rng = np.random.default_rng(29)
    x = rng.standard_normal((3, 12, 10, 7)).astype(dtype)
    x[:, :, 0] = np.inf   # first and last rows: the neighbouring image's padding
    x[:, :, -1] = -np.inf
    w = rng.standard_normal((21, 4, 3, 3)).astype(dtype)
    bias = rng.standard_normal(21).astype(dtype)
    g = functional.conv_geometry(x.shape, w.shape, 1, 1, 1, 3)
    y = np.empty((3, 21, 10, 7), dtype)
    assert functional._use_masked_forward(g, x, y)
    functional._forward_masked(x, w, bias, g, y, 2)
    np.testing.assert_array_equal(y, convkit.conv2d(x, w, bias, padding=1, groups=3,
                                                    method="direct"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_forward_guard_pages(dtype):
    """forward_masked reads nothing outside x: x fills whole pages between two
    unreadable ones, so a load before its first element or past its last
    faults (masked lanes may not touch their addresses; whole vectors stay
    in the channel's plane)."""
    import ctypes
    import mmap

    from convkit import functional
    from convkit._lib import _conv

    if not _conv.has_masked_forward(np.dtype(dtype).itemsize):
        pytest.skip(f"no masked forward in the {_conv.kernel_isa()} kernels")
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "mprotect"):
        pytest.skip("no mprotect")
    shape = (1, 8, 16, 8)
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    page = mmap.PAGESIZE
    assert nbytes % page == 0
    prot_none, prot_read_write = 0, 3  # Linux's PROT_NONE, PROT_READ | PROT_WRITE
    region = mmap.mmap(-1, nbytes + 2 * page)
    anchor = ctypes.c_char.from_buffer(region)
    base = ctypes.addressof(anchor)
    x = np.frombuffer(region, dtype, math.prod(shape), page).reshape(shape)
    try:
        for start in (base, base + page + nbytes):
            assert libc.mprotect(ctypes.c_void_p(start), page, prot_none) == 0
        x[...] = np.random.default_rng(31).standard_normal(shape)
        w = np.random.default_rng(37).standard_normal((8, 8, 3, 3)).astype(dtype)
        g = functional.conv_geometry(x.shape, w.shape, 1, 1, 1, 1)
        y = np.empty(shape, dtype)
        assert functional._use_masked_forward(g, x, y)
        functional._forward_masked(x, w, np.zeros(8, dtype), g, y, 2)
        assert_close(y, reference.conv2d(np.array(x), w, padding=1))
    finally:
        for start in (base, base + page + nbytes):
            libc.mprotect(ctypes.c_void_p(start), page, prot_read_write)
        del x, anchor
        region.close()
