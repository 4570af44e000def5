"""Thread-count API, the OMP_NUM_THREADS default, determinism across thread
counts, and show_config."""

import io
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import convkit
from convkit import _threads
from convkit._lib import _conv, _openmp, _pool

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
needs_openmp = pytest.mark.skipif(not _openmp.openmp_enabled(),
                                  reason="built without OpenMP: always one thread")


@pytest.fixture(autouse=True)
def restore_thread_default():
    previous = _threads._default
    yield
    _threads._default = previous


def _run_python(source, env_update=None):
    """Run ``source`` in a fresh interpreter (crashes stay out of this process)."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env.update(env_update or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(source)], env=env,
                          cwd=TESTS_DIR, capture_output=True, text=True, timeout=120)


@needs_openmp
def test_set_and_get_num_threads():
    convkit.set_num_threads(3)
    assert convkit.get_num_threads() == 3
    convkit.set_num_threads(np.int64(1))
    assert convkit.get_num_threads() == 1
    assert type(convkit.get_num_threads()) is int


@needs_openmp
def test_num_threads_context_nests_and_restores():
    convkit.set_num_threads(2)
    with convkit.num_threads(3):
        assert convkit.get_num_threads() == 3
        with convkit.num_threads(1):
            assert convkit.get_num_threads() == 1
        assert convkit.get_num_threads() == 3
    assert convkit.get_num_threads() == 2
    with pytest.raises(KeyError):
        with convkit.num_threads(4):
            raise KeyError
    assert convkit.get_num_threads() == 2


@needs_openmp
def test_num_threads_context_is_local_to_the_thread():
    convkit.set_num_threads(2)
    seen = []
    with convkit.num_threads(3):
        worker = threading.Thread(target=lambda: seen.append(convkit.get_num_threads()))
        worker.start()
        worker.join()
        assert convkit.get_num_threads() == 3
    assert seen == [2]


@pytest.mark.parametrize("value, error", [
    (0, ValueError), (-1, ValueError), (np.int32(0), ValueError),
    (1.5, TypeError), (2.0, TypeError), ("2", TypeError), (None, TypeError), (True, TypeError),
], ids=["zero", "negative", "numpy_zero", "float", "integral_float", "string", "none", "bool"])
def test_bad_thread_counts_raise(value, error):
    before = convkit.get_num_threads()
    with pytest.raises(error, match="number of threads"):
        convkit.set_num_threads(value)
    with pytest.raises(error, match="number of threads"):
        with convkit.num_threads(value):
            pass
    assert convkit.get_num_threads() == before


@needs_openmp
@pytest.mark.parametrize("omp_value, expected", [
    ("3", "3"), ("5,2", "5"), (" 2 ", "2"), ("", "cores"), ("0", "cores"), ("many", "cores"),
    (None, "cores"),
], ids=["3", "nested_list", "spaces", "empty", "zero", "garbage", "unset"])
def test_default_follows_omp_num_threads(omp_value, expected):
    env = {} if omp_value is None else {"OMP_NUM_THREADS": omp_value}
    result = _run_python("""
        import os, convkit
        print(convkit.get_num_threads(), len(os.sched_getaffinity(0)))
    """, env)
    assert result.returncode == 0, result.stderr
    threads, cores = result.stdout.split()
    assert threads == (cores if expected == "cores" else expected)


def test_threads_for_runs_tiny_work_serially():
    assert _threads.threads_for(10, n_threads=4) == 1
    assert _threads.threads_for(2 * 32768, n_threads=4) == 2
    assert _threads.threads_for(10 ** 9, n_threads=4) == 4
    assert _threads.threads_for(10 ** 9, n_threads=1) == 1


def test_direct_backward_leaves_blas_alone(monkeypatch):
    """Only GEMMs hold BLAS's threads: a direct backward never calls threadpoolctl."""
    def refuse(n):
        raise AssertionError("blas_threads called without a GEMM")

    monkeypatch.setattr(_threads, "blas_threads", refuse)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3))
    grad_output = rng.standard_normal((2, 4, 7, 7))
    got = convkit.conv2d_backward(grad_output, x, w, method="direct")
    monkeypatch.undo()
    want = convkit.conv2d_backward(grad_output, x, w, method="im2col")
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_small_convolutions_run_serially():
    """conv2d's kernels take a second thread only from CONV_MIN_WORK_PER_THREAD each."""
    from convkit import functional

    rng = np.random.default_rng(0)
    used = []
    original = functional._forward_direct

    def recording(x, weight, bias, g, y, n_threads):
        used.append(n_threads)
        return original(x, weight, bias, g, y, n_threads)

    functional._forward_direct = recording
    try:
        with convkit.num_threads(2):
            # 8*16*9*14*14 = 226 K multiply-adds: serial.
            convkit.conv2d(rng.standard_normal((1, 8, 14, 14)), rng.standard_normal((16, 8, 3, 3)),
                           padding=1, method="direct")
            # 2*32*16*9*28*28 = 7.2 M: both threads.
            convkit.conv2d(rng.standard_normal((2, 16, 28, 28)),
                           rng.standard_normal((32, 16, 3, 3)), padding=1, method="direct")
    finally:
        functional._forward_direct = original
    assert used == [1, 2]


