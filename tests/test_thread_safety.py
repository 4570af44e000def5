"""Thread safety: concurrent Python threads get the serial results; kernels release the GIL."""

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import convkit

PYTHON_THREADS = 8
REPEATS = 3


def _problem(index):
    """Inputs of a different shape and geometry for each Python thread."""
    rng = np.random.default_rng(index)
    dtype = (np.float32, np.float64)[index % 2]
    N, C, K, size = 1 + index % 3, 3 + index % 4, 4 + index % 5, 16 + 2 * index
    stride, padding = 1 + index % 2, index % 3
    x = rng.standard_normal((N, C, size, size)).astype(dtype)
    weight = rng.standard_normal((K, C, 3, 3)).astype(dtype)
    bias = rng.standard_normal(K).astype(dtype)
    y_shape = convkit.conv2d(x, weight, stride=stride, padding=padding).shape
    grad_y = rng.standard_normal(y_shape).astype(dtype)
    pool_shape = convkit.max_pool2d(x, 3, stride=stride, padding=1).shape
    grad_pool = rng.standard_normal(pool_shape).astype(dtype)
    return {"x": x, "weight": weight, "bias": bias, "grad_y": grad_y, "grad_pool": grad_pool,
            "stride": stride, "padding": padding, "threads": 1 + (index // 2) % 2}


def _results(problem):
    """Every kernel on one problem, under that thread's own convkit.num_threads."""
    p = problem
    geometry = {"stride": p["stride"], "padding": p["padding"]}
    out = []
    with convkit.num_threads(p["threads"]):
        for method in ("direct", "im2col"):
            out.append(convkit.conv2d(p["x"], p["weight"], p["bias"], **geometry, method=method))
            out.extend(convkit.conv2d_backward(p["grad_y"], p["x"], p["weight"], **geometry,
                                               method=method))
        pooled, indices = convkit.max_pool2d(p["x"], 3, stride=p["stride"], padding=1,
                                             return_indices=True)
        out += [pooled, indices,
                convkit.max_pool2d_backward(p["grad_pool"], indices, p["x"].shape)]
    return out


def test_concurrent_calls_match_serial_results():
    problems = [_problem(i) for i in range(PYTHON_THREADS)]
    serial = [_results(problem) for problem in problems]
    start = threading.Barrier(PYTHON_THREADS)

    def worker(problem):
        start.wait()
        return [_results(problem) for _ in range(REPEATS)]

    with ThreadPoolExecutor(PYTHON_THREADS) as pool:
        concurrent = list(pool.map(worker, problems))
    for index, (expected, runs) in enumerate(zip(serial, concurrent)):
        for run in runs:
            for position, (actual, wanted) in enumerate(zip(run, expected)):
                assert np.array_equal(actual, wanted), f"thread {index}, result {position}"


def _longest_stall(call, seconds=0.3):
    """Repeat ``call`` for ``seconds`` while a Python thread counts.

    Returns (the shortest call's seconds, the counting thread's longest pause,
    its count). Were the GIL held during a kernel, some pause would last a
    whole call.
    """
    stop = threading.Event()
    stats = {}

    def count():
        last = time.perf_counter()
        longest, counter = 0.0, 0
        while not stop.is_set():
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now
            counter += 1
        stats.update(longest=longest, counter=counter)

    counter_thread = threading.Thread(target=count)
    counter_thread.start()
    shortest = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        begin = time.perf_counter()
        call()
        shortest = min(shortest, time.perf_counter() - begin)
    stop.set()
    counter_thread.join()
    return shortest, stats["longest"], stats["counter"]


rng = np.random.default_rng(0)
BIG_X = rng.standard_normal((16, 32, 64, 64))
BIG_WEIGHT = rng.standard_normal((64, 32, 3, 3))
BIG_GRAD_Y = rng.standard_normal((16, 32, 64, 64))
BIG_POOL_X = rng.standard_normal((16, 64, 128, 128)).astype(np.float32)


@pytest.mark.parametrize("call", [
    lambda: convkit.conv2d(BIG_X, BIG_WEIGHT, padding=1, method="direct"),
    lambda: convkit.conv2d(BIG_X, BIG_WEIGHT, padding=1, method="im2col"),
    lambda: convkit.conv2d_backward(BIG_GRAD_Y, BIG_X, BIG_WEIGHT[:32], padding=1,
                                    method="direct", output_mask=(True, True, False)),
    lambda: convkit.max_pool2d(BIG_POOL_X, 3, stride=1, padding=1, dilation=2,
                               return_indices=True),
], ids=["conv2d direct", "conv2d im2col", "conv2d_backward direct", "max_pool2d"])
def test_kernels_release_the_gil(call):
    # A 1 ms switch interval bounds the counting thread's pauses while the
    # kernel runs without the GIL, so calls of 20 ms tell (an AVX-512 Zen 5
    # runs the direct forward in 34 ms). One kernel thread leaves the other
    # core to the counting thread.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-3)
    try:
        with convkit.num_threads(1):
            duration, longest, counter = _longest_stall(call)
    finally:
        sys.setswitchinterval(previous)
    assert duration > 0.02, "the call is too short to tell whether the GIL was released"
    assert longest < duration / 2, (
        f"the counting thread stalled {longest:.3f} s of a {duration:.3f} s call "
        f"({counter} increments): the kernel holds the GIL")
