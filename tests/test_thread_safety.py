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


# Kernel calls shorter than this are not judged: the counting thread may run
# for up to a switch interval on each side of a call.
MIN_KERNEL_SECONDS = 0.01


def _progress_during_kernels(call, monkeypatch, seconds=0.3):
    """Repeat ``call`` for ``seconds`` while a Python thread counts.

    Every function of the compiled modules is wrapped to note how far the
    counter moved while it ran. Returns (seconds spent in kernel calls of at
    least MIN_KERNEL_SECONDS, increments made meanwhile, increments a second
    when the counter has the GIL to itself (the slower of before and after),
    number of such calls). A kernel that held the GIL would see at most a
    switch interval's worth of increments on each side.

    Only convkit's kernels are judged, not the Python around them, which
    holds the GIL while it allocates and frees workspaces: under
    AddressSanitizer freeing the im2col path's 150 MB workspace takes 50-100
    ms, longer than half the call on a fast machine.
    """
    from convkit._lib import _conv, _pool

    counts = [0]
    stop = threading.Event()
    spans = []

    def count():
        while not stop.is_set():
            counts[0] += 1

    def wrap(function):
        def timed(*args, **kwargs):
            before, begin = counts[0], time.perf_counter()
            result = function(*args, **kwargs)
            spans.append((time.perf_counter() - begin, counts[0] - before))
            return result
        return timed

    for module in (_conv, _pool):
        for name in dir(module):
            function = getattr(module, name)
            if not name.startswith("_") and callable(function) and not isinstance(function, type):
                monkeypatch.setattr(module, name, wrap(function))

    def pace():
        start, begin = counts[0], time.perf_counter()
        time.sleep(0.05)
        return (counts[0] - start) / (time.perf_counter() - begin)

    counter_thread = threading.Thread(target=count)
    counter_thread.start()
    try:
        rate_before = pace()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            call()
        rate = min(rate_before, pace())
    finally:
        stop.set()
        counter_thread.join()
    long_spans = [span for span in spans if span[0] >= MIN_KERNEL_SECONDS]
    return (sum(span[0] for span in long_spans), sum(span[1] for span in long_spans),
            rate, len(long_spans))


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
def test_kernels_release_the_gil(call, monkeypatch):
    # A 1 ms switch interval bounds what the counting thread gets in on each
    # side of a kernel that held the GIL: at most 2 ms of a 10 ms call, where
    # a kernel without the GIL lets it run on the other core all through. One
    # kernel thread leaves that core free.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-3)
    try:
        with convkit.num_threads(1):
            kernel_seconds, increments, rate, calls = _progress_during_kernels(
                call, monkeypatch)
    finally:
        sys.setswitchinterval(previous)
    assert kernel_seconds > 0.02, (
        f"the kernels ran {kernel_seconds:.3f} s in calls of {MIN_KERNEL_SECONDS} s or more: "
        "too short to tell whether they release the GIL")
    share = increments / (rate * kernel_seconds)
    assert share > 0.4, (
        f"the counting thread ran at {share:.0%} of its own pace during {calls} kernel calls "
        f"({kernel_seconds:.3f} s, {increments} increments at {rate:.0f}/s alone): "
        "a kernel holds the GIL")