# Big enough that every kernel call gets 4 threads: 32 * 32 * 12 * 12 = 147456
# output elements (grad_bias splits by those, the rest by their multiply-adds);
# many small planes, so that threads interleave finely.
DETERMINISM_X, DETERMINISM_W = (32, 8, 12, 12), (32, 4, 3, 3)
DETERMINISM_Y = (32, 32, 12, 12)
DETERMINISM_KWARGS = dict(padding=1, groups=2)


def determinism_check(method, dtype):
    """Forward and all gradients with 1, 2 and 4 threads: bitwise identical.

    Also asserts that every kernel call really ran with the requested count.
    Module-level so that a subprocess can import and run it.
    """
    rng = np.random.default_rng(5)
    x = rng.standard_normal(DETERMINISM_X).astype(dtype)
    weight = rng.standard_normal(DETERMINISM_W).astype(dtype)
    bias = rng.standard_normal(DETERMINISM_W[0]).astype(dtype)
    grad_output = rng.standard_normal(DETERMINISM_Y).astype(dtype)
    original = _threads.threads_for
    used = []

    def recording(work, n_threads=None, min_work_per_thread=1 << 15):
        count = original(work, n_threads, min_work_per_thread)
        if min_work_per_thread not in (_threads.BLAS_MIN_WORK_PER_THREAD,  # kernel teams only
                                       _threads.SCAN_MIN_WORK_PER_THREAD,
                                       _threads.PACK_MIN_WORK_PER_THREAD):
            used.append(count)
        return count

    results = {}
    _threads.threads_for = recording
    try:
        for n in (1, 2, 4):
            used.clear()
            with convkit.num_threads(n):
                y = convkit.conv2d(x, weight, bias, method=method, **DETERMINISM_KWARGS)
                grads = convkit.conv2d_backward(grad_output, x, weight, method=method,
                                                **DETERMINISM_KWARGS)
            assert used and set(used) == {n}, (n, used)
            results[n] = (y,) + grads
    finally:
        _threads.threads_for = original
    for n in (2, 4):
        for name, serial, threaded in zip(("y", "grad_input", "grad_weight", "grad_bias"),
                                          results[1], results[n]):
            assert threaded.dtype == serial.dtype and threaded.shape == serial.shape
            np.testing.assert_array_equal(threaded, serial,
                                          err_msg=f"{name}: {n} threads vs 1 ({method})")


@needs_openmp
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("method", ["direct", "im2col"])
def test_results_bitwise_identical_for_1_2_4_threads(method, dtype):
    # In a subprocess: a race in a kernel can corrupt the heap and abort (one in
    # im2col/col2im did, from q_lo/q_hi left shared in their prange bodies).
    result = _run_python(f"""
        import numpy as np
        from test_threads import determinism_check
        determinism_check({method!r}, np.{dtype})
    """)
    assert result.returncode == 0, result.stderr[-3000:]


