"""im2col and col2im against the reference and a loop oracle, their adjointness,
and the workspace-capped tiling of the im2col method."""

import numpy as np
import pytest

import convkit
from convkit import functional, reference
from _helpers import assert_close, check_unmodified, layouts

DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]

# id -> (x shape, kernel_size, stride, padding, dilation)
UNFOLD_CASES = {
    "nonsquare_2x3": ((2, 3, 5, 7), (2, 3), 1, 0, 1),
    "1x1": ((2, 4, 3, 5), 1, 1, 0, 1),
    "1x1_stride2": ((1, 2, 5, 6), 1, 2, 0, 1),
    "7x7_pad3": ((1, 2, 8, 9), 7, 1, 3, 1),
    "stride_3_not_dividing": ((2, 2, 8, 10), 3, 3, 0, 1),
    "asymmetric_padding_stride2": ((2, 3, 6, 7), (3, 2), 2, ((1, 2), (0, 3)), 1),
    "same_even_kernel_stride2": ((2, 2, 7, 8), (4, 2), 2, "same", 1),
    "dilation2_pad1": ((1, 3, 9, 8), (3, 2), 1, 1, 2),
    "dilation_2x1_stride_1x2": ((1, 1, 10, 9), (2, 3), (1, 2), (2, 1), (2, 1)),
    "N1_C1": ((1, 1, 6, 5), (3, 3), 1, 0, 1),
    "kernel_fills_input": ((2, 2, 4, 3), (4, 3), 1, 0, 1),
}
UNFOLD_IDS = list(UNFOLD_CASES)


def _args(case):
    x_shape, kernel, stride, padding, dilation = UNFOLD_CASES[case]
    return x_shape, dict(kernel_size=kernel, stride=stride, padding=padding,
                         dilation=dilation)


def _loop_im2col(x, kernel, stride, pads, dilation):
    """Obvious loops: cols[n, (c*R + r)*S + s, p*Q + q] = padded x at the tap."""
    (R, S), (sh, sw), (dh, dw) = kernel, stride, dilation
    N, C, H, W = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))
    P = (padded.shape[2] - dh * (R - 1) - 1) // sh + 1
    Q = (padded.shape[3] - dw * (S - 1) - 1) // sw + 1
    cols = np.empty((N, C * R * S, P * Q), dtype=x.dtype)
    for c in range(C):
        for r in range(R):
            for s in range(S):
                for p in range(P):
                    for q in range(Q):
                        cols[:, (c * R + r) * S + s, p * Q + q] = \
                            padded[:, c, p * sh + r * dh, q * sw + s * dw]
    return cols


