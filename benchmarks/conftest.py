"""Shared machinery of the pytest-benchmark suite (``pytest benchmarks/ --benchmark-only``).

Each test is grouped by op and shape, so the default report sets convkit's
methods, the reference and torch side by side;
``--benchmark-group-by=param:shape`` puts forward and backward together.

Inputs, shapes and error measures come from :mod:`convkit.bench`, so the suite
and ``python -m convkit.bench`` time the same calls on the same data. Every
implementation runs on convkit's thread count (``OMP_NUM_THREADS`` sets it);
BLAS and torch are held to the same count.
"""

import functools

import pytest

import convkit
from convkit import _threads
from convkit.bench import Case, max_errors, to_numpy, within_tolerance

SEED = 0
# The reference takes up to seconds per call: fewer rounds than the default calibration.
REFERENCE_ROUNDS = 3


@functools.cache
def _case(op, shape):
    return Case(op, shape, seed=SEED)


@functools.cache
def _expected(op, shape):
    return _case(op, shape).reference()()


@pytest.fixture(scope="session", autouse=True)
def same_thread_count():
    n = convkit.get_num_threads()
    try:
        import torch
    except ImportError:
        torch = None
    previous = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    with _threads.blas_threads(n):
        yield n
    if torch is not None:
        torch.set_num_threads(previous)


@pytest.fixture
def bench_op(benchmark):
    """``bench_op(op, shape, impl)``: time one call of ``impl`` and check its result.

    ``impl`` is a conv method ("direct", "im2col", "auto"), "convkit" (pooling),
    "reference" or "torch". The errors against the reference go to
    ``benchmark.extra_info`` and are asserted after the timing.
    """

    def run(op, shape, impl):
        case = _case(op, shape)
        if impl == "torch":
            pytest.importorskip("torch")
            fn = case.torch()
        elif impl == "reference":
            fn = case.reference()
        else:
            fn = case.convkit(None if impl == "convkit" else impl)
        benchmark.group = f"{op} {shape}"
        if impl == "reference":
            result = benchmark.pedantic(fn, rounds=REFERENCE_ROUNDS, iterations=1,
                                        warmup_rounds=1)
        else:
            result = benchmark(fn)
        max_abs, max_rel = max_errors(to_numpy(result), _expected(op, shape))
        benchmark.extra_info.update({
            "op": op, "shape_desc": str(case.shape), "threads": convkit.get_num_threads(),
            "work": case.work, "work_unit": "flop" if case.is_conv else "byte",
            "max_abs_err": max_abs, "max_rel_err": max_rel,
        })
        assert within_tolerance(max_rel, case.dtype), (
            f"{impl} {op} {shape}: max rel error {max_rel:.2e} beyond tolerance")

    return run
