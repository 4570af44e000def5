"""max_pool2d and avg_pool2d forward and backward: convkit, the NumPy reference and torch."""

import pytest

from convkit.bench import shapes_for

IMPLEMENTATIONS = ("convkit", "reference", "torch")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", shapes_for("max_pool2d"))
def test_max_pool2d(bench_op, shape, impl):
    bench_op("max_pool2d", shape, impl)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", shapes_for("max_pool2d_backward"))
def test_max_pool2d_backward(bench_op, shape, impl):
    bench_op("max_pool2d_backward", shape, impl)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", shapes_for("avg_pool2d"))
def test_avg_pool2d(bench_op, shape, impl):
    bench_op("avg_pool2d", shape, impl)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", shapes_for("avg_pool2d_backward"))
def test_avg_pool2d_backward(bench_op, shape, impl):
    bench_op("avg_pool2d_backward", shape, impl)
