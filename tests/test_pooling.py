"""max_pool2d, avg_pool2d and their backward passes against convkit.reference."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import convkit
from convkit import reference
from _helpers import assert_close, check_unmodified, layouts

DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
MODULES = [pytest.param(convkit, id="convkit"), pytest.param(reference, id="reference")]

# The grid on a 7 x 10 input: H = 7 gives ceil_mode a partial last
# window (kernel 2, stride 2) and, with padding 1, a window starting in the
# trailing padding that the last-window rule drops.
KERNELS = [2, 3, (2, 3)]
GRID = [dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=c)
        for k, s, p, d, c in itertools.product(KERNELS, [1, 2, 3], [0, 1], [1, 2],
                                               [False, True])]
GRID_IDS = [f"k{c['kernel_size']}-s{c['stride']}-p{c['padding']}-d{c['dilation']}"
            f"{'-ceil' if c['ceil_mode'] else ''}".replace(" ", "") for c in GRID]
X_SHAPE = (2, 3, 7, 10)

# Geometries beyond the grid: fast paths, windows-order paths (kernel wider
# than the output), global pooling, Keras paddings, asymmetric padding.
EXTRA = {
    "2x2_fast_even": ((2, 3, 8, 10), dict(kernel_size=2)),
    "2x2_fast_odd_leftover": ((2, 3, 9, 7), dict(kernel_size=2, stride=2)),
    "2x2_ceil_partial": ((1, 2, 9, 7), dict(kernel_size=2, ceil_mode=True)),
    "global_7x7": ((2, 4, 7, 7), dict(kernel_size=7)),
    "global_nonsquare": ((2, 3, 13, 40), dict(kernel_size=(13, 40))),
    "wide_kernel_full_rows": ((2, 3, 9, 11), dict(kernel_size=(3, 11), stride=(2, 1))),
    "wide_kernel_partial_rows": ((2, 3, 9, 12), dict(kernel_size=(3, 9), stride=3,
                                                     padding=(1, 2))),
    "wide_kernel_ceil_overhang": ((1, 2, 6, 12), dict(kernel_size=(2, 9), stride=(2, 5),
                                                      padding=(0, 2), ceil_mode=True)),
    "overlapping_k3_s2_p1": ((2, 3, 12, 11), dict(kernel_size=3, stride=2, padding=1)),
    "stride_gt_kernel": ((2, 2, 11, 13), dict(kernel_size=2, stride=(3, 4))),
    "same_k3_s2": ((2, 3, 8, 9), dict(kernel_size=3, stride=2, padding="same")),
    "same_k2_s1": ((1, 2, 6, 5), dict(kernel_size=2, stride=1, padding="same")),
    "same_k4_s3": ((1, 2, 10, 7), dict(kernel_size=4, stride=3, padding="same")),
    "valid_k3_s2": ((2, 3, 8, 9), dict(kernel_size=3, stride=2, padding="valid")),
    "asymmetric_padding": ((2, 3, 7, 8), dict(kernel_size=3, stride=2,
                                              padding=((1, 0), (0, 1)))),
    "kernel_1x1_stride2": ((2, 3, 7, 8), dict(kernel_size=1, stride=2)),
}
EXTRA_IDS = list(EXTRA)


def _cases():
    """(id, x shape, kwargs) for every grid point and extra geometry."""
    for case_id, kwargs in zip(GRID_IDS, GRID):
        yield case_id, X_SHAPE, kwargs
    for case_id in EXTRA_IDS:
        yield case_id, *EXTRA[case_id]


CASES = {case_id: (shape, kwargs) for case_id, shape, kwargs in _cases()}
AVG_CASES = {case_id: (shape, {k: v for k, v in kwargs.items() if k != "dilation"})
             for case_id, (shape, kwargs) in CASES.items() if kwargs.get("dilation", 1) == 1}


def special_values(shape, dtype, seed=0):
    """Small integers (many ties) with NaN and -inf sprinkled in."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=shape).astype(dtype)
    u = rng.random(shape)
    x[u < 0.06] = np.nan
    x[(u >= 0.06) & (u < 0.14)] = -np.inf
    return x


def normal_values(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def assert_max_equal(actual, expected):
    """Max pooling selects, it never computes: values and indices match exactly."""
    y, indices = actual
    y_ref, indices_ref = expected
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    np.testing.assert_array_equal(y, y_ref)
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, indices_ref)