@needs_openmp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shapes", [
    # 1 thread packs per image task, 2 and 4 threads pack the whole input first.
    ((3, 40, 9, 11), (36, 40, 3, 3)),
    # 3 input channels: 1 and 2 threads pack per image, 4 threads per block of
    # output channels.
    ((9, 3, 10, 11), (20, 3, 3, 3)),
    # Small maps, 5x5 kernel: grad_input as weights x grad_output then col2im.
    ((5, 6, 9, 9), (12, 6, 5, 5)),
], ids=["wide", "narrow", "scatter"])
def test_direct_packing_layout_does_not_change_results(dtype, shapes):
    """The packing depends on the thread count; the results must not."""
    rng = np.random.default_rng(3)
    x_shape, w_shape = shapes
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    pad = 1
    out_hw = tuple(size + 2 * pad - w_shape[2] + 1 for size in x_shape[2:])
    grad_output = rng.standard_normal(x_shape[:1] + w_shape[:1] + out_hw).astype(dtype)
    results = []
    for n in (1, 2, 4):
        with convkit.num_threads(n):
            y = convkit.conv2d(x, weight, padding=pad, method="direct")
            grads = convkit.conv2d_backward(grad_output, x, weight, padding=pad,
                                            method="direct")
        results.append((y,) + grads)
    for threaded in results[1:]:
        for got, want in zip(threaded, results[0]):
            np.testing.assert_array_equal(got, want)


@needs_openmp
def test_im2col_col2im_threaded_equal_serial():
    result = _run_python("""
        import numpy as np, convkit
        from convkit import reference
        rng = np.random.default_rng(6)
        x = rng.standard_normal((4, 8, 24, 24))
        kwargs = dict(kernel_size=3, padding=(1, 2), dilation=(1, 2))
        expected = reference.im2col(x, **kwargs)
        cols = rng.standard_normal(expected.shape)
        with convkit.num_threads(1):
            folded = convkit.col2im(cols, x.shape, **kwargs)
        for n in (2, 4):
            with convkit.num_threads(n):
                assert convkit._threads.threads_for(cols.size) == n
                for _ in range(20):
                    np.testing.assert_array_equal(convkit.im2col(x, **kwargs), expected)
                    np.testing.assert_array_equal(convkit.col2im(cols, x.shape, **kwargs),
                                                  folded)
    """)
    assert result.returncode == 0, result.stderr[-3000:]


def _config_lines():
    buffer = io.StringIO()
    convkit.show_config(file=buffer)
    return buffer.getvalue().splitlines()


def test_show_config_reports_the_build():
    text = "\n".join(_config_lines())
    info = _openmp.build_info()
    assert f"convkit {convkit.__version__}" in text
    assert f"compiler: {info['compiler']}" in text
    assert ("OpenMP: yes" if info["openmp"] else "OpenMP: no") in text
    assert "SIMD" in text
    assert f"direct kernels: {_conv.kernel_isa()}" in text
    assert f"max pooling: {_pool.pool_kernel_isa()}" in text
    assert "BLAS" in text
    assert f"threads: {convkit.get_num_threads()}" in text


@needs_openmp
def test_show_config_reports_the_current_thread_count(capsys):
    with convkit.num_threads(3):
        convkit.show_config()
    out = capsys.readouterr().out
    assert "threads: 3" in out.splitlines()
    assert f"convkit {convkit.__version__}" in out


def forced_threads_grid_check(method, n_threads):
    """Every geometry of tests/test_conv.py, with ``n_threads`` forced on even tiny work.

    Module-level so that a subprocess can import and run it.
    """
    from _helpers import assert_close
    from convkit import reference
    from test_conv import CASES, make_inputs

    original = _threads.threads_for
    _threads.threads_for = lambda work, n=None, *args, **kwargs: n_threads
    try:
        for case in CASES:
            for dtype in (np.float32, np.float64):
                x, weight, bias, grad_output, kwargs = make_inputs(case, dtype)
                y = convkit.conv2d(x, weight, bias, method=method, **kwargs)
                assert_close(y, reference.conv2d(x, weight, bias, **kwargs), err_msg=case)
                grads = convkit.conv2d_backward(grad_output, x, weight, method=method,
                                                **kwargs)
                for actual, wanted in zip(grads, reference.conv2d_backward(
                        grad_output, x, weight, **kwargs)):
                    assert_close(actual, wanted, kind="grad", err_msg=case)
    finally:
        _threads.threads_for = original


@needs_openmp
@pytest.mark.parametrize("n_threads", [2, 4])
def test_direct_grid_with_forced_threads_matches_reference(n_threads):
    forced_threads_grid_check("direct", n_threads)


@needs_openmp
def test_im2col_grid_with_forced_threads_matches_reference():
    result = _run_python("""
        from test_threads import forced_threads_grid_check
        for n_threads in (2, 4):
            for repeat in range(3):
                forced_threads_grid_check("im2col", n_threads)
    """)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("gemms", ["kernel threads", "python pool"])