LOOP_CASES = [  # x shape, kernel, stride, ((top, bottom), (left, right)), dilation
    ((1, 2, 3, 4), (2, 2), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    ((2, 1, 5, 4), (3, 2), (2, 1), ((1, 0), (2, 1)), (1, 2)),
    ((1, 2, 6, 5), (2, 3), (1, 3), ((0, 2), (1, 1)), (2, 1)),
]


@pytest.mark.parametrize("x_shape, kernel, stride, pads, dilation", LOOP_CASES,
                         ids=["plain", "asym_pad_stride_dilation", "stride3_dilation2"])
def test_im2col_matches_loops(x_shape, kernel, stride, pads, dilation):
    """Row order (c, r, s), column order (p, q), zeros in the padding."""
    x = np.arange(1.0, 1.0 + np.prod(x_shape)).reshape(x_shape)
    expected = _loop_im2col(x, kernel, stride, pads, dilation)
    kwargs = dict(kernel_size=kernel, stride=stride, padding=pads, dilation=dilation)
    np.testing.assert_array_equal(convkit.im2col(x, **kwargs), expected)
    np.testing.assert_array_equal(reference.im2col(x, **kwargs), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", UNFOLD_IDS)
def test_im2col_matches_reference(case, dtype):
    x_shape, kwargs = _args(case)
    x = np.random.default_rng(0).standard_normal(x_shape).astype(dtype)
    cols = convkit.im2col(x, **kwargs)
    expected = reference.im2col(x, **kwargs)
    N, C = x_shape[:2]
    R, S = np.broadcast_to(kwargs["kernel_size"], 2)
    assert cols.shape == expected.shape
    assert cols.shape[:2] == (N, C * R * S)
    assert cols.dtype == dtype
    np.testing.assert_array_equal(cols, expected)  # a pure copy: exact


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", UNFOLD_IDS)
def test_col2im_matches_reference(case, dtype):
    x_shape, kwargs = _args(case)
    cols_shape = reference.im2col(np.zeros(x_shape), **kwargs).shape
    cols = np.random.default_rng(1).standard_normal(cols_shape).astype(dtype)
    image = convkit.col2im(cols, x_shape, **kwargs)
    expected = reference.col2im(cols, x_shape, **kwargs)
    assert image.shape == x_shape
    assert image.dtype == dtype
    assert_close(image, expected)


@pytest.mark.parametrize("module", [convkit, reference], ids=["convkit", "reference"])
@pytest.mark.parametrize("case", UNFOLD_IDS)
def test_col2im_is_adjoint_of_im2col(case, module):
    """<im2col(x), c> == <x, col2im(c)> in float64."""
    x_shape, kwargs = _args(case)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(x_shape)
    cols = module.im2col(x, **kwargs)
    c = rng.standard_normal(cols.shape)
    lhs = np.vdot(cols, c)
    rhs = np.vdot(x, module.col2im(c, x_shape, **kwargs))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, np.abs(cols).sum() * np.abs(c).max())


def test_col2im_accumulates_overlaps():
    """Each pixel receives one 1 per window that reads it."""
    x_shape, kwargs = (1, 1, 4, 5), dict(kernel_size=(2, 3), stride=1, padding=0)
    cols = np.ones(reference.im2col(np.zeros(x_shape), **kwargs).shape)
    counts_rows = np.array([1, 2, 2, 1])[:, None]
    counts_cols = np.array([1, 2, 3, 2, 1])[None, :]
    np.testing.assert_array_equal(convkit.col2im(cols, x_shape, **kwargs)[0, 0],
                                  counts_rows * counts_cols)


@pytest.mark.parametrize("layout", [name for name, _ in layouts(np.zeros((1, 1)))])
def test_im2col_col2im_any_layout(layout):
    x_shape, kwargs = _args("asymmetric_padding_stride2")
    rng = np.random.default_rng(3)
    x = rng.standard_normal(x_shape).astype(np.float32)
    x_in = dict(layouts(x))[layout]
    x_copy = x_in.copy()
    cols = convkit.im2col(x_in, **kwargs)
    check_unmodified({"x": x_in}, {"x": x_copy})
    assert not np.shares_memory(cols, x_in)
    np.testing.assert_array_equal(cols, reference.im2col(x, **kwargs))

    c = rng.standard_normal(cols.shape).astype(np.float32)
    c_in = dict(layouts(c))[layout]
    c_copy = c_in.copy()
    image = convkit.col2im(c_in, x_shape, **kwargs)
    check_unmodified({"cols": c_in}, {"cols": c_copy})
    assert not np.shares_memory(image, c_in)
    assert_close(image, reference.col2im(c, x_shape, **kwargs))


# ------------------------------------------------------------- workspace tiling

def test_workspace_limit_context_and_setter():
    before = convkit.get_workspace_limit()
    assert before == 256 << 20
    with convkit.workspace_limit(1000):
        assert convkit.get_workspace_limit() == 1000
        with convkit.workspace_limit(10):
            assert convkit.get_workspace_limit() == 10
        assert convkit.get_workspace_limit() == 1000
    assert convkit.get_workspace_limit() == before
    with pytest.raises(RuntimeError):
        with convkit.workspace_limit(5):
            raise RuntimeError
    assert convkit.get_workspace_limit() == before


@pytest.mark.parametrize("value, error", [(0, ValueError), (-1, ValueError),
                                          (1.5, TypeError), (True, TypeError),
                                          ("1MiB", TypeError)],
                         ids=["zero", "negative", "float", "bool", "string"])
def test_set_workspace_limit_rejects_bad_values(value, error):
    before = convkit.get_workspace_limit()
    with pytest.raises(error, match="nbytes"):
        convkit.set_workspace_limit(value)
    assert convkit.get_workspace_limit() == before


TILE_X, TILE_W = (4, 4, 10, 9), (6, 2, 3, 3)
TILE_KWARGS = dict(stride=(1, 2), padding=((1, 2), (0, 1)), groups=2)


@pytest.fixture
def recorded_tiles(monkeypatch):
    """Every (n0, n1, p0, p1) tile the im2col method works on."""
    tiles = []
    original = functional._tiles

    def recording(*args, **kwargs):
        for tile in original(*args, **kwargs):
            tiles.append(tile)
            yield tile

    monkeypatch.setattr(functional, "_tiles", recording)
    return tiles


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tiling, limit_items", [("images", 5000), ("rows", 500),
                                                 ("single_rows", 0)])
