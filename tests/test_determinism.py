"""Determinism: results are bitwise identical across repeated calls and 1, 2 and 4 threads.

convkit._threads.threads_for runs problems below a minimum of work per
thread serially (1 M multiply-adds for the convolutions, 32768 element
visits for pooling and im2col), so every problem here is checked to be large
enough to run on all 4 threads; otherwise the comparison would prove nothing.
"""

import numpy as np
import pytest

import convkit
from convkit._threads import BLAS_MIN_WORK_PER_THREAD, CONV_MIN_WORK_PER_THREAD, threads_for

THREAD_COUNTS = (1, 2, 4)
REPEATS = 2


def _bitwise_equal(actual, expected):
    return (actual.shape == expected.shape and actual.dtype == expected.dtype
            and actual.tobytes() == expected.tobytes())


def _check_deterministic(call, work, min_work_per_thread=1 << 15):
    """``call()`` gives the same bits on every repeat under every thread count."""
    assert threads_for(work, max(THREAD_COUNTS), min_work_per_thread) == max(THREAD_COUNTS), (
        f"work {work} is too small: threads_for would run it on fewer threads")
    with convkit.num_threads(1):
        expected = [out for out in call() if out is not None]
    for n_threads in THREAD_COUNTS:
        with convkit.num_threads(n_threads):
            for repeat in range(REPEATS):
                actual = [out for out in call() if out is not None]
                assert len(actual) == len(expected)
                for position, (a, e) in enumerate(zip(actual, expected)):
                    assert _bitwise_equal(a, e), (
                        f"result {position} differs with {n_threads} threads (repeat {repeat}); "
                        f"max abs difference {np.max(np.abs(a - e))}")


CONFIGS = {
    "plain": {"stride": 1, "padding": 1, "dilation": 1, "groups": 1},
    "strided grouped": {"stride": (2, 1), "padding": "same", "dilation": 2, "groups": 2},
}


def _conv_problem(dtype, config):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 64, 64)).astype(dtype)
    weight = rng.standard_normal((16, 8 // config["groups"], 3, 3)).astype(dtype)
    bias = rng.standard_normal(16).astype(dtype)
    y = convkit.conv2d(x, weight, bias, **config)
    grad_y = rng.standard_normal(y.shape).astype(dtype)
    work = y.size * weight[0].size
    # grad_bias is parallel over channels once grad_output itself is large enough.
    assert threads_for(grad_y.size, max(THREAD_COUNTS)) == max(THREAD_COUNTS)
    return x, weight, bias, grad_y, work


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("method", ["direct", "im2col"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_deterministic(dtype, method, config):
    x, weight, bias, _, work = _conv_problem(dtype, config)
    _check_deterministic(lambda: [convkit.conv2d(x, weight, bias, **config, method=method)],
                         work, CONV_MIN_WORK_PER_THREAD)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("method", ["direct", "im2col"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_backward_deterministic(dtype, method, config):
    x, weight, _, grad_y, work = _conv_problem(dtype, config)
    _check_deterministic(
        lambda: convkit.conv2d_backward(grad_y, x, weight, **config, method=method), work,
        CONV_MIN_WORK_PER_THREAD)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_input_rows_deterministic(dtype):
    """grad_input by rows (mnist-conv2's shape), one task per image and vector of channels."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 32, 12, 12)).astype(dtype)
    weight = rng.standard_normal((64, 32, 5, 5)).astype(dtype)
    grad_y = rng.standard_normal((8, 64, 8, 8)).astype(dtype)
    _check_deterministic(
        lambda: convkit.conv2d_backward(grad_y, x, weight, output_mask=(True, False, False)),
        grad_y.size * weight[0].size, CONV_MIN_WORK_PER_THREAD)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_one_same_deterministic(dtype):
    """One image, "same" 3x3 (resnet-3x3-n1's kind): the grid forward on x in
    place where the CPU has it (a task per block of output channels), and
    grad_input, the same forward on grad_output."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 64, 30, 30)).astype(dtype)
    weight = rng.standard_normal((64, 64, 3, 3)).astype(dtype)
    grad_y = rng.standard_normal((1, 64, 30, 30)).astype(dtype)
    _check_deterministic(
        lambda: [convkit.conv2d(x, weight, padding=1),
                 convkit.conv2d_backward(grad_y, x, weight, padding=1,
                                         output_mask=(True, False, False))[0]],
        x.size * weight[0].size, CONV_MIN_WORK_PER_THREAD)


@pytest.mark.parametrize("method", ["auto", "direct", "im2col"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pointwise_deterministic(dtype, method):
    """1x1 convolutions are plain GEMMs on the im2col path ("auto" takes it for
    the forward): OpenBLAS gives different bits on 1 and 2 of its own threads
    on some CPUs (Haswell/Zen sgemm), so the GEMMs must never be split by it."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 64, 64, 64)).astype(dtype)
    weight = rng.standard_normal((64, 64, 1, 1)).astype(dtype)
    grad_y = rng.standard_normal((8, 64, 64, 64)).astype(dtype)
    work = grad_y.size * 64
    # Enough work for 4 GEMM threads, not only 4 OpenMP threads.
    assert threads_for(work, 4, BLAS_MIN_WORK_PER_THREAD) == 4
    _check_deterministic(
        lambda: [convkit.conv2d(x, weight, method=method),
                 *convkit.conv2d_backward(grad_y, x, weight, method=method)], work,
        CONV_MIN_WORK_PER_THREAD)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_col2im_deterministic(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 8, 48, 48)).astype(dtype)
    cols = convkit.im2col(x, 3, stride=2, padding=1)
    grad_cols = rng.standard_normal(cols.shape).astype(dtype)
    _check_deterministic(lambda: [convkit.im2col(x, 3, stride=2, padding=1),
                                  convkit.col2im(grad_cols, x.shape, 3, stride=2, padding=1)],
                         cols.size)


POOL = {"kernel_size": 3, "stride": 2, "padding": 1}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool2d_deterministic(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 8, 64, 64)).astype(dtype)
    y, indices = convkit.max_pool2d(x, **POOL, return_indices=True)
    grad_y = rng.standard_normal(y.shape).astype(dtype)
    _check_deterministic(lambda: [*convkit.max_pool2d(x, **POOL, return_indices=True),
                                  convkit.max_pool2d_backward(grad_y, indices, x.shape)],
                         min(y.size * 9, grad_y.size + x.size))


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avg_pool2d_deterministic(dtype, count_include_pad):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 8, 64, 64)).astype(dtype)
    args = {**POOL, "ceil_mode": True, "count_include_pad": count_include_pad}
    y = convkit.avg_pool2d(x, **args)
    grad_y = rng.standard_normal(y.shape).astype(dtype)
    _check_deterministic(lambda: [convkit.avg_pool2d(x, **args),
                                  convkit.avg_pool2d_backward(grad_y, x.shape, **args)],
                         y.size * 9)