def test_kernels_after_fork(gemms):
    """A child forked after multi-threaded calls runs every kernel on one thread, to the
    same results: GCC's OpenMP runtime would wait there forever for the parent's
    threads (every OpenMP kernel hung so before), and the parent's GEMM pool
    threads do not exist there either."""
    source = """
        import os
        import numpy as np
        import convkit
        from convkit import _threads
        if %r == "python pool":
            _threads._gemm = False   # GEMMs through NumPy in the Python pool
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8, 256, 14, 14)).astype(np.float32)
        w = rng.standard_normal((64, 256, 1, 1)).astype(np.float32)
        x3 = rng.standard_normal((4, 16, 32, 32)).astype(np.float32)
        w3 = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
        def work():
            with convkit.num_threads(2):
                return (convkit.conv2d(x, w, method="im2col"),
                        convkit.conv2d(x3, w3, padding=1, method="direct"),
                        convkit.max_pool2d(x3, 2))
        expected = work()
        pid = os.fork()
        if pid == 0:
            got = work()
            same = all(np.array_equal(a, b) for a, b in zip(got, expected))
            os._exit(0 if same and convkit.get_num_threads() == 1 else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
    """ % gemms
    result = _run_python(source)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "child 0"


def _gemm_operands(dtype):
    """(a, b, out) in the layouts convkit's GEMMs use: broadcast weights, transposed views, slices."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 2, 7, 30)).astype(dtype)
    weights = rng.standard_normal((2, 6, 7)).astype(dtype)
    weights_t = rng.standard_normal((2, 7, 6)).astype(dtype).transpose(0, 2, 1)
    gy = rng.standard_normal((5, 2, 6, 30)).astype(dtype)
    big = np.zeros((7, 2, 6, 30), dtype)
    return [(weights, x, big[1:6]),                       # forward: weights broadcast
            (weights_t, x, np.zeros((5, 2, 6, 30), dtype)),  # grad_input: weights^T
            (gy, x.transpose(0, 1, 3, 2), np.zeros((5, 2, 6, 7), dtype))]  # grad_weight


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemms_run_from_the_kernel_threads(dtype):
    """Where NumPy's BLAS is found, _matmul calls it from OpenMP threads: np.matmul's
    products, bit for bit the same on 1, 2 and 3 threads."""
    from convkit import functional

    if _threads.blas_gemm() is None:
        pytest.skip("no NumPy-bundled OpenBLAS (scipy_cblas_?gemm64_) to call from the kernels")
    for a, b, out in _gemm_operands(dtype):
        assert functional._gemm_layouts(a, b, out) is not None
        expected = np.matmul(a, b)
        results = []
        for n in (1, 2, 3):
            out[...] = np.nan
            with _threads.blas_threads(1):
                functional._matmul(a, b, out, n)
            results.append(out.copy())
        np.testing.assert_allclose(results[0], expected, rtol=1e-5 if dtype == np.float32 else 1e-12)
        for other in results[1:]:
            np.testing.assert_array_equal(other, results[0])


def test_gemm_layouts_refuse_what_blas_cannot_read():
    """Operands with no unit stride, reversed rows or a strided output go through np.matmul."""
    from convkit import functional

    rng = np.random.default_rng(2)
    a = rng.standard_normal((2, 6, 7)).astype(np.float32)
    b = rng.standard_normal((3, 2, 14, 60)).astype(np.float32)
    out = np.zeros((3, 2, 6, 30), np.float32)
    assert functional._gemm_layouts(a, b[:, :, ::2, ::2], out) is None
    assert functional._gemm_layouts(a[:, ::-1], b[:, :, :7, :30], out) is None
    strided_out = np.zeros((3, 2, 6, 60), np.float32)[..., ::2]
    assert functional._gemm_layouts(a, b[:, :, :7, :30], strided_out) is None
    assert functional._gemm_layouts(a, b[:, :, :7, :30], out) is not None
    for bb, oo in [(b[:, :, ::2, ::2], out), (b[:, :, :7, :30], strided_out)]:
        with _threads.blas_threads(1):
            functional._matmul(a, bb, oo, 2)
        np.testing.assert_allclose(oo, np.matmul(a, bb), rtol=1e-5)


def test_no_kernel_gemms_without_a_hold_on_blas(monkeypatch):
    """Without threadpoolctl, BLAS could split a GEMM on its own threads inside an
    OpenMP region: the kernels then never call it."""
    monkeypatch.setattr(_threads, "_blas", False)
    assert _threads.blas_gemm() is None