def test_tiled_im2col_method_unchanged(tiling, limit_items, dtype, recorded_tiles):
    """Under a small workspace cap the im2col method tiles and gives the same results.

    One image needs 36 * 4 * 11 = 1584 column entries (plus 6 * 4 * 11 output
    entries forward): a cap of 5000 entries fits 2 or 3 images, one of 500
    entries 2 or 3 output rows, and 1 byte a single row.
    """
    limit = max(1, limit_items * np.dtype(dtype).itemsize)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(TILE_X).astype(dtype)
    weight = rng.standard_normal(TILE_W).astype(dtype)
    bias = rng.standard_normal(TILE_W[0]).astype(dtype)
    y_untiled = convkit.conv2d(x, weight, bias, method="im2col", **TILE_KWARGS)
    grad_output = rng.standard_normal(y_untiled.shape).astype(dtype)
    grads_untiled = convkit.conv2d_backward(grad_output, x, weight, method="im2col",
                                            **TILE_KWARGS)
    P = y_untiled.shape[2]
    assert all(tile == (0, TILE_X[0], 0, P) for tile in recorded_tiles)
    recorded_tiles.clear()

    with convkit.workspace_limit(limit):
        y = convkit.conv2d(x, weight, bias, method="im2col", **TILE_KWARGS)
        grads = convkit.conv2d_backward(grad_output, x, weight, method="im2col",
                                        **TILE_KWARGS)
    assert len(set(recorded_tiles)) > 1
    if tiling == "images":
        assert all(p0 == 0 and p1 == P for _, _, p0, p1 in recorded_tiles)
        assert any(n1 - n0 > 1 for n0, n1, _, _ in recorded_tiles)
    else:
        assert all(n1 - n0 == 1 for n0, n1, _, _ in recorded_tiles)
        assert any(p1 - p0 < P for _, _, p0, p1 in recorded_tiles)
        if tiling == "single_rows":
            assert all(p1 - p0 == 1 for _, _, p0, p1 in recorded_tiles)

    assert_close(y, y_untiled)
    assert_close(y, reference.conv2d(x, weight, bias, **TILE_KWARGS))
    expected = reference.conv2d_backward(grad_output, x, weight, **TILE_KWARGS)
    for actual, untiled, wanted in zip(grads, grads_untiled, expected):
        assert_close(actual, untiled, kind="grad")
        assert_close(actual, wanted, kind="grad")


@pytest.mark.parametrize("limit", [None, 200_000, 20_000], ids=["one tile", "image tiles", "row tiles"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batched_gemm_backward_matches_reference(limit, dtype):
    # K/G >= 32, C/G*R*S >= 64 and P*Q < 1024: the im2col gradients run one GEMM
    # per tile over all its images (functional._batched_gemm).
    from convkit.functional import _batched_gemm
    from convkit._validation import conv_geometry

    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 16, 9, 11)).astype(dtype)
    weight = rng.standard_normal((64, 8, 3, 3)).astype(dtype)
    kwargs = dict(stride=(1, 2), padding=((1, 0), (2, 1)), groups=2)
    g = conv_geometry(x.shape, weight.shape, kwargs["stride"], kwargs["padding"], 1, 2)
    assert _batched_gemm(g)
    y = reference.conv2d(x, weight, **kwargs)
    grad_output = rng.standard_normal(y.shape).astype(dtype)
    expected = reference.conv2d_backward(grad_output, x, weight, **kwargs)
    with convkit.workspace_limit(limit or convkit.get_workspace_limit()):
        got = convkit.conv2d_backward(grad_output, x, weight, method="im2col", **kwargs)
    for a, e in zip(got, expected):
        assert_close(a, e, "grad")
