"""Hypothesis-generated invalid arguments: each raises ValueError or TypeError naming it.

The properties become tests only in a child pytest process started by
``test_invalid_arguments_in_subprocess``, so that a crash of the interpreter
(a segfault in a kernel fed a bad size) fails that test instead of killing
the whole run. Each property starts from a valid call and breaks exactly one
argument.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import convkit

CHILD_ENV = "CONVKIT_INVALID_ARGS_CHILD"
IN_CHILD = os.environ.get(CHILD_ENV) == "1"

HUGE = st.integers(min_value=2**63, max_value=2**80)
NOT_A_NUMBER = st.one_of(
    st.floats(), st.text(max_size=3), st.none(), st.booleans(), st.complex_numbers(),
    st.just(np.float64(2.0)), st.just(np.bool_(True)), st.just({}), st.just(object()))
BAD_DTYPES = st.sampled_from([np.int8, np.int64, np.uint8, np.float16, np.complex128,
                              np.bool_, object, "U1"])


def bad_positive_pairs():
    """Invalid stride, dilation or kernel_size: not >= 1, beyond int64, not an int pair."""
    bad = st.one_of(st.integers(max_value=0), HUGE)
    one = st.integers(1, 2)
    wrong_length = st.lists(one, max_size=4).filter(lambda v: len(v) != 2).map(tuple)
    return st.one_of(bad, st.tuples(bad, one), st.tuples(one, bad), NOT_A_NUMBER,
                     st.tuples(one, NOT_A_NUMBER), wrong_length)


def bad_paddings():
    """Invalid padding: negative, so large the padded size overflows int64, or malformed."""
    bad = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**62, max_value=2**80))
    ok = st.integers(0, 1)
    return st.one_of(
        bad, st.tuples(bad, ok), st.tuples(ok, bad),
        st.tuples(st.tuples(ok, bad), st.tuples(ok, ok)),
        st.tuples(st.tuples(ok, ok), st.tuples(bad, ok)),
        st.tuples(st.tuples(ok, ok, ok), st.tuples(ok, ok)),
        st.lists(ok, max_size=4).filter(lambda v: len(v) != 2).map(tuple),
        st.text(max_size=6).filter(lambda s: s.lower() not in ("same", "valid")),
        NOT_A_NUMBER.filter(lambda v: not isinstance(v, str)),
    )


def bad_arrays(valid, name):
    """(value, names) pairs: ``valid`` broken in dtype, ndim, size or type."""
    return st.one_of(
        BAD_DTYPES.map(lambda dtype: valid.astype(dtype)),
        st.sampled_from([valid.reshape(valid.shape[:-1] + (1, -1)), valid.reshape(-1),
                         valid.reshape(valid.shape[0], -1), valid[(0,) * valid.ndim]]),
        st.sampled_from([None, "array", {name: 1}]),
        st.just(valid.astype(np.float32 if valid.dtype == np.float64 else np.float64)),
    )


def window_arguments(extra_names=(), dilation=True):
    """(argument, invalid value) for stride, padding and dilation (plus ``extra_names``)."""
    names = ("stride", "dilation") if dilation else ("stride",)
    strategies = [st.tuples(st.just(name), bad_positive_pairs()) for name in names]
    strategies.append(st.tuples(st.just("padding"), bad_paddings()))
    strategies += [st.tuples(st.just(name), bad_positive_pairs()) for name in extra_names]
    return st.one_of(strategies)


def check_rejected(function, args, kwargs, names):
    """``function(*args, **kwargs)`` raises ValueError/TypeError whose message names a culprit."""
    with pytest.raises((ValueError, TypeError)) as info:
        function(*args, **kwargs)
    message = str(info.value)
    assert any(name in message for name in names), (
        f"{type(info.value).__name__}({message!r}) names none of {names}")


RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 4, 6, 6))
WEIGHT = RNG.standard_normal((4, 2, 3, 3))
BIAS = RNG.standard_normal(4)
CONV = {"stride": 1, "padding": 1, "dilation": 1, "groups": 2}
Y_SHAPE = (2, 4, 6, 6)


def conv_corruptions():
    """(argument, invalid value, names one of which the error must mention)."""
    methods = st.one_of(st.text(max_size=8).filter(lambda s: s not in ("auto", "direct", "im2col")),
                        st.none(), st.integers())
    wrong_groups = st.one_of(st.integers(-3, 8).filter(lambda g: g != 2), HUGE)
    return st.one_of(
        window_arguments().map(lambda item: (*item, (item[0], "kernel", "64-bit"))),
        st.tuples(st.just("groups"), wrong_groups, st.just(("groups", "weight", "64-bit"))),
        st.tuples(st.just("groups"), NOT_A_NUMBER, st.just(("groups",))),
        st.tuples(st.just("method"), methods, st.just(("method",))),
        st.tuples(st.just("x"), bad_arrays(X, "x"), st.just(("x", "weight"))),
        st.tuples(st.just("weight"), bad_arrays(WEIGHT, "weight"), st.just(("x", "weight"))),
        st.tuples(st.just("weight"),
                  st.sampled_from([np.zeros((4, 3, 3, 3)), np.zeros((3, 2, 3, 3)),
                                   np.zeros((0, 2, 3, 3)), np.zeros((4, 2, 9, 3)),
                                   np.zeros((4, 2, 3, 9))]),
                  st.just(("weight", "kernel"))),
        st.tuples(st.just("x"), st.sampled_from([np.zeros((2, 0, 6, 6)), np.zeros((2, 4, 0, 6)),
                                                 np.zeros((2, 6, 6, 6))]),
                  st.just(("x",))),
    )


@given(conv_corruptions(), st.booleans())
def conv2d_rejects(corruption, with_bias):
    name, value, names = corruption
    kwargs = {"x": X, "weight": WEIGHT, "bias": BIAS if with_bias else None, **CONV,
              "method": "auto", name: value}
    check_rejected(convkit.conv2d, (), kwargs, names)


@given(st.one_of(st.sampled_from([np.zeros((4, 1)), np.zeros(5),
                                  np.zeros(4, np.float32), np.zeros(4, np.int64), "bias"])))
def conv2d_rejects_bias(bias):
    check_rejected(convkit.conv2d, (X, WEIGHT, bias), CONV, ("bias",))


def backward_corruptions():
    masks = st.one_of(st.integers(), st.none(),
                      st.lists(st.booleans(), max_size=5).filter(lambda v: len(v) != 3))
    return st.one_of(
        conv_corruptions(),
        st.tuples(st.just("output_mask"), masks, st.just(("output_mask",))),
        st.tuples(st.just("grad_output"), bad_arrays(np.zeros(Y_SHAPE), "grad_output"),
                  st.just(("grad_output", "x"))),
        st.tuples(st.just("grad_output"),
                  st.sampled_from([np.zeros((2, 4, 6, 5)), np.zeros((1, 4, 6, 6)),
                                   np.zeros((2, 2, 6, 6))]),
                  st.just(("grad_output",))),
    )


@given(backward_corruptions())
def conv2d_backward_rejects(corruption):
    name, value, names = corruption
    kwargs = {"grad_output": np.zeros(Y_SHAPE), "x": X, "weight": WEIGHT, **CONV,
              "method": "auto", name: value}
    if name in ("stride", "padding", "dilation", "groups"):
        # Otherwise the valid grad_output no longer matches the broken geometry,
        # which is reported first: still an error, naming grad_output.
        names = names + ("grad_output",)
    check_rejected(convkit.conv2d_backward, (), kwargs, names)


@given(st.one_of(
    window_arguments(("kernel_size",)).map(lambda item: (*item, (item[0], "kernel", "64-bit"))),
    st.tuples(st.just("x"), bad_arrays(X, "x").filter(lambda v: not (
        isinstance(v, np.ndarray) and v.dtype == np.float32 and v.ndim == 4)), st.just(("x",))),
    st.tuples(st.just("kernel_size"), st.sampled_from([9, (9, 1), (1, 9)]), st.just(("kernel",))),
))
def im2col_rejects(corruption):
    name, value, names = corruption
    kwargs = {"x": X, "kernel_size": 3, "stride": 1, "padding": 1, "dilation": 1, name: value}
    check_rejected(convkit.im2col, (), kwargs, names)


COLS = np.zeros((2, 4 * 9, 36))


@given(st.one_of(
    window_arguments(("kernel_size",)).map(
        lambda item: (*item, (item[0], "kernel", "64-bit", "cols"))),
    st.tuples(st.just("cols"), bad_arrays(COLS, "cols").filter(
        lambda v: not (isinstance(v, np.ndarray) and v.dtype == np.float32 and v.ndim == 3)),
        st.just(("cols",))),
    st.tuples(st.just("input_shape"),
              st.one_of(
                  st.lists(st.integers(1, 6), max_size=6).filter(lambda v: len(v) != 4).map(tuple),
                  st.sampled_from([(2, 4, 6, 7), (2, 4, 5, 6), (1, 4, 6, 6), (2, 3, 6, 6),
                                   (-2, 4, 6, 6), (2, 4, 6.5, 6), (2.5, 4, 6, 6), (2, "4", 6, 6),
                                   (2, 4, None, 6), (True, 4, 6, 6), 4, None, "NCHW"])),
              st.just(("input_shape", "cols"))),
))
def col2im_rejects(corruption):
    name, value, names = corruption
    kwargs = {"cols": COLS, "input_shape": (2, 4, 6, 6), "kernel_size": 3, "stride": 1,
              "padding": 1, "dilation": 1, name: value}
    check_rejected(convkit.col2im, (), kwargs, names)


POOL_X = RNG.standard_normal((2, 3, 6, 6))
POOL = {"kernel_size": 3, "stride": 2, "padding": 1}
POOL_Y_SHAPE = (2, 3, 3, 3)
NOT_A_BOOL = st.one_of(st.integers(), st.text(max_size=3), st.none(), st.floats())
BAD_INPUT_SHAPES = st.one_of(
    st.lists(st.integers(1, 6), max_size=6).filter(lambda v: len(v) != 4).map(tuple),
    st.sampled_from([(2, 3, 6.5, 6), (2.0, 3, 6, 6), (2, "3", 6, 6), (2, 3, None, 6), 4, None,
                     "NCHW", (2, 3, 0, 6), (2, 3, 6, -1)]))


def pool_corruptions(dilation):
    """Pooling arguments broken one at a time."""
    return st.one_of(
        window_arguments(("kernel_size",), dilation=dilation).filter(
            lambda item: item != ("stride", None)).map(
            lambda item: (*item, (item[0], "kernel", "64-bit"))),
        st.tuples(st.just("padding"), st.sampled_from([2, (0, 2), ((0, 2), (0, 0))]),
                  st.just(("padding",))),
        st.tuples(st.just("kernel_size"), st.sampled_from([9, (9, 1), (1, 9)]),
                  st.just(("kernel",))),
        st.tuples(st.just("ceil_mode"), NOT_A_BOOL, st.just(("ceil_mode",))),
        st.tuples(st.just("x"), bad_arrays(POOL_X, "x").filter(lambda v: not (
            isinstance(v, np.ndarray) and v.dtype == np.float32 and v.ndim == 4)),
            st.just(("x",))),
        st.tuples(st.just("x"), st.just(np.zeros((2, 3, 0, 6))), st.just(("x",))),
    )


@given(st.one_of(pool_corruptions(dilation=True),
                 st.tuples(st.just("return_indices"), NOT_A_BOOL, st.just(("return_indices",)))))
def max_pool2d_rejects(corruption):
    name, value, names = corruption
    kwargs = {"x": POOL_X, **POOL, "dilation": 1, "return_indices": False, name: value}
    check_rejected(convkit.max_pool2d, (), kwargs, names)


@given(st.one_of(pool_corruptions(dilation=False),
                 st.tuples(st.just("count_include_pad"), NOT_A_BOOL,
                           st.just(("count_include_pad",)))))
def avg_pool2d_rejects(corruption):
    name, value, names = corruption
    kwargs = {"x": POOL_X, **POOL, "count_include_pad": True, name: value}
    check_rejected(convkit.avg_pool2d, (), kwargs, names)


_, POOL_INDICES = convkit.max_pool2d(POOL_X, **POOL, return_indices=True)


@given(st.one_of(
    st.tuples(st.just("grad_output"), bad_arrays(np.zeros(POOL_Y_SHAPE), "grad_output").filter(
        lambda v: not (isinstance(v, np.ndarray) and v.dtype == np.float32 and v.ndim == 4)),
        st.just(("grad_output", "indices"))),
    st.tuples(st.just("indices"), st.one_of(
        BAD_DTYPES.filter(lambda dtype: dtype != np.int64).map(POOL_INDICES.astype),
        st.sampled_from([POOL_INDICES.tolist(), POOL_INDICES[:1], POOL_INDICES.reshape(2, 3, 9),
                         POOL_INDICES.astype(np.int32), POOL_INDICES - 100, POOL_INDICES + 36])),
        st.just(("indices",))),
    st.tuples(st.just("input_shape"),
              st.one_of(BAD_INPUT_SHAPES, st.sampled_from([(1, 3, 6, 6), (2, 2, 6, 6)])),
              st.just(("input_shape",))),
))
def max_pool2d_backward_rejects(corruption):
    name, value, names = corruption
    kwargs = {"grad_output": np.zeros(POOL_Y_SHAPE), "indices": POOL_INDICES,
              "input_shape": POOL_X.shape, name: value}
    check_rejected(convkit.max_pool2d_backward, (), kwargs, names)


@given(st.one_of(
    pool_corruptions(dilation=False).filter(lambda item: item[0] != "x"),
    st.tuples(st.just("count_include_pad"), NOT_A_BOOL, st.just(("count_include_pad",))),
    st.tuples(st.just("grad_output"), st.one_of(
        bad_arrays(np.zeros(POOL_Y_SHAPE), "grad_output").filter(lambda v: not (
            isinstance(v, np.ndarray) and v.dtype == np.float32 and v.ndim == 4)),
        st.sampled_from([np.zeros((2, 3, 3, 4)), np.zeros((2, 3, 2, 3))])),
        st.just(("grad_output",))),
    st.tuples(st.just("input_shape"), BAD_INPUT_SHAPES, st.just(("input_shape",))),
))
def avg_pool2d_backward_rejects(corruption):
    name, value, names = corruption
    if name in POOL:
        # A geometry broken into a valid one no longer matches grad_output.
        names = names + ("grad_output",)
    kwargs = {"grad_output": np.zeros(POOL_Y_SHAPE), "input_shape": POOL_X.shape, **POOL,
              "count_include_pad": True, name: value}
    check_rejected(convkit.avg_pool2d_backward, (), kwargs, names)


PROPERTIES = [conv2d_rejects, conv2d_rejects_bias, conv2d_backward_rejects, im2col_rejects,
              col2im_rejects, max_pool2d_rejects, avg_pool2d_rejects,
              max_pool2d_backward_rejects, avg_pool2d_backward_rejects]
if IN_CHILD:
    globals().update({f"test_{prop.__name__}": prop for prop in PROPERTIES})


@pytest.mark.skipif(IN_CHILD, reason="the parent test itself")
def test_invalid_arguments_in_subprocess(request):
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
               "-k", "rejects"]
    profile = request.config.getoption("hypothesis_profile", None)
    if profile:
        command.append(f"--hypothesis-profile={profile}")
    # cwd: "python -m" puts it on sys.path, and the checkout's uncompiled convkit/
    # must not shadow the installed package.
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, CHILD_ENV: "1"},
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    output = result.stdout[-8000:] + result.stderr[-4000:]
    assert result.returncode == 0, f"child pytest exited with {result.returncode}:\n{output}"
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) == len(PROPERTIES), output
