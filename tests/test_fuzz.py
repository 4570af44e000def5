"""Hypothesis fuzzing: random valid configurations of every public op vs convkit.reference.

The example budget comes from the hypothesis profile (tests/conftest.py):
"ci" by default, thousands of examples with ``--hypothesis-profile=long``.
"""

import contextlib

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

import convkit
from _helpers import assert_close, check_unmodified, layouts
from convkit import reference
from convkit._validation import effective_kernel, pool_geometry

LAYOUT_NAMES = [name for name, _ in layouts(np.zeros((1, 1, 1, 1)))]
DTYPES = [np.float32, np.float64]
# None keeps the default cap; tiny caps force the im2col path into row tiles.
WORKSPACE_LIMITS = st.sampled_from([None, 1, 64, 1000, 1 << 14])


def small_pairs(low, high):
    """An int or an (int, int) pair, both forms the public API accepts."""
    value = st.integers(low, high)
    return st.one_of(value, st.tuples(value, value))


def _as_pair(value):
    return value if isinstance(value, tuple) else (value, value)


@st.composite
def paddings(draw):
    """(padding as passed, ((top, bottom), (left, right)) or None for a string)."""
    kind = draw(st.sampled_from(["int", "pair", "pairs", "same", "valid"]))
    if kind in ("same", "valid"):
        return draw(st.sampled_from([kind, kind.upper()])), None
    if kind == "int":
        p = draw(st.integers(0, 3))
        return p, ((p, p), (p, p))
    if kind == "pair":
        ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        return (ph, pw), ((ph, ph), (pw, pw))
    pads = tuple(tuple(draw(st.integers(0, 3)) for _ in range(2)) for _ in range(2))
    return pads, pads


def _input_size(draw, kernel, dilation, pads, same):
    """A size along one axis with at least one output for this kernel and padding."""
    smallest = 1 if same else max(1, effective_kernel(kernel, dilation) - sum(pads))
    return draw(st.integers(smallest, smallest + 7))