# ------------------------------------------------------------------ max, grid

@pytest.mark.parametrize("values", [normal_values, special_values], ids=["normal", "special"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_max_pool2d_matches_reference(case, dtype, values):
    shape, kwargs = CASES[case]
    x = values(shape, dtype)
    expected = reference.max_pool2d(x, **kwargs, return_indices=True)
    assert_max_equal(convkit.max_pool2d(x, **kwargs, return_indices=True), expected)
    np.testing.assert_array_equal(convkit.max_pool2d(x, **kwargs), expected[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_max_pool2d_backward_matches_reference(case, dtype):
    shape, kwargs = CASES[case]
    x = special_values(shape, dtype, seed=1)
    _, indices = reference.max_pool2d(x, **kwargs, return_indices=True)
    grad_output = normal_values(indices.shape, dtype, seed=2)
    assert_close(convkit.max_pool2d_backward(grad_output, indices, shape),
                 reference.max_pool2d_backward(grad_output, indices, shape), kind="grad")


# Rows wide enough for every vector width of the row-pass kernel (16, 8 and 4
# float32 lanes, overlapping last vectors) and for scalar leftovers.
WIDE_ROWS = {f"W{W}-k{k}-s{s}-p{p}".replace(" ", ""): ((2, 2, 5, W), dict(kernel_size=k,
                                                                          stride=s, padding=p))
             for W in (3, 13, 37, 70, 113)
             for k, s, p in [(3, 2, 1), (3, 1, 1), (2, 1, 0), ((2, 3), 2, (0, 1)),
                             ((3, 5), 1, (1, 2)), (2, 2, 1), (2, 2, 0), (3, (1, 2), 0)]}


def mostly_minus_inf(shape, dtype, seed=0):
    """-inf nearly everywhere, so whole windows (at the borders too) hold nothing else."""
    rng = np.random.default_rng(seed)
    x = np.full(shape, -np.inf, dtype)
    u = rng.random(shape)
    x[u < 0.03] = np.nan
    x[u > 0.85] = rng.integers(-2, 3, size=int(np.sum(u > 0.85)))
    return x


@pytest.mark.parametrize("values", [normal_values, special_values, mostly_minus_inf],
                         ids=["normal", "special", "minus_inf"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(WIDE_ROWS))
def test_max_pool2d_wide_rows_match_reference(case, dtype, values):
    shape, kwargs = WIDE_ROWS[case]
    x = values(shape, dtype)
    expected = reference.max_pool2d(x, **kwargs, return_indices=True)
    assert_max_equal(convkit.max_pool2d(x, **kwargs, return_indices=True), expected)
    np.testing.assert_array_equal(convkit.max_pool2d(x, **kwargs), expected[0])


# ------------------------------------------------------------------ avg, grid

@pytest.mark.parametrize("count_include_pad", [True, False], ids=["include_pad", "exclude_pad"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(AVG_CASES))
def test_avg_pool2d_matches_reference(case, dtype, count_include_pad):
    shape, kwargs = AVG_CASES[case]
    x = normal_values(shape, dtype)
    assert_close(convkit.avg_pool2d(x, **kwargs, count_include_pad=count_include_pad),
                 reference.avg_pool2d(x, **kwargs, count_include_pad=count_include_pad))


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["include_pad", "exclude_pad"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(AVG_CASES))
def test_avg_pool2d_backward_matches_reference(case, dtype, count_include_pad):
    shape, kwargs = AVG_CASES[case]
    out_shape = reference.avg_pool2d(np.zeros(shape, dtype), **kwargs).shape
    grad_output = normal_values(out_shape, dtype, seed=3)
    kwargs = dict(kwargs, count_include_pad=count_include_pad)
    assert_close(convkit.avg_pool2d_backward(grad_output, shape, **kwargs),
                 reference.avg_pool2d_backward(grad_output, shape, **kwargs), kind="grad")


# --------------------------------------------------- semantics worth spelling out

def test_max_pool2d_nan_window_points_at_its_last_nan():
    x = np.array([[[[1.0, np.nan, 3.0, np.nan], [0.0, 5.0, 2.0, 1.0]]]])
    y, indices = convkit.max_pool2d(x, (2, 4), return_indices=True)
    assert np.isnan(y[0, 0, 0, 0]) and indices[0, 0, 0, 0] == 3


def test_max_pool2d_ties_pick_first_in_row_major_order():
    x = np.array([[[[1.0, 2.0, 2.0], [2.0, 0.0, 2.0], [2.0, 2.0, 1.0]]]], dtype=np.float32)
    y, indices = convkit.max_pool2d(x, 3, stride=1, padding=1, return_indices=True)
    np.testing.assert_array_equal(indices[0, 0], [[1, 1, 1], [1, 1, 1], [3, 3, 5]])
    np.testing.assert_array_equal(y[0, 0], np.full((3, 3), 2.0, np.float32))


def test_max_pool2d_padding_never_wins_and_all_minus_inf_points_at_first_cell():
    x = np.full((1, 1, 3, 3), -np.inf)
    y, indices = convkit.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    assert np.all(y == -np.inf)
    np.testing.assert_array_equal(indices[0, 0], [[0, 1], [3, 4]])
    negative = -1.0 - np.arange(16.0).reshape(1, 1, 4, 4)
    assert np.all(convkit.max_pool2d(negative, 3, stride=1, padding="same") < 0)
    assert np.all(convkit.max_pool2d(negative, 3, stride=1, padding=1) < 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_overlapping_windows_accumulate_gradients(dtype):
    x = np.zeros((1, 1, 5, 5), dtype)
    x[0, 0, 2, 2] = 1.0  # every 3x3 window of stride 2 holding it picks it
    y, indices = convkit.max_pool2d(x, 3, stride=2, return_indices=True)
    assert np.all(indices == 12)
    grad_input = convkit.max_pool2d_backward(np.ones_like(y), indices, x.shape)
    assert grad_input[0, 0, 2, 2] == 4 and grad_input.sum() == 4


# Planes of 8 KB and more (float32 48x48) go through the 2x2 block kernel
# wherever the outputs fit 2x2 blocks; the others, and any plane with an
# index outside its own block, are zeroed and scattered. Both must give the
# reference's bits: 0 + g in the cell named (so -0 turns +0 and a NaN stays),
# zero elsewhere, overlapping contributions added in order.
BLOCK_SHAPES = [(2, 3, 48, 48), (1, 2, 49, 51), (1, 1, 64, 130), (1, 2, 24, 24)]


def _in_block_indices(rng, H, W, P, Q, shape):
    """A random cell of each output's own 2x2 block (not the maximum's)."""
    p, q = np.meshgrid(np.arange(P), np.arange(Q), indexing="ij")
    cell = rng.integers(0, 4, size=shape)
    return ((2 * p + cell // 2) * W + 2 * q + cell % 2).astype(np.int64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BLOCK_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("pool", [(2, 2, 0), (3, 2, 1), (2, 2, 1)], ids=["k2s2", "k3s2p1", "k2s2p1"])
def test_max_pool2d_backward_blocks_match_the_scatter(shape, pool, dtype):
    from _helpers import same_on_thread_counts

    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    y, indices = convkit.max_pool2d(x, *pool, return_indices=True)
    grad_output = rng.standard_normal(y.shape).astype(dtype)
    grad_output.flat[::5] = -0.0
    grad_output.flat[1::7] = np.nan
    (H, W), (P, Q) = shape[2:], y.shape[2:]
    variants = [indices]
    if 2 * P <= H and 2 * Q <= W:
        inside = _in_block_indices(rng, H, W, P, Q, y.shape)
        # One index in a neighbour's block: that plane falls back to the scatter.
        foreign = inside.copy()
        foreign[0, -1, P // 2, Q - 1] = (2 * (P // 2)) * W  # block (P//2, 0)
        variants += [inside, foreign]
    for variant in variants:
        got = same_on_thread_counts(
            lambda: convkit.max_pool2d_backward(grad_output, variant, shape))
        expected = reference.max_pool2d_backward(grad_output, variant, shape)
        assert got.tobytes() == expected.tobytes()


def test_ceil_mode_last_window_rule():
    x = normal_values((1, 1, 5, 5), np.float64)
    assert convkit.max_pool2d(x, 2, ceil_mode=True).shape == (1, 1, 3, 3)
    # a fourth window would start at 6 = H + padding: inside the trailing padding only
    assert convkit.max_pool2d(x, 2, padding=1, ceil_mode=True).shape == (1, 1, 3, 3)
    assert convkit.avg_pool2d(x, 2, padding=1, ceil_mode=True).shape == (1, 1, 3, 3)


def test_avg_pool2d_same_averages_only_input_cells():
    x = np.ones((2, 3, 7, 6))
    for count_include_pad in (True, False):
        y = convkit.avg_pool2d(x, 3, stride=2, padding="same",
                               count_include_pad=count_include_pad)
        assert y.shape == (2, 3, 4, 3)
        assert_close(y, np.ones_like(y))
    y = convkit.avg_pool2d(x, 3, stride=2, padding=1)
    assert y[0, 0, 0, 0] == pytest.approx(4 / 9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_average_pooling_is_the_plane_mean(dtype):
    x = normal_values((3, 5, 17, 23), dtype)
    y = convkit.avg_pool2d(x, (17, 23))
    assert_close(y, x.mean(axis=(2, 3), keepdims=True, dtype=np.float64).astype(dtype))
    grad = convkit.avg_pool2d_backward(np.ones((3, 5, 1, 1), dtype), x.shape, (17, 23))
    assert_close(grad, np.full(x.shape, 1 / (17 * 23), dtype), kind="grad")


# ---------------------------------------------- layouts, dtypes, threads, batch

@pytest.mark.parametrize("dtype", DTYPES)
def test_any_layout_read_only_and_unmodified(dtype):
    shape, kwargs = EXTRA["overlapping_k3_s2_p1"]
    x = special_values(shape, dtype)
    y_ref, indices_ref = reference.max_pool2d(x, **kwargs, return_indices=True)
    grad_output = normal_values(y_ref.shape, dtype)
    avg_ref = reference.avg_pool2d(x, **kwargs)
    avg_grad_ref = reference.avg_pool2d_backward(grad_output, shape, **kwargs)
    max_grad_ref = reference.max_pool2d_backward(grad_output, indices_ref, shape)
    for (name, xv), (_, gv), (_, iv) in zip(layouts(x), layouts(grad_output),
                                            layouts(indices_ref)):
        copies = {"x": xv.copy(), "grad_output": gv.copy(), "indices": iv.copy()}
        y, indices = convkit.max_pool2d(xv, **kwargs, return_indices=True)
        assert_max_equal((y, indices), (y_ref, indices_ref))
        assert not np.shares_memory(y, xv)
        assert_close(convkit.avg_pool2d(xv, **kwargs), avg_ref, err_msg=name)
        assert_close(convkit.max_pool2d_backward(gv, iv, shape), max_grad_ref, kind="grad",
                     err_msg=name)
        assert_close(convkit.avg_pool2d_backward(gv, shape, **kwargs), avg_grad_ref,
                     kind="grad", err_msg=name)
        check_unmodified({"x": xv, "grad_output": gv, "indices": iv}, copies)


@pytest.mark.parametrize("case", ["overlapping_k3_s2_p1", "2x2_fast_even", "global_7x7",
                                  "wide_kernel_partial_rows"])
def test_results_do_not_depend_on_thread_count(case, monkeypatch):
    shape, kwargs = EXTRA[case]
    shape = (3, 5) + shape[2:]  # 15 planes: the threads get unequal shares
    x = special_values(shape, np.float32)
    avg_kwargs = {k: v for k, v in kwargs.items() if k != "dilation"}
    results = []
    for n in (1, 2, 3):
        # n threads however small the work (threads_for would run it serially)
        monkeypatch.setattr(convkit._threads, "threads_for", lambda work, n_threads=None: n)
        y, indices = convkit.max_pool2d(x, **kwargs, return_indices=True)
        grad_output = normal_values(y.shape, np.float32)
        results.append([y, indices, convkit.max_pool2d_backward(grad_output, indices, shape),
                        convkit.avg_pool2d(x, **avg_kwargs),
                        convkit.avg_pool2d_backward(grad_output, shape, **avg_kwargs)])
    for serial, *parallel in zip(*results):
        for result in parallel:
            np.testing.assert_array_equal(result, serial)


@pytest.mark.parametrize("module", MODULES)
def test_empty_batch(module):
    x = np.zeros((0, 3, 6, 6), np.float32)
    y, indices = module.max_pool2d(x, 2, return_indices=True)
    assert y.shape == indices.shape == (0, 3, 3, 3) and y.dtype == np.float32
    assert module.max_pool2d_backward(y, indices, x.shape).shape == x.shape
    assert module.avg_pool2d(x, 3, padding=1).shape == (0, 3, 2, 2)
    assert module.avg_pool2d_backward(y, x.shape, 2).shape == x.shape


# ----------------------------------------------------------------- bad arguments

X = np.zeros((2, 3, 6, 6))
Y_INDICES = np.zeros((2, 3, 3, 3), np.int64)
G = np.zeros((2, 3, 3, 3))

BAD_CALLS = [
    ("kernel_zero", lambda m: m.max_pool2d(X, 0), ValueError, "kernel_size"),
    ("kernel_negative", lambda m: m.avg_pool2d(X, (2, -1)), ValueError, "kernel_size"),
    ("kernel_float", lambda m: m.max_pool2d(X, 2.0), TypeError, "kernel_size"),
    ("stride_zero", lambda m: m.max_pool2d(X, 2, stride=0), ValueError, "stride"),
    ("stride_negative", lambda m: m.avg_pool2d(X, 2, stride=(1, -2)), ValueError, "stride"),
    ("dilation_zero", lambda m: m.max_pool2d(X, 2, dilation=0), ValueError, "dilation"),
    ("padding_over_half_kernel", lambda m: m.max_pool2d(X, 2, padding=2), ValueError,
     "padding"),
    ("padding_over_half_kernel_avg", lambda m: m.avg_pool2d(X, 3, padding=(0, 2)),
     ValueError, "padding"),
    ("padding_kernel1", lambda m: m.avg_pool2d(X, 1, padding=1), ValueError, "padding"),
    ("padding_negative", lambda m: m.max_pool2d(X, 3, padding=-1), ValueError, "padding"),
    ("padding_bad_string", lambda m: m.max_pool2d(X, 3, padding="full"), ValueError,
     "padding"),
    ("output_empty", lambda m: m.max_pool2d(X, 7), ValueError, "kernel_size"),
    ("output_empty_dilation", lambda m: m.max_pool2d(X, 3, dilation=3), ValueError,
     "kernel_size"),
    ("window_only_padding", lambda m: m.max_pool2d(np.zeros((1, 1, 3, 3)), 2, stride=1,
                                                   dilation=4, padding=1),
     ValueError, "padding"),
    ("window_only_padding_same", lambda m: m.max_pool2d(np.zeros((1, 1, 3, 3)), 2, stride=1,
                                                        dilation=4, padding="same"),
     ValueError, "padding"),
    ("x_3d", lambda m: m.max_pool2d(X[0], 2), ValueError, "x"),
    ("x_5d", lambda m: m.avg_pool2d(X[None], 2), ValueError, "x"),
    ("x_int", lambda m: m.max_pool2d(X.astype(int), 2), TypeError, "x"),
    ("x_empty_plane", lambda m: m.max_pool2d(np.zeros((1, 1, 0, 4)), 1), ValueError, "x"),
    ("ceil_mode_int", lambda m: m.avg_pool2d(X, 2, 2, 0, 1), TypeError, "ceil_mode"),
    ("count_include_pad_none", lambda m: m.avg_pool2d(X, 2, count_include_pad=None),
     TypeError, "count_include_pad"),
    ("return_indices_str", lambda m: m.max_pool2d(X, 2, return_indices="yes"), TypeError,
     "return_indices"),
    ("indices_int32", lambda m: m.max_pool2d_backward(G, Y_INDICES.astype(np.int32), X.shape),
     TypeError, "indices"),
    ("indices_float", lambda m: m.max_pool2d_backward(G, G, X.shape), TypeError, "indices"),
    ("indices_list", lambda m: m.max_pool2d_backward(G, Y_INDICES.tolist(), X.shape),
     TypeError, "indices"),
    ("indices_shape", lambda m: m.max_pool2d_backward(G, Y_INDICES[:, :, :2], X.shape),
     ValueError, "indices"),
    ("indices_negative", lambda m: m.max_pool2d_backward(G, Y_INDICES - 1, X.shape),
     ValueError, "indices"),
    ("indices_past_plane", lambda m: m.max_pool2d_backward(G, Y_INDICES + 36, X.shape),
     ValueError, "indices"),
    ("grad_output_3d", lambda m: m.max_pool2d_backward(G[0], Y_INDICES[0], X.shape),
     ValueError, "grad_output"),
    ("grad_output_int", lambda m: m.max_pool2d_backward(Y_INDICES, Y_INDICES, X.shape),
     TypeError, "grad_output"),
    ("input_shape_3", lambda m: m.max_pool2d_backward(G, Y_INDICES, (2, 3, 6)), ValueError,
     "input_shape"),
    ("input_shape_channels", lambda m: m.max_pool2d_backward(G, Y_INDICES, (2, 4, 6, 6)),
     ValueError, "input_shape"),
    ("input_shape_float", lambda m: m.avg_pool2d_backward(G, (2, 3, 6.0, 6), 2), TypeError,
     "input_shape"),
    ("avg_grad_output_shape", lambda m: m.avg_pool2d_backward(G, X.shape, 3), ValueError,
     "grad_output"),
    ("avg_backward_kernel_zero", lambda m: m.avg_pool2d_backward(G, X.shape, 0), ValueError,
     "kernel_size"),
]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("call, error, fragment", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise(module, call, error, fragment):
    with pytest.raises(error, match=fragment):
        call(module)


@pytest.mark.parametrize("call", [
    lambda: convkit.max_pool2d(np.ones((1, 1, 3, 3)), 2, stride=2**64),
    lambda: convkit.max_pool2d(np.ones((1, 1, 3, 3)), 1, dilation=2**63),
    lambda: convkit.avg_pool2d(np.ones((1, 1, 3, 3)), 2, stride=(1, 2**64)),
], ids=["stride", "dilation", "avg_stride"])
def test_sizes_past_int64_are_refused_clearly(call):
    with pytest.raises(ValueError, match="64-bit"):
        call()


def test_avg_pool2d_backward_checks_grad_output_before_allocating():
    for module in (convkit, reference):
        with pytest.raises(ValueError, match="grad_output"):
            module.avg_pool2d_backward(np.ones((1, 1, 1, 1)), (1, 1, 10**13, 1), 1)


def test_out_of_range_index_message_names_the_entry():
    indices = Y_INDICES.copy()
    indices[1, 2, 0, 1] = 99
    with pytest.raises(ValueError, match=r"indices\(1, 2, 0, 1\) = 99"):
        convkit.max_pool2d_backward(G, indices, X.shape)


# -------------------------------------------------------------------- hypothesis

@st.composite
def pool_configs(draw):
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    padding = draw(st.one_of(
        st.tuples(st.integers(0, R // 2), st.integers(0, S // 2)),
        st.sampled_from(["same", "valid"])))
    return dict(
        shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)),
               draw(st.integers(1, 11)), draw(st.integers(1, 11))),
        kernel_size=(R, S),
        stride=draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4)))),
        padding=padding,
        dilation=draw(st.tuples(st.integers(1, 3), st.integers(1, 3))),
        ceil_mode=draw(st.booleans()),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        seed=draw(st.integers(0, 2**16)),
    )


def _outcome(call):
    """The result of ``call()``, or the exception type it raises."""
    try:
        return call()
    except (ValueError, TypeError) as error:
        return type(error)


@given(pool_configs())
def test_hypothesis_max_pool2d_matches_reference(config):
    shape, dtype, seed = config.pop("shape"), config.pop("dtype"), config.pop("seed")
    x = special_values(shape, dtype, seed)
    expected = _outcome(lambda: reference.max_pool2d(x, **config, return_indices=True))
    if isinstance(expected, type):
        assert _outcome(lambda: convkit.max_pool2d(x, **config)) is expected
        return
    y, indices = convkit.max_pool2d(x, **config, return_indices=True)
    assert_max_equal((y, indices), expected)
    grad_output = normal_values(y.shape, dtype, seed)
    assert_close(convkit.max_pool2d_backward(grad_output, indices, shape),
                 reference.max_pool2d_backward(grad_output, indices, shape), kind="grad")


@given(pool_configs(), st.booleans())
def test_hypothesis_avg_pool2d_matches_reference(config, count_include_pad):
    shape, dtype, seed = config.pop("shape"), config.pop("dtype"), config.pop("seed")
    del config["dilation"]
    config["count_include_pad"] = count_include_pad
    x = normal_values(shape, dtype, seed)
    expected = _outcome(lambda: reference.avg_pool2d(x, **config))
    if isinstance(expected, type):
        assert _outcome(lambda: convkit.avg_pool2d(x, **config)) is expected
        return
    assert_close(convkit.avg_pool2d(x, **config), expected)
    grad_output = normal_values(expected.shape, dtype, seed + 1)
    assert_close(convkit.avg_pool2d_backward(grad_output, shape, **config),
                 reference.avg_pool2d_backward(grad_output, shape, **config), kind="grad")