@st.composite
def window_configs(draw, max_kernel=4):
    """Geometry shared by conv, im2col and pooling: sizes, stride, padding, dilation."""
    kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    stride = draw(small_pairs(1, 3))
    dilation = draw(small_pairs(1, 3))
    padding, pads = draw(paddings())
    same = isinstance(padding, str) and padding.lower() == "same"
    zero = ((0, 0), (0, 0))
    H = _input_size(draw, kernel[0], _as_pair(dilation)[0], (pads or zero)[0], same)
    W = _input_size(draw, kernel[1], _as_pair(dilation)[1], (pads or zero)[1], same)
    return {
        "N": draw(st.integers(1, 3)), "H": H, "W": W, "kernel": kernel,
        "stride": stride, "padding": padding, "dilation": dilation,
        "dtype": draw(st.sampled_from(DTYPES)), "layout": draw(st.sampled_from(LAYOUT_NAMES)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@st.composite
def conv_configs(draw):
    config = draw(window_configs())
    groups = draw(st.integers(1, 3))
    config.update(
        groups=groups,
        C=groups * draw(st.integers(1, 3)),
        K=groups * draw(st.integers(1, 3)),
        with_bias=draw(st.booleans()),
        method=draw(st.sampled_from(["auto", "direct", "im2col"])),
        workspace=draw(WORKSPACE_LIMITS),
    )
    return config


def _array(rng, shape, config):
    """Random values of the config's dtype, in its memory layout (read-only)."""
    values = rng.standard_normal(shape).astype(config["dtype"])
    return dict(layouts(values))[config["layout"]]


def _conv_inputs(config):
    rng = np.random.default_rng(config["seed"])
    c = config
    x = _array(rng, (c["N"], c["C"], c["H"], c["W"]), c)
    weight = _array(rng, (c["K"], c["C"] // c["groups"], *c["kernel"]), c)
    bias = _array(rng, (c["K"],), c) if c["with_bias"] else None
    return rng, x, weight, bias


def _conv_args(config):
    return {name: config[name] for name in ("stride", "padding", "dilation", "groups")}


def _workspace(config):
    limit = config["workspace"]
    return contextlib.nullcontext() if limit is None else convkit.workspace_limit(limit)


def _check_fresh(outputs, inputs):
    """Outputs are new arrays: none shares memory with any input."""
    for out in outputs:
        if out is None:
            continue
        for name, array in inputs.items():
            if array is not None:
                assert not np.may_share_memory(out, array), f"output shares memory with {name}"


def _snapshot(inputs):
    return {name: np.array(array) for name, array in inputs.items() if array is not None}


def _check_inputs(inputs, copies):
    check_unmodified({name: inputs[name] for name in copies}, copies)


@given(conv_configs())
def test_conv2d_matches_reference(config):
    _, x, weight, bias = _conv_inputs(config)
    inputs = {"x": x, "weight": weight, "bias": bias}
    copies = _snapshot(inputs)
    with _workspace(config):
        y = convkit.conv2d(x, weight, bias, **_conv_args(config), method=config["method"])
    expected = reference.conv2d(x, weight, bias, **_conv_args(config))
    assert_close(y, expected, err_msg=str(config))
    _check_inputs(inputs, copies)
    _check_fresh([y], inputs)


@given(conv_configs(), st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_conv2d_backward_matches_reference(config, output_mask):
    rng, x, weight, _ = _conv_inputs(config)
    out_shape = reference.conv2d(x, weight, **_conv_args(config)).shape
    grad_output = _array(rng, out_shape, config)
    inputs = {"grad_output": grad_output, "x": x, "weight": weight}
    copies = _snapshot(inputs)
    with _workspace(config):
        grads = convkit.conv2d_backward(grad_output, x, weight, **_conv_args(config),
                                        method=config["method"], output_mask=output_mask)
    expected = reference.conv2d_backward(grad_output, x, weight, **_conv_args(config))
    for name, wanted, actual, oracle in zip(("grad_input", "grad_weight", "grad_bias"),
                                            output_mask, grads, expected):
        if wanted:
            assert_close(actual, oracle, kind="grad", err_msg=f"{name} {config}")
        else:
            assert actual is None, name
    _check_inputs(inputs, copies)
    _check_fresh(grads, inputs)


@st.composite
def unfold_configs(draw):
    config = draw(window_configs())
    config["C"] = draw(st.integers(1, 3))
    return config


def _unfold_args(config):
    return {name: config[name] for name in ("stride", "padding", "dilation")}


@given(unfold_configs())
def test_im2col_matches_reference(config):
    rng = np.random.default_rng(config["seed"])
    x = _array(rng, (config["N"], config["C"], config["H"], config["W"]), config)
    copies = _snapshot({"x": x})
    cols = convkit.im2col(x, config["kernel"], **_unfold_args(config))
    expected = reference.im2col(x, config["kernel"], **_unfold_args(config))
    np.testing.assert_array_equal(cols, expected, err_msg=str(config))
    assert cols.dtype == expected.dtype
    _check_inputs({"x": x}, copies)
    _check_fresh([cols], {"x": x})


@given(unfold_configs())
def test_col2im_matches_reference(config):
    rng = np.random.default_rng(config["seed"])
    input_shape = (config["N"], config["C"], config["H"], config["W"])
    cols_shape = reference.im2col(np.zeros(input_shape), config["kernel"],
                                  **_unfold_args(config)).shape
    cols = _array(rng, cols_shape, config)
    copies = _snapshot({"cols": cols})
    x = convkit.col2im(cols, input_shape, config["kernel"], **_unfold_args(config))
    expected = reference.col2im(cols, input_shape, config["kernel"], **_unfold_args(config))
    assert_close(x, expected, kind="grad", err_msg=str(config))
    _check_inputs({"cols": cols}, copies)
    _check_fresh([x], {"cols": cols})


@st.composite
def pool_configs(draw, with_dilation):
    """Pooling geometry: explicit padding at most half the kernel, stride None or given."""
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    half = (kernel[0] // 2, kernel[1] // 2)
    kind = draw(st.sampled_from(["int", "pair", "pairs", "same", "valid"]))
    if kind in ("same", "valid"):
        padding, pads = draw(st.sampled_from([kind, kind.upper()])), None
    elif kind == "int":
        padding = draw(st.integers(0, min(half)))
        pads = ((padding, padding), (padding, padding))
    elif kind == "pair":
        ph, pw = draw(st.integers(0, half[0])), draw(st.integers(0, half[1]))
        padding, pads = (ph, pw), ((ph, ph), (pw, pw))
    else:
        pads = tuple(tuple(draw(st.integers(0, half[axis])) for _ in range(2))
                     for axis in range(2))
        padding = pads
    dilation = draw(small_pairs(1, 3)) if with_dilation else 1
    same = kind == "same"
    zero = ((0, 0), (0, 0))
    H = _input_size(draw, kernel[0], _as_pair(dilation)[0], (pads or zero)[0], same)
    W = _input_size(draw, kernel[1], _as_pair(dilation)[1], (pads or zero)[1], same)
    config = {
        "N": draw(st.integers(0, 2)), "C": draw(st.integers(1, 3)), "H": H, "W": W,
        "kernel_size": kernel, "stride": draw(st.one_of(st.none(), small_pairs(1, 3))),
        "padding": padding, "ceil_mode": draw(st.booleans()),
        "dtype": draw(st.sampled_from(DTYPES)), "layout": draw(st.sampled_from(LAYOUT_NAMES)),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }
    if with_dilation:
        config["dilation"] = dilation
    else:
        config["count_include_pad"] = draw(st.booleans())
    try:
        pool_geometry((config["N"], config["C"], H, W), kernel, config["stride"], padding,
                      dilation, config["ceil_mode"])
    except ValueError:
        # e.g. a dilated window whose taps all fall in the padding: refused by design.
        assume(False)
    return config


POOL_KEYS = ("kernel_size", "stride", "padding", "ceil_mode", "dilation", "count_include_pad")


def _pool_args(config):
    return {name: config[name] for name in POOL_KEYS if name in config}


def _pool_input(config, rng):
    values = rng.standard_normal((config["N"], config["C"], config["H"], config["W"]))
    if values.size and rng.random() < 0.2:
        values.reshape(-1)[rng.integers(values.size)] = np.nan
    return dict(layouts(values.astype(config["dtype"])))[config["layout"]]


@given(pool_configs(with_dilation=True), st.booleans())
def test_max_pool2d_matches_reference(config, return_indices):
    x = _pool_input(config, np.random.default_rng(config["seed"]))
    copies = _snapshot({"x": x})
    out = convkit.max_pool2d(x, **_pool_args(config), return_indices=return_indices)
    expected = reference.max_pool2d(x, **_pool_args(config), return_indices=True)
    if return_indices:
        y, indices = out
        np.testing.assert_array_equal(indices, expected[1], err_msg=str(config))
        assert indices.dtype == np.int64
    else:
        y = out
    np.testing.assert_array_equal(y, expected[0], err_msg=str(config))
    assert y.dtype == x.dtype
    _check_inputs({"x": x}, copies)
    _check_fresh(out if return_indices else [y], {"x": x})


@given(pool_configs(with_dilation=True))
def test_max_pool2d_backward_matches_reference(config):
    rng = np.random.default_rng(config["seed"])
    x = _pool_input(config, rng)
    _, indices = reference.max_pool2d(x, **_pool_args(config), return_indices=True)
    grad_output = _array(rng, indices.shape, config)
    indices = dict(layouts(indices))[config["layout"]]
    inputs = {"grad_output": grad_output, "indices": indices}
    copies = _snapshot(inputs)
    grad_input = convkit.max_pool2d_backward(grad_output, indices, x.shape)
    expected = reference.max_pool2d_backward(grad_output, indices, x.shape)
    assert_close(grad_input, expected, kind="grad", err_msg=str(config))
    _check_inputs(inputs, copies)
    _check_fresh([grad_input], inputs)


@given(pool_configs(with_dilation=False))
def test_avg_pool2d_matches_reference(config):
    rng = np.random.default_rng(config["seed"])
    x = _array(rng, (config["N"], config["C"], config["H"], config["W"]), config)
    copies = _snapshot({"x": x})
    y = convkit.avg_pool2d(x, **_pool_args(config))
    assert_close(y, reference.avg_pool2d(x, **_pool_args(config)), err_msg=str(config))
    _check_inputs({"x": x}, copies)
    _check_fresh([y], {"x": x})


@given(pool_configs(with_dilation=False))
def test_avg_pool2d_backward_matches_reference(config):
    rng = np.random.default_rng(config["seed"])
    input_shape = (config["N"], config["C"], config["H"], config["W"])
    out_shape = reference.avg_pool2d(np.zeros(input_shape), **_pool_args(config)).shape
    grad_output = _array(rng, out_shape, config)
    copies = _snapshot({"grad_output": grad_output})
    grad_input = convkit.avg_pool2d_backward(grad_output, input_shape, **_pool_args(config))
    expected = reference.avg_pool2d_backward(grad_output, input_shape, **_pool_args(config))
    assert_close(grad_input, expected, kind="grad", err_msg=str(config))
    _check_inputs({"grad_output": grad_output}, copies)
    _check_fresh([grad_input], {"grad_output": grad_output})
